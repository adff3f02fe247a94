//! `rolloutctl opt-outs`: the coordinator's national opt-out register.

use clap::Args;
use rollout_proto::v1 as pb;

use super::{Ctx, Outcome, feature_name};
use crate::client::pages;

/// `opt-outs`.
#[derive(Debug, Args)]
pub struct OptOuts {
    /// Only this feature's.
    #[arg(long)]
    feature: Option<String>,
    /// Only those reported by this supplier, for example `emis`.
    #[arg(long)]
    supplier: Option<String>,
    /// Only this practice's (ODS code).
    #[arg(long)]
    practice: Option<String>,
    /// Include withdrawn opt-outs.
    #[arg(long)]
    withdrawn: bool,
}

impl OptOuts {
    /// Lists the register (every page) with its counts per supplier and feature.
    pub async fn run(self, ctx: &mut Ctx) -> Outcome {
        let feature = self.feature.as_deref().map(feature_name).unwrap_or_default();
        let supplier = self
            .supplier
            .map(|s| format!("suppliers/{s}"))
            .unwrap_or_default();
        let practice = self.practice.unwrap_or_default();
        let r: pb::ListOptOutsResponse =
            pages(&ctx.client, usize::MAX, 1_000, |mut c, page_token, page_size| {
                let request = pb::ListOptOutsRequest {
                    feature: feature.clone(),
                    supplier: supplier.clone(),
                    practice: practice.clone(),
                    show_withdrawn: self.withdrawn,
                    page_size,
                    page_token,
                };
                async move { c.list_opt_outs(request).await }
            })
            .await?;
        ctx.print(&r)
    }
}
