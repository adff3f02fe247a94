//! Four eyes are two people. A resume or go-live needs approval by someone other than its
//! requester, and several approvals need as many people: the role policy may name the person
//! behind each identity (`person`), so that two certificates of one person (a laptop and a
//! smartcard identity) cannot request and approve each other's command. A command records the
//! person behind its requester and each approval the person behind its approver, as the policy
//! named them then; the policy this process loaded at start is asked too, so that a person
//! named only later (and the coordinator restarted) still counts.

use rollout_net::ApiError;
use rollout_proto::v1 as pb;

use crate::coordinator::{PersonOf, Who};

/// The people behind `identity`: as recorded (`recorded`, empty for none) and as the policy names
/// them now.
fn people(identity: &str, recorded: &str, person_of: PersonOf<'_>) -> Vec<String> {
    let mut people: Vec<String> = person_of(identity).into_iter().collect();
    if !recorded.is_empty() && !people.iter().any(|p| p == recorded) {
        people.push(recorded.to_owned());
    }
    people
}

/// Refuses `approver` for `cmd` when it is the requester, or the requester's person with
/// another certificate (PERMISSION_DENIED `SELF_APPROVAL`), or has already approved it as this
/// identity or another of the same person (FAILED_PRECONDITION `ALREADY_APPROVED`). The
/// ErrorInfo names the person.
pub(crate) fn check(cmd: &pb::Command, approver: &Who, person_of: PersonOf<'_>) -> Result<(), ApiError> {
    let name = &cmd.name;
    let same = |identity: &str, recorded: &str| {
        identity == approver.identity
            || approver
                .person
                .as_ref()
                .is_some_and(|p| people(identity, recorded, person_of).contains(p))
    };
    if same(&cmd.requester, &cmd.requester_person) {
        let by_person = cmd.requester != approver.identity;
        let message = if by_person {
            format!(
                "{name} was requested by {} and {} is the same person: a different person must approve it",
                cmd.requester,
                approver.shown()
            )
        } else {
            format!(
                "{name} was requested by {}; a different person must approve it",
                approver.shown()
            )
        };
        return Err(refusal(
            ApiError::permission_denied("SELF_APPROVAL", message),
            approver,
            &cmd.requester,
        ));
    }
    if let Some(a) = cmd.approvals.iter().find(|a| same(&a.approver, &a.person)) {
        let message = format!(
            "{name} was already approved by {} and {} is the same person: another person must approve it",
            a.approver,
            approver.shown()
        );
        return Err(refusal(
            ApiError::failed_precondition("ALREADY_APPROVED", message),
            approver,
            &a.approver,
        ));
    }
    Ok(())
}

/// The refusal with the approver, the person and the identity it clashes with, as metadata.
fn refusal(e: ApiError, approver: &Who, other: &str) -> ApiError {
    let e = e
        .with_metadata("approver", approver.identity.clone())
        .with_metadata("requester_or_approver", other.to_owned());
    match &approver.person {
        Some(p) => e.with_metadata("person", p.clone()),
        None => e,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ALICE: &str = "spiffe://x/operator/alice";
    const ALICE_CARD: &str = "spiffe://x/operator/alice-card";
    const BOB: &str = "spiffe://x/operator/bob";

    fn who(identity: &str, person: Option<&str>) -> Who {
        Who {
            identity: identity.into(),
            person: person.map(str::to_owned),
        }
    }

    fn pending(requester: &str, recorded: &str, approvals: &[(&str, &str)]) -> pb::Command {
        pb::Command {
            name: "commands/c".into(),
            requester: requester.into(),
            requester_person: recorded.into(),
            approvals: approvals
                .iter()
                .map(|(a, p)| pb::command::Approval {
                    approver: (*a).into(),
                    person: (*p).into(),
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        }
    }

    fn policy(identity: &str) -> Option<String> {
        match identity {
            ALICE | ALICE_CARD => Some("5551234".into()),
            BOB => Some("5559876".into()),
            _ => None,
        }
    }

    fn nobody(_: &str) -> Option<String> {
        None
    }

    fn reason(r: Result<(), ApiError>) -> &'static str {
        r.err().map_or("", |e| e.reason())
    }

    #[test]
    fn one_person_cannot_request_and_approve_with_two_certificates() {
        let alice_card = who(ALICE_CARD, Some("5551234"));
        let bob = who(BOB, Some("5559876"));
        let cmd = pending(ALICE, "5551234", &[]);
        assert_eq!(reason(check(&cmd, &alice_card, &policy)), "SELF_APPROVAL");
        assert_eq!(reason(check(&cmd, &who(ALICE, None), &nobody)), "SELF_APPROVAL");
        assert!(check(&cmd, &bob, &policy).is_ok());
        // Recorded at the request though the policy no longer names it, or named only now.
        assert_eq!(reason(check(&cmd, &alice_card, &nobody)), "SELF_APPROVAL");
        let unrecorded = pending(ALICE, "", &[]);
        assert_eq!(reason(check(&unrecorded, &alice_card, &policy)), "SELF_APPROVAL");
        // A second approval by the person who gave the first, with another certificate.
        let approved = pending(BOB, "5559876", &[(ALICE, "5551234")]);
        assert_eq!(reason(check(&approved, &alice_card, &policy)), "ALREADY_APPROVED");
        assert!(
            check(
                &approved,
                &who("spiffe://x/operator/carol", Some("5550000")),
                &policy
            )
            .is_ok()
        );
    }

    #[test]
    fn the_refusal_names_the_person() {
        let cmd = pending(ALICE, "5551234", &[]);
        let e = check(&cmd, &who(ALICE_CARD, Some("5551234")), &policy).expect_err("refused");
        assert_eq!(e.code(), tonic::Code::PermissionDenied);
        let message = e.to_string();
        assert!(
            message.contains(&format!("{ALICE_CARD} (person 5551234) is the same person")),
            "{message}"
        );
    }
}
