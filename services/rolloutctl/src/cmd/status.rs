//! `rolloutctl status`: every supplier and whether it is in sync.

use clap::Args;
use rollout_proto::v1 as pb;

use super::{Ctx, Outcome};
use crate::client::pages;

/// `status`.
#[derive(Debug, Args)]
pub struct Status {}

impl Status {
    /// Lists the suppliers.
    pub async fn run(self, ctx: &mut Ctx) -> Outcome {
        let r: pb::ListSuppliersResponse = pages(
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
        ctx.print(&r)
    }
}
