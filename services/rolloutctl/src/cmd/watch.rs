//! `rolloutctl watch`: a command's delivery, followed until every supplier has answered.

use std::{collections::HashSet, time::Duration};

use clap::Args;
use rollout_proto::v1 as pb;

use super::{Ctx, Exit, Outcome, command_name};
use crate::{
    client::CliError,
    render::{self, Output, short, warn},
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
    /// Follows the command; with JSON, prints its last view.
    pub async fn run(self, ctx: &mut Ctx) -> Outcome {
        let followed = follow(ctx, &command_name(&self.command), self.timeout).await?;
        if let Some(cmd) = &followed.last
            && ctx.out.output() == Output::Json
        {
            ctx.out.print(cmd)?;
        }
        Ok(followed.exit)
    }
}

/// How following a command ended.
#[derive(Debug)]
pub struct Followed {
    /// [`Exit::Success`] when every supplier applied it, [`Exit::CheckFailed`] if one rejected
    /// it, [`Exit::TimedOut`] if the time ran out first.
    pub exit: Exit,
    /// The command as last seen, if it was seen at all.
    pub last: Option<pb::Command>,
}

/// Follows a command until every supplier has answered: a line per supplier as it answers and
/// the count so far (tables only). On a rejection or a timeout, says on standard error which
/// suppliers and what to do next.
pub async fn follow(ctx: &mut Ctx, name: &str, timeout: Duration) -> Result<Followed, CliError> {
    let mut last = None;
    let finished = tokio::time::timeout(timeout, updates(ctx, name, &mut last)).await;
    let exit = match finished {
        Err(_) => {
            warn(timed_out(name, timeout, last.as_ref()));
            Exit::TimedOut
        }
        Ok(result) => {
            result?;
            let rejected: Vec<&str> = last
                .iter()
                .flat_map(|c| &c.deliveries)
                .filter(|d| d.state() == pb::delivery::State::Rejected)
                .map(|d| short(&d.supplier))
                .collect();
            if rejected.is_empty() {
                Exit::Success
            } else {
                warn(format_args!(
                    "rejected by {} (a conflict): see `rolloutctl status` and docs/RUNBOOK.md, \"A supplier rejected a command\"",
                    rejected.join(", ")
                ));
                Exit::CheckFailed
            }
        }
    };
    Ok(Followed { exit, last })
}

/// Reads the command's updates into `last` until every supplier has answered.
async fn updates(ctx: &mut Ctx, name: &str, last: &mut Option<pb::Command>) -> Result<(), CliError> {
    let mut stream = ctx
        .client
        .watch_command(pb::WatchCommandRequest {
            name: name.to_owned(),
        })
        .await?
        .into_inner();
    let mut reported = HashSet::new();
    while let Some(update) = stream.message().await? {
        let Some(cmd) = update.command else { continue };
        if cmd.state() == pb::command::State::PendingApproval {
            ctx.out.progress(format_args!(
                "waiting for approval ({} of {} given): a different person with the approver role runs `rolloutctl approve {}`",
                cmd.approvals.len(),
                cmd.approvals_required,
                short(&cmd.name)
            ))?;
            *last = Some(cmd);
            continue;
        }
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
        *last = Some(cmd);
        if update.complete {
            break;
        }
    }
    Ok(())
}

/// What a timeout says: which suppliers have not answered, why if known, and what to do next.
fn timed_out(name: &str, timeout: Duration, last: Option<&pb::Command>) -> String {
    let waited = humantime::format_duration(timeout);
    let Some(cmd) = last else {
        return format!(
            "timed out after {waited} before the coordinator showed {name}: run `rolloutctl watch {name}` again"
        );
    };
    if cmd.state() == pb::command::State::PendingApproval {
        return format!(
            "timed out after {waited}: {name} is still waiting for approval ({} of {} given); a \
             different person with the approver role runs `rolloutctl approve {}`, then \
             `rolloutctl watch {name}` follows it",
            cmd.approvals.len(),
            cmd.approvals_required,
            short(&cmd.name)
        );
    }
    let pending: Vec<String> = cmd
        .deliveries
        .iter()
        .filter(|d| d.state() == pb::delivery::State::Pending)
        .map(|d| {
            if d.last_error.is_empty() {
                short(&d.supplier).to_owned()
            } else {
                format!("{} (last error: {})", short(&d.supplier), d.last_error)
            }
        })
        .collect();
    format!(
        "timed out after {waited}: {} of {} suppliers have not answered: {}\n\
         the command stands and the coordinator keeps delivering it. Next: `rolloutctl status` \
         shows each supplier's state and last error (docs/RUNBOOK.md, \"A supplier does not \
         acknowledge\"); `rolloutctl watch {name}` follows it again",
        pending.len(),
        cmd.deliveries.len(),
        pending.join(", ")
    )
}
