//! A supplier in contact with the coordinator but stuck behind it: its heartbeats carry a target
//! sequence it has not applied, so they do not count as contact, and a FAIL_CLOSED feature goes
//! off after its control TTL; it comes back on when the supplier catches up (ApplyCommand or
//! ReplaceRules up to the target). The test drives the supplier as the coordinator's identity,
//! so it decides every call: heartbeats every 250 ms, each with a command the supplier refuses;
//! and a supplier catching up after the TTL stays off until the last command it missed is in.

use std::time::{Duration, Instant};

use rollout_core::{Scope, rules::MIN_CONTROL_TTL};
use rollout_proto::v1::{
    self as pb, control_service_client::ControlServiceClient, practice_feature::Reason as R,
    practice_feature::State as S, toggle_service_client::ToggleServiceClient,
};
use tokio::sync::watch;
use tonic::transport::Channel;

use crate::support::{
    define, go_live, halt, history_of, practice_feature, practices, snapshot,
    supplier::{EMIS_A, EMIS_B, EMIS_QRP, apply, control, emis, toggle},
};

/// How often the stand-in coordinator heartbeats.
const HEARTBEAT: Duration = Duration::from_millis(250);

/// The practice's answer now (state and reason).
async fn answer(backend: &mut ToggleServiceClient<Channel>, ods: &str) -> (S, R) {
    let p = backend
        .get_practice_feature(pb::GetPracticeFeatureRequest {
            name: practice_feature(ods),
            explain: false,
        })
        .await
        .expect("get practice feature")
        .into_inner();
    (p.state(), p.reason())
}

