//! What to do about a failed call, said once, at the dispatch
//! ([`CliError::explained`](crate::client::CliError::explained)): the coordinator's refusal
//! with its `google.rpc.ErrorInfo` reason, its `BadRequest` field violations and a hint chosen
//! by the reason; or a connection that failed, with its real cause (`connection.rs`: refused,
//! unreachable, a certificate not valid for the name dialled, expired, or from an unknown CA)
//! and certificate dates in words.

mod connection;

use std::path::Path;

use tonic::{Code, Status};
use tonic_types::StatusExt;

/// What is known of where the call went: the address dialled and the files used.
#[derive(Debug, Clone, Copy)]
pub struct Target<'a> {
    /// The coordinator's address as given (`host:port`).
    pub coordinator: &'a str,
    /// The CA bundle the coordinator's certificate must chain to, if known.
    pub ca: Option<&'a Path>,
    /// The client certificate presented, if known.
    pub cert: Option<&'a Path>,
}

/// A failure in words. A connection that failed: `cannot connect to HOST:PORT: what` and a
/// hint naming the cause. A refusal: `Code (REASON): message`, the field violations the
/// message does not already say, and a hint where one helps.
pub fn explain(status: &Status, target: Target<'_>) -> String {
    if let Some(failed) = connection::failed(status, target) {
        return failed;
    }
    let details = status.get_error_details();
    let reason = details
        .error_info()
        .map(|i| i.reason.as_str())
        .filter(|r| !r.is_empty());
    let message = if status.message().is_empty() {
        status.to_string()
    } else {
        status.message().to_owned()
    };
    let mut text = format!(
        "{:?}{}: {message}",
        status.code(),
        reason.map(|r| format!(" ({r})")).unwrap_or_default()
    );
    let violations = details.bad_request().map(|b| b.field_violations.clone());
    for v in violations.unwrap_or_default() {
        if !message.contains(&v.description) {
            text.push_str(&format!("\n  {}: {}", v.field, v.description));
        }
    }
    // A refusal with a reason came from the coordinator itself: the hints by code (is it
    // running? which role?) are for answers without one.
    let hint = match reason {
        Some(reason) => reason_hint(reason).map(str::to_owned),
        None => code_hint(status.code(), target),
    };
    if let Some(hint) = hint {
        text.push_str("\nhint: ");
        text.push_str(&hint);
    }
    text
}

/// The hint for a refusal, by its ErrorInfo reason.
fn reason_hint(reason: &str) -> Option<&'static str> {
    Some(match reason {
        "SELF_APPROVAL" => {
            "you asked for this command (with this certificate or another of yours), so a different person must approve it: someone else holding the approver role runs `rolloutctl approve`"
        }
        "ALREADY_APPROVED" => {
            "your approval is recorded (perhaps with another of your certificates); a different person must give the next one"
        }
        "ROLE_REQUIRED" => {
            "use a certificate whose identity holds the role this needs (--as, --cert/--key); the message names the role"
        }
        "IDENTITY_NOT_ALLOWED" => {
            "your certificate's identity is not in the coordinator's role policy: ask for it to be added, or use another certificate (--as, --cert/--key)"
        }
        "UNKNOWN_PRACTICE" => {
            "check the practice codes; if they are practices the national estate does not know yet (about to open), add --allow-unknown-practices"
        }
        "EMPTY_SCOPE" => {
            "the scope covers no active practice today, which is nearly always a typo: check it; to issue it anyway, add --allow-empty-scope"
        }
        "FEATURE_NOT_FOUND" => {
            "`rolloutctl feature list` shows the features defined; `rolloutctl feature create` defines one (docs/RUNBOOK.md, \"Define a feature\")"
        }
        "SUPPLIER_UNAVAILABLE" | "SUPPLIER_UNREACHABLE" => {
            "the coordinator is up but could not reach that supplier: `rolloutctl status` shows its state and last error (docs/RUNBOOK.md, \"A supplier does not acknowledge\")"
        }
        "SUPPLIER_DIVERGED" => {
            "recover the coordinator's log first: `rolloutctl recover --from SUPPLIER --reason \"...\" --dry-run` (docs/RUNBOOK.md, \"Restored the coordinator from a backup\")"
        }
        "TOO_MANY_WATCH_STREAMS" | "TOO_MANY_CONCURRENT_CALLS" => {
            "your identity holds as many of these open as the coordinator allows one identity (the message says how many): let some finish or stop them, then try again (docs/RUNBOOK.md, \"A call refused for a budget\")"
        }
        "TOO_MANY_STREAMS_ON_CONNECTION" => {
            "the connection held as many calls and streams as the coordinator allows one connection: a client with that many open needs more connections (docs/RUNBOOK.md, \"A call refused for a budget\")"
        }
        _ => return None,
    })
}

