//! `rolloutctl go-live`: asks to switch a feature on in a scope, at once or at a time.

use clap::Args;
use rollout_net::wire;
use rollout_proto::v1 as pb;

use super::{Ctx, Outcome, RequestId, ScopeAllowances, feature_name, scope};
use crate::client::usage;

/// `go-live`.
#[derive(Debug, Args)]
pub struct GoLive {
    /// The feature key.
    feature: String,
    /// The scope, as for halt.
    #[arg(long)]
    scope: String,
    /// When it takes effect (RFC 3339, for example 2026-12-01T09:00:00Z); default at once.
    #[arg(long)]
    at: Option<String>,
    /// Why.
    #[arg(long)]
    reason: String,
    /// Only show the impact.
    #[arg(long)]
    dry_run: bool,
    #[command(flatten)]
    allow: ScopeAllowances,
    #[command(flatten)]
    request_id: RequestId,
}

impl GoLive {
    /// Asks for the go-live; it waits for approval.
    pub async fn run(self, ctx: &mut Ctx) -> Outcome {
        let effective_time = self
            .at
            .map(|t| {
                humantime::parse_rfc3339_weak(&t).map_err(|e| {
                    usage(format!(
                        "--at {t:?}: {e}; use RFC 3339, e.g. 2026-12-01T09:00:00Z"
                    ))
                })
            })
            .transpose()?
            .map(wire::timestamp);
        let cmd = ctx
            .client
            .schedule_go_live(pb::ScheduleGoLiveRequest {
                name: feature_name(&self.feature),
                scope: Some(scope(&self.scope)?),
                effective_time,
                reason: self.reason,
                request_id: self.request_id.into(),
                dry_run: self.dry_run,
                allow_unknown_practices: self.allow.allow_unknown_practices,
                allow_empty_scope: self.allow.allow_empty_scope,
            })
            .await?
            .into_inner();
        ctx.print(&cmd)
    }
}
