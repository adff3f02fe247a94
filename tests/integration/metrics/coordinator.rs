//! The coordinator's figures during a halt, scraped as Prometheus scrapes them: a stopped
//! supplier's lag rises, the halt is listed unapplied there, its delivery fails as
//! unreachable and it shows STALE, every other supplier stays synced (this replica leading
//! delivery) with the halt's propagation observed; the lag returns to 0 once it is back and
//! has applied the halt, whose propagation there is then observed too, and whose verification
//! is timed once; a refused HaltFeature counted by reason, the audit chain's events counted.

use rollout_proto::v1 as pb;
use tonic::Code;

use super::{sample, scrape_until};
use crate::stack::{Stack, delivered, feature_live, halt, national, verify};

/// Scrapes the coordinator until `ok` holds, for at most 30 s.
async fn until(stack: &Stack, what: &str, ok: impl Fn(&str) -> bool) -> String {
    let addr = stack.coordinator_metrics.expect("the coordinator's metrics");
    scrape_until(addr, what, ok).await
}

fn state(text: &str, supplier: &str, state: &str) -> Option<f64> {
    sample(
        text,
        "gprollout_coordinator_supplier_state",
        &[("supplier", supplier), ("state", state)],
    )
}

/// How many halts' propagation to `supplier` the `which` histogram (`applied` or
/// `acknowledged`) has observed.
fn propagated(text: &str, which: &str, supplier: &str) -> f64 {
    sample(
        text,
        &format!("gprollout_coordinator_propagation_{which}_seconds_count"),
        &[("supplier", supplier), ("action", "halt")],
    )
    .unwrap_or(0.0)
}

fn lag(text: &str, supplier: &str) -> Option<f64> {
    sample(
        text,
        "gprollout_coordinator_supplier_lag_commands",
        &[("supplier", supplier)],
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_stopped_supplier_lags_then_shows_stale_and_catches_up_to_no_lag() {
    let mut stack = Stack::start(None).await;
    feature_live(&stack).await;
    let text = until(&stack, "every supplier synced", |t| {
        ["emis", "tpp", "cegedim", "microtest"]
            .iter()
            .all(|s| state(t, s, "synced") == Some(1.0) && lag(t, s) == Some(0.0))
    })
    .await;
    assert_eq!(
        sample(&text, "gprollout_coordinator_target_sequence", &[]),
        Some(2.0)
    );
    assert_eq!(state(&text, "tpp", "stale"), Some(0.0), "{text}");
    assert!(
        sample(
            &text,
            "gprollout_coordinator_supplier_contact_age_seconds",
            &[("supplier", "tpp")]
        )
        .is_some(),
        "{text}"
    );
    let audited = |t: &str| sample(t, "gprollout_audit_events_appended_total", &[]).unwrap_or(0.0);
    let audited_before = audited(&text);
    assert!(
        audited_before >= 2.0,
        "the feature and its go-live audited:\n{text}"
    );

    // A viewer may not halt: refused, counted by reason.
    let refused = stack
        .client("viewer")
        .halt_feature(pb::HaltFeatureRequest {
            name: format!("features/{}", crate::support::FEATURE),
            scope: Some(national()),
            reason: "not mine to halt".into(),
            ..Default::default()
        })
        .await
        .expect_err("a viewer cannot halt");
    assert_eq!(refused.code(), Code::PermissionDenied);

    stack.stop_supplier("tpp").await;
    let h = halt(&stack, national()).await;
    let text = until(
        &stack,
        "tpp behind by the halt, then stale; emis's propagation observed",
        |t| {
            lag(t, "tpp") == Some(1.0)
                && state(t, "tpp", "stale") == Some(1.0)
                && propagated(t, "acknowledged", "emis") == 1.0
        },
    )
    .await;
    assert_eq!(propagated(&text, "applied", "emis"), 1.0, "{text}");
    assert_eq!(propagated(&text, "acknowledged", "tpp"), 0.0, "{text}");
    assert!(
        sample(
            &text,
            "gprollout_coordinator_delivery_failures_total",
            &[("supplier", "tpp"), ("cause", "unreachable")]
        )
        .is_some_and(|n| n >= 1.0),
        "{text}"
    );
    assert!(
        sample(
            &text,
            "gprollout_coordinator_delivery_attempts_total",
            &[("supplier", "emis")]
        )
        .is_some_and(|n| n >= 1.0),
        "{text}"
    );
    assert!(audited(&text) > audited_before, "the halt audited:\n{text}");
    assert_eq!(state(&text, "emis", "synced"), Some(1.0), "{text}");
    assert_eq!(lag(&text, "emis"), Some(0.0), "{text}");
    let unapplied = |s: &str| {
        sample(
            &text,
            "gprollout_coordinator_supplier_unapplied_halts",
            &[("supplier", s)],
        )
    };
    assert_eq!(
        (unapplied("tpp"), unapplied("emis")),
        (Some(1.0), Some(0.0)),
        "{text}"
    );
    assert_eq!(
        sample(&text, "gprollout_coordinator_delivery_leader", &[]),
        Some(1.0),
        "{text}"
    );
    assert_eq!(
        sample(
            &text,
            "gprollout_refused_calls_total",
            &[("reason", "ROLE_REQUIRED")]
        ),
        Some(1.0),
        "{text}"
    );
    assert!(
        sample(
            &text,
            "gprollout_grpc_server_handled_total",
            &[("grpc_method", "HaltFeature"), ("grpc_code", "OK")]
        )
        .is_some_and(|n| n >= 1.0),
        "{text}"
    );

    stack.start_supplier("tpp").await;
    delivered(&stack, &h.name).await;
    let text = until(&stack, "tpp caught up", |t| {
        lag(t, "tpp") == Some(0.0) && state(t, "tpp", "synced") == Some(1.0)
    })
    .await;
    assert_eq!(propagated(&text, "acknowledged", "tpp"), 1.0, "{text}");

    // Each supplier's verification of the halt is timed once, however often it is verified.
    let verified = |t: &str| {
        sample(
            t,
            "gprollout_coordinator_halt_verified_seconds_count",
            &[("supplier", "emis")],
        )
    };
    assert_eq!(verified(&text), None, "{text}");
    for _ in 0..2 {
        let v = verify(&stack, &h.name).await;
        assert!(v.verified, "{v:?}");
    }
    let (_, text) = super::scrape(stack.coordinator_metrics.expect("metrics")).await;
    assert_eq!(verified(&text), Some(1.0), "{text}");
    stack.stop().await;
}
