//! One conformance suite per store, run against SQLite always and against PostgreSQL whenever
//! `ROLLOUT_TEST_DATABASE_URL` is set (in CI it must be), each run in a fresh database.

use std::time::{Duration, SystemTime};

use rollout_core::{
    OptOut, Practice,
    audit::{AuditDraft, AuditOutcome, verify_chain},
};
use rollout_store::{
    RequestRecord, StoreError,
    coordinator::{
        CommandAction, CommandQuery, CommandRow, CommandState, CoordinatorStore, DeliveryRow, DeliveryState,
        LegacyRows, Record, SqlCoordinatorStore, Upgrade, Write,
    },
    supplier::{OptOutRecord, Origin, SqlSupplierStore, StoredCommand, SupplierStore, SyncPoint, Withdrawal},
};

use crate::support::pg_database;

mod audit_chain;
mod coordinator;
mod register;
mod requests;

pub(crate) fn audit(action: &str) -> AuditDraft {
    AuditDraft {
        identity: "spiffe://gprollout.test/coordinator".into(),
        action: action.into(),
        target: "t".into(),
        outcome: AuditOutcome::Accepted,
        reason: "conformance".into(),
        request_id: String::new(),
        ..rollout_core::audit::AuditDraft::default()
    }
}

pub(crate) fn at(secs: u64) -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000 + secs)
}

fn command(sequence: u64, rejected: bool) -> StoredCommand {
    StoredCommand {
        sequence,
        id: format!("c{sequence}"),
        feature: "prospective-record-access".into(),
        body: vec![sequence as u8, 1, 2, 3],
        rejection: rejected.then(|| "freeze".into()),
        applied_at: at(sequence),
        effective: !rejected,
    }
}

/// A command that is history only (a resume, or a halt once lifted).
fn retired(sequence: u64) -> StoredCommand {
    StoredCommand {
        effective: false,
        ..command(sequence, false)
    }
}

fn sync(sequence: u64) -> SyncPoint {
    SyncPoint {
        applied_sequence: sequence,
        history_hash: format!("{sequence:064x}"),
        applied_at: at(sequence),
    }
}

pub(crate) fn practices() -> Vec<Practice> {
    let (p, m) = crate::support::reference_files();
    rollout_store::reference::read_estate(&p, &m)
        .expect("estate")
        .for_supplier(&"emis".parse().expect("emis"))
        .practices()
        .take(50)
        .cloned()
        .collect()
}

