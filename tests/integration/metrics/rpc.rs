//! What both services count on their mTLS port, as a supplier shows it: calls by method and
//! code, handling times, open streams, refusals by reason, failed handshakes by reason; that
//! a path no contract declares cannot add a label value; and the supplier's own figures
//! through a go-live, a halt and control going stale.

use rollout_core::{Scope, rules::MIN_CONTROL_TTL};
use rollout_net::tls;
use rollout_proto::v1 as pb;
use tonic::Code;

use super::{sample, scrape, scrape_until};
use crate::support::{
    define, feature_name, go_live, halt,
    supplier::{EMIS_A, EMIS_ACTIVE, apply, control, supplier_files, toggle},
};

const HANDLED: &str = "gprollout_grpc_server_handled_total";

fn handled(text: &str, method: &str, code: &str) -> f64 {
    sample(text, HANDLED, &[("grpc_method", method), ("grpc_code", code)]).unwrap_or(0.0)
}

#[tokio::test]
async fn a_supplier_counts_calls_by_method_and_code_and_refusals_and_handshakes_by_reason() {
    tls::install_crypto_provider();
    let tmp = tempfile::tempdir().expect("tempdir");
    let pki = tmp.path().join("pki");
    rolloutctl::pki::init(&pki, false).expect("pki");
    let files = supplier_files(tmp.path(), &pki, "emis");
    let (server, metrics) = files.start_with_metrics().await;

    let (content_type, text) = scrape(metrics).await;
    assert!(
        content_type.starts_with("application/openmetrics-text"),
        "{content_type}"
    );
    assert_eq!(
        sample(&text, "gprollout_build_info", &[("service", "supplier")]),
        Some(1.0),
        "{text}"
    );

    let mut control = control(&files, &server);
    apply(&mut control, define(1, Some(MIN_CONTROL_TTL))).await;
    apply(&mut control, go_live(2, "golive-1", Scope::National, None)).await;
    let mut backend = toggle(&files, "backend-emis", &server);
    for _ in 0..3 {
        crate::support::supplier::get(&mut backend, EMIS_A).await;
    }
    let refused = toggle(&files, "viewer", &server)
        .get_practice_feature(pb::GetPracticeFeatureRequest {
            name: crate::support::practice_feature(EMIS_A),
            explain: false,
        })
        .await
        .expect_err("a viewer is not a backend");
    assert_eq!(refused.code(), Code::PermissionDenied);
    let no_certificate = tonic_health::pb::health_client::HealthClient::new(
        crate::support::channel_without_certificate(&pki, server.addr),
    )
    .check(tonic_health::pb::HealthCheckRequest::default())
    .await
    .expect_err("no certificate");
    assert!(format!("{no_certificate:?}").contains("CertificateRequired"));
    // A path no contract declares (an old client, a scanner): counted, but as `unknown`.
    let mut grpc = tonic::client::Grpc::new(crate::support::channel_as(&pki, "backend-emis", server.addr));
    grpc.ready().await.expect("ready");
    let unknown = grpc
        .unary::<_, (), _>(
            tonic::Request::new(()),
            tonic::codegen::http::uri::PathAndQuery::from_static("/no.such.v1.Service/Probe"),
            tonic_prost::ProstCodec::<(), ()>::default(),
        )
        .await
        .expect_err("no such method");
    assert_ne!(unknown.code(), Code::Ok);
    // A watch stream held open.
    let watch = backend
        .watch_practice_features(pb::WatchPracticeFeaturesRequest {
            feature: feature_name(),
            practices: vec![EMIS_A.into()],
            start_version: 0,
        })
        .await
        .expect("watch")
        .into_inner();

    let open = |t: &str| {
        sample(
            t,
            "gprollout_grpc_server_open_streams",
            &[("grpc_method", "WatchPracticeFeatures")],
        )
    };
    let text = scrape_until(metrics, "the watch counted open", |t| open(t) == Some(1.0)).await;
    assert_eq!(handled(&text, "ApplyCommand", "OK"), 2.0, "{text}");
    assert_eq!(handled(&text, "GetPracticeFeature", "OK"), 3.0, "{text}");
    assert_eq!(
        handled(&text, "GetPracticeFeature", "PERMISSION_DENIED"),
        1.0,
        "{text}"
    );
    assert_eq!(
        sample(
            &text,
            "gprollout_grpc_server_handling_seconds_count",
            &[("grpc_method", "GetPracticeFeature")]
        ),
        Some(4.0),
        "{text}"
    );
    assert_eq!(
        sample(
            &text,
            "gprollout_grpc_server_in_flight_calls",
            &[("grpc_method", "GetPracticeFeature")]
        ),
        Some(0.0),
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
    assert_eq!(
        sample(
            &text,
            "gprollout_tls_handshake_failures_total",
            &[("reason", "no_client_certificate")]
        ),
        Some(1.0),
        "{text}"
    );
    assert_eq!(
        sample(&text, HANDLED, &[("grpc_service", "unknown")]),
        Some(1.0),
        "{text}"
    );
    assert!(!text.contains("no.such"), "{text}");
    // Every series is one of ours, named by the conventions.
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        assert!(line.starts_with("gprollout_"), "{line}");
    }

    // The supplier's own figures, from its serving state.
    let practices = |t: &str, answer: &str| {
        sample(
            t,
            "gprollout_supplier_practices",
            &[("feature", crate::support::FEATURE), ("answer", answer)],
        )
    };
    assert_eq!(
        sample(&text, "gprollout_supplier_applied_sequence", &[]),
        Some(2.0)
    );
    // The three answers the backend was served (the viewer's call was refused before any).
    assert_eq!(
        sample(
            &text,
            "gprollout_supplier_evaluations_total",
            &[("state", "enabled")]
        ),
        Some(3.0),
        "{text}"
    );
    assert_eq!(
        practices(&text, "enabled"),
        Some(f64::from(EMIS_ACTIVE)),
        "{text}"
    );
    assert_eq!(practices(&text, "halted"), Some(0.0), "{text}");
    assert!(sample(&text, "gprollout_supplier_contact_age_seconds", &[]).is_some());
    assert_eq!(
        sample(&text, "gprollout_supplier_watchers_lagged_total", &[]),
        Some(0.0),
        "{text}"
    );
    let commits = |t: &str| sample(t, "gprollout_supplier_store_commit_seconds_count", &[]).unwrap_or(0.0);
    let audited = |t: &str| sample(t, "gprollout_audit_events_appended_total", &[]).unwrap_or(0.0);
    let (commits_before, audited_before) = (commits(&text), audited(&text));
    // The feature's definition and its go-live, each committed with its audit event.
    assert!(commits_before >= 2.0 && audited_before >= 2.0, "{text}");
    apply(
        &mut control,
        halt(3, "halt-qn7", Scope::Icb("QN7".parse().expect("icb"))),
    )
    .await;
    let (_, text) = scrape(metrics).await;
    assert!(
        commits(&text) > commits_before,
        "the halt's commit timed:\n{text}"
    );
    assert!(
        audited(&text) > audited_before,
        "the halt's audit event counted:\n{text}"
    );
    assert_eq!(
        sample(
            &text,
            "gprollout_supplier_store_commit_seconds_bucket",
            &[("le", "+Inf")]
        ),
        Some(commits(&text)),
        "{text}"
    );
    let halted = practices(&text, "halted").unwrap_or_default();
    assert!(halted > 0.0, "{text}");
    assert_eq!(
        practices(&text, "enabled").unwrap_or_default() + halted,
        f64::from(EMIS_ACTIVE),
        "every active practice enabled or halted:\n{text}"
    );
    assert_eq!(
        sample(&text, "gprollout_supplier_applied_sequence", &[]),
        Some(3.0)
    );
    let stale = |t: &str| {
        sample(
            t,
            "gprollout_supplier_control_stale",
            &[("feature", crate::support::FEATURE)],
        )
    };
    assert_eq!(stale(&text), Some(0.0), "{text}");
    // No contact for the TTL: the fail-closed feature goes off, and says so.
    scrape_until(metrics, "control stale", |t| stale(t) == Some(1.0)).await;

    drop(watch);
    let text = scrape_until(metrics, "the watch counted closed", |t| open(t) == Some(0.0)).await;
    assert_eq!(
        handled(&text, "WatchPracticeFeatures", "CANCELLED"),
        1.0,
        "a stream its client dropped ends CANCELLED:\n{text}"
    );
    server.stop().await;
}
