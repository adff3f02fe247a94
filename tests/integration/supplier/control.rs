//! The control service: commands applied in order and once, snapshots that resynchronise but
//! never go back, a change freeze, and a fail-closed feature when control goes stale.

use std::time::Duration;

use rollout_core::Scope;
use rollout_proto::v1 as pb;
use tonic::Code;

use super::{R, S, deciding, state_of};
use crate::support::{
    assert_refused, define, feature_name, go_live, halt, history_of, practices, resume, snapshot,
    supplier::{EMIS_A, EMIS_B, apply, control, emis, get, supplier_files, toggle},
};

#[tokio::test]
async fn apply_command_is_ordered_idempotent_and_a_snapshot_resyncs_but_never_goes_back() {
    let (_tmp, files, server) = emis().await;
    let mut backend = toggle(&files, "backend-emis", &server);
    let mut control = control(&files, &server);
    let first = apply(&mut control, define(1, None)).await;

    // A repeat answers as before.
    let again = apply(&mut control, define(1, None)).await;
    assert_eq!((again.applied_sequence, again.apply_time), (1, first.apply_time));

    // A gap is refused with the applied sequence.
    let gap = control
        .apply_command(pb::ApplyCommandRequest {
            command: Some(halt(3, "halt-1", Scope::National)),
            ..Default::default()
        })
        .await
        .expect_err("gap");
    assert_refused(&gap, Code::FailedPrecondition, "SEQUENCE_GAP", "gap");
    let info = tonic_types::StatusExt::get_error_details(&gap)
        .error_info()
        .cloned()
        .expect("info");
    assert_eq!(
        info.metadata.get("applied_sequence").map(String::as_str),
        Some("1")
    );

    // The same sequence with another command is a conflict, not a silent success.
    let conflict = control
        .apply_command(pb::ApplyCommandRequest {
            command: Some(halt(1, "halt-x", Scope::National)),
            ..Default::default()
        })
        .await
        .expect_err("conflict");
    assert_refused(
        &conflict,
        Code::FailedPrecondition,
        "HISTORY_DIVERGED",
        "conflict",
    );

    // The coordinator repairs the gap with a snapshot of the effective state as of 4: the
    // go-live at 4 was rejected here, so it is not in the snapshot; the resume at 4 is not
    // either (its effect is the halt that is absent).
    let log = [
        define(1, None),
        go_live(2, "golive-1", Scope::National, None),
        halt(3, "halt-1", practices(&[EMIS_A])),
        go_live(4, "golive-2", practices(&[EMIS_B]), None),
    ];
    let base = (1, history_of(&[&log[0]]));
    let at4 = history_of(&log.iter().collect::<Vec<_>>());
    let effective = log[..3].to_vec();

    // A transfer cut short (no last chunk) changes nothing.
    let mut cut = snapshot(4, at4, base, effective.clone());
    cut.pop();
    let broken = control
        .replace_rules(tokio_stream::iter(cut))
        .await
        .expect_err("a cut transfer is refused");
    assert_refused(&broken, Code::Aborted, "SNAPSHOT_INCOMPLETE", "cut snapshot");
    assert_eq!(
        state_of(&get(&mut backend, EMIS_A).await),
        (S::Disabled, R::NotLive),
        "nothing of a cut transfer is applied"
    );

    // A snapshot built on another history is refused, naming both sequences.
    let other = (1, history_of(&[&define(1, Some(Duration::from_secs(60)))]));
    let other_base = pb::ReplaceRulesRequest {
        header: Some(pb::replace_rules_request::Header {
            base_history_hash: history_of(&[&halt(1, "not-the-definition", Scope::National)])
                .as_bytes()
                .to_vec(),
            ..snapshot(4, at4, other, vec![])[0].header.clone().expect("header")
        }),
        last: true,
        ..Default::default()
    };
    let diverged = control
        .replace_rules(tokio_stream::iter(vec![other_base]))
        .await
        .expect_err("another history");
    assert_refused(
        &diverged,
        Code::FailedPrecondition,
        "HISTORY_DIVERGED",
        "diverged snapshot",
    );

    let replaced = control
        .replace_rules(tokio_stream::iter(snapshot(4, at4, base, effective)))
        .await
        .expect("replace rules")
        .into_inner();
    assert_eq!((replaced.applied_sequence, replaced.command_count), (4, 3));
    assert_eq!(
        state_of(&get(&mut backend, EMIS_A).await),
        (S::Disabled, R::Halted)
    );
    let b = get(&mut backend, EMIS_B).await;
    assert_eq!(
        deciding(&b),
        Some("commands/golive-1"),
        "the rejected go-live is not a rule"
    );

    // Never back: a snapshot older than what is applied is refused with both sequences.
    let older = control
        .replace_rules(tokio_stream::iter(snapshot(
            3,
            history_of(&[&log[0], &log[1], &log[2]]),
            (3, history_of(&[&log[0], &log[1], &log[2]])),
            vec![define(1, None)],
        )))
        .await
        .expect_err("an older snapshot");
    assert_refused(
        &older,
        Code::FailedPrecondition,
        "SUPPLIER_AHEAD",
        "older snapshot",
    );
    let info = tonic_types::StatusExt::get_error_details(&older)
        .error_info()
        .cloned()
        .expect("info");
    assert_eq!(
        (
            info.metadata.get("applied_sequence").map(String::as_str),
            info.metadata.get("snapshot_sequence").map(String::as_str)
        ),
        (Some("4"), Some("3"))
    );
    assert_eq!(
        state_of(&get(&mut backend, EMIS_A).await),
        (S::Disabled, R::Halted),
        "a refused snapshot lifts nothing"
    );

    // Nor can a snapshot at the applied sequence rewrite what was applied here: the same
    // sequence and history, but without the halt and the go-live in force.
    let emptied = control
        .replace_rules(tokio_stream::iter(snapshot(
            4,
            at4,
            (4, at4),
            vec![define(1, None)],
        )))
        .await
        .expect_err("a snapshot that drops rules applied here");
    assert_refused(
        &emptied,
        Code::FailedPrecondition,
        "HISTORY_DIVERGED",
        "emptying snapshot",
    );
    let foreign = control
        .replace_rules(tokio_stream::iter(snapshot(
            4,
            at4,
            (4, at4),
            vec![
                define(1, None),
                go_live(2, "golive-1", Scope::National, None),
                halt(3, "halt-1", practices(&[EMIS_A])),
                halt(4, "halt-never-applied", Scope::National),
            ],
        )))
        .await
        .expect_err("a snapshot that adds a rule at an applied sequence");
    assert_refused(
        &foreign,
        Code::FailedPrecondition,
        "HISTORY_DIVERGED",
        "foreign snapshot",
    );
    assert_eq!(
        (
            state_of(&get(&mut backend, EMIS_A).await),
            state_of(&get(&mut backend, EMIS_B).await)
        ),
        ((S::Disabled, R::Halted), (S::Enabled, R::Live)),
        "refused snapshots change nothing"
    );

    // A command that does not continue the applied history is refused.
    let wrong = control
        .apply_command(pb::ApplyCommandRequest {
            command: Some(halt(5, "halt-2", Scope::National)),
            previous_history_hash: history_of(&[&log[0]]).as_bytes().to_vec(),
            ..Default::default()
        })
        .await
        .expect_err("wrong history");
    assert_refused(
        &wrong,
        Code::FailedPrecondition,
        "HISTORY_DIVERGED",
        "wrong previous hash",
    );

    let next = control
        .apply_command(pb::ApplyCommandRequest {
            command: Some(halt(5, "halt-2", Scope::National)),
            previous_history_hash: at4.as_bytes().to_vec(),
            ..Default::default()
        })
        .await
        .expect("a command that continues the history")
        .into_inner();
    assert_eq!(next.applied_sequence, 5);
    assert_eq!(
        state_of(&get(&mut backend, EMIS_B).await),
        (S::Disabled, R::Halted)
    );
    server.stop().await;
}

