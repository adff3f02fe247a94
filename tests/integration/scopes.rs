//! Scopes that match what the operator meant: a scope naming a supplier, region, ICB or
//! sub-ICB the national estate does not know is refused with the closest known codes, unknown
//! practice codes are named, a scope that covers nothing is refused unless allowed, and verify
//! never calls a halt that covers nothing, or one that was lifted, VERIFIED.

use rollout_core::PracticeStatus;
use rollout_proto::v1::{self as pb, coordinator_service_client::CoordinatorServiceClient};
use tonic::{Code, Status, transport::Channel};
use tonic_types::StatusExt;

use crate::{
    stack::{Stack, audit_events, delivered, feature_live},
    support::{FEATURE, assert_refused, feature_name},
};

fn target(t: pb::scope::Target) -> Option<pb::Scope> {
    Some(pb::Scope { target: Some(t) })
}

fn list(codes: &[&str]) -> Option<pb::Scope> {
    target(pb::scope::Target::Practices(pb::scope::PracticeList {
        practices: codes.iter().map(ToString::to_string).collect(),
    }))
}

/// One unknown scope target and what the refusal must say.
struct UnknownTarget {
    scope: pb::scope::Target,
    field: &'static str,
    suggests: &'static str,
}

fn unknown_targets() -> [UnknownTarget; 4] {
    [
        UnknownTarget {
            scope: pb::scope::Target::Region("Y57".into()),
            field: "scope.region",
            suggests: "did you mean one of Y56, Y58",
        },
        UnknownTarget {
            scope: pb::scope::Target::Supplier("emiss".into()),
            field: "scope.supplier",
            suggests: "did you mean emis?",
        },
        UnknownTarget {
            scope: pb::scope::Target::Icb("QZZ".into()),
            field: "scope.icb",
            suggests: "QZ5, QZI",
        },
        UnknownTarget {
            scope: pb::scope::Target::SubIcb("99Z".into()),
            field: "scope.sub_icb",
            suggests: "did you mean",
        },
    ]
}

#[track_caller]
fn assert_violation(status: &Status, field: &str, says: &str) {
    let details = status.get_error_details();
    let violations = &details.bad_request().expect("a BadRequest").field_violations;
    assert!(
        violations
            .iter()
            .any(|v| v.field == field && v.description.contains(says)),
        "a violation of {field} saying {says:?}: {violations:?}"
    );
}

async fn halt(
    alice: &mut CoordinatorServiceClient<Channel>,
    scope: Option<pb::Scope>,
    dry_run: bool,
    allow_unknown_practices: bool,
    allow_empty_scope: bool,
) -> Result<pb::Command, Status> {
    alice
        .halt_feature(pb::HaltFeatureRequest {
            name: feature_name(),
            scope,
            reason: "letter from NHS England".into(),
            dry_run,
            allow_unknown_practices,
            allow_empty_scope,
            ..Default::default()
        })
        .await
        .map(tonic::Response::into_inner)
}

async fn verify(stack: &Stack, name: &str) -> pb::VerifyCommandResponse {
    stack
        .client("viewer")
        .verify_command(pb::VerifyCommandRequest {
            name: name.into(),
            ..Default::default()
        })
        .await
        .expect("verify")
        .into_inner()
}

async fn commands(stack: &Stack) -> usize {
    stack
        .client("viewer")
        .list_commands(pb::ListCommandsRequest {
            page_size: 500,
            ..Default::default()
        })
        .await
        .expect("list")
        .into_inner()
        .commands
        .len()
}

#[tokio::test]
async fn every_unknown_scope_target_is_refused_with_the_closest_known_codes() {
    let stack = Stack::start(None).await;
    feature_live(&stack).await;
    let before = commands(&stack).await;
    let mut alice = stack.client("alice");
    for row in unknown_targets() {
        for dry_run in [true, false] {
            let refused = halt(&mut alice, target(row.scope.clone()), dry_run, true, true)
                .await
                .expect_err("an unknown target is refused, whatever is allowed");
            assert_refused(&refused, Code::InvalidArgument, "UNKNOWN_SCOPE_TARGET", row.field);
            assert_violation(&refused, row.field, row.suggests);
        }
        let go_live = alice
            .schedule_go_live(pb::ScheduleGoLiveRequest {
                name: feature_name(),
                scope: target(row.scope.clone()),
                reason: "go live".into(),
                ..Default::default()
            })
            .await
            .expect_err("a go-live to an unknown target is refused");
        assert_refused(&go_live, Code::InvalidArgument, "UNKNOWN_SCOPE_TARGET", row.field);
    }
    assert_eq!(commands(&stack).await, before, "nothing was saved or sent");
    let refusals = audit_events(&stack)
        .await
        .into_iter()
        .filter(|e| {
            e.outcome() == pb::audit_event::Outcome::Refused && e.reason.contains("UNKNOWN_SCOPE_TARGET")
        })
        .count();
    assert_eq!(
        refusals, 8,
        "each refused halt and go-live is audited (dry runs are not)"
    );
    stack.stop().await;
}

