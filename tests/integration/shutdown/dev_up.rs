//! `rolloutctl dev up` told to stop (Ctrl-C, then SIGTERM with its standard output closed)
//! while streams are open at the coordinator and at a supplier: it and every child exit within
//! the grace period, the streams end with UNAVAILABLE and the refused calls are audited.

use std::{path::Path, process::Stdio};

use rollout_proto::v1::{
    self as pb, coordinator_service_client::CoordinatorServiceClient,
    toggle_service_client::ToggleServiceClient,
};
use rollout_store::coordinator::{CoordinatorStore, SqlCoordinatorStore};
use tonic_health::pb::HealthCheckResponse;

use super::{
    Ending, GRACE, MARGIN, REFUSALS, count_before, ended_unavailable, ending, health_ended, health_watch,
    plaintext, practice_watch, refusals_of, refused_calls, signal_and_wait,
};
use crate::{
    devstack::{DevUp, free_base, ports},
    stack::national,
    support::{channel_as, feature_name},
};

/// The streams a test holds open against the stack.
struct Held {
    /// WatchCommand of a go-live waiting for approval, at the coordinator.
    command: Ending<pb::WatchCommandResponse>,
    /// WatchPracticeFeatures at emis.
    practices: Ending<pb::WatchPracticeFeaturesResponse>,
    /// Health Watch at emis's mutual-TLS port, emis's plaintext port and the coordinator's.
    healths: Vec<(Ending<HealthCheckResponse>, &'static str)>,
}

/// Opens the streams, then makes refused calls at the coordinator.
async fn hold(state: &Path, base: u16) -> Held {
    let pki = state.join("pki");
    let at = |port: u16| std::net::SocketAddr::from(([127, 0, 0, 1], port));
    let within = GRACE + MARGIN;
    let live = CoordinatorServiceClient::new(channel_as(&pki, "alice", at(base)))
        .schedule_go_live(pb::ScheduleGoLiveRequest {
            name: feature_name(),
            scope: Some(national()),
            reason: "go live again".into(),
            ..Default::default()
        })
        .await
        .expect("go-live")
        .into_inner();
    let viewer = CoordinatorServiceClient::new(channel_as(&pki, "viewer", at(base)));
    let mut stream = viewer
        .clone()
        .watch_command(pb::WatchCommandRequest { name: live.name })
        .await
        .expect("watch command")
        .into_inner();
    stream.message().await.expect("watch").expect("the command");
    let command = ending(stream, within, "WatchCommand");
    let emis = channel_as(&pki, "backend-emis", at(base + 1));
    let (stream, _) = practice_watch(ToggleServiceClient::new(emis.clone()), "L56296").await;
    let practices = ending(stream, within, "WatchPracticeFeatures");
    let healths = vec![
        (
            ending(health_watch(emis).await, within, "emis health (mTLS)"),
            "emis's health Watch on its mTLS port",
        ),
        (
            ending(
                health_watch(plaintext(at(base + 11))).await,
                within,
                "emis health",
            ),
            "emis's health Watch on its plaintext port",
        ),
        (
            ending(
                health_watch(plaintext(at(base + 10))).await,
                within,
                "coordinator health",
            ),
            "the coordinator's health Watch on its plaintext port",
        ),
    ];
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
    Held {
        command,
        practices,
        healths,
    }
}

/// Every held stream ended with UNAVAILABLE `SHUTTING_DOWN`.
async fn ended(held: Held) {
    ended_unavailable(held.command, "WatchCommand").await;
    ended_unavailable(held.practices, "WatchPracticeFeatures").await;
    for (ending, what) in held.healths {
        health_ended(ending, what).await;
    }
}

/// Each server's last log line says it drained everything and flushed its audit queue.
#[track_caller]
fn children_drained(state: &Path) {
    for (log, stopped) in [
        ("coordinator", "coordinator stopped:"),
        ("supplier-emis", "supplier service stopped:"),
        ("supplier-tpp", "supplier service stopped:"),
        ("supplier-cegedim", "supplier service stopped:"),
        ("supplier-microtest", "supplier service stopped:"),
    ] {
        let text = std::fs::read_to_string(state.join(format!("logs/{log}.log"))).expect("read log");
        let line = text
            .lines()
            .find(|l| l.contains(stopped))
            .unwrap_or_else(|| panic!("{log} did not stop cleanly:\n{text}"));
        assert_eq!(count_before(line, "left open"), 0, "{log}: {line}");
        assert!(!text.contains("grace period is running out"), "{log}:\n{text}");
        assert!(line.contains("audit queue flushed"), "{log}: {line}");
    }
}

/// The viewer's refused halts in the coordinator's audit log.
async fn refused_halts(state: &Path) -> usize {
    let store = SqlCoordinatorStore::open(&format!("sqlite://{}", state.join("coordinator.db").display()))
        .await
        .expect("the store is free once dev up has stopped");
    let events = store.list_audit(0, 10_000).await.expect("audit");
    store.close().await;
    rollout_core::audit::verify_chain(&events).expect("the audit chain verifies");
    refusals_of(
        &events,
        "spiffe://gprollout.test/viewer",
        "/nhs.gprollout.v1.CoordinatorService/HaltFeature",
    )
}

#[tokio::test]
async fn dev_up_stops_within_its_grace_period_on_ctrl_c_and_on_sigterm_with_its_output_closed() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let state = tmp.path().join("state");
    let base = free_base();
    let grace = ["--shutdown-grace", "2s"];

