//! `rolloutctl watch`: a command's delivery, followed until every supplier has answered.

use std::{collections::HashSet, time::Duration};

use clap::Args;
use rollout_proto::v1 as pb;

use super::{Ctx, Exit, Outcome, command_name};
use crate::{
    client::CliError,
    render::{self, Output, warn},
};

/// `watch`.
#[derive(Debug, Args)]
pub struct Watch {
    /// The command id.
    command: String,
    /// How long to wait.
    #[arg(long, default_value = "120s", value_parser = humantime::parse_duration)]
    timeout: Duration,
}

impl Watch {
    /// Follows the command.
    pub async fn run(self, ctx: &mut Ctx) -> Outcome {
        follow(ctx, &command_name(&self.command), self.timeout).await
    }
}

/// Follows a command until every supplier has answered: a line per supplier as it answers and
/// the count so far (tables only), then the last view (JSON only). [`Exit::CheckFailed`] if a
/// supplier rejected it, [`Exit::TimedOut`] if `timeout` passed first.
pub async fn follow(ctx: &mut Ctx, name: &str, timeout: Duration) -> Outcome {
    let updates = async {
        let mut stream = ctx
            .client
            .watch_command(pb::WatchCommandRequest {
                name: name.to_owned(),
            })
            .await?
            .into_inner();
        let mut last = None;
        let mut reported = HashSet::new();
        while let Some(update) = stream.message().await? {
            let Some(cmd) = update.command else { continue };
            let answered: Vec<&pb::Delivery> = cmd
                .deliveries
                .iter()
                .filter(|d| d.state() != pb::delivery::State::Pending)
                .collect();
            for d in &answered {
                if reported.insert(d.supplier.clone()) {
                    ctx.out.progress(render::answered(d))?;
                }
            }
            ctx.out.progress(format_args!(
                "{}/{} suppliers answered",
                answered.len(),
                cmd.deliveries.len()
            ))?;
            last = Some(cmd);
            if update.complete {
                break;
            }
        }
        Ok::<_, CliError>(last)
    };
    let Ok(last) = tokio::time::timeout(timeout, updates).await else {
        warn(format_args!(
            "timed out after {} waiting for every supplier to answer",
            humantime::format_duration(timeout)
        ));
        return Ok(Exit::TimedOut);
    };
    let Some(cmd) = last? else {
        return Ok(Exit::Success);
    };
    if ctx.out.output() == Output::Json {
        ctx.out.print(&cmd)?;
    }
    let rejected = cmd
        .deliveries
        .iter()
        .any(|d| d.state() == pb::delivery::State::Rejected);
    if rejected {
        warn("at least one supplier rejected the command (a conflict): see `rolloutctl status`");
        return Ok(Exit::CheckFailed);
    }
    Ok(Exit::Success)
}
