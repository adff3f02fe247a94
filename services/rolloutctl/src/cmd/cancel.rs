//! `rolloutctl cancel`: withdraws a command still waiting for approval.

use clap::Args;
use rollout_proto::v1 as pb;

use super::{Ctx, Outcome, RequestId, command_name};

/// `cancel`.
#[derive(Debug, Args)]
pub struct Cancel {
    /// The command id.
    command: String,
    /// Why.
    #[arg(long)]
    reason: String,
    #[command(flatten)]
    request_id: RequestId,
}

impl Cancel {
    /// Withdraws the command.
    pub async fn run(self, ctx: &mut Ctx) -> Outcome {
        let cmd = ctx
            .client
            .cancel_command(pb::CancelCommandRequest {
                name: command_name(&self.command),
                reason: self.reason,
                request_id: self.request_id.into(),
            })
            .await?
            .into_inner();
        ctx.print(&cmd)
    }
}
