//! A `rollout-coordinator` process told to stop while streams are open (each kind alone, then
//! every kind at once), and one whose grace period runs out on a call that cannot finish.

use std::{path::Path, time::Duration};

use rollout_proto::v1::{self as pb, coordinator_service_client::CoordinatorServiceClient};
use rollout_store::coordinator::{CoordinatorStore, SqlCoordinatorStore};
use tokio::sync::{mpsc, watch};
use tonic::transport::Channel;
use tonic_types::StatusExt;

use super::{
    GRACE, MARGIN, Process, REFUSALS, count_before, ended_unavailable, ending, health_ended, health_watch,
    plaintext, reflection_stream, refusals_of, refused_calls,
};
use crate::{
    stack::{delivered_via, national},
    support::{FEATURE, channel_as, coordinator_command, feature_name, held::HeldToggle},
};

/// A stream a test holds open at the coordinator.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Held {
    /// WatchCommand of a go-live waiting for approval.
    WatchCommand,
    /// grpc.health.v1.Health/Watch on the mutual-TLS port.
    HealthTls,
    /// grpc.health.v1.Health/Watch on the plaintext health port.
    HealthPlaintext,
    /// grpc.reflection.v1.ServerReflection/ServerReflectionInfo, its request side left open.
    Reflection,
}

const EVERY_KIND: [Held; 4] = [
    Held::WatchCommand,
    Held::HealthTls,
    Held::HealthPlaintext,
    Held::Reflection,
];

/// A coordinator process in `dir` with the test's grace period and one supplier, emis, at
/// `emis` (host:port); its mutual-TLS and plaintext health addresses.
async fn coordinator(
    dir: &Path,
    pki: &Path,
    emis: &str,
) -> (Process, std::net::SocketAddr, std::net::SocketAddr) {
    let policy = dir.join("policy.toml");
    std::fs::write(
        &policy,
        "[identities]\n\
         \"spiffe://gprollout.test/operator/alice\" = [\"operator\", \"approver\"]\n\
         \"spiffe://gprollout.test/viewer\" = [\"viewer\"]\n",
    )
    .expect("write policy");
    let suppliers = dir.join("suppliers.toml");
    std::fs::write(
        &suppliers,
        format!(
            "[[supplier]]\nid = \"emis\"\nendpoint = \"{emis}\"\nidentity = \"spiffe://gprollout.test/supplier/emis\"\n"
        ),
    )
    .expect("write suppliers");
    let database_url = format!("sqlite://{}", dir.join("coordinator.db").display());
    let mut command = coordinator_command(pki, &policy, &suppliers, &database_url);
    command.args(["--health-listen", "127.0.0.1:0", "--shutdown-grace", "2s"]);
    let mut process = Process::spawn(command);
    let (addr, health) = process.addrs("coordinator listening").await;
    (process, addr, health)
}

/// Defines the feature as alice.
async fn define(alice: &mut CoordinatorServiceClient<Channel>) {
    alice
        .create_feature(pb::CreateFeatureRequest {
            feature_id: FEATURE.into(),
            feature: Some(pb::Feature {
                description: "automatic prospective online record access".into(),
                fail_mode: pb::FailMode::Static.into(),
                ..Default::default()
            }),
            reason: "national programme".into(),
            request_id: String::new(),
        })
        .await
        .expect("create feature");
}

/// Three HaltFeature calls by the viewer, refused (ROLE_REQUIRED) and audited via the queue.
async fn viewer_halts(viewer: &CoordinatorServiceClient<Channel>) {
    refused_calls(|| {
        let mut viewer = viewer.clone();
        async move {
            viewer
                .halt_feature(pb::HaltFeatureRequest {
                    name: feature_name(),
                    scope: Some(national()),
                    reason: "a viewer may not halt".into(),
                    ..Default::default()
                })
                .await
                .map(drop)
        }
    })
    .await;
}

/// The viewer's refused halts in the coordinator's audit log, read from its store file once
/// the process has exited; the chain verified.
async fn refused_halts(dir: &Path) -> usize {
    let store = SqlCoordinatorStore::open(&format!("sqlite://{}", dir.join("coordinator.db").display()))
        .await
        .expect("the store is free once the process has exited");
    let events = store.list_audit(0, 10_000).await.expect("audit");
    store.close().await;
    rollout_core::audit::verify_chain(&events).expect("the audit chain verifies");
    refusals_of(
        &events,
        "spiffe://gprollout.test/viewer",
        "/nhs.gprollout.v1.CoordinatorService/HaltFeature",
    )
}

