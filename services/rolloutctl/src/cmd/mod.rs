//! The command line: [`Cli`], and one module per command, each an `Args` struct (a
//! `Subcommand` enum for a group such as `feature`) with a `run` that makes the calls and hands
//! the answers to the [`Printer`]. `pki` and `dev` run locally; the operator commands ([`Op`])
//! talk to the coordinator through a [`Ctx`].
//!
//! Exit status ([`Exit`]): 0 success; 1 an error (the message says what to do); 2 a supplier
//! rejected the command, a halt is not verified, or the audit chain is broken; 3 a wait timed
//! out; 64 the command line was not understood (nothing was sent).

pub mod approve;
pub mod audit;
pub mod cancel;
pub mod commands;
pub mod confirm;
pub mod dev;
pub mod feature;
pub mod go_live;
pub mod halt;
pub mod opt_outs;
pub mod pki;
pub mod practice;
pub mod recover;
pub mod redeliver;
pub mod resume;
pub mod status;
pub mod verify;
pub mod watch;

use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};
use rollout_proto::v1 as pb;

use crate::{
    client::{CliError, Client, Connection, local, usage},
    render::{Output, Printer, View, warn},
};

/// How a command ended: its exit status, as README.md and docs/RUNBOOK.md document it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    /// 0: done.
    Success = 0,
    /// 1: an error; the message says what to do.
    Error = 1,
    /// 2: a supplier rejected the command, a halt is not verified, or the audit chain is
    /// broken.
    CheckFailed = 2,
    /// 3: a wait timed out.
    TimedOut = 3,
    /// 64 (`EX_USAGE` of sysexits.h): the command line was not understood (an unknown command
    /// or flag, a missing or malformed argument); nothing was sent. Kept apart from 2, which
    /// scripts read as "rejected, not verified or broken".
    Usage = 64,
}

impl From<Exit> for ExitCode {
    fn from(exit: Exit) -> ExitCode {
        ExitCode::from(exit as u8)
    }
}

/// What a command gives: its exit status, or the failure to report (exit 1).
pub type Outcome = Result<Exit, CliError>;

/// The GP Rollout Control operator CLI.
#[derive(Debug, Parser)]
#[command(
    name = "rolloutctl",
    version,
    about,
    long_about = None,
    after_help = "Exit status: 0 success; 1 an error (the message says what to do); 2 a supplier \
        rejected the command, a halt is not verified, or the audit chain is broken; 3 a wait \
        timed out; 64 the command line was not understood (nothing was sent)."
)]
pub struct Cli {
    #[command(flatten)]
    connection: Connection,
    /// Output format of read commands.
    #[arg(
        long,
        global = true,
        env = "ROLLOUT_OUTPUT",
        value_enum,
        default_value = "table"
    )]
    output: Output,
    #[command(subcommand)]
    command: Cmd,
}

/// A command.
#[derive(Debug, Subcommand)]
enum Cmd {
    /// The development PKI for a local stack and tests.
    #[command(subcommand)]
    Pki(pki::Pki),
    /// The local development stack.
    #[command(subcommand)]
    Dev(dev::Dev),
    #[command(flatten)]
    Op(Op),
}

/// An operator command: a call, or a few, to the coordinator.
#[derive(Debug, Subcommand)]
pub enum Op {
    /// Feature definitions.
    #[command(subcommand)]
    Feature(feature::Feature),
    /// Halt a feature in a scope, at once and until further notice.
    Halt(halt::Halt),
    /// Ask to lift halts (waits for approval by a different person).
    Resume(resume::Resume),
    /// Ask to switch a feature on in a scope (waits for approval by a different person).
    GoLive(go_live::GoLive),
    /// Approve a pending command (you must hold the approver role and not be its requester).
    Approve(approve::Approve),
    /// Withdraw a command still waiting for approval.
    Cancel(cancel::Cancel),
    /// Commands.
    #[command(subcommand)]
    Commands(commands::Commands),
    /// Follow a command's delivery until every supplier has answered. Exits 2 if a supplier
    /// rejected it, 3 on timeout.
    Watch(watch::Watch),
    /// Every supplier and whether it is in sync, then its practices' counts per feature as it
    /// last counted them, with how long ago.
    Status(status::Status),
    /// Each supplier's outcome for a halt (VERIFIED, NOT VERIFIED with the practices still
    /// enabled, NOT APPLIED, UNREACHABLE, NOT DELIVERED) and what happens meanwhile. Exits 2
    /// unless verified.
    Verify(verify::Verify),
    /// A practice's live, explained answer from its supplier.
    #[command(subcommand)]
    Practice(practice::Practice),
    /// The coordinator's audit log (role auditor).
    #[command(subcommand)]
    Audit(audit::Audit),
    /// Recover into the coordinator's log the commands a DIVERGED supplier holds beyond it
    /// (after the coordinator was restored from an older backup). Run with --dry-run first to
    /// see what would be recovered.
    Recover(recover::Recover),
    /// Deliver a command a supplier rejected (during its change freeze) again, to that
    /// supplier alone, once the freeze has ended: a new command that waits for approval as the
    /// original did.
    Redeliver(redeliver::Redeliver),
    /// The national opt-out register: every practice's opt-out as its supplier reported it,
    /// with counts per supplier and feature.
    OptOuts(opt_outs::OptOuts),
}