#[tokio::test]
async fn a_freeze_rejects_go_live_and_resume_but_applies_a_halt() {
    rollout_net::tls::install_crypto_provider();
    let tmp = tempfile::tempdir().expect("tempdir");
    let pki = tmp.path().join("pki");
    rolloutctl::pki::init(&pki, false).expect("pki");
    let files = supplier_files(tmp.path(), &pki, "emis");
    let server = files.start(Some("winter pressures change freeze")).await;
    let mut control = control(&files, &server);
    let mut backend = toggle(&files, "backend-emis", &server);
    apply(&mut control, define(1, None)).await;
    let rejected = apply(&mut control, go_live(2, "golive-1", Scope::National, None)).await;
    assert_eq!(rejected.outcome(), pb::apply_command_response::Outcome::Rejected);
    assert!(
        rejected.rejection_reason.contains("winter pressures"),
        "{}",
        rejected.rejection_reason
    );
    assert_eq!(rejected.applied_sequence, 2, "the sequence still advances");
    assert_eq!(
        state_of(&get(&mut backend, EMIS_A).await),
        (S::Disabled, R::NotLive)
    );
    let halted = apply(&mut control, halt(3, "halt-1", Scope::National)).await;
    assert_eq!(halted.outcome(), pb::apply_command_response::Outcome::Applied);
    assert_eq!(
        state_of(&get(&mut backend, EMIS_A).await),
        (S::Disabled, R::Halted)
    );
    let resumed = apply(&mut control, resume(4, "resume-1", &["halt-1"])).await;
    assert_eq!(resumed.outcome(), pb::apply_command_response::Outcome::Rejected);
    assert_eq!(
        state_of(&get(&mut backend, EMIS_A).await),
        (S::Disabled, R::Halted)
    );
    let sync = control
        .get_sync_state(pb::GetSyncStateRequest::default())
        .await
        .expect("sync")
        .into_inner();
    assert!(sync.frozen);
    assert_eq!(sync.freeze_reason, "winter pressures change freeze");
    server.stop().await;
}

