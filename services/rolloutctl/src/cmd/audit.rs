//! `rolloutctl audit list|verify`: the coordinator's hash-chained audit log.

use clap::Subcommand;
use rollout_net::wire;
use rollout_proto::v1 as pb;

use super::{Ctx, Exit, Outcome};
use crate::{
    client::{Client, pages},
    render::warn,
};

/// The audit log.
#[derive(Debug, Subcommand)]
pub enum Audit {
    /// Audit events, oldest first.
    List {
        /// Only events after this sequence.
        #[arg(long, default_value_t = 0)]
        after: i64,
        /// At most this many.
        #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..))]
        limit: u32,
    },
    /// Read the whole log and check its hash chain. Exits 2 if it is broken.
    Verify,
}

impl Audit {
    /// Lists or verifies.
    pub async fn run(self, ctx: &mut Ctx) -> Outcome {
        match self {
            Audit::List { after, limit } => {
                let r = events(&ctx.client, after, limit as usize).await?;
                ctx.print(&r)
            }
            Audit::Verify => {
                let events: Vec<_> = events(&ctx.client, 0, usize::MAX)
                    .await?
                    .events
                    .iter()
                    .map(wire::audit_from_pb)
                    .collect();
                match rollout_core::audit::verify_chain(&events) {
                    Ok(n) => {
                        let last = events.last().map_or("-", |e| e.hash.as_str());
                        ctx.out
                            .line(format_args!("audit chain verified: {n} events, last hash {last}"))?;
                        Ok(Exit::Success)
                    }
                    Err(e) => {
                        warn(format_args!("audit chain BROKEN: {e}"));
                        Ok(Exit::CheckFailed)
                    }
                }
            }
        }
    }
}

/// Up to `most` audit events after the sequence `after`, oldest first.
async fn events(
    client: &Client,
    after: i64,
    most: usize,
) -> Result<pb::ListAuditEventsResponse, tonic::Status> {
    pages(client, most, 1_000, |mut c, page_token, page_size| async move {
        c.list_audit_events(pb::ListAuditEventsRequest {
            page_size,
            page_token,
            after_sequence: after,
        })
        .await
    })
    .await
}
