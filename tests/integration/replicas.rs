//! Several replicas on one PostgreSQL database.

use std::time::Duration;

use rollout_core::Scope;
use rollout_proto::v1::{self as pb, practice_feature::Reason as R, practice_feature::State as S};

use crate::{
    supplier::{EMIS_A, EMIS_B, apply, control, get, supplier_files, toggle},
    support::{define, feature_name, go_live, halt, pg_database, practices},
};

#[tokio::test]
async fn a_halt_applied_through_one_supplier_replica_is_answered_by_another() {
    let Some(db) = pg_database().await else { return };
    rollout_net::tls::install_crypto_provider();
    let tmp = tempfile::tempdir().expect("tempdir");
    let pki = tmp.path().join("pki");
    rolloutctl::pki::init(&pki, false).expect("pki");
    let mut files = supplier_files(tmp.path(), &pki, "emis");
    files.database_url = Some(db.url.clone());
    let a = files.start(None).await;
    let b = files.start(None).await;

    let mut control_a = control(&files, &a);
    apply(&mut control_a, define(1, None)).await;
    apply(&mut control_a, go_live(2, "golive-1", Scope::National, None)).await;

    // A watcher on replica B.
    let mut backend_b = toggle(&files, "backend-emis", &b);
    let mut stream = backend_b
        .watch_practice_features(pb::WatchPracticeFeaturesRequest {
            feature: feature_name(),
            practices: vec![EMIS_A.into()],
            start_version: 0,
        })
        .await
        .expect("watch on B")
        .into_inner();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    // Until B has caught up with the go-live, its snapshot or first changes may show it off.
    loop {
        let msg = tokio::time::timeout_at(deadline, stream.message())
            .await
            .expect("B catches up")
            .expect("stream")
            .expect("message");
        if msg.practice_features.iter().any(|p| p.state() == S::Enabled) {
            break;
        }
    }

    // The halt goes through A; B answers it and B's watcher receives it.
    apply(&mut control_a, halt(3, "halt-1", practices(&[EMIS_A]))).await;
    let change = loop {
        let msg = tokio::time::timeout_at(deadline, stream.message())
            .await
            .expect("the halt reaches B's watcher")
            .expect("stream")
            .expect("message");
        if let Some(p) = msg.practice_features.iter().find(|p| p.state() == S::Disabled) {
            break p.clone();
        }
    };
    assert_eq!(change.reason(), R::Halted);
    let answer = get(&mut backend_b, EMIS_A).await;
    assert_eq!(
        (answer.state(), answer.reason(), answer.applied_sequence),
        (S::Disabled, R::Halted, 3)
    );

    // ApplyCommand stays exactly-once across replicas: the same sequence through B answers as
    // A did, and the next one through B is seen by A.
    let mut control_b = control(&files, &b);
    let first = apply(&mut control_a, halt(3, "halt-1", practices(&[EMIS_A]))).await;
    let again = apply(&mut control_b, halt(3, "halt-1", practices(&[EMIS_A]))).await;
    assert_eq!(
        (again.applied_sequence, again.apply_time),
        (first.applied_sequence, first.apply_time)
    );
    apply(&mut control_b, halt(4, "halt-2", practices(&[EMIS_B]))).await;
    let mut backend_a = toggle(&files, "backend-emis", &a);
    loop {
        let on_a = get(&mut backend_a, EMIS_B).await;
        if (on_a.state(), on_a.applied_sequence) == (S::Disabled, 4) {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "A sees what was applied through B: {on_a:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    drop(stream);
    a.stop().await;
    b.stop().await;
    db.drop().await;
}