/// Polls the practice's answer every 50 ms until it is `want`, for at most `within`; returns
/// when it was first seen.
async fn wait_for(
    backend: &mut ToggleServiceClient<Channel>,
    ods: &str,
    want: (S, R),
    within: Duration,
) -> Instant {
    let deadline = Instant::now() + within;
    loop {
        let now = answer(backend, ods).await;
        if now == want {
            return Instant::now();
        }
        assert!(
            Instant::now() < deadline,
            "{ods} still answers {now:?}, not {want:?}, after {within:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Heartbeats with `target` every [`HEARTBEAT`], each followed by `refused` (a command the
/// supplier cannot apply), until `stop`; returns how many heartbeats were answered.
fn heartbeats(
    mut control: ControlServiceClient<Channel>,
    target: i64,
    refused: pb::ApplyCommandRequest,
    mut stop: watch::Receiver<bool>,
) -> tokio::task::JoinHandle<u32> {
    tokio::spawn(async move {
        let mut answered = 0;
        loop {
            let state = control
                .get_sync_state(pb::GetSyncStateRequest {
                    target_sequence: target,
                })
                .await
                .expect("the supplier answers every heartbeat")
                .into_inner();
            assert!(state.applied_sequence < target, "behind, as the test has it");
            answered += 1;
            control
                .apply_command(refused.clone())
                .await
                .expect_err("the supplier cannot apply it");
            tokio::select! {
                _ = tokio::time::sleep(HEARTBEAT) => {}
                _ = stop.wait_for(|s| *s) => return answered,
            }
        }
    })
}

/// Waits, heartbeating behind, until the fail-closed feature goes off at EMIS_A; checks that
/// it went off no sooner than the TTL after `last_counted` (the last call that counted) and
/// that the heartbeats went on meanwhile.
async fn goes_stale_while_in_contact(
    backend: &mut ToggleServiceClient<Channel>,
    control: &ControlServiceClient<Channel>,
    target: i64,
    refused: pb::ApplyCommandRequest,
    last_counted: Instant,
) {
    let (stop, stopped) = watch::channel(false);
    let beats = heartbeats(control.clone(), target, refused, stopped);
    let off = wait_for(
        backend,
        EMIS_A,
        (S::Disabled, R::ControlStale),
        MIN_CONTROL_TTL + Duration::from_secs(10),
    )
    .await;
    stop.send_replace(true);
    let answered = beats.await.expect("heartbeats");
    let after = off.duration_since(last_counted);
    assert!(
        after >= MIN_CONTROL_TTL - Duration::from_millis(500),
        "off {after:?} after the last contact that counted, not before the TTL"
    );
    let at_least = u32::try_from((after.as_millis() / HEARTBEAT.as_millis()) / 2).unwrap_or(0);
    assert!(
        answered >= at_least,
        "in contact all along: {answered} heartbeats answered in {after:?}"
    );
    println!("off {after:?} after the last contact that counted, {answered} heartbeats answered meanwhile");
}

/// Waits until EMIS_A is on again, within 5 s of `caught_up` (when the call that brought the
/// supplier up to the target was made).
async fn comes_back(backend: &mut ToggleServiceClient<Channel>, caught_up: Instant) {
    let back = wait_for(backend, EMIS_A, (S::Enabled, R::Live), Duration::from_secs(5)).await;
    println!(
        "back on {:?} after the call that caught up",
        back.duration_since(caught_up)
    );
}

#[tokio::test]
async fn a_supplier_behind_goes_stale_while_heartbeating_and_comes_back_when_it_applies_the_target() {
    let (_tmp, files, server) = emis().await;
    let mut control = control(&files, &server);
    let mut backend = toggle(&files, "backend-emis", &server);
    let log = [
        define(1, Some(MIN_CONTROL_TTL)),
        go_live(2, "golive-1", Scope::National, None),
        halt(3, "halt-b", practices(&[EMIS_B])),
        halt(4, "halt-qrp", practices(&[EMIS_QRP])),
    ];
    apply(&mut control, log[0].clone()).await;
    apply(&mut control, log[1].clone()).await;
    let last_counted = Instant::now();
    assert_eq!(answer(&mut backend, EMIS_A).await, (S::Enabled, R::Live));

    // The coordinator's latest is 4; the supplier is sent 4 (a gap: it lacks 3) and refuses it.
    let gap = pb::ApplyCommandRequest {
        command: Some(log[3].clone()),
        ..Default::default()
    };
    goes_stale_while_in_contact(&mut backend, &control, 4, gap, last_counted).await;

    // Applying 3 is not yet up to the target: still off (given time to come back, were it
    // counted: the clock re-evaluates at once after a contact).
    assert_eq!(apply(&mut control, log[2].clone()).await.applied_sequence, 3);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(answer(&mut backend, EMIS_A).await, (S::Disabled, R::ControlStale));

    // Applying 4 brings it up to the target: that call is contact, and the feature is back.
    let caught_up = Instant::now();
    assert_eq!(apply(&mut control, log[3].clone()).await.applied_sequence, 4);
    comes_back(&mut backend, caught_up).await;
    assert_eq!(answer(&mut backend, EMIS_B).await, (S::Disabled, R::Halted));
    server.stop().await;
}

#[tokio::test]
async fn a_supplier_behind_comes_back_when_a_snapshot_brings_it_up_to_the_target() {
    let (_tmp, files, server) = emis().await;
    let mut control = control(&files, &server);
    let mut backend = toggle(&files, "backend-emis", &server);
    let log = [
        define(1, Some(MIN_CONTROL_TTL)),
        go_live(2, "golive-1", Scope::National, None),
        halt(3, "halt-b", practices(&[EMIS_B])),
        halt(4, "halt-qrp", practices(&[EMIS_QRP])),
    ];
    apply(&mut control, log[0].clone()).await;
    apply(&mut control, log[1].clone()).await;
    let last_counted = Instant::now();

    // The coordinator's latest is 4; the supplier is sent 3 as continuing another history (the
    // hash before it is not its own) and refuses it.
    let diverged = pb::ApplyCommandRequest {
        command: Some(log[2].clone()),
        previous_history_hash: history_of(&[&log[0]]).as_bytes().to_vec(),
        ..Default::default()
    };
    goes_stale_while_in_contact(&mut backend, &control, 4, diverged, last_counted).await;

    // A snapshot up to 4 brings it up to the target: back on.
    let base = (2, history_of(&[&log[0], &log[1]]));
    let at4 = history_of(&log.iter().collect::<Vec<_>>());
    let caught_up = Instant::now();
    let replaced = control
        .replace_rules(tokio_stream::iter(snapshot(4, at4, base, log.to_vec())))
        .await
        .expect("replace rules")
        .into_inner();
    assert_eq!(replaced.applied_sequence, 4);
    comes_back(&mut backend, caught_up).await;
    assert_eq!(answer(&mut backend, EMIS_QRP).await, (S::Disabled, R::Halted));
    server.stop().await;
}

/// The window the target closes: a supplier that was out of contact past the TTL catches up one
/// command at a time; the first command it is sent is not the coordinator's latest (a national
/// halt follows it), so it must not count that call as contact and serve the feature again
/// before the halt is in force.
#[tokio::test]
async fn catching_up_counts_as_contact_only_once_every_missed_command_is_in_force() {
    let (_tmp, files, server) = emis().await;
    let mut control = control(&files, &server);
    let mut backend = toggle(&files, "backend-emis", &server);
    apply(&mut control, define(1, Some(MIN_CONTROL_TTL))).await;
    apply(&mut control, go_live(2, "golive-1", Scope::National, None)).await;
    assert_eq!(answer(&mut backend, EMIS_A).await, (S::Enabled, R::Live));
    // Out of contact: the feature goes off by itself.
    wait_for(
        &mut backend,
        EMIS_A,
        (S::Disabled, R::ControlStale),
        MIN_CONTROL_TTL + Duration::from_secs(10),
    )
    .await;
    // Back in contact, sent the first of the two commands it missed.
    control
        .apply_command(pb::ApplyCommandRequest {
            command: Some(halt(3, "halt-b", practices(&[EMIS_B]))),
            previous_history_hash: history_of(&[
                &define(1, Some(MIN_CONTROL_TTL)),
                &go_live(2, "golive-1", Scope::National, None),
            ])
            .as_bytes()
            .to_vec(),
            target_sequence: 4,
        })
        .await
        .expect("sequence 3 applied");
    assert_eq!(
        answer(&mut backend, EMIS_A).await,
        (S::Disabled, R::ControlStale),
        "still off: the coordinator's latest, a national halt, is not in force yet"
    );
    control
        .apply_command(pb::ApplyCommandRequest {
            command: Some(halt(4, "halt-all", Scope::National)),
            target_sequence: 4,
            ..Default::default()
        })
        .await
        .expect("sequence 4 applied");
    assert_eq!(
        answer(&mut backend, EMIS_A).await,
        (S::Disabled, R::Halted),
        "caught up: in contact again, and halted"
    );
    server.stop().await;
}