/// Starts a coordinator whose one supplier refuses connections, holds `held` open, makes
/// refused calls, sends `signal`, and checks the exit, every stream's end, the log and the
/// audit log.
async fn stop_holding(held: &[Held], signal: &str) {
    let tmp = tempfile::tempdir().expect("tempdir");
    let pki = tmp.path().join("pki");
    rolloutctl::pki::init(&pki, false).expect("pki");
    // A port nothing listens on: delivery to emis fails and backs off, as for a supplier down.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let emis = format!("localhost:{}", closed.local_addr().expect("addr").port());
    drop(closed);
    let (mut process, addr, health) = coordinator(tmp.path(), &pki, &emis).await;
    let mut alice = CoordinatorServiceClient::new(channel_as(&pki, "alice", addr));
    let viewer = CoordinatorServiceClient::new(channel_as(&pki, "viewer", addr));
    define(&mut alice).await;

    let within = GRACE + MARGIN;
    let mut command = None;
    let mut healths = Vec::new();
    let mut reflection = None;
    for kind in held {
        match kind {
            Held::WatchCommand => {
                let live = alice
                    .schedule_go_live(pb::ScheduleGoLiveRequest {
                        name: feature_name(),
                        scope: Some(national()),
                        reason: "go live".into(),
                        ..Default::default()
                    })
                    .await
                    .expect("go-live")
                    .into_inner();
                let mut stream = viewer
                    .clone()
                    .watch_command(pb::WatchCommandRequest {
                        name: live.name.clone(),
                    })
                    .await
                    .expect("watch command")
                    .into_inner();
                let first = stream.message().await.expect("watch").expect("the command");
                assert!(!first.complete, "pending approval: the watch stays open");
                command = Some((ending(stream, within, "WatchCommand"), live.name));
            }
            Held::HealthTls => healths.push((
                ending(
                    health_watch(channel_as(&pki, "viewer", addr)).await,
                    within,
                    "health (mTLS)",
                ),
                "health Watch on the mTLS port",
            )),
            Held::HealthPlaintext => healths.push((
                ending(
                    health_watch(plaintext(health)).await,
                    within,
                    "health (plaintext)",
                ),
                "health Watch on the plaintext port",
            )),
            Held::Reflection => {
                let (requests, stream) = reflection_stream(channel_as(&pki, "viewer", addr)).await;
                reflection = Some((requests, ending(stream, within, "reflection")));
            }
        }
    }
    viewer_halts(&viewer).await;

    let (status, took) = process.stop(signal, within).await;
    assert!(status.success(), "exit status {status}:\n{}", process.log());
    assert!(took < within, "{held:?}: stopped in {took:?}");
    assert!(
        !process.log().contains("grace period is running out"),
        "{held:?}: every stream ended and every call finished before the grace period ran out:\n{}",
        process.log()
    );

    if let Some((ending, name)) = command {
        let (_, status) = ended_unavailable(ending, "WatchCommand").await;
        let info = status
            .get_error_details()
            .error_info()
            .cloned()
            .expect("ErrorInfo");
        assert_eq!(info.metadata.get("command"), Some(&name), "what to watch again");
        assert!(status.message().contains("again"), "{}", status.message());
    }
    for (ending, what) in healths {
        health_ended(ending, what).await;
    }
    if let Some((requests, ending)) = reflection {
        ended_unavailable(ending, "reflection").await;
        drop(requests);
    }
    let line = process.line("coordinator stopped:", MARGIN).await;
    assert_eq!(count_before(&line, "stream"), held.len(), "{held:?}: {line}");
    assert_eq!(count_before(&line, "left open"), 0, "{held:?}: {line}");
    assert_eq!(
        refused_halts(tmp.path()).await,
        REFUSALS,
        "every refusal is audited"
    );
}

#[tokio::test]
async fn a_coordinator_ends_each_kind_of_stream_and_exits_within_its_grace_period() {
    for kind in EVERY_KIND {
        stop_holding(&[kind], "TERM").await;
    }
}

#[tokio::test]
async fn a_coordinator_interrupted_with_every_kind_of_stream_open_exits_within_its_grace_period() {
    stop_holding(&EVERY_KIND, "INT").await;
}

#[tokio::test]
async fn a_coordinator_whose_grace_period_runs_out_on_a_call_still_exits_and_flushes_its_audit() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let pki = tmp.path().join("pki");
    rolloutctl::pki::init(&pki, false).expect("pki");
    // emis: mutual TLS as the real supplier identity, never answering a list (its release is
    // kept and never sent); its ControlService a real supplier's, so that it applies the halt.
    let (called_tx, mut called) = mpsc::channel(1);
    let (_never, held) = watch::channel(false);
    let (emis, _real) = HeldToggle::new(called_tx, held)
        .serve_as_emis(tmp.path(), &pki)
        .await;
    let emis = format!("localhost:{}", emis.port());
    let (mut process, addr, _) = coordinator(tmp.path(), &pki, &emis).await;
    let mut alice = CoordinatorServiceClient::new(channel_as(&pki, "alice", addr));
    let viewer = CoordinatorServiceClient::new(channel_as(&pki, "viewer", addr));
    define(&mut alice).await;
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
    delivered_via(viewer.clone(), &halt.name).await;
    let verify = tokio::spawn({
        let mut viewer = viewer.clone();
        async move {
            viewer
                .verify_command(pb::VerifyCommandRequest {
                    name: halt.name,
                    // Longer than the grace period: the call is still in flight at its end.
                    supplier_timeout: Some(prost_types::Duration {
                        seconds: 30,
                        nanos: 0,
                    }),
                    ..Default::default()
                })
                .await
        }
    });
    tokio::time::timeout(Duration::from_secs(10), called.recv())
        .await
        .expect("the coordinator asks emis within 10 s");
    viewer_halts(&viewer).await;

    let (status, took) = process.stop("TERM", GRACE + MARGIN).await;
    assert!(status.success(), "exit status {status}:\n{}", process.log());
    // It waited for the call in flight, up to the part of the grace period calls may take.
    assert!(
        took >= GRACE * 3 / 4,
        "stopped in {took:?}: the call in flight was not waited for"
    );
    let answer = tokio::time::timeout(MARGIN, verify)
        .await
        .expect("the caller is not left hanging")
        .expect("verify task");
    assert!(answer.is_err(), "{answer:?}");
    process
        .line(
            "the grace period is running out with calls, streams or connections",
            MARGIN,
        )
        .await;
    let line = process.line("coordinator stopped:", MARGIN).await;
    assert!(line.contains("WARN"), "{line}");
    assert_eq!(count_before(&line, "left open"), 1, "the VerifyCommand: {line}");
    assert_eq!(
        refused_halts(tmp.path()).await,
        REFUSALS,
        "every refusal is audited"
    );
}
