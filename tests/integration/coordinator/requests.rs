//! Idempotent retries and refused calls, each audited.

use rollout_proto::v1 as pb;
use tonic::Code;

use crate::{
    stack::{Stack, feature_live, national},
    support::{assert_refused, feature_name},
};

#[tokio::test]
async fn idempotent_retries_and_refused_calls() {
    let stack = Stack::start(None).await;
    feature_live(&stack).await;
    let mut alice = stack.client("alice");
    let req = pb::HaltFeatureRequest {
        name: feature_name(),
        scope: Some(national()),
        reason: "retry me".into(),
        request_id: "2f1d9c8e-4b3a-4f6e-8d7c-1a2b3c4d5e6f".into(),
        dry_run: false,
        ..Default::default()
    };
    let first = alice.halt_feature(req.clone()).await.expect("halt").into_inner();
    let retry = alice.halt_feature(req.clone()).await.expect("retry").into_inner();
    assert_eq!(
        (retry.name.as_str(), retry.sequence),
        (first.name.as_str(), first.sequence),
        "a retry returns the first result"
    );
    let reused = alice
        .halt_feature(pb::HaltFeatureRequest {
            reason: "another".into(),
            ..req
        })
        .await
        .expect_err("reused id");
    assert_refused(
        &reused,
        Code::InvalidArgument,
        "REQUEST_ID_REUSED",
        "reused request id",
    );
    let viewer = stack
        .client("viewer")
        .halt_feature(pb::HaltFeatureRequest {
            name: feature_name(),
            scope: Some(national()),
            reason: "x".into(),
            request_id: String::new(),
            dry_run: false,
            ..Default::default()
        })
        .await
        .expect_err("viewer");
    assert_refused(
        &viewer,
        Code::PermissionDenied,
        "ROLE_REQUIRED",
        "a viewer cannot halt",
    );
    let unknown = alice
        .halt_feature(pb::HaltFeatureRequest {
            name: "features/unknown".into(),
            scope: Some(national()),
            reason: "x".into(),
            request_id: String::new(),
            dry_run: false,
            ..Default::default()
        })
        .await
        .expect_err("unknown feature");
    assert_refused(&unknown, Code::NotFound, "FEATURE_NOT_FOUND", "unknown feature");
    let empty = alice
        .halt_feature(pb::HaltFeatureRequest {
            name: feature_name(),
            scope: Some(pb::Scope::default()),
            reason: "x".into(),
            request_id: String::new(),
            dry_run: false,
            ..Default::default()
        })
        .await
        .expect_err("empty scope");
    assert_refused(
        &empty,
        Code::InvalidArgument,
        "INVALID_FIELD",
        "a scope with nothing set",
    );
    let audit = stack
        .client("viewer")
        .list_audit_events(pb::ListAuditEventsRequest::default())
        .await
        .expect_err("viewer");
    assert_refused(
        &audit,
        Code::PermissionDenied,
        "ROLE_REQUIRED",
        "only an auditor reads the audit log",
    );
    let events = stack
        .client("auditor")
        .list_audit_events(pb::ListAuditEventsRequest {
            page_size: 1_000,
            ..Default::default()
        })
        .await
        .expect("audit")
        .into_inner();
    let refused = events
        .events
        .iter()
        .filter(|e| e.outcome() == pb::audit_event::Outcome::Refused)
        .count();
    assert!(refused >= 5, "refusals are audited: {refused}");
    let chain: Vec<_> = events
        .events
        .iter()
        .map(rollout_net::wire::audit_from_pb)
        .collect();
    rollout_core::audit::verify_chain(&chain).expect("the chain read over the API verifies");
    stack.stop().await;
}
