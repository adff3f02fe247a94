//! A `rollout-supplier` process told to stop while streams are open: each kind of stream alone,
//! then every kind at once.

use rollout_proto::v1::{
    self as pb, control_service_client::ControlServiceClient, toggle_service_client::ToggleServiceClient,
};
use rollout_store::supplier::{SqlSupplierStore, SupplierStore};

use super::{
    GRACE, MARGIN, Process, REFUSALS, count_before, ended_unavailable, ending, health_ended, health_watch,
    plaintext, practice_watch, reflection_stream, refusals_of, refused_calls, resume_version,
};
use crate::support::{
    channel_as, define, practice_feature,
    supplier::{EMIS_A, supplier_files},
};

/// A stream a test holds open at the supplier.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Held {
    /// ToggleService.WatchPracticeFeatures, as the backend.
    PracticeWatch,
    /// ControlService.WatchSyncState, as the coordinator.
    SyncStateWatch,
    /// grpc.health.v1.Health/Watch on the mutual-TLS port.
    HealthTls,
    /// grpc.health.v1.Health/Watch on the plaintext health port.
    HealthPlaintext,
    /// grpc.reflection.v1.ServerReflection/ServerReflectionInfo, its request side left open.
    Reflection,
}

const EVERY_KIND: [Held; 5] = [
    Held::PracticeWatch,
    Held::SyncStateWatch,
    Held::HealthTls,
    Held::HealthPlaintext,
    Held::Reflection,
];

/// Starts a supplier process with the test's grace period, holds `held` open, makes refused
/// calls, sends `signal`, and checks the exit, every stream's end, the log and the audit log.
async fn stop_holding(held: &[Held], signal: &str) {
    let tmp = tempfile::tempdir().expect("tempdir");
    let pki = tmp.path().join("pki");
    rolloutctl::pki::init(&pki, false).expect("pki");
    let files = supplier_files(tmp.path(), &pki, "emis");
    let mut command = files.command_at("127.0.0.1:0", "127.0.0.1:0");
    command.args(["--shutdown-grace", "2s"]);
    let mut process = Process::spawn(command);
    let (addr, health) = process.addrs("supplier service listening").await;
    let as_coordinator = channel_as(&pki, "coordinator", addr);
    ControlServiceClient::new(as_coordinator.clone())
        .apply_command(pb::ApplyCommandRequest {
            command: Some(define(1, None)),
            ..Default::default()
        })
        .await
        .expect("define the feature");

    let within = GRACE + MARGIN;
    let backend = channel_as(&pki, "backend-emis", addr);
    let mut practice = None;
    let mut sync = None;
    let mut healths = Vec::new();
    let mut reflection = None;
    for kind in held {
        match kind {
            Held::PracticeWatch => {
                let (stream, seen) = practice_watch(ToggleServiceClient::new(backend.clone()), EMIS_A).await;
                practice = Some((ending(stream, within, "WatchPracticeFeatures"), seen));
            }
            Held::SyncStateWatch => {
                let mut stream = ControlServiceClient::new(as_coordinator.clone())
                    .watch_sync_state(pb::WatchSyncStateRequest::default())
                    .await
                    .expect("watch sync state")
                    .into_inner();
                let first = stream.message().await.expect("sync state").expect("the state");
                assert_eq!(first.applied_sequence, 1);
                sync = Some(ending(stream, within, "WatchSyncState"));
            }
            Held::HealthTls => healths.push((
                ending(health_watch(backend.clone()).await, within, "health Watch (mTLS)"),
                "health Watch on the mTLS port",
            )),
            Held::HealthPlaintext => healths.push((
                ending(
                    health_watch(plaintext(health)).await,
                    within,
                    "health Watch (plaintext)",
                ),
                "health Watch on the plaintext port",
            )),
            Held::Reflection => {
                let (requests, stream) = reflection_stream(backend.clone()).await;
                reflection = Some((requests, ending(stream, within, "reflection")));
            }
        }
    }
    // A caller without the role, refused just before the signal: audited through the queue.
    let viewer = ToggleServiceClient::new(channel_as(&pki, "viewer", addr));
    refused_calls(|| {
        let mut viewer = viewer.clone();
        async move {
            viewer
                .get_practice_feature(pb::GetPracticeFeatureRequest {
                    name: practice_feature(EMIS_A),
                    explain: false,
                })
                .await
                .map(drop)
        }
    })
    .await;

    let (status, took) = process.stop(signal, within).await;
    assert!(status.success(), "exit status {status}:\n{}", process.log());
    assert!(took < within, "{held:?}: stopped in {took:?}");
    assert!(
        !process.log().contains("grace period is running out"),
        "{held:?}: every stream ended and every call finished before the grace period ran out:\n{}",
        process.log()
    );

    if let Some((ending, seen)) = practice {
        let (_, status) = ended_unavailable(ending, "WatchPracticeFeatures").await;
        assert_eq!(
            resume_version(&status),
            seen.to_string(),
            "the version to resume from"
        );
    }
    if let Some(ending) = sync {
        ended_unavailable(ending, "WatchSyncState").await;
    }
    for (ending, what) in healths {
        health_ended(ending, what).await;
    }
    if let Some((requests, ending)) = reflection {
        ended_unavailable(ending, "reflection").await;
        drop(requests);
    }

    let line = process.line("supplier service stopped:", MARGIN).await;
    assert_eq!(count_before(&line, "stream"), held.len(), "{held:?}: {line}");
    assert_eq!(count_before(&line, "left open"), 0, "{held:?}: {line}");
    let store = SqlSupplierStore::open(&format!("sqlite://{}", files.database.display()))
        .await
        .expect("the store is free once the process has exited");
    let events = store.list_audit(0, 10_000).await.expect("audit");
    store.close().await;
    rollout_core::audit::verify_chain(&events).expect("the audit chain verifies");
    assert_eq!(
        refusals_of(
            &events,
            "spiffe://gprollout.test/viewer",
            "/nhs.gprollout.v1.ToggleService/GetPracticeFeature"
        ),
        REFUSALS,
        "every refusal is in the audit log"
    );
}

#[tokio::test]
async fn a_supplier_ends_each_kind_of_stream_and_exits_within_its_grace_period() {
    for kind in EVERY_KIND {
        stop_holding(&[kind], "TERM").await;
    }
}

#[tokio::test]
async fn a_supplier_interrupted_with_every_kind_of_stream_open_exits_within_its_grace_period() {
    stop_holding(&EVERY_KIND, "INT").await;
}
