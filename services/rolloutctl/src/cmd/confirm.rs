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

/// What a dry run says the command covers: `6300 practices at 4 suppliers`, and when the
/// coordinator has no endpoint for some of them, `6300 practices at 4 suppliers (300 of them,
/// at microtest, will not be reached: the coordinator has no endpoint there)`.
pub fn covered(dry_run: &pb::Command) -> String {
    let impact = dry_run.impact.clone().unwrap_or_default();
    let mut said = format!(
        "{} practices at {} suppliers",
        impact.practices,
        impact.suppliers.len()
    );
    let undelivered: Vec<&str> = impact
        .suppliers
        .iter()
        .filter(|s| s.not_delivered)
        .map(|s| s.supplier.trim_start_matches("suppliers/"))
        .collect();
    if !undelivered.is_empty() {
        said.push_str(&format!(
            " ({} of them, at {}, will not be reached: the coordinator has no endpoint there)",
            impact.not_delivered_practices,
            undelivered.join(", ")
        ));
    }
    said
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(supplier: &str, practices: i32, not_delivered: bool) -> pb::impact::SupplierImpact {
        pb::impact::SupplierImpact {
            supplier: format!("suppliers/{supplier}"),
            practices,
            not_delivered,
        }
    }

    #[test]
    fn coverage_says_how_many_practices_will_not_be_reached() {
        let mut dry_run = pb::Command {
            impact: Some(pb::Impact {
                practices: 30,
                suppliers: vec![at("emis", 20, false), at("tpp", 10, false)],
                ..Default::default()
            }),
            ..Default::default()
        };
        assert_eq!(covered(&dry_run), "30 practices at 2 suppliers");
        dry_run.impact = Some(pb::Impact {
            practices: 33,
            suppliers: vec![
                at("emis", 20, false),
                at("microtest", 3, true),
                at("tpp", 10, false),
            ],
            not_delivered_practices: 3,
            ..Default::default()
        });
        assert_eq!(
            covered(&dry_run),
            "33 practices at 3 suppliers (3 of them, at microtest, will not be reached: the coordinator has no endpoint there)"
        );
    }
}
