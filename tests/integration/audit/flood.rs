//! A refusal flood: 16 tasks holding the `viewer` certificate call a method they may not, as
//! fast as they can, while the real work goes on. On PostgreSQL (the HA configuration) every
//! operator halt and every command applied must succeed, and the refusals must be in the audit
//! chain, summarised, the chain verifying and counting every refused call.

use std::sync::{
    Arc,
    atomic::{AtomicBool, Ordering::Relaxed},
};

use rollout_core::{Scope, audit::verify_chain};
use rollout_proto::v1::{self as pb, control_service_client::ControlServiceClient};
use rollout_store::{coordinator::CoordinatorStore, supplier::SupplierStore};
use tokio::task::JoinHandle;
use tonic::{Code, Status};

use super::{refused_calls_of, whole_log};
use crate::{
    stack::{Stack, feature_live, national},
    support::{
        FEATURE, assert_refused, channel_as, define, halt, history_of, pg_database,
        supplier::{EMIS_A, control, emis, supplier_files},
    },
};

/// Held by a flood test while it runs: the two floods keep a core busy each, so they take
/// turns rather than starve the rest of the suite together on a small machine.
static ONE_FLOOD_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Tasks flooding the server with refused calls.
const FLOODERS: usize = 16;
/// Halts (or commands) issued during the flood.
const WORK: u64 = 100;
const VIEWER: &str = "spiffe://gprollout.test/viewer";

/// Most events a flood of `elapsed` may take in the audit log: per 10 s window (and one more
/// at each end), the caller's first 5 refusals and one summary.
fn most_events(elapsed: std::time::Duration) -> usize {
    let windows = usize::try_from(elapsed.as_secs() / 10).expect("windows") + 2;
    6 * windows
}

/// Starts [`FLOODERS`] tasks each making `call` until `stop`, every call refused
/// PERMISSION_DENIED `ROLE_REQUIRED`; each returns how many it made.
fn flood<C, F, Fut>(client: impl Fn() -> C, call: F, stop: &Arc<AtomicBool>) -> Vec<JoinHandle<u64>>
where
    C: Send + 'static,
    F: Fn(C) -> Fut + Send + Sync + Clone + 'static,
    Fut: Future<Output = (C, Result<(), Status>)> + Send,
{
    (0..FLOODERS)
        .map(|_| {
            let (mut c, call, stop) = (client(), call.clone(), stop.clone());
            tokio::spawn(async move {
                let mut made = 0;
                while !stop.load(Relaxed) {
                    let (back, result) = call(c).await;
                    c = back;
                    let refused = result.expect_err("the flooder is refused");
                    assert_refused(
                        &refused,
                        Code::PermissionDenied,
                        "ROLE_REQUIRED",
                        "a flooder's call",
                    );
                    made += 1;
                }
                made
            })
        })
        .collect()
}

/// Stops the flood and returns how many calls were refused in all.
async fn stop_flood(stop: &Arc<AtomicBool>, flooders: Vec<JoinHandle<u64>>) -> u64 {
    stop.store(true, Relaxed);
    let mut refused = 0;
    for f in flooders {
        refused += f.await.expect("flooder");
    }
    refused
}

/// The refusal counters as a status API reported them, checked against what the flood made.
#[track_caller]
fn assert_counted(status: Option<&pb::RefusalAudit>, refused: u64, what: &str) {
    let s = status.unwrap_or_else(|| panic!("{what}: no refusal counters"));
    let refused = i64::try_from(refused).expect("count");
    assert_eq!(s.refused_calls, refused, "{what}: {s:?}");
    assert!(
        s.summarised_calls + s.pending_calls >= refused - 200,
        "{what}: nearly every refusal is summarised, not one event each: {s:?}"
    );
    assert!(s.last_error.is_empty(), "{what}: no write failed: {s:?}");
}

