//! `rolloutctl watch`: a command's delivery, followed until every supplier has answered.

use std::{collections::HashSet, time::Duration};

use tokio::task::JoinSet;

use clap::Args;
use rollout_proto::v1 as pb;

use super::{Ctx, Exit, Outcome, command_name, verify};
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
        let followed = follow(ctx, &command_name(&self.command), self.timeout, None).await?;
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
/// the count so far (tables only). With `verify_each` (a halt), each supplier that applied it
/// is verified as soon as it has, each given that long to answer, and its outcome printed.
/// On a rejection or a timeout, says on standard error which suppliers and what to do next.
pub async fn follow(
    ctx: &mut Ctx,
    name: &str,
    timeout: Duration,
    verify_each: Option<Duration>,
) -> Result<Followed, CliError> {
    let mut last = None;
    let finished = tokio::time::timeout(timeout, updates(ctx, name, &mut last, verify_each)).await;
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

/// Reads the command's updates into `last` until every supplier has answered, verifying the
/// suppliers that applied it with `verify_each`: one VerifyCommand at a time (the coordinator
/// holds each identity to a few at once), naming every supplier that applied since the last.
async fn updates(
    ctx: &mut Ctx,
    name: &str,
    last: &mut Option<pb::Command>,
    verify_each: Option<Duration>,
) -> Result<(), CliError> {
    let mut stream = ctx
        .client
        .watch_command(pb::WatchCommandRequest {
            name: name.to_owned(),
        })
        .await?
        .into_inner();
    let mut reported = HashSet::new();
    let mut applied = Vec::new();
    let mut checks = JoinSet::new();
    let mut complete = false;
    while !complete || !checks.is_empty() || !applied.is_empty() {
        if let Some(timeout) = verify_each
            && checks.is_empty()
            && !applied.is_empty()
        {
            let suppliers = std::mem::take(&mut applied);
            let (client, name) = (ctx.client.clone(), name.to_owned());
            checks.spawn(async move {
                let checked = verify_now(client, &name, timeout, &suppliers).await;
                (suppliers, checked)
            });
        }
        tokio::select! {
            Some(checked) = checks.join_next(), if !checks.is_empty() => match checked {
                Ok((_, Ok(r))) => {
                    for s in &r.suppliers {
                        ctx.out.progress(render::supplier_verified(s))?;
                    }
                }
                Ok((suppliers, Err(e))) => ctx.out.progress(format_args!(
                    "could not verify {} yet ({e}); the verification at the end covers it",
                    suppliers.iter().map(|s| short(s)).collect::<Vec<_>>().join(", ")
                ))?,
                Err(e) => ctx.out.progress(format_args!("could not verify yet ({e}); the verification at the end covers it"))?,
            },
            message = stream.message(), if !complete => {
                let Some(update) = message? else { break };
                let Some(cmd) = update.command else { continue };
                complete = update.complete;
                let newly = progress(ctx, &cmd, &mut reported)?;
                if verify_each.is_some() {
                    applied.extend(newly);
                }
                *last = Some(cmd);
            }
        }
    }
    Ok(())
}

/// Verifies `name` at `suppliers`, waiting for a turn while the caller's VerifyCommand budget
/// is spent (another `verify` of the same operator running): up to five tries over about 4 s.
/// The error in one line when it cannot.
async fn verify_now(
    client: crate::client::Client,
    name: &str,
    timeout: Duration,
    suppliers: &[String],
) -> Result<pb::VerifyCommandResponse, String> {
    let mut pause = Duration::from_millis(250);
    for _ in 0..5 {
        match verify::check(client.clone(), name, timeout, suppliers).await {
            Ok(r) => return Ok(r),
            Err(CliError::Status(s)) if s.code() == tonic::Code::ResourceExhausted => {
                tokio::time::sleep(pause).await;
                pause *= 2;
            }
            Err(CliError::Status(s)) => return Err(format!("{:?}: {}", s.code(), s.message())),
            Err(e) => return Err(e.to_string()),
        }
    }
    Err("the coordinator refused it each time: this identity's VerifyCommand calls are all in use".into())
}

/// Prints a command update for people: waiting for approval, or a line per supplier that has
/// answered since the last (`reported` holds those already printed) and the count so far.
/// Returns the suppliers newly seen to have applied it.
fn progress(
    ctx: &mut Ctx,
    cmd: &pb::Command,
    reported: &mut HashSet<String>,
) -> Result<Vec<String>, CliError> {
    if cmd.state() == pb::command::State::PendingApproval {
        ctx.out.progress(format_args!(
            "waiting for approval ({} of {} given): a different person with the approver role runs `rolloutctl approve {}`",
            cmd.approvals.len(),
            cmd.approvals_required,
            short(&cmd.name)
        ))?;
        return Ok(Vec::new());
    }
    let answered: Vec<&pb::Delivery> = cmd
        .deliveries
        .iter()
        .filter(|d| d.state() != pb::delivery::State::Pending)
        .collect();
    let mut applied = Vec::new();
    for d in &answered {
        if reported.insert(d.supplier.clone()) {
            ctx.out.progress(render::answered(d))?;
            if d.state() == pb::delivery::State::Applied {
                applied.push(d.supplier.clone());
            }
        }
    }
    ctx.out.progress(format_args!(
        "{}/{} suppliers answered",
        answered.len(),
        cmd.deliveries.len()
    ))?;
    Ok(applied)
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
