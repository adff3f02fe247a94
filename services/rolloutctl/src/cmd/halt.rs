//! `rolloutctl halt`: a halt at once, and with `--wait` the time until it is verified.

use std::time::{Duration, Instant};

use clap::Args;
use rollout_proto::v1 as pb;

use super::{Ctx, Exit, Outcome, RequestId, ScopeAllowances, feature_name, scope, verify, watch};

/// `halt`.
#[derive(Debug, Args)]
pub struct Halt {
    /// The feature key.
    feature: String,
    /// national | supplier:ID | region:CODE | icb:CODE | sub-icb:CODE | practices:ODS,ODS...
    #[arg(long)]
    scope: String,
    /// Why, in words the practices and suppliers will read.
    #[arg(long)]
    reason: String,
    /// Only show which practices at which suppliers it would cover.
    #[arg(long)]
    dry_run: bool,
    /// Wait until every supplier has applied it, verify it, and print the time from issue
    /// to verified.
    #[arg(long)]
    wait: bool,
    /// How long --wait waits.
    #[arg(long, default_value = "120s", value_parser = humantime::parse_duration)]
    timeout: Duration,
    #[command(flatten)]
    allow: ScopeAllowances,
    #[command(flatten)]
    request_id: RequestId,
}

impl Halt {
    /// Issues the halt; with `--wait`, follows it to every supplier and verifies it.
    pub async fn run(self, ctx: &mut Ctx) -> Outcome {
        let issued = Instant::now();
        let cmd = ctx
            .client
            .halt_feature(pb::HaltFeatureRequest {
                name: feature_name(&self.feature),
                scope: Some(scope(&self.scope)?),
                reason: self.reason,
                request_id: self.request_id.into(),
                dry_run: self.dry_run,
                allow_unknown_practices: self.allow.allow_unknown_practices,
                allow_empty_scope: self.allow.allow_empty_scope,
            })
            .await?
            .into_inner();
        ctx.out.print(&cmd)?;
        if !self.wait || self.dry_run {
            return Ok(Exit::Success);
        }
        let watched = watch::follow(ctx, &cmd.name, self.timeout).await?;
        if watched != Exit::Success {
            return Ok(watched);
        }
        let verified = verify::check(ctx, &cmd.name).await?;
        if verified == Exit::Success {
            let elapsed = issued.elapsed().as_millis();
            ctx.out
                .say(format_args!("time to a verified halt: {elapsed} ms"))?;
        }
        Ok(verified)
    }
}
