//! Watch streams: a snapshot then changes, resumed from a version, scheduled go-lives taking
//! effect, and shutdown ending a stream with the version to resume from.

use std::time::{Duration, SystemTime};

use rollout_core::Scope;
use rollout_proto::v1 as pb;
use tonic::Code;

use super::{R, S, state_of};
use crate::support::{
    assert_refused, define, feature_name, go_live, halt, practice_feature, practices,
    supplier::{EMIS_A, EMIS_B, apply, control, emis, get, toggle},
};

#[tokio::test]
async fn a_watcher_receives_a_halt_and_can_resume() {
    let (_tmp, files, server) = emis().await;
    let mut control = control(&files, &server);
    apply(&mut control, define(1, None)).await;
    apply(&mut control, go_live(2, "golive-1", Scope::National, None)).await;
    let mut backend = toggle(&files, "backend-emis", &server);
    let mut stream = backend
        .watch_practice_features(pb::WatchPracticeFeaturesRequest {
            feature: feature_name(),
            practices: vec![EMIS_A.into(), EMIS_B.to_lowercase()],
            start_version: 0,
        })
        .await
        .expect("watch")
        .into_inner();
    use pb::watch_practice_features_response::EventType as E;
    let first = stream.message().await.expect("stream").expect("snapshot");
    assert_eq!(first.event_type(), E::Snapshot);
    assert_eq!(first.practice_features.len(), 2);
    assert!(first.practice_features.iter().all(|p| p.state() == S::Enabled));
    let complete = stream.message().await.expect("stream").expect("complete");
    assert_eq!(complete.event_type(), E::SnapshotComplete);

    apply(&mut control, halt(3, "halt-1", practices(&[EMIS_A]))).await;
    let change = tokio::time::timeout(Duration::from_secs(10), stream.message())
        .await
        .expect("the halt arrives")
        .expect("stream")
        .expect("change");
    assert_eq!(change.event_type(), E::Change);
    let changed: Vec<_> = change
        .practice_features
        .iter()
        .map(|p| (p.name.clone(), p.state(), p.reason()))
        .collect();
    assert_eq!(
        changed,
        [(practice_feature(EMIS_A), S::Disabled, R::Halted)],
        "only the watched, changed practice"
    );
    assert!(change.cause.contains("halt-1"), "{}", change.cause);
    let seen = change.version;
    drop(stream);

    // Changes made while away arrive on resume, with no snapshot.
    apply(&mut control, halt(4, "halt-2", practices(&[EMIS_B]))).await;
    let mut resumed = backend
        .watch_practice_features(pb::WatchPracticeFeaturesRequest {
            feature: feature_name(),
            practices: vec![],
            start_version: seen,
        })
        .await
        .expect("watch")
        .into_inner();
    let next = resumed.message().await.expect("stream").expect("change");
    assert_eq!(next.event_type(), E::Change);
    assert_eq!(
        next.practice_features
            .iter()
            .map(|p| p.name.clone())
            .collect::<Vec<_>>(),
        [practice_feature(EMIS_B)]
    );
    drop(resumed);
    server.stop().await;
}

#[tokio::test]
async fn scheduled_go_lives_and_control_staleness_reach_watchers() {
    let (_tmp, files, server) = emis().await;
    let mut control = control(&files, &server);
    apply(&mut control, define(1, None)).await;
    let at = SystemTime::now() + Duration::from_millis(700);
    apply(
        &mut control,
        go_live(2, "golive-1", practices(&[EMIS_A]), Some(at)),
    )
    .await;
    let mut backend = toggle(&files, "backend-emis", &server);
    assert_eq!(
        state_of(&get(&mut backend, EMIS_A).await),
        (S::Disabled, R::Scheduled)
    );
    let mut stream = backend
        .watch_practice_features(pb::WatchPracticeFeaturesRequest {
            feature: feature_name(),
            practices: vec![EMIS_A.into()],
            start_version: 0,
        })
        .await
        .expect("watch")
        .into_inner();
    let _snapshot = stream.message().await.expect("stream");
    let _complete = stream.message().await.expect("stream");
    let change = tokio::time::timeout(Duration::from_secs(10), stream.message())
        .await
        .expect("the go-live takes effect")
        .expect("stream")
        .expect("change");
    assert_eq!(change.practice_features[0].state(), S::Enabled);
    assert!(SystemTime::now() >= at);
    assert_eq!(change.cause, "time");
    server.stop().await;
}

#[tokio::test]
async fn shutdown_ends_watch_streams_with_the_version_to_resume_from() {
    let (_tmp, files, server) = emis().await;
    apply(&mut control(&files, &server), define(1, None)).await;
    // The plaintext health port answers without a certificate.
    let mut health = tonic_health::pb::health_client::HealthClient::new(
        tonic::transport::Endpoint::from_shared(format!("http://{}", server.health))
            .expect("endpoint")
            .connect_lazy(),
    );
    let serving = health
        .check(tonic_health::pb::HealthCheckRequest::default())
        .await
        .expect("health");
    assert_eq!(serving.get_ref().status, 1, "SERVING");

    let mut stream = toggle(&files, "backend-emis", &server)
        .watch_practice_features(pb::WatchPracticeFeaturesRequest {
            feature: feature_name(),
            practices: vec![EMIS_A.into()],
            start_version: 0,
        })
        .await
        .expect("watch")
        .into_inner();
    let _snapshot = stream.message().await.expect("snapshot");
    let complete = stream.message().await.expect("stream").expect("complete");
    let stopping = tokio::spawn(server.stop());
    let end = tokio::time::timeout(Duration::from_secs(10), stream.message())
        .await
        .expect("the stream ends")
        .expect_err("with a status");
    assert_refused(&end, Code::Unavailable, "SHUTTING_DOWN", "shutdown");
    assert!(
        end.message().contains(&format!("version {}", complete.version)),
        "{}",
        end.message()
    );
    stopping.await.expect("stopped");
}
