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

fn record(key: &str, body: u8) -> Record {
    Record {
        key: key.into(),
        body: vec![body],
    }
}

/// A coordinator command row for the suite: its body is its id.
fn row(
    id: &str,
    sequence: Option<u64>,
    state: CommandState,
    created_at: i64,
    (feature, action): (&str, CommandAction),
) -> CommandRow {
    CommandRow {
        id: id.into(),
        sequence,
        state,
        created_at,
        feature: feature.into(),
        action,
        effective: state == CommandState::Dispatched && action != CommandAction::Resume,
        body: id.as_bytes().to_vec(),
    }
}

fn delivery(sequence: u64, supplier: &str, state: DeliveryState, body: u8) -> DeliveryRow {
    DeliveryRow {
        sequence,
        supplier: supplier.into(),
        state,
        body: vec![body],
    }
}

const PRA: &str = "prospective-record-access";

/// The coordinator store's contract.
async fn coordinator_suite(url: &str) {
    let store = SqlCoordinatorStore::open(url).await.expect("open");
    assert_eq!(store.load().await.expect("load"), Default::default());
    let cmd = |id: &str, sequence: Option<u64>, state, created_at| {
        row(id, sequence, state, created_at, (PRA, CommandAction::Halt))
    };
    store
        .write(Write {
            features: vec![record(PRA, 1)],
            commands: vec![
                cmd("a", Some(1), CommandState::Dispatched, 10),
                cmd("b", None, CommandState::Pending, 20),
            ],
            deliveries: vec![delivery(1, "emis", DeliveryState::Pending, 7)],
            suppliers: vec![record("emis", 3)],
            request: Some(RequestRecord {
                identity: "alice".into(),
                request_id: "r1".into(),
                fingerprint: vec![1],
                response: vec![2],
            }),
            audit: Some(audit("create")),
            expected_version: Some(0),
            ..Write::default()
        })
        .await
        .expect("write");
    // Approving b gives it sequence 2; the delivery is updated in place.
    store
        .write(Write {
            commands: vec![cmd("b", Some(2), CommandState::Dispatched, 20)],
            deliveries: vec![delivery(1, "emis", DeliveryState::Applied, 8)],
            audit: Some(audit("approve")),
            ..Write::default()
        })
        .await
        .expect("approve");
    // A second command with sequence 2 is refused, and nothing of that write is kept.
    let clash = store
        .write(Write {
            features: vec![record("other-feature", 9)],
            commands: vec![cmd("c", Some(2), CommandState::Dispatched, 30)],
            audit: Some(audit("clash")),
            ..Write::default()
        })
        .await;
    assert!(matches!(clash, Err(StoreError::Conflict(_))), "{clash:?}");
    let state = store.load().await.expect("load");
    assert_eq!(state.features, [record(PRA, 1)]);
    assert!(state.pending.is_empty(), "b was dispatched");
    assert_eq!(
        state
            .effective
            .iter()
            .map(|c| (c.id.as_str(), c.sequence, c.state))
            .collect::<Vec<_>>(),
        [
            ("a", Some(1), CommandState::Dispatched),
            ("b", Some(2), CommandState::Dispatched)
        ]
    );
    assert_eq!(state.log, [(1, "a".to_owned()), (2, "b".to_owned())]);
    assert!(
        state.deliveries.is_empty(),
        "nothing is pending, so nothing is unsettled"
    );
    assert_eq!(state.suppliers, [record("emis", 3)]);
    assert_eq!(
        store.deliveries(1, 1, None).await.expect("deliveries"),
        [delivery(1, "emis", DeliveryState::Applied, 8)],
        "a settled delivery is still read by sequence"
    );
    let recalled = |identity| store.recall_request(identity, "r1");
    assert!(recalled("alice").await.expect("recall").is_some());
    assert!(
        recalled("bob").await.expect("recall").is_none(),
        "a request id is its caller's own"
    );
    // A write computed from an old version is refused whole (another replica wrote first).
    let stale = store
        .write(Write {
            features: vec![record("stale-feature", 1)],
            audit: Some(audit("stale")),
            expected_version: Some(0),
            ..Write::default()
        })
        .await;
    assert!(matches!(stale, Err(StoreError::Conflict(_))), "{stale:?}");
    let state = store.load().await.expect("load");
    assert_eq!(state.features.len(), 1);
    assert_eq!(
        (state.version, state.changes),
        (1, 2),
        "one guarded write, two writes in all"
    );
    assert_eq!(store.head().await.expect("head"), (1, 2));
    let events = store.list_audit(0, 100).await.expect("audit");
    assert_eq!(events.len(), 2, "the refused writes left no audit event");
    assert_eq!(verify_chain(&events), Ok(2));
    history_reads(&store).await;
    store.close().await;
    legacy_upgrade(url).await;
}

