//! VerifyCommand's own request fields: `suppliers` narrows the check to the suppliers named
//! (what `rolloutctl halt --wait` asks as each supplier applies), and a timeout or a filter
//! out of bounds is refused with the field named.

use rollout_proto::v1::{self as pb, verify_command_response::Outcome};
use tonic::Code;
use tonic_types::StatusExt;

use crate::{
    stack::{Stack, delivered, feature_live, halt, national},
    support::assert_refused,
};

/// A refused request: what it is, the request, the reason and the field named.
struct Row {
    what: &'static str,
    request: pb::VerifyCommandRequest,
    reason: &'static str,
    field: &'static str,
}

fn seconds(seconds: i64, nanos: i32) -> Option<prost_types::Duration> {
    Some(prost_types::Duration { seconds, nanos })
}

#[tokio::test]
async fn verify_checks_only_the_suppliers_named_and_refuses_bounds_it_cannot_keep() {
    let stack = Stack::start(None).await;
    feature_live(&stack).await;
    let h = halt(&stack, national()).await;
    delivered(&stack, &h.name).await;
    let mut viewer = stack.client("viewer");

    let only_emis = viewer
        .verify_command(pb::VerifyCommandRequest {
            name: h.name.clone(),
            suppliers: vec!["suppliers/emis".into(), "suppliers/emis".into()],
            ..Default::default()
        })
        .await
        .expect("verify emis")
        .into_inner();
    assert_eq!(only_emis.suppliers.len(), 1, "{only_emis:?}");
    assert_eq!(only_emis.suppliers[0].supplier, "suppliers/emis");
    assert_eq!(only_emis.suppliers[0].outcome(), Outcome::Verified);
    assert!(only_emis.verified, "the totals and verdict cover emis alone");
    assert_eq!(
        only_emis.in_scope_count,
        stack.expected("emis", &rollout_core::Scope::National) as i32
    );
    assert_eq!(only_emis.sequence, h.sequence);

    let name = || h.name.clone();
    let rows = [
        Row {
            what: "a timeout under 100 ms",
            request: pb::VerifyCommandRequest {
                name: name(),
                supplier_timeout: seconds(0, 99_000_000),
                ..Default::default()
            },
            reason: "SUPPLIER_TIMEOUT_OUT_OF_RANGE",
            field: "supplier_timeout",
        },
        Row {
            what: "a timeout over 30 s",
            request: pb::VerifyCommandRequest {
                name: name(),
                supplier_timeout: seconds(31, 0),
                ..Default::default()
            },
            reason: "SUPPLIER_TIMEOUT_OUT_OF_RANGE",
            field: "supplier_timeout",
        },
        Row {
            what: "a negative timeout",
            request: pb::VerifyCommandRequest {
                name: name(),
                supplier_timeout: seconds(-1, 0),
                ..Default::default()
            },
            reason: "SUPPLIER_TIMEOUT_OUT_OF_RANGE",
            field: "supplier_timeout",
        },
        Row {
            what: "a supplier neither configured nor in the estate",
            request: pb::VerifyCommandRequest {
                name: name(),
                suppliers: vec!["suppliers/emis".into(), "suppliers/acme".into()],
                ..Default::default()
            },
            reason: "UNKNOWN_SUPPLIER",
            field: "suppliers[1]",
        },
        Row {
            what: "a malformed supplier name",
            request: pb::VerifyCommandRequest {
                name: name(),
                suppliers: vec!["emis".into()],
                ..Default::default()
            },
            reason: "INVALID_FIELD",
            field: "suppliers[0]",
        },
        Row {
            what: "21 suppliers",
            request: pb::VerifyCommandRequest {
                name: name(),
                suppliers: vec!["suppliers/emis".into(); 21],
                ..Default::default()
            },
            reason: "INVALID_FIELD",
            field: "suppliers",
        },
    ];
    for row in rows {
        let refused = viewer.verify_command(row.request).await.expect_err(row.what);
        assert_refused(&refused, Code::InvalidArgument, row.reason, row.what);
        let fields: Vec<String> = refused
            .get_details_bad_request()
            .map(|b| b.field_violations.iter().map(|v| v.field.clone()).collect())
            .unwrap_or_default();
        assert_eq!(fields, [row.field], "{}: {refused:?}", row.what);
    }
    stack.stop().await;
}
