//! `rolloutctl approve`: approves a pending command, after showing what it will change.

use clap::Args;
use rollout_proto::v1 as pb;

use super::{Ctx, Outcome, RequestId, command_name, confirm};
use crate::client::local;

/// `approve`.
#[derive(Debug, Args)]
pub struct Approve {
    /// The command id.
    command: String,
    /// A comment kept with the approval.
    #[arg(long, default_value = "")]
    comment: String,
    /// Approve without asking. Without it, at a terminal, the command is shown (scope, halts
    /// lifted, effective time, the preview of its effect per supplier) and approval needs
    /// `yes` typed; with standard input not a terminal, nothing is asked.
    #[arg(long)]
    yes: bool,
    #[command(flatten)]
    request_id: RequestId,
}

impl Approve {
    /// Approves; the last approval needed dispatches the command.
    pub async fn run(self, ctx: &mut Ctx) -> Outcome {
        let name = command_name(&self.command);
        if confirm::asks(self.yes) {
            let shown = ctx
                .client
                .get_command(pb::GetCommandRequest { name: name.clone() })
                .await?
                .into_inner();
            // Only a command waiting for approval is worth the question; the coordinator
            // explains any other refusal.
            if shown.state() == pb::command::State::PendingApproval {
                ctx.out.preview(&shown)?;
                if !confirm::confirmed(&format!("Approve {name}?"))? {
                    return Err(local(format!("{name} was not approved: nothing was sent")));
                }
            }
        }
        let cmd = ctx
            .client
            .approve_command(pb::ApproveCommandRequest {
                name,
                comment: self.comment,
                request_id: self.request_id.into(),
            })
            .await?
            .into_inner();
        ctx.print(&cmd)
    }
}