    // Ctrl-C, its output read to the end.
    let mut up = DevUp::start_with(&state, base, &grace, Stdio::inherit());
    up.until("The stack is up").await;
    let held = hold(&state, base).await;
    let (status, took) = signal_and_wait(&mut up.child, "INT", GRACE + MARGIN).await;
    let status = status.unwrap_or_else(|| panic!("dev up still running after Ctrl-C:\n{}", up.seen));
    assert!(status.success(), "exit status {status}:\n{}", up.seen);
    assert!(took < GRACE + MARGIN, "dev up stopped in {took:?}");
    ended(held).await;
    up.until("stopped; the state").await;
    for name in [
        "supplier-emis",
        "supplier-tpp",
        "supplier-cegedim",
        "supplier-microtest",
        "coordinator",
    ] {
        assert!(
            up.seen.contains(&format!("stopped {name} in ")),
            "{name} was not stopped cleanly:\n{}",
            up.seen
        );
    }
    assert!(!up.seen.contains("killed"), "{}", up.seen);
    children_drained(&state);
    assert_eq!(refused_halts(&state).await, REFUSALS, "every refusal is audited");

    // SIGTERM after the reader of its output has gone: no panic writing to the closed pipe,
    // every child still stopped within the grace period.
    let stderr = tmp.path().join("dev-up.stderr");
    let file = std::fs::File::create(&stderr).expect("create");
    let mut up = DevUp::start_with(&state, base, &grace, Stdio::from(file));
    up.until("The stack is up").await;
    let held = hold(&state, base).await;
    let DevUp { mut child, lines, .. } = up;
    drop(lines);
    let (status, took) = signal_and_wait(&mut child, "TERM", GRACE + MARGIN).await;
    let errors = std::fs::read_to_string(&stderr).expect("read stderr");
    let status = status.unwrap_or_else(|| panic!("dev up still running after SIGTERM:\n{errors}"));
    assert!(!errors.contains("panicked"), "{errors}");
    assert!(status.success(), "exit status {status}:\n{errors}");
    assert!(took < GRACE + MARGIN, "dev up stopped in {took:?}");
    ended(held).await;
    children_drained(&state);
    assert_eq!(
        refused_halts(&state).await,
        2 * REFUSALS,
        "every refusal is audited"
    );
    for port in ports(base) {
        assert!(
            std::net::TcpListener::bind(("127.0.0.1", port)).is_ok(),
            "port {port} is still in use"
        );
    }
}
