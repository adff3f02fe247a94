//! `rolloutctl approve`: approves a pending command.

use clap::Args;
use rollout_proto::v1 as pb;

use super::{Ctx, Outcome, RequestId, command_name};

/// `approve`.
#[derive(Debug, Args)]
pub struct Approve {
    /// The command id.
    command: String,
    /// A comment kept with the approval.
    #[arg(long, default_value = "")]
    comment: String,
    #[command(flatten)]
    request_id: RequestId,
}

impl Approve {
    /// Approves; the last approval needed dispatches the command.
    pub async fn run(self, ctx: &mut Ctx) -> Outcome {
        let cmd = ctx
            .client
            .approve_command(pb::ApproveCommandRequest {
                name: command_name(&self.command),
                comment: self.comment,
                request_id: self.request_id.into(),
            })
            .await?
            .into_inner();
        ctx.print(&cmd)
    }
}