#[tokio::test]
async fn a_fail_closed_feature_turns_off_when_control_goes_stale_and_back_on_at_contact() {
    let (_tmp, files, server) = emis().await;
    let mut control = control(&files, &server);
    // The shortest TTL a feature may declare; nothing but the test's own calls heartbeats.
    apply(
        &mut control,
        define(1, Some(rollout_core::rules::MIN_CONTROL_TTL)),
    )
    .await;
    apply(&mut control, go_live(2, "golive-1", Scope::National, None)).await;
    let mut backend = toggle(&files, "backend-emis", &server);
    let mut stream = backend
        .watch_practice_features(pb::WatchPracticeFeaturesRequest {
            feature: feature_name(),
            practices: vec![EMIS_A.into()],
            start_version: 0,
        })
        .await
        .expect("watch")
        .into_inner();
    let snapshot = stream.message().await.expect("stream").expect("snapshot");
    assert_eq!(snapshot.practice_features[0].state(), S::Enabled);
    let _complete = stream.message().await.expect("stream");

    let stale = tokio::time::timeout(Duration::from_secs(30), stream.message())
        .await
        .expect("staleness is published")
        .expect("stream")
        .expect("change");
    let p = &stale.practice_features[0];
    assert_eq!((p.state(), p.reason()), (S::Disabled, R::ControlStale));
    assert_eq!(
        state_of(&get(&mut backend, EMIS_A).await),
        (S::Disabled, R::ControlStale)
    );

    // The coordinator's next heartbeat brings it back.
    control
        .get_sync_state(pb::GetSyncStateRequest::default())
        .await
        .expect("heartbeat");
    let back = tokio::time::timeout(Duration::from_secs(10), stream.message())
        .await
        .expect("contact is published")
        .expect("stream")
        .expect("change");
    assert_eq!(back.practice_features[0].state(), S::Enabled);
    server.stop().await;
}

/// The next message of a WatchSyncState stream, within 10 s.
async fn next_state(stream: &mut tonic::Streaming<pb::SyncState>) -> pb::SyncState {
    tokio::time::timeout(Duration::from_secs(10), stream.message())
        .await
        .expect("a state within 10 s")
        .expect("the stream is open")
        .expect("a state, not the end")
}

#[tokio::test]
async fn watch_sync_state_sends_the_state_then_each_change_and_ends_on_shutdown() {
    let (_tmp, files, server) = emis().await;
    let mut control = control(&files, &server);
    let mut stream = control
        .watch_sync_state(pb::WatchSyncStateRequest {})
        .await
        .expect("watch")
        .into_inner();
    let first = next_state(&mut stream).await;
    assert_eq!(
        (
            first.supplier.as_str(),
            first.applied_sequence,
            first.history_hash.clone()
        ),
        ("suppliers/emis", 0, vec![0; 32]),
        "the state at once"
    );

    // Each command applied is one message, with the history hash at its sequence.
    let define = define(1, None);
    apply(&mut control, define.clone()).await;
    let second = next_state(&mut stream).await;
    assert_eq!(
        (second.applied_sequence, second.history_hash),
        (1, history_of(&[&define]).as_bytes().to_vec())
    );
    // A repeat changes nothing and sends nothing: the next message is the next command's.
    apply(&mut control, define.clone()).await;
    let halt = halt(2, "halt-1", Scope::National);
    apply(&mut control, halt.clone()).await;
    let third = next_state(&mut stream).await;
    assert_eq!(
        (third.applied_sequence, third.history_hash),
        (2, history_of(&[&define, &halt]).as_bytes().to_vec())
    );

    // Stopping the supplier ends the stream, saying why.
    let stopped = tokio::spawn(server.stop());
    let end = tokio::time::timeout(Duration::from_secs(10), stream.message())
        .await
        .expect("the stream ends within 10 s of the shutdown");
    match end {
        Err(status) => assert_refused(&status, Code::Unavailable, "SHUTTING_DOWN", "shutdown"),
        Ok(other) => panic!("expected UNAVAILABLE at shutdown, got {other:?}"),
    }
    stopped.await.expect("server stopped");
}
