//! `rolloutctl practice show`: a practice's live, explained answer.

use clap::Subcommand;
use rollout_proto::v1 as pb;

use super::{Ctx, Outcome};

/// A practice's answer.
#[derive(Debug, Subcommand)]
pub enum Practice {
    /// Is the feature on at the practice, and why.
    Show {
        /// The ODS code.
        ods: String,
        /// The feature key (required: a practice has an answer per feature).
        #[arg(long)]
        feature: String,
    },
}

impl Practice {
    /// Asks the practice's supplier through the coordinator.
    pub async fn run(self, ctx: &mut Ctx) -> Outcome {
        let Practice::Show { ods, feature } = self;
        let p = ctx
            .client
            .get_practice_status(pb::GetPracticeStatusRequest {
                name: format!("practices/{ods}/features/{feature}"),
            })
            .await?
            .into_inner();
        ctx.print(&p)
    }
}
