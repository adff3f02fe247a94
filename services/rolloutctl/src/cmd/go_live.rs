//! `rolloutctl go-live`: asks to switch a feature on in a scope, at once or at a time.

use clap::Args;
use rollout_net::wire;
use rollout_proto::v1 as pb;

use super::{Ctx, Outcome, RequestId, ScopeAllowances, confirm, feature_name, scope};
use crate::client::{CliError, local, usage};

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
    /// Ask for it without asking here. Without it, at a terminal, a national or supplier-wide
    /// go-live first shows what it covers and its preview per supplier and needs `yes` typed;
    /// with standard input not a terminal, nothing is asked.
    #[arg(long)]
    yes: bool,
    #[command(flatten)]
    allow: ScopeAllowances,
    #[command(flatten)]
    request_id: RequestId,
}

impl GoLive {
    /// Asks for the go-live (after the question, for a wide scope at a terminal); it waits for
    /// approval.
    pub async fn run(self, ctx: &mut Ctx) -> Outcome {
        let effective_time = self
            .at
            .as_ref()
            .map(|t| {
                humantime::parse_rfc3339_weak(t).map_err(|e| {
                    usage(format!(
                        "--at {t:?}: {e}; use RFC 3339, e.g. 2026-12-01T09:00:00Z"
                    ))
                })
            })
            .transpose()?
            .map(wire::timestamp);
        let request = pb::ScheduleGoLiveRequest {
            name: feature_name(&self.feature),
            scope: Some(scope(&self.scope)?),
            effective_time,
            reason: self.reason.clone(),
            request_id: self.request_id.clone().into(),
            dry_run: self.dry_run,
            allow_unknown_practices: self.allow.allow_unknown_practices,
            allow_empty_scope: self.allow.allow_empty_scope,
        };
        let wide = request.scope.as_ref().is_some_and(confirm::wide);
        if wide && !self.dry_run && confirm::asks(self.yes) {
            self.confirm(ctx, &request).await?;
        }
        let cmd = ctx.client.schedule_go_live(request).await?.into_inner();
        ctx.print(&cmd)
    }

    /// Shows the dry run of `request` (impact and preview) and asks; an error unless the
    /// answer is yes.
    async fn confirm(&self, ctx: &mut Ctx, request: &pb::ScheduleGoLiveRequest) -> Result<(), CliError> {
        let preview = ctx
            .client
            .schedule_go_live(pb::ScheduleGoLiveRequest {
                dry_run: true,
                request_id: String::new(),
                ..request.clone()
            })
            .await?
            .into_inner();
        ctx.out.preview(&preview)?;
        let question = format!(
            "Ask to go live with {} {}: {} (it then waits for a different person to approve it)?",
            self.feature,
            request.scope.as_ref().map(confirm::said).unwrap_or_default(),
            confirm::covered(&preview)
        );
        if confirm::confirmed(&question)? {
            Ok(())
        } else {
            Err(local("the go-live was not asked for: nothing was sent"))
        }
    }
}