/// The supplier store's contract.
async fn supplier_suite(url: &str) {
    let store = SqlSupplierStore::open(url).await.expect("open");
    let empty = store.load().await.expect("load");
    assert_eq!(
        (
            empty.commands.len(),
            empty.sync,
            empty.version,
            empty.last_contact
        ),
        (0, None, 0, None)
    );

    // 1 defines, 2 halts, 3 resumes (retiring 2), 4 is rejected: only 1 stays in force.
    let hash = |s: u64| sync(s).history_hash;
    store
        .append_command(&command(1, false), &[], &hash(1), 1, audit("apply"))
        .await
        .expect("append 1");
    store
        .append_command(&command(2, false), &[], &hash(2), 2, audit("apply"))
        .await
        .expect("append 2");
    store
        .append_command(&retired(3), &[2], &hash(3), 3, audit("apply"))
        .await
        .expect("append 3");
    store
        .append_command(&command(4, true), &[], &hash(4), 4, audit("apply"))
        .await
        .expect("append 4");
    let gap = store
        .append_command(&command(6, false), &[], &hash(6), 5, audit("apply"))
        .await;
    assert!(
        matches!(gap, Err(StoreError::Conflict(_))),
        "a gap is refused: {gap:?}"
    );
    let again = store
        .append_command(&command(4, false), &[], &hash(4), 5, audit("apply"))
        .await;
    assert!(
        matches!(again, Err(StoreError::Conflict(_))),
        "a repeat is refused: {again:?}"
    );
    assert_eq!(
        store.command_at(2).await.expect("read"),
        Some(retired(2)),
        "a lifted halt stays in the log, marked retired"
    );
    assert_eq!(store.command_at(9).await.expect("read"), None);
    assert_eq!(
        store.list_commands(1, 2).await.expect("list"),
        [retired(2), retired(3)]
    );

    let mut estate = practices();
    let change = store
        .import_estate(&estate, &[], 5, audit("import"))
        .await
        .expect("import");
    assert_eq!((change.added, change.updated, change.removed), (50, 0, 0));
    estate[0].name = "RENAMED PRACTICE".into();
    let gone = estate.pop().expect("a practice");
    let change = store
        .import_estate(&estate, &[], 6, audit("import"))
        .await
        .expect("re-import");
    assert_eq!((change.added, change.updated, change.removed), (0, 1, 1));

    let opt = OptOutRecord {
        opt_out: OptOut {
            practice: estate[1].ods,
            feature: "prospective-record-access".parse().expect("key"),
            reason: "asked".into(),
            source: "letter".into(),
            recorded_by: "admin".into(),
            recorded_at: at(10),
        },
        updated_at: at(10),
        withdrawal: None,
        change: 1,
        origin: Origin::Recorded,
    };
    let request = RequestRecord {
        identity: "admin".into(),
        request_id: "6b2f1c1e-7c38-4c5e-9d6a-0f6e8f1f2a3b".into(),
        fingerprint: vec![9; 32],
        response: vec![1, 2, 3],
    };
    store
        .put_opt_out(&opt, 7, Some(request.clone()), audit("opt-out"))
        .await
        .expect("opt out");
    let withdrawn = OptOutRecord {
        updated_at: at(20),
        withdrawal: Some(Withdrawal {
            by: "admin".into(),
            at: at(20),
            reason: "reviewed".into(),
        }),
        change: 2,
        ..opt.clone()
    };
    store
        .put_opt_out(&withdrawn, 8, None, audit("withdraw"))
        .await
        .expect("withdraw");
    let recall = |identity, id| store.recall_request(identity, id);
    assert_eq!(
        recall("admin", &request.request_id).await.expect("recall"),
        Some(request.clone())
    );
    assert_eq!(recall("admin", "other").await.expect("recall"), None);
    assert_eq!(recall("other", &request.request_id).await.expect("recall"), None);
    store.record_contact(at(30)).await.expect("contact");

    let state = store.load().await.expect("load");
    assert_eq!(
        state.commands,
        [command(1, false)],
        "start-up reads the rules in force only"
    );
    assert_eq!(state.sync, Some(sync(4)));
    assert_eq!(state.practices.len(), 49);
    assert!(state.practices.iter().all(|p| p.ods != gone.ods));
    assert!(state.practices.iter().any(|p| p.name == "RENAMED PRACTICE"));
    assert_eq!(state.opt_outs, [withdrawn]);
    assert_eq!((state.version, state.last_contact), (8, Some(at(30))));

    // A snapshot as of 7 holding 1 and a new halt at 6: the log keeps everything it had.
    let older = store
        .install_snapshot(&[command(1, false)], &sync(3), 9, audit("snapshot"))
        .await;
    assert!(
        matches!(older, Err(StoreError::Conflict(_))),
        "a snapshot older than the applied sequence is refused: {older:?}"
    );
    store
        .install_snapshot(
            &[command(1, false), command(6, false)],
            &sync(7),
            9,
            audit("snapshot"),
        )
        .await
        .expect("snapshot");
    let state = store.load().await.expect("load");
    assert_eq!(state.commands, [command(1, false), command(6, false)]);
    assert_eq!(state.sync, Some(sync(7)));
    assert_eq!(state.opt_outs.len(), 1, "opt-outs survive a snapshot");
    let log: Vec<u64> = store
        .list_commands(0, 100)
        .await
        .expect("list")
        .iter()
        .map(|c| c.sequence)
        .collect();
    assert_eq!(log, [1, 2, 3, 4, 6], "a snapshot never shortens the log");

    store
        .append_audit(AuditDraft {
            outcome: AuditOutcome::Refused,
            ..audit("refused")
        })
        .await
        .expect("audit");
    let events = store.list_audit(0, 1_000).await.expect("audit");
    assert_eq!(events.len(), 10, "every accepted change and the refusal");
    assert_eq!(verify_chain(&events), Ok(10));
    assert_eq!(store.list_audit(8, 10).await.expect("audit").len(), 2);
    store.close().await;
}

pub(crate) fn sqlite_url(dir: &tempfile::TempDir, name: &str) -> String {
    format!("sqlite://{}", dir.path().join(name).display())
}

#[tokio::test]
async fn supplier_store_conformance_on_sqlite() {
    let dir = tempfile::tempdir().expect("tempdir");
    supplier_suite(&sqlite_url(&dir, "supplier.db")).await;
}

#[tokio::test]
async fn supplier_store_conformance_on_postgres() {
    if let Some(db) = pg_database().await {
        supplier_suite(&db.url).await;
        db.drop().await;
    }
}

#[tokio::test]
async fn coordinator_store_conformance_on_sqlite() {
    let dir = tempfile::tempdir().expect("tempdir");
    coordinator::coordinator_suite(&sqlite_url(&dir, "coordinator.db")).await;
}

#[tokio::test]
async fn coordinator_store_conformance_on_postgres() {
    if let Some(db) = pg_database().await {
        coordinator::coordinator_suite(&db.url).await;
        db.drop().await;
    }
}

/// Whether a database of that name exists, asked through `ROLLOUT_TEST_DATABASE_URL`.
async fn database_exists(name: &str) -> bool {
    use sqlx::Connection;
    let admin = std::env::var("ROLLOUT_TEST_DATABASE_URL").expect("set when a database was made");
    let mut conn = sqlx::PgConnection::connect(&admin).await.expect("connect");
    let found: Option<i32> = sqlx::query_scalar("SELECT 1 FROM pg_database WHERE datname = $1")
        .bind(name)
        .fetch_optional(&mut conn)
        .await
        .expect("query pg_database");
    conn.close().await.ok();
    found.is_some()
}

#[tokio::test]
async fn a_test_database_is_dropped_even_when_its_test_panics() {
    let Some(db) = pg_database().await else {
        return;
    };
    let name = db.url.rsplit('/').next().expect("name").to_owned();
    assert!(database_exists(&name).await);
    // A test that panics holding its database unwinds through its drop.
    let unwound = std::panic::catch_unwind(std::panic::AssertUnwindSafe(move || {
        let _db = db;
        panic!("a failing test");
    }));
    assert!(unwound.is_err());
    assert!(!database_exists(&name).await, "{name} was left behind");
}
