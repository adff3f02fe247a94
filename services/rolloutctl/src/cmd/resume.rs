//! `rolloutctl resume`: asks to lift named halts.

use clap::Args;
use rollout_proto::v1 as pb;

use super::{Ctx, Outcome, RequestId, command_name, feature_name};

/// `resume`.
#[derive(Debug, Args)]
pub struct Resume {
    /// The feature key.
    feature: String,
    /// A halt to lift (command id); repeat for several.
    #[arg(long = "halt", required = true)]
    halts: Vec<String>,
    /// Why.
    #[arg(long)]
    reason: String,
    /// Only show the impact.
    #[arg(long)]
    dry_run: bool,
    #[command(flatten)]
    request_id: RequestId,
}

impl Resume {
    /// Asks for the resume; it waits for approval.
    pub async fn run(self, ctx: &mut Ctx) -> Outcome {
        let cmd = ctx
            .client
            .resume_feature(pb::ResumeFeatureRequest {
                name: feature_name(&self.feature),
                halts: self.halts.iter().map(|h| command_name(h)).collect(),
                reason: self.reason,
                request_id: self.request_id.into(),
                dry_run: self.dry_run,
            })
            .await?
            .into_inner();
        ctx.print(&cmd)
    }
}
