//! `rolloutctl redeliver`: a command a supplier rejected, delivered again to that supplier
//! alone, once its change freeze has ended.

use clap::Args;
use rollout_proto::v1 as pb;

use super::{Ctx, Outcome, RequestId, command_name};

/// `redeliver`.
#[derive(Debug, Args)]
pub struct Redeliver {
    /// The rejected command's id.
    command: String,
    /// The supplier that rejected it, for example `tpp`.
    #[arg(long = "to")]
    supplier: String,
    /// Why, for the audit log.
    #[arg(long)]
    reason: String,
    /// Only show the redelivery and its preview.
    #[arg(long)]
    dry_run: bool,
    #[command(flatten)]
    request_id: RequestId,
}

impl Redeliver {
    /// Asks for the redelivery: a new command, addressed to the supplier, waiting for approval
    /// as the original did.
    pub async fn run(self, ctx: &mut Ctx) -> Outcome {
        let cmd = ctx
            .client
            .redeliver_command(pb::RedeliverCommandRequest {
                name: command_name(&self.command),
                supplier: format!("suppliers/{}", self.supplier),
                reason: self.reason,
                request_id: self.request_id.into(),
                dry_run: self.dry_run,
            })
            .await?
            .into_inner();
        ctx.print(&cmd)
    }
}
