//! A supplier of the national estate the coordinator has no endpoint for: a command's impact
//! (dry run, issued command, resume) marks it not delivered and counts its practices in scope,
//! which the command will not reach; verify shows it NOT_DELIVERED, its practices unverified.

use rollout_core::Scope;
use rollout_proto::v1::{self as pb, verify_command_response::Outcome};

use crate::{
    stack::{SUPPLIERS, Stack, delivered, feature_live, halt, national, verify},
    support::FEATURE,
};

/// The supplier the coordinator is not configured with.
const LEFT_OUT: &str = "microtest";

/// A halt of `scope` as alice, as a dry run.
async fn dry_run_halt(stack: &Stack, scope: pb::Scope) -> pb::Impact {
    stack
        .client("alice")
        .halt_feature(pb::HaltFeatureRequest {
            name: format!("features/{FEATURE}"),
            scope: Some(scope),
            reason: "what would it cover".into(),
            dry_run: true,
            ..Default::default()
        })
        .await
        .expect("dry run")
        .into_inner()
        .impact
        .expect("impact")
}

/// `(supplier, practices, not_delivered)` per supplier of an impact.
fn per(impact: &pb::Impact) -> Vec<(String, i32, bool)> {
    impact
        .suppliers
        .iter()
        .map(|s| (s.supplier.clone(), s.practices, s.not_delivered))
        .collect()
}

#[tokio::test]
async fn an_impact_marks_the_supplier_the_coordinator_has_no_endpoint_for() {
    let mut stack = Stack::suppliers(None).await;
    stack.unconfigured = vec![LEFT_OUT];
    stack.start_coordinator().await;
    feature_live(&stack).await;

    let left_out = i32::try_from(stack.expected(LEFT_OUT, &Scope::National)).expect("count");
    assert!(left_out > 0, "{LEFT_OUT} has active practices in the estate");
    let mut expected: Vec<(String, i32, bool)> = SUPPLIERS
        .iter()
        .map(|s| {
            let n = stack.expected(s, &Scope::National);
            (
                format!("suppliers/{s}"),
                i32::try_from(n).expect("count"),
                *s == LEFT_OUT,
            )
        })
        .collect();
    expected.sort();
    let dry = dry_run_halt(&stack, national()).await;
    assert_eq!(per(&dry), expected);
    assert_eq!(dry.not_delivered_practices, left_out);
    assert_eq!(dry.practices, expected.iter().map(|e| e.1).sum::<i32>());

    // A scope with none of its practices: nothing is marked.
    let tpp = pb::Scope {
        target: Some(pb::scope::Target::Supplier("tpp".into())),
    };
    let only_tpp = dry_run_halt(&stack, tpp).await;
    assert_eq!(only_tpp.not_delivered_practices, 0);
    assert!(
        only_tpp.suppliers.iter().all(|s| !s.not_delivered),
        "{only_tpp:?}"
    );

    // The halt issued: the same impact, delivered to the configured suppliers only.
    let issued = halt(&stack, national()).await;
    assert_eq!(issued.impact.as_ref(), Some(&dry));
    let mut delivered_to: Vec<&str> = issued.deliveries.iter().map(|d| d.supplier.as_str()).collect();
    delivered_to.sort_unstable();
    assert_eq!(
        delivered_to,
        ["suppliers/cegedim", "suppliers/emis", "suppliers/tpp"]
    );

    // Verified everywhere it was sent, and still not verified: microtest's practices are
    // NOT_DELIVERED, counted unverified.
    delivered(&stack, &issued.name).await;
    let verified = verify(&stack, &issued.name).await;
    assert!(!verified.verified, "{verified:?}");
    assert_eq!(verified.unverified_count, left_out);
    for r in &verified.suppliers {
        if r.supplier == format!("suppliers/{LEFT_OUT}") {
            assert_eq!(r.outcome(), Outcome::NotDelivered, "{r:?}");
            assert_eq!((r.in_scope_count, r.unverified_count), (left_out, left_out));
            assert!(r.consequence.is_none(), "nothing was ever sent there");
        } else {
            assert_eq!(r.outcome(), Outcome::Verified, "{r:?}");
        }
    }
    assert_eq!(
        verified.suppliers.len(),
        4,
        "the configured three, then microtest"
    );

    // A resume of it covers the same practices, microtest's marked again.
    let resume = stack
        .client("alice")
        .resume_feature(pb::ResumeFeatureRequest {
            name: format!("features/{FEATURE}"),
            halts: vec![issued.name.clone()],
            reason: "what would it cover".into(),
            dry_run: true,
            ..Default::default()
        })
        .await
        .expect("resume dry run")
        .into_inner();
    assert_eq!(resume.impact.as_ref(), Some(&dry));
    stack.stop().await;
}