/// What an operator command runs with.
#[derive(Debug)]
pub struct Ctx {
    /// The coordinator.
    pub client: Client,
    /// Where the answers go.
    pub out: Printer,
}

impl Ctx {
    /// Prints the answer of a command that has nothing more to say: it succeeded.
    pub fn print(&mut self, answer: &impl View) -> Outcome {
        self.out.print(answer)?;
        Ok(Exit::Success)
    }
}

/// The program: parses the command line and runs the command. A command line clap cannot
/// parse exits [`Exit::Usage`] (clap's own default, 2, would read as "rejected"); `--help` and
/// `--version` exit 0.
pub fn main() -> ExitCode {
    match Cli::try_parse() {
        Ok(cli) => cli.run(),
        Err(e) => {
            let _ = e.print();
            if e.use_stderr() {
                Exit::Usage.into()
            } else {
                Exit::Success.into()
            }
        }
    }
}

impl Cli {
    /// Runs the command and gives its exit status; a failure is reported on standard error.
    pub fn run(self) -> ExitCode {
        let mut out = Printer::stdout(self.output);
        let outcome = match self.command {
            Cmd::Pki(c) => c.run(&mut out),
            Cmd::Dev(c) => block_on(c.run()),
            Cmd::Op(op) => block_on(op.run(&self.connection, out)),
        };
        match outcome {
            Ok(exit) => exit.into(),
            Err(e) if e.is_closed_output() => Exit::Success.into(),
            Err(e @ CliError::Usage(_)) => {
                warn(format_args!("error: {e}\n\nFor more information, try '--help'."));
                Exit::Usage.into()
            }
            Err(e) => {
                warn(format_args!("error: {e}"));
                Exit::Error.into()
            }
        }
    }
}

impl Op {
    /// Connects to the coordinator and runs the command; the coordinator's errors explained.
    pub async fn run(self, connection: &Connection, out: Printer) -> Outcome {
        let ctx = &mut Ctx {
            client: connection.client()?,
            out,
        };
        let outcome = match self {
            Op::Feature(c) => c.run(ctx).await,
            Op::Halt(c) => c.run(ctx).await,
            Op::Resume(c) => c.run(ctx).await,
            Op::GoLive(c) => c.run(ctx).await,
            Op::Approve(c) => c.run(ctx).await,
            Op::Cancel(c) => c.run(ctx).await,
            Op::Commands(c) => c.run(ctx).await,
            Op::Watch(c) => c.run(ctx).await,
            Op::Status(c) => c.run(ctx).await,
            Op::Verify(c) => c.run(ctx).await,
            Op::Practice(c) => c.run(ctx).await,
            Op::Audit(c) => c.run(ctx).await,
            Op::Recover(c) => c.run(ctx).await,
            Op::Redeliver(c) => c.run(ctx).await,
            Op::OptOuts(c) => c.run(ctx).await,
        };
        outcome.map_err(|e| e.explained(connection))
    }
}

fn block_on(f: impl Future<Output = Outcome>) -> Outcome {
    rollout_net::tls::install_crypto_provider();
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| local(format!("cannot start the runtime: {e}")))?
        .block_on(f)
}

/// `--request-id`, taken by every command that changes something.
#[derive(Debug, Clone, Args)]
pub struct RequestId {
    /// Idempotency key (UUID4): a retry with the same id returns the first result instead of
    /// doing it twice.
    #[arg(long = "request-id", value_name = "UUID", value_parser = uuid_v4)]
    request_id: Option<String>,
}