#[tokio::test]
async fn a_refusal_flood_at_a_coordinator_on_postgres_never_fails_a_halt() {
    let Some(db) = pg_database().await else { return };
    let _turn = ONE_FLOOD_AT_A_TIME.lock().await;
    let mut stack = Stack::suppliers(None).await;
    stack.coordinator_url = Some(db.url.clone());
    stack.start_coordinator().await;
    feature_live(&stack).await;

    let stop = Arc::new(AtomicBool::new(false));
    let flood_began = std::time::Instant::now();
    let flooders = flood(
        || stack.client("viewer"),
        |mut c| async move {
            let r = c
                .halt_feature(pb::HaltFeatureRequest {
                    name: format!("features/{FEATURE}"),
                    scope: Some(national()),
                    reason: "a viewer trying its luck".into(),
                    ..Default::default()
                })
                .await;
            (c, r.map(|_| ()))
        },
        &stop,
    );
    let mut alice = stack.client("alice");
    let began = std::time::Instant::now();
    let mut halts = Vec::new();
    for n in 0..WORK {
        let halt = alice
            .halt_feature(pb::HaltFeatureRequest {
                name: format!("features/{FEATURE}"),
                scope: Some(pb::Scope {
                    target: Some(pb::scope::Target::Practices(pb::scope::PracticeList {
                        practices: vec![EMIS_A.into()],
                    })),
                }),
                reason: format!("halt {n} during a refusal flood"),
                ..Default::default()
            })
            .await
            .unwrap_or_else(|e| panic!("operator halt {n} of {WORK} failed during the flood: {e:?}"));
        halts.push(halt.into_inner().name);
    }
    let took = began.elapsed();
    let refused = stop_flood(&stop, flooders).await;
    assert!(refused >= 500, "the flood made only {refused} calls");
    let status = stack
        .client("viewer")
        .list_suppliers(pb::ListSuppliersRequest::default())
        .await
        .expect("list suppliers")
        .into_inner();
    assert_counted(
        status.coordinator_refusal_audit.as_ref(),
        refused,
        "the coordinator",
    );
    let shown = crate::cli::text(&crate::cli::ctl(&stack, "viewer", &["status"]).await);
    let count = refused.to_string();
    assert!(
        shown
            .lines()
            .any(|l| l.starts_with("coordinator") && l.split_whitespace().nth(1) == Some(count.as_str())),
        "rolloutctl status shows the coordinator's refusals: {shown}"
    );
    stack.stop().await;
    let flood_took = flood_began.elapsed();

    // Stopped: the last window's summaries are written. The chain, read from the store.
    let store = rollout_store::coordinator::SqlCoordinatorStore::open(&db.url)
        .await
        .expect("open");
    let events = whole_log(|after| {
        let store = store.clone();
        async move { store.list_audit(after, 1_000).await.expect("audit") }
    })
    .await;
    store.close().await;
    assert_eq!(
        verify_chain(&events),
        Ok(events.len() as u64),
        "the chain verifies"
    );
    assert_eq!(
        refused_calls_of(&events, VIEWER),
        refused,
        "every refused call is counted"
    );
    let viewer_events = events.iter().filter(|e| e.draft.identity == VIEWER).count();
    assert!(
        viewer_events <= most_events(flood_took)
            && events.iter().any(|e| e.draft.is_summary() && e.draft.calls > 100),
        "{refused} refusals in {viewer_events} events in {flood_took:?}, summarised"
    );
    eprintln!(
        "coordinator flood: {WORK} halts in {took:.1?} while {FLOODERS} viewers made {refused} refused \
         calls, recorded in {viewer_events} events (summaries: {}); chain of {} events verified",
        events.iter().filter(|e| e.draft.is_summary()).count(),
        events.len()
    );
    let accepted: Vec<_> = events
        .iter()
        .filter(|e| e.draft.action.ends_with("/HaltFeature") && e.draft.identity.ends_with("/alice"))
        .map(|e| e.draft.command.clone())
        .collect();
    assert_eq!(
        accepted, halts,
        "every halt's event, naming its command, in order"
    );
    db.drop().await;
}

#[tokio::test]
async fn a_refusal_flood_at_a_supplier_on_postgres_never_fails_a_command() {
    let Some(db) = pg_database().await else { return };
    let _turn = ONE_FLOOD_AT_A_TIME.lock().await;
    let (tmp, _, sqlite) = emis().await;
    sqlite.stop().await;
    let mut files = supplier_files(tmp.path(), &tmp.path().join("pki"), "emis");
    files.database_url = Some(db.url.clone());
    let server = files.start(None).await;

    let stop = Arc::new(AtomicBool::new(false));
    let flood_began = std::time::Instant::now();
    let flooders = flood(
        || ControlServiceClient::new(channel_as(&files.pki, "viewer", server.addr)),
        |mut c| async move {
            let r = c
                .apply_command(pb::ApplyCommandRequest {
                    command: Some(halt(2, "not-from-the-coordinator", Scope::National)),
                    ..Default::default()
                })
                .await;
            (c, r.map(|_| ()))
        },
        &stop,
    );
    let mut coordinator = control(&files, &server);
    let began = std::time::Instant::now();
    let mut log = vec![define(1, None)];
    for sequence in 2..=WORK {
        log.push(halt(sequence, &format!("halt-{sequence}"), Scope::National));
    }
    for (n, command) in log.iter().enumerate() {
        let previous = history_of(&log.iter().take(n).collect::<Vec<_>>());
        coordinator
            .apply_command(pb::ApplyCommandRequest {
                command: Some(command.clone()),
                previous_history_hash: previous.as_bytes().to_vec(),
                ..Default::default()
            })
            .await
            .unwrap_or_else(|e| panic!("command {} failed during the flood: {e:?}", n + 1));
    }
    let took = began.elapsed();
    let refused = stop_flood(&stop, flooders).await;
    assert!(refused >= 500, "the flood made only {refused} calls");
    let state = coordinator
        .get_sync_state(pb::GetSyncStateRequest::default())
        .await
        .expect("sync state")
        .into_inner();
    assert_eq!(state.applied_sequence, WORK as i64);
    assert_counted(state.refusal_audit.as_ref(), refused, "the supplier");
    server.stop().await;
    let flood_took = flood_began.elapsed();

    let store = rollout_store::supplier::SqlSupplierStore::open(&db.url)
        .await
        .expect("open");
    let events = whole_log(|after| {
        let store = store.clone();
        async move { store.list_audit(after, 1_000).await.expect("audit") }
    })
    .await;
    store.close().await;
    assert_eq!(
        verify_chain(&events),
        Ok(events.len() as u64),
        "the chain verifies"
    );
    assert_eq!(
        refused_calls_of(&events, VIEWER),
        refused,
        "every refused call is counted"
    );
    let applied: Vec<_> = events
        .iter()
        .filter(|e| e.draft.action.ends_with("/ApplyCommand") && e.draft.outcome.as_str() == "accepted")
        .map(|e| e.draft.command.clone())
        .collect();
    let expected: Vec<_> = log.iter().map(|c| c.name.clone()).collect();
    assert_eq!(
        applied, expected,
        "each command applied once, its event naming it"
    );
    let viewer_events = events.iter().filter(|e| e.draft.identity == VIEWER).count();
    assert!(
        viewer_events <= most_events(flood_took),
        "{refused} refusals in {viewer_events} events in {flood_took:?}"
    );
    eprintln!(
        "supplier flood: {WORK} commands applied in {took:.1?} while {FLOODERS} viewers made {refused} \
         refused calls, recorded in {viewer_events} events; chain of {} events verified",
        events.len()
    );
    db.drop().await;
}