/// The hint for a code whose reason has none.
fn code_hint(code: Code, target: Target<'_>) -> Option<String> {
    match code {
        Code::Unavailable => Some(format!(
            "is the coordinator running at {}? (`rolloutctl dev up` starts a local stack; --coordinator or ROLLOUT_COORDINATOR sets the address)",
            target.coordinator
        )),
        Code::PermissionDenied => {
            Some("use a certificate whose identity holds the role this needs (--as, --cert/--key)".into())
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use tonic_types::{ErrorDetails, FieldViolation};

    use super::*;

    const TARGET: Target<'static> = Target {
        coordinator: "localhost:50050",
        ca: None,
        cert: None,
    };

    fn refusal(code: Code, reason: &str, message: &str, violations: &[(&str, &str)]) -> Status {
        let mut details = ErrorDetails::with_error_info(reason, "gprollout.nhs.uk", HashMap::new());
        if !violations.is_empty() {
            details.set_bad_request(
                violations
                    .iter()
                    .map(|(f, d)| FieldViolation::new(*f, *d))
                    .collect::<Vec<_>>(),
            );
        }
        Status::with_error_details(code, message, details)
    }

    #[test]
    fn field_violations_are_printed_with_the_hint_of_the_reason() {
        let status = refusal(
            Code::InvalidArgument,
            "EMPTY_SCOPE",
            "the scope covers no active practice",
            &[("scope.supplier", "no supplier `emiss`; did you mean `emis`?")],
        );
        let text = explain(&status, TARGET);
        assert!(
            text.starts_with("InvalidArgument (EMPTY_SCOPE): the scope covers no active practice\n"),
            "{text}"
        );
        assert!(
            text.contains("\n  scope.supplier: no supplier `emiss`; did you mean `emis`?\n"),
            "{text}"
        );
        assert!(text.ends_with("add --allow-empty-scope"), "{text}");
        let unknown = refusal(Code::InvalidArgument, "UNKNOWN_PRACTICE", "unknown", &[]);
        assert!(explain(&unknown, TARGET).contains("--allow-unknown-practices"));
    }

    #[test]
    fn a_violation_the_message_already_says_is_not_repeated() {
        let status = refusal(
            Code::InvalidArgument,
            "INVALID_FIELD",
            "scope.practices[0]: practice code \"X1\" is not valid",
            &[("scope.practices[0]", "practice code \"X1\" is not valid")],
        );
        assert_eq!(explain(&status, TARGET).lines().count(), 1);
    }

    #[test]
    fn a_supplier_the_coordinator_cannot_reach_is_not_blamed_on_the_coordinator() {
        let status = refusal(
            Code::Unavailable,
            "SUPPLIER_UNAVAILABLE",
            "tpp did not answer",
            &[],
        );
        let text = explain(&status, TARGET);
        assert!(text.contains("could not reach that supplier"), "{text}");
        assert!(!text.contains("is the coordinator running"), "{text}");
    }

    #[test]
    fn a_budget_refusal_says_to_let_some_finish_not_to_ask_for_a_role() {
        let status = refusal(
            Code::ResourceExhausted,
            "TOO_MANY_WATCH_STREAMS",
            "identity viewer already has 100 WatchCommand streams open",
            &[],
        );
        let text = explain(&status, TARGET);
        assert!(text.contains("let some finish or stop them"), "{text}");
        assert!(text.contains("A call refused for a budget"), "{text}");
    }

    #[test]
    fn self_approval_asks_for_a_different_approver_not_another_role() {
        let status = refusal(Code::PermissionDenied, "SELF_APPROVAL", "requested by alice", &[]);
        let text = explain(&status, TARGET);
        assert!(text.contains("a different person must approve it"), "{text}");
        assert!(!text.contains("holds the role"), "{text}");
    }
}