#[tokio::test]
async fn unknown_practice_codes_are_named_and_allowed_only_when_asked() {
    let stack = Stack::start(None).await;
    feature_live(&stack).await;
    let known = stack.practice_of("emis");
    let mut alice = stack.client("alice");

    let refused = halt(&mut alice, list(&[&known, "Z12345"]), true, false, false)
        .await
        .expect_err("a dry run with an unknown code is refused");
    assert_refused(&refused, Code::InvalidArgument, "UNKNOWN_PRACTICE", "mixed list");
    assert!(refused.message().contains("Z12345"), "{}", refused.message());
    assert_violation(
        &refused,
        "scope.practices.practices",
        "Z12345 is not in the national estate",
    );

    let refused = halt(&mut alice, list(&["Z12345", "Z12346"]), false, false, false)
        .await
        .expect_err("an all-unknown list is refused");
    assert_refused(
        &refused,
        Code::InvalidArgument,
        "UNKNOWN_PRACTICE",
        "all-unknown list",
    );
    assert!(
        refused.message().contains("2 of the 2 practices"),
        "{}",
        refused.message()
    );

    let allowed = halt(&mut alice, list(&[&known, "Z12345"]), true, true, false)
        .await
        .expect("allowed explicitly");
    let impact = allowed.impact.expect("impact");
    assert_eq!(impact.unknown_practices, ["Z12345"]);
    assert_eq!(impact.practices, 1, "the known practice is covered");
    stack.stop().await;
}

#[tokio::test]
async fn a_halt_that_covers_nothing_is_refused_unless_allowed_and_never_verifies() {
    let stack = Stack::start(None).await;
    feature_live(&stack).await;
    let closed = stack
        .estate
        .practices()
        .find(|p| p.status == PracticeStatus::Closed)
        .expect("a closed practice")
        .ods
        .to_string();
    let mut alice = stack.client("alice");

    let refused = halt(&mut alice, list(&[&closed]), false, false, false)
        .await
        .expect_err("a scope covering no active practice is refused");
    assert_refused(
        &refused,
        Code::FailedPrecondition,
        "EMPTY_SCOPE",
        "closed practice",
    );

    let h = halt(&mut alice, list(&[&closed]), false, false, true)
        .await
        .expect("allowed explicitly");
    delivered(&stack, &h.name).await;
    let v = verify(&stack, &h.name).await;
    assert!(!v.verified, "a halt that covers nothing is never verified: {v:?}");
    assert_eq!(v.checked_count, 0);
    stack.stop().await;
}

#[tokio::test]
async fn verify_of_a_lifted_halt_names_the_resume_and_is_not_verified() {
    let stack = Stack::start(None).await;
    feature_live(&stack).await;
    let known = stack.practice_of("tpp");
    let mut alice = stack.client("alice");
    let h = halt(&mut alice, list(&[&known]), false, false, false)
        .await
        .expect("halt");
    delivered(&stack, &h.name).await;
    let v = verify(&stack, &h.name).await;
    assert!(
        v.verified && v.checked_count == 1 && v.lifted_by.is_empty(),
        "{v:?}"
    );

    let resume = alice
        .resume_feature(pb::ResumeFeatureRequest {
            name: format!("features/{FEATURE}"),
            halts: vec![h.name.clone()],
            reason: "letter withdrawn".into(),
            ..Default::default()
        })
        .await
        .expect("resume")
        .into_inner();
    stack
        .client("bob")
        .approve_command(pb::ApproveCommandRequest {
            name: resume.name.clone(),
            comment: "second person".into(),
            request_id: String::new(),
        })
        .await
        .expect("approve");
    delivered(&stack, &resume.name).await;
    let v = verify(&stack, &h.name).await;
    assert!(!v.verified, "a lifted halt is not verified: {v:?}");
    assert_eq!(v.lifted_by, resume.name);
    stack.stop().await;
}