/// The reads of history: by id, by sequence, newest first with filters and a cursor, by
/// action and feature; a resume retiring the halts it lifts; what start-up reads.
async fn history_reads(store: &SqlCoordinatorStore) {
    let other = "other-feature";
    let go_live = (PRA, CommandAction::GoLive);
    store
        .write(Write {
            commands: vec![
                row("c", Some(3), CommandState::Dispatched, 30, go_live),
                row(
                    "d",
                    None,
                    CommandState::Pending,
                    40,
                    (other, CommandAction::GoLive),
                ),
                row("e", None, CommandState::Cancelled, 50, go_live),
                row(
                    "f",
                    Some(4),
                    CommandState::Dispatched,
                    60,
                    (PRA, CommandAction::Resume),
                ),
            ],
            deliveries: vec![
                delivery(3, "emis", DeliveryState::Rejected, 1),
                delivery(3, "tpp", DeliveryState::Applied, 2),
                delivery(4, "emis", DeliveryState::Pending, 3),
                delivery(4, "tpp", DeliveryState::Applied, 4),
            ],
            retired: vec!["a".into()],
            ..Write::default()
        })
        .await
        .expect("write");
    let state = store.load().await.expect("load");
    let ids = |rows: &[CommandRow]| rows.iter().map(|r| r.id.clone()).collect::<Vec<_>>();
    assert_eq!(ids(&state.pending), ["d"]);
    assert_eq!(ids(&state.effective), ["b", "c"], "a is retired, f is a resume");
    assert_eq!(state.log.len(), 4);
    assert_eq!(
        state.deliveries,
        [
            delivery(4, "emis", DeliveryState::Pending, 3),
            delivery(4, "tpp", DeliveryState::Applied, 4)
        ],
        "from the lowest sequence still pending"
    );
    assert_eq!(state.rejected, [(3, "emis".to_owned())]);

    let a = store.command("a").await.expect("command").expect("a");
    assert_eq!(
        (a.sequence, a.effective, a.body.as_slice()),
        (Some(1), false, &b"a"[..])
    );
    assert_eq!(store.command("zz").await.expect("command"), None);
    assert_eq!(
        store.command_at(3).await.expect("at").map(|r| r.id),
        Some("c".into())
    );
    assert_eq!(store.command_at(9).await.expect("at"), None);

    let list = |feature: Option<&str>, state: Option<CommandState>, before: Option<(i64, &str)>, limit| {
        let q = CommandQuery {
            feature: feature.map(Into::into),
            state,
            before: before.map(|(t, id)| (t, id.to_owned())),
            limit,
        };
        async move { ids(&store.list_commands(&q).await.expect("list")) }
    };
    assert_eq!(list(None, None, None, 10).await, ["f", "e", "d", "c", "b", "a"]);
    assert_eq!(list(None, None, None, 2).await, ["f", "e"]);
    assert_eq!(list(None, None, Some((50, "e")), 2).await, ["d", "c"]);
    assert_eq!(list(Some(other), None, None, 10).await, ["d"]);
    assert_eq!(
        list(Some(PRA), Some(CommandState::Dispatched), Some((60, "f")), 10).await,
        ["c", "b", "a"]
    );
    assert_eq!(list(None, Some(CommandState::Cancelled), None, 10).await, ["e"]);

    let between = |from, to, action, feature| async move {
        ids(&store
            .commands_between(from, to, action, feature)
            .await
            .expect("between"))
    };
    assert_eq!(between(1, 4, None, None).await, ["a", "b", "c", "f"]);
    assert_eq!(between(2, 3, None, None).await, ["b", "c"]);
    assert_eq!(between(1, 9, Some(CommandAction::Resume), Some(PRA)).await, ["f"]);
    assert!(
        between(1, 9, Some(CommandAction::Resume), Some(other))
            .await
            .is_empty()
    );
    assert_eq!(store.first_turning_on(0).await.expect("first"), Some(3));
    assert_eq!(store.first_turning_on(3).await.expect("first"), Some(4));
    assert_eq!(store.first_turning_on(4).await.expect("first"), None);
    assert_eq!(
        store.deliveries(3, 4, Some("tpp")).await.expect("deliveries"),
        [
            delivery(3, "tpp", DeliveryState::Applied, 2),
            delivery(4, "tpp", DeliveryState::Applied, 4)
        ]
    );
    assert_eq!(store.legacy_rows().await.expect("legacy"), LegacyRows::default());
}

