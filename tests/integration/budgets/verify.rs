//! VerifyCommand in flight per identity: a coordinator whose one supplier holds every
//! ListPracticeFeatures until the test releases it, so verifications stay in flight.

use std::time::Duration;

use rollout_proto::v1::{self as pb, coordinator_service_client::CoordinatorServiceClient};
use tokio::sync::{mpsc, watch};
use tonic::{Code, Response, Status, transport::Channel};

use super::metadata;
use crate::{
    stack::{delivered_via, national},
    support::{Running, assert_refused, channel_as, feature_name, held::HeldToggle, reference_files},
};

/// A coordinator delivering to one supplier, emis, served by `held`; and the real emis
/// behind it.
async fn coordinator_with_held_emis(
    dir: &std::path::Path,
    pki: &std::path::Path,
    held: HeldToggle,
) -> (
    Running<rollout_coordinator::Error>,
    Running<rollout_supplier::Error>,
) {
    let (emis, real) = held.serve_as_emis(dir, pki).await;
    let policy = dir.join("coordinator-policy.toml");
    std::fs::write(
        &policy,
        "[identities]\n\
         \"spiffe://gprollout.test/operator/alice\" = [\"operator\", \"approver\"]\n\
         \"spiffe://gprollout.test/viewer\" = [\"viewer\"]\n",
    )
    .expect("policy");
    let config = rollout_coordinator::Config {
        tls: rollout_net::TlsFiles::from_pki_dir(pki, "coordinator"),
        supplier_ca: pki.join("ca.pem"),
        supplier_crls: Vec::new(),
        policy,
        suppliers: vec![rollout_coordinator::SupplierEndpoint {
            id: rollout_core::SupplierId::parse("emis").expect("id"),
            endpoint: format!("localhost:{}", emis.port()),
            identity: "spiffe://gprollout.test/supplier/emis".into(),
        }],
        database_url: format!("sqlite://{}", dir.join("coordinator.db").display()),
        estate: reference_files(),
        heartbeat: Duration::from_millis(200),
        stale_after: Duration::from_secs(5),
        shutdown_grace: Duration::from_secs(10),
        budgets: rollout_coordinator::Budgets::default(),
    };
    let coordinator = Running::start(|listener, health, stop| async move {
        rollout_coordinator::serve(
            config,
            rollout_net::server::Listeners::new(listener, Some(health)),
            async {
                let _ = stop.await;
            },
        )
        .await
    })
    .await;
    (coordinator, real)
}

/// A dispatched national halt, issued by alice.
async fn halted(alice: &mut CoordinatorServiceClient<Channel>) -> String {
    alice
        .create_feature(pb::CreateFeatureRequest {
            feature_id: crate::support::FEATURE.into(),
            feature: Some(pb::Feature {
                fail_mode: pb::FailMode::Static.into(),
                ..Default::default()
            }),
            reason: "national programme".into(),
            request_id: String::new(),
        })
        .await
        .expect("create feature");
    let halt = alice
        .halt_feature(pb::HaltFeatureRequest {
            name: feature_name(),
            scope: Some(national()),
            reason: "halted until further notice".into(),
            ..Default::default()
        })
        .await
        .expect("halt")
        .into_inner();
    // Only a supplier that has applied a halt is asked to verify it.
    delivered_via(alice.clone(), &halt.name).await;
    halt.name
}

type Verifying = tokio::task::JoinHandle<Result<Response<pb::VerifyCommandResponse>, Status>>;

/// Starts a VerifyCommand of `name` and waits until it reaches the supplier.
async fn in_flight(
    client: &CoordinatorServiceClient<Channel>,
    name: &str,
    called: &mut mpsc::Receiver<()>,
) -> Verifying {
    let mut client = client.clone();
    // Longer than the test holds it: the supplier's silence must not end it.
    let request = pb::VerifyCommandRequest {
        name: name.into(),
        supplier_timeout: Some(prost_types::Duration {
            seconds: 30,
            nanos: 0,
        }),
        ..Default::default()
    };
    let task = tokio::spawn(async move { client.verify_command(request).await });
    tokio::time::timeout(Duration::from_secs(30), called.recv())
        .await
        .expect("the verification reaches the supplier")
        .expect("called");
    task
}

#[tokio::test]
async fn verify_command_in_flight_is_held_per_identity() {
    rollout_net::tls::install_crypto_provider();
    let tmp = tempfile::tempdir().expect("tempdir");
    let pki = tmp.path().join("pki");
    rolloutctl::pki::init(&pki, false).expect("pki");
    let (called_tx, mut called) = mpsc::channel(16);
    let (release, released) = watch::channel(false);
    let held = HeldToggle::new(called_tx, released);
    let (coordinator, real) = coordinator_with_held_emis(tmp.path(), &pki, held).await;
    let mut alice = CoordinatorServiceClient::new(channel_as(&pki, "alice", coordinator.addr));
    let mut viewer = CoordinatorServiceClient::new(channel_as(&pki, "viewer", coordinator.addr));
    let halt = halted(&mut alice).await;

    let limit = rollout_coordinator::Budgets::DEFAULT.verifies_per_identity;
    let mut flying = Vec::new();
    for _ in 0..limit {
        flying.push(in_flight(&viewer, &halt, &mut called).await);
    }
    let refused = tokio::time::timeout(
        Duration::from_secs(30),
        viewer.verify_command(pb::VerifyCommandRequest {
            name: halt.clone(),
            ..Default::default()
        }),
    )
    .await
    .expect("refused at once, not queued")
    .expect_err("one more than the viewer's budget");
    assert_refused(
        &refused,
        Code::ResourceExhausted,
        "TOO_MANY_CONCURRENT_CALLS",
        "a verification over the budget",
    );
    assert_eq!(metadata(&refused, "limit"), limit.to_string());
    assert_eq!(metadata(&refused, "identity"), "spiffe://gprollout.test/viewer");
    // Another identity has a budget of its own: alice's verification reaches the supplier.
    flying.push(in_flight(&alice, &halt, &mut called).await);

    release.send_replace(true);
    for task in flying {
        let answer = task.await.expect("task").expect("verification").into_inner();
        assert_eq!(answer.command, halt);
    }
    // Every slot came back with its answer.
    for _ in 0..=limit {
        viewer
            .verify_command(pb::VerifyCommandRequest {
                name: halt.clone(),
                ..Default::default()
            })
            .await
            .expect("a verification after the others finished");
    }
    coordinator.stop().await;
    real.stop().await;
}