/// A request id as the services accept it: a UUID version 4, sent in hyphenated form.
fn uuid_v4(s: &str) -> Result<String, String> {
    match rollout_net::wire::request_id("request_id", s) {
        Ok(Some(id)) => Ok(id),
        Ok(None) => Err("is empty: give a UUID version 4, or leave --request-id out".into()),
        Err(e) => Err(e.message().to_owned()),
    }
}

impl From<RequestId> for String {
    /// The key as sent: empty when none was given.
    fn from(id: RequestId) -> String {
        id.request_id.unwrap_or_default()
    }
}

/// `--allow-unknown-practices` and `--allow-empty-scope`, taken by halt and go-live.
#[derive(Debug, Clone, Copy, Args)]
pub struct ScopeAllowances {
    /// Accept practice codes the national estate does not know (practices about to open); the
    /// impact names them. Without it the command is refused and the codes are named.
    #[arg(long)]
    allow_unknown_practices: bool,
    /// Accept a scope that covers no active practice today. Without it such a command is
    /// refused: a scope that covers nothing is nearly always a typo.
    #[arg(long)]
    allow_empty_scope: bool,
}

/// A feature's resource name from its key.
fn feature_name(key: &str) -> String {
    format!("features/{key}")
}

/// A command's resource name from its id or name.
fn command_name(id: &str) -> String {
    if id.starts_with("commands/") {
        id.to_owned()
    } else {
        format!("commands/{id}")
    }
}

/// A scope as operators write it: `national`, `supplier:ID`, `region:CODE`, `icb:CODE`,
/// `sub-icb:CODE`, `practices:ODS,ODS`.
fn scope(s: &str) -> Result<pb::Scope, CliError> {
    use pb::scope::Target;
    let (kind, value) = s.split_once(':').unwrap_or((s, ""));
    let target = match kind {
        "national" if value.is_empty() => Target::National(pb::scope::National {}),
        "supplier" => Target::Supplier(value.into()),
        "region" => Target::Region(value.into()),
        "icb" => Target::Icb(value.into()),
        "sub-icb" => Target::SubIcb(value.into()),
        "practices" => Target::Practices(pb::scope::PracticeList {
            practices: value
                .split(',')
                .map(|p| p.trim().to_owned())
                .filter(|p| !p.is_empty())
                .collect(),
        }),
        _ => {
            return Err(usage(format!(
                "scope {s:?} not understood: use national, supplier:ID, region:CODE, icb:CODE, sub-icb:CODE or practices:ODS,ODS"
            )));
        }
    };
    let scope = pb::Scope { target: Some(target) };
    // Checked here as the services check it, so a malformed code is a usage error and nothing
    // is sent; a region code is left to the coordinator, which names the closest known ones.
    if !matches!(scope.target, Some(Target::Region(_))) {
        rollout_net::wire::scope("scope", Some(&scope))
            .map_err(|e| usage(format!("--scope {s:?}: {}", e.message())))?;
    }
    Ok(scope)
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    use super::*;

    #[test]
    fn the_command_line_is_well_formed() {
        Cli::command().debug_assert();
    }

    #[test]
    fn every_command_that_changes_something_takes_a_request_id() {
        let id = "--request-id=0b6f6a4e-8a0f-4c43-9a57-3f3b0f1c2d4e";
        for args in [
            &["feature", "create", "f", "--fail-mode", "static", "--reason", "r"][..],
            &["halt", "f", "--scope", "national", "--reason", "r"],
            &["resume", "f", "--halt", "h", "--reason", "r"],
            &["go-live", "f", "--scope", "national", "--reason", "r"],
            &["approve", "c"],
            &["cancel", "c", "--reason", "r"],
            &["recover", "--from", "emis", "--reason", "r"],
        ] {
            let line = std::iter::once("rolloutctl").chain(args.iter().copied());
            let parsed = Cli::try_parse_from(line.chain([id]));
            assert!(parsed.is_ok(), "{args:?}: {}", parsed.expect_err("refused"));
        }
    }

    #[test]
    fn scopes_are_read_as_operators_write_them() {
        use pb::scope::Target;
        let target = |s| scope(s).expect("a scope").target.expect("a target");
        assert_eq!(target("national"), Target::National(pb::scope::National {}));
        assert_eq!(target("icb:QN7"), Target::Icb("QN7".into()));
        assert_eq!(
            target("practices:A81001, A81002,"),
            Target::Practices(pb::scope::PracticeList {
                practices: vec!["A81001".into(), "A81002".into()]
            })
        );
        let refused = scope("county:kent").expect_err("refused").to_string();
        assert!(refused.contains("use national, supplier:ID"), "{refused}");
    }
}
