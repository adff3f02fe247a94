//! `rolloutctl halt`: a halt at once, and with `--wait` the time until it is verified.

use std::time::{Duration, Instant};

use clap::Args;
use rollout_proto::v1 as pb;

use super::{Ctx, Exit, Outcome, RequestId, ScopeAllowances, confirm, feature_name, scope, verify, watch};
use crate::{
    client::{CliError, local},
    render::{Output, json_value, warn},
};

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
    /// Wait until every supplier has applied it, verifying each as soon as it has, then verify
    /// it in full and print the time from issue to verified. On a timeout, the partial
    /// verification: each supplier's outcome and what happens meanwhile where it is not
    /// verified (exit 3). With --output name the halt's name is printed once; with --output
    /// json, one document: {"command", "verification", "timeToVerifiedMs"}, with "timedOut":
    /// true on a timeout.
    #[arg(long)]
    wait: bool,
    /// How long --wait waits for every supplier to apply it (the verification after it takes
    /// up to --supplier-timeout more).
    #[arg(long, default_value = "120s", value_parser = humantime::parse_duration)]
    timeout: Duration,
    /// With --wait: how long each supplier has to answer a verification. From 100ms to 30s.
    #[arg(long, default_value = "2s", value_parser = verify::supplier_timeout)]
    supplier_timeout: Duration,
    /// Halt without asking. Without it, at a terminal, a national or supplier-wide halt first
    /// shows what it covers and needs `yes` typed; with standard input not a terminal, nothing
    /// is asked.
    #[arg(long)]
    yes: bool,
    #[command(flatten)]
    allow: ScopeAllowances,
    #[command(flatten)]
    request_id: RequestId,
}

impl Halt {
    /// Issues the halt (after the question, for a wide scope at a terminal); with `--wait`,
    /// follows it to every supplier and verifies it.
    pub async fn run(self, ctx: &mut Ctx) -> Outcome {
        let request = pb::HaltFeatureRequest {
            name: feature_name(&self.feature),
            scope: Some(scope(&self.scope)?),
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
        let issued = Instant::now();
        let cmd = ctx.client.halt_feature(request).await?.into_inner();
        if !self.wait || self.dry_run {
            return ctx.print(&cmd);
        }
        wait_verified(ctx, cmd, issued, self.timeout, self.supplier_timeout).await
    }

    /// Shows the dry run of `request` and asks; an error unless the answer is yes.
    async fn confirm(&self, ctx: &mut Ctx, request: &pb::HaltFeatureRequest) -> Result<(), CliError> {
        let preview = ctx
            .client
            .halt_feature(pb::HaltFeatureRequest {
                dry_run: true,
                request_id: String::new(),
                ..request.clone()
            })
            .await?
            .into_inner();
        ctx.out.preview(&preview)?;
        let question = format!(
            "Halt {} {}: {}?",
            self.feature,
            request.scope.as_ref().map(confirm::said).unwrap_or_default(),
            confirm::covered(&preview)
        );
        if confirm::confirmed(&question)? {
            Ok(())
        } else {
            Err(local("the halt was not issued: nothing was sent"))
        }
    }
}

/// `--wait`: follows the halt to every supplier, verifying each as it applies, then verifies it
/// in full (on a timeout too: the partial verification) and says how long it took. Prints the
/// halt (table), its name once (name), or one JSON document at the end (JSON).
async fn wait_verified(
    ctx: &mut Ctx,
    cmd: pb::Command,
    issued: Instant,
    timeout: Duration,
    supplier_timeout: Duration,
) -> Outcome {
    let output = ctx.out.output();
    if output != Output::Json {
        ctx.out.print(&cmd)?;
    }
    let followed = watch::follow(ctx, &cmd.name, timeout, Some(supplier_timeout)).await?;
    let command = followed.last.unwrap_or(cmd);
    let verification = verify::check(ctx.client.clone(), &command.name, supplier_timeout, &[]).await;
    // Verified is verified, even if a supplier with nothing in scope has not answered yet.
    let exit = match (&verification, followed.exit) {
        (Ok(v), _) if v.verified => Exit::Success,
        (Ok(v), Exit::Success) => verify::exit(v),
        (Err(_), Exit::Success) => Exit::CheckFailed,
        (_, exit) => exit,
    };
    let verification = verification
        .map_err(|e| warn(format_args!("the halt could not be verified: {e}")))
        .ok();
    let elapsed = (exit == Exit::Success).then(|| issued.elapsed().as_millis());
    match output {
        Output::Json => {
            let mut doc = serde_json::json!({ "command": json_value(&command) });
            if let Some(v) = &verification {
                doc["verification"] = json_value(v);
            }
            if let Some(ms) = elapsed {
                doc["timeToVerifiedMs"] = u64::try_from(ms).unwrap_or(u64::MAX).into();
            }
            if exit == Exit::TimedOut {
                doc["timedOut"] = true.into();
            }
            ctx.out
                .line(serde_json::to_string_pretty(&doc).unwrap_or_default())?;
        }
        Output::Table => {
            if let Some(v) = &verification {
                ctx.out.print(v)?;
            }
            if let Some(ms) = elapsed {
                ctx.out.say(format_args!("time to a verified halt: {ms} ms"))?;
            }
        }
        Output::Name => {}
    }
    Ok(exit)
}
