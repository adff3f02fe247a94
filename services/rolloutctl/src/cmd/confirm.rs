//! The question asked at a terminal before a command with a wide effect: `approve`, and a
//! `halt` or `go-live` of a national or supplier-wide scope. The command first shows what it
//! would do (the command waiting for approval, or the dry run's impact and preview), then asks
//! for `yes`. Only at a terminal: with standard input not a terminal (a script, a pipe, a CI
//! job) nothing is asked and the command goes ahead, as `--yes` does.

use std::io::{BufRead, IsTerminal, Write};

use rollout_proto::v1 as pb;

/// Whether to ask: `--yes` was not given and standard input is a terminal.
pub fn asks(yes: bool) -> bool {
    !yes && std::io::stdin().is_terminal()
}

/// Asks `question` on standard error and reads the answer from standard input; only `yes`
/// agrees.
pub fn confirmed(question: &str) -> std::io::Result<bool> {
    let mut err = std::io::stderr();
    write!(err, "{question} Type yes to go ahead: ")?;
    err.flush()?;
    let mut answer = String::new();
    std::io::stdin().lock().read_line(&mut answer)?;
    Ok(answer.trim() == "yes")
}

/// Whether a scope is wide enough to ask about: national, or a whole supplier.
pub fn wide(scope: &pb::Scope) -> bool {
    use pb::scope::Target;
    matches!(
        scope.target,
        Some(Target::National(_)) | Some(Target::Supplier(_))
    )
}

/// The scope in words for the question: `nationally`, `at every practice of tpp`.
pub fn said(scope: &pb::Scope) -> String {
    use pb::scope::Target;
    match &scope.target {
        Some(Target::Supplier(s)) => format!("at every practice of {s}"),
        _ => "nationally".to_owned(),
    }
}

/// What a dry run says the command covers: `6300 practices at 4 suppliers`.
pub fn covered(dry_run: &pb::Command) -> String {
    let impact = dry_run.impact.clone().unwrap_or_default();
    format!(
        "{} practices at {} suppliers",
        impact.practices,
        impact.suppliers.len()
    )
}
