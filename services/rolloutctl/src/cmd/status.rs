//! `rolloutctl status`: every supplier and whether it is in sync, and its practices' counts per
//! feature with how fresh they are.

use clap::Args;
use rollout_proto::v1 as pb;

use super::{Ctx, Outcome, feature_name};
use crate::client::pages;

/// `status`.
#[derive(Debug, Args)]
pub struct Status {
    /// Count this feature's practices only (its key). Without it, one table of counts per
    /// feature.
    #[arg(long)]
    feature: Option<String>,
}

impl Status {
    /// Lists the suppliers, their counts filtered to `--feature` if given.
    pub async fn run(self, ctx: &mut Ctx) -> Outcome {
        let feature = self.feature.as_deref().map(feature_name);
        if let Some(name) = &feature {
            // A feature that does not exist is named as such, not shown as no counts.
            ctx.client
                .get_feature(pb::GetFeatureRequest { name: name.clone() })
                .await?;
        }
        let mut r: pb::ListSuppliersResponse = pages(
            &ctx.client,
            usize::MAX,
            100,
            |mut c, page_token, page_size| async move {
                c.list_suppliers(pb::ListSuppliersRequest {
                    page_size,
                    page_token,
                })
                .await
            },
        )
        .await?;
        if let Some(name) = &feature {
            for s in &mut r.suppliers {
                s.feature_counts.retain(|c| &c.feature == name);
            }
            if r.suppliers.iter().all(|s| s.feature_counts.is_empty()) {
                ctx.out.say(format_args!(
                    "no supplier has counted {name} yet: it is counted from each supplier's next heartbeat after the feature reaches it"
                ))?;
            }
        }
        ctx.print(&r)
    }
}
