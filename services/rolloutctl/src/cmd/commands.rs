//! `rolloutctl commands list|show`: the command log.

use clap::{Args, Subcommand, ValueEnum};
use rollout_proto::v1 as pb;

use super::{Ctx, Outcome, command_name, feature_name};
use crate::client::pages;

/// Commands.
#[derive(Debug, Subcommand)]
pub enum Commands {
    /// Commands, newest first.
    List(List),
    /// One command with its approvals and deliveries.
    Show {
        /// The command id.
        command: String,
    },
}

/// `commands list`.
#[derive(Debug, Args)]
pub struct List {
    /// Only this feature's.
    #[arg(long)]
    feature: Option<String>,
    /// Only in this state.
    #[arg(long, value_enum)]
    state: Option<State>,
}

/// A command's state, as `commands list --state` filters by it.
#[derive(Debug, Clone, Copy, ValueEnum)]
enum State {
    /// Waiting for approval.
    Pending,
    /// Sequenced and delivered (or being delivered) to the suppliers.
    Dispatched,
    /// Withdrawn before approval.
    Cancelled,
}

impl From<State> for pb::command::State {
    fn from(state: State) -> pb::command::State {
        match state {
            State::Pending => pb::command::State::PendingApproval,
            State::Dispatched => pb::command::State::Dispatched,
            State::Cancelled => pb::command::State::Cancelled,
        }
    }
}

impl Commands {
    /// Lists or shows.
    pub async fn run(self, ctx: &mut Ctx) -> Outcome {
        match self {
            Commands::List(list) => list.run(ctx).await,
            Commands::Show { command } => {
                let cmd = ctx
                    .client
                    .get_command(pb::GetCommandRequest {
                        name: command_name(&command),
                    })
                    .await?
                    .into_inner();
                ctx.print(&cmd)
            }
        }
    }
}

impl List {
    async fn run(self, ctx: &mut Ctx) -> Outcome {
        let state = self
            .state
            .map_or(pb::command::State::Unspecified, pb::command::State::from);
        let feature = self.feature.as_deref().map(feature_name).unwrap_or_default();
        let r: pb::ListCommandsResponse =
            pages(&ctx.client, usize::MAX, 500, |mut c, page_token, page_size| {
                let request = pb::ListCommandsRequest {
                    feature: feature.clone(),
                    state: state.into(),
                    page_size,
                    page_token,
                };
                async move { c.list_commands(request).await }
            })
            .await?;
        ctx.print(&r)
    }
}
