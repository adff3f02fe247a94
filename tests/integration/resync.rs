//! The coordinator notices a supplier that went away through its WatchSyncState stream, not at
//! its next heartbeat: a supplier restarted on an empty store is resynchronised long before a
//! 60 s heartbeat could fire; a supplier without the method is still checked at every heartbeat.

use std::{
    pin::Pin,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use rollout_proto::v1::{
    self as pb,
    control_service_server::{ControlService, ControlServiceServer},
    practice_feature::{Reason as R, State as S},
};
use tokio::time::Instant;
use tonic::{Request, Response, Status};

use crate::{
    stack::{Stack, delivered, feature_live, halt, suppliers_until},
    support::{Running, practice_feature},
};

/// Polls emis until it answers `want` for its practice at `sequence`; returns how long it took.
async fn emis_answers(stack: &Stack, want: (S, R), sequence: i64, within: Duration) -> Duration {
    let started = Instant::now();
    let name = practice_feature(&stack.practice_of("emis"));
    loop {
        let got = stack
            .backend("emis")
            .get_practice_feature(pb::GetPracticeFeatureRequest {
                name: name.clone(),
                explain: false,
            })
            .await
            .map(|r| {
                let r = r.into_inner();
                (r.state(), r.reason(), r.applied_sequence)
            });
        if matches!(&got, Ok((s, r, q)) if (*s, *r, *q) == (want.0, want.1, sequence)) {
            return started.elapsed();
        }
        assert!(
            started.elapsed() < within,
            "emis does not answer {want:?} at sequence {sequence} within {within:?}: {got:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn a_supplier_restarted_on_an_empty_store_is_resynchronised_before_any_heartbeat() {
    let mut stack = Stack::suppliers(None).await;
    // A heartbeat that cannot fire during the test: only the state watch can prompt a sync.
    stack.heartbeat = Duration::from_secs(60);
    stack.start_coordinator().await;
    feature_live(&stack).await;
    let h = halt(
        &stack,
        pb::Scope {
            target: Some(pb::scope::Target::Supplier("emis".into())),
        },
    )
    .await;
    delivered(&stack, &h.name).await;

    for round in 0..2 {
        stack.stop_supplier("emis").await;
        let db = stack.suppliers["emis"].0.database.clone();
        for suffix in ["", "-wal", "-shm"] {
            let _ = std::fs::remove_file(format!("{}{suffix}", db.display()));
        }
        stack.start_supplier("emis").await;
        // Restarted, it answers from an empty store until the coordinator sends the snapshot.
        let took = emis_answers(
            &stack,
            (S::Disabled, R::Halted),
            h.sequence,
            Duration::from_secs(20),
        )
        .await;
        assert!(
            took < Duration::from_secs(20),
            "round {round}: resynchronised {took:?} after the restart, with a 60 s heartbeat"
        );
    }

    // The coordinator recorded the resync: emis is in step with the log again, and its view
    // shows the state after the snapshot (every practice halted), not the empty store's counts
    // it reported on noticing, long before the 60 s heartbeat (the coordinator asks again
    // after a snapshot).
    let list = suppliers_until(
        &stack,
        Duration::from_secs(20),
        "every supplier at the halt, emis's counts those after the snapshot",
        |list| {
            list.iter().all(|s| s.applied_sequence == h.sequence)
                && list
                    .iter()
                    .find(|s| s.name == "suppliers/emis")
                    .and_then(|s| s.feature_counts.first())
                    .is_some_and(|c| c.halted > 0)
        },
    )
    .await;
    let emis = list
        .iter()
        .find(|s| s.name == "suppliers/emis")
        .expect("emis listed");
    let counts = emis.feature_counts.first().expect("the feature's counts");
    assert!(
        counts.unknown == 0 && counts.enabled == 0,
        "emis's counts after the resync: {counts:?}"
    );
    stack.stop().await;
}

/// A supplier of a version before WatchSyncState: at sequence 0 with an empty history, it
/// counts the GetSyncState heartbeats and the attempts to watch, which it does not implement.
#[derive(Clone, Default)]
struct OlderSupplier {
    heartbeats: Arc<AtomicUsize>,
    watches: Arc<AtomicUsize>,
}

#[tonic::async_trait]
impl ControlService for OlderSupplier {
    async fn apply_command(
        &self,
        _: Request<pb::ApplyCommandRequest>,
    ) -> Result<Response<pb::ApplyCommandResponse>, Status> {
        Err(Status::unavailable("not in this test"))
    }

    async fn get_sync_state(
        &self,
        _: Request<pb::GetSyncStateRequest>,
    ) -> Result<Response<pb::SyncState>, Status> {
        self.heartbeats.fetch_add(1, Ordering::SeqCst);
        Ok(Response::new(pb::SyncState {
            supplier: "suppliers/emis".into(),
            history_hash: vec![0; 32],
            ..Default::default()
        }))
    }

    type WatchSyncStateStream =
        Pin<Box<dyn tokio_stream::Stream<Item = Result<pb::SyncState, Status>> + Send>>;

    async fn watch_sync_state(
        &self,
        _: Request<pb::WatchSyncStateRequest>,
    ) -> Result<Response<Self::WatchSyncStateStream>, Status> {
        self.watches.fetch_add(1, Ordering::SeqCst);
        // What a server without the method answers.
        Err(Status::unimplemented("unknown method WatchSyncState"))
    }

    async fn replace_rules(
        &self,
        _: Request<tonic::Streaming<pb::ReplaceRulesRequest>>,
    ) -> Result<Response<pb::ReplaceRulesResponse>, Status> {
        Err(Status::unavailable("not in this test"))
    }

    async fn list_applied_commands(
        &self,
        _: Request<pb::ListAppliedCommandsRequest>,
    ) -> Result<Response<pb::ListAppliedCommandsResponse>, Status> {
        Err(Status::unavailable("not in this test"))
    }

    async fn list_opt_out_changes(
        &self,
        _: Request<pb::ListOptOutChangesRequest>,
    ) -> Result<Response<pb::ListOptOutChangesResponse>, Status> {
        // Older than the national opt-out register.
        Err(Status::unimplemented("unknown method ListOptOutChanges"))
    }

    async fn import_opt_outs(
        &self,
        _: Request<pb::ImportOptOutsRequest>,
    ) -> Result<Response<pb::ImportOptOutsResponse>, Status> {
        Err(Status::unimplemented("unknown method ImportOptOuts"))
    }
}

#[tokio::test]
async fn a_supplier_without_the_state_watch_is_still_checked_at_every_heartbeat() {
    let mut stack = Stack::suppliers(None).await;
    // emis is replaced by an older version, on its port with its certificate.
    stack.stop_supplier("emis").await;
    let older = OlderSupplier::default();
    let tls = rollout_net::tls::ReloadingServerConfig::load(rollout_net::TlsFiles::from_pki_dir(
        &stack.pki,
        "supplier-emis",
    ))
    .expect("tls");
    let service = older.clone();
    let server = Running::start_at(stack.suppliers["emis"].2, |listener, _health, stop| async move {
        rollout_net::server::builder()
            .add_service(ControlServiceServer::new(service))
            .serve_with_incoming_shutdown(rollout_net::tls::incoming(listener, tls), async {
                let _ = stop.await;
            })
            .await
    })
    .await;
    stack.heartbeat = Duration::from_millis(200);
    stack.start_coordinator().await;

    // Heartbeats go on; the watch was asked for once and not again at every heartbeat.
    let end = Instant::now() + Duration::from_secs(20);
    while older.heartbeats.load(Ordering::SeqCst) < 5 {
        assert!(
            Instant::now() < end,
            "5 heartbeats within 20 s at a 200 ms heartbeat: {}",
            older.heartbeats.load(Ordering::SeqCst)
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        older.watches.load(Ordering::SeqCst),
        1,
        "the watch is asked for once"
    );
    let emis = stack
        .client("viewer")
        .get_supplier(pb::GetSupplierRequest {
            name: "suppliers/emis".into(),
        })
        .await
        .expect("get supplier")
        .into_inner();
    assert_eq!(emis.last_error, "", "{emis:?}");
    stack.stop().await;
    server.stop().await;
}