/// A store written before migration 3: its rows lack feature, action, effective mark and
/// delivery state until [`CoordinatorStore::upgrade`] fills them in.
async fn legacy_upgrade(url: &str) {
    {
        use sqlx::Connection;
        let mut conn = sqlx::AnyConnection::connect(url).await.expect("connect");
        for sql in [
            "UPDATE commands SET feature = NULL, action = NULL, effective = 0",
            "UPDATE deliveries SET state = NULL WHERE sequence = 4",
        ] {
            sqlx::query(sql).execute(&mut conn).await.expect("make legacy");
        }
        conn.close().await.ok();
    }
    let store = SqlCoordinatorStore::open(url).await.expect("open");
    let legacy = store.legacy_rows().await.expect("legacy");
    assert_eq!(
        legacy.commands.iter().map(|r| r.id.as_str()).collect::<Vec<_>>(),
        ["a", "b", "c", "f", "d", "e"],
        "every command, in sequence order, the undispatched last"
    );
    assert_eq!(
        legacy
            .deliveries
            .iter()
            .map(|d| (d.sequence, d.supplier.as_str(), d.body.clone()))
            .collect::<Vec<_>>(),
        [(4, "emis", vec![3]), (4, "tpp", vec![4])]
    );
    store
        .upgrade(Upgrade {
            commands: vec![
                ("a".into(), PRA.into(), CommandAction::Halt, false),
                ("b".into(), PRA.into(), CommandAction::Halt, true),
                ("c".into(), PRA.into(), CommandAction::GoLive, true),
                ("d".into(), "other-feature".into(), CommandAction::GoLive, false),
                ("e".into(), PRA.into(), CommandAction::GoLive, false),
                ("f".into(), PRA.into(), CommandAction::Resume, false),
            ],
            deliveries: vec![
                (4, "emis".into(), DeliveryState::Pending),
                (4, "tpp".into(), DeliveryState::Applied),
            ],
        })
        .await
        .expect("upgrade");
    let state = store.load().await.expect("load");
    assert_eq!(
        state.effective.iter().map(|r| r.id.as_str()).collect::<Vec<_>>(),
        ["b", "c"]
    );
    assert_eq!(state.deliveries.len(), 2);
    assert_eq!(state.pending.len(), 1);
    assert_eq!(
        store.legacy_rows().await.expect("legacy"),
        LegacyRows::default(),
        "every row is filled in"
    );
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
    coordinator_suite(&sqlite_url(&dir, "coordinator.db")).await;
}

#[tokio::test]
async fn coordinator_store_conformance_on_postgres() {
    if let Some(db) = pg_database().await {
        coordinator_suite(&db.url).await;
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
