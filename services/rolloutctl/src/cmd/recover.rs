//! `rolloutctl recover`: the commands a DIVERGED supplier holds beyond the coordinator's log,
//! recovered into it.

use clap::Args;
use rollout_proto::v1 as pb;

use super::{Ctx, Outcome, RequestId};

/// `recover`.
#[derive(Debug, Args)]
pub struct Recover {
    /// The supplier to read the commands from, for example `emis`.
    #[arg(long = "from")]
    supplier: String,
    /// Why, for the audit log.
    #[arg(long)]
    reason: String,
    /// Only show what would be recovered.
    #[arg(long)]
    dry_run: bool,
    #[command(flatten)]
    request_id: RequestId,
}

impl Recover {
    /// Recovers, or with `--dry-run` shows what would be.
    pub async fn run(self, ctx: &mut Ctx) -> Outcome {
        let r = ctx
            .client
            .recover_commands(pb::RecoverCommandsRequest {
                supplier: format!("suppliers/{}", self.supplier),
                reason: self.reason,
                dry_run: self.dry_run,
                request_id: self.request_id.into(),
            })
            .await?
            .into_inner();
        ctx.print(&r)
    }
}
