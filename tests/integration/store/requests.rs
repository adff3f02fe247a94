//! Idempotency records are their caller's own (a request id is scoped to the identity that
//! sent it), and a store written before still answers the callers of its records: the upgrade
//! gives each record the identity of the caller whose accepted call the audit log records with
//! its request id. Each store, on SQLite and on PostgreSQL, built with the migrations of before
//! and then opened by this version.

use rollout_store::{
    RequestRecord,
    coordinator::{CoordinatorStore, SqlCoordinatorStore, Write},
    supplier::{SqlSupplierStore, SupplierStore},
};
use sqlx::{
    Connection,
    migrate::{Migration, MigrationType, Migrator},
};

use super::{audit, sqlite_url};
use crate::support::pg_database;

const ALICE: &str = "spiffe://gprollout.test/operator/alice";
const BOB: &str = "spiffe://gprollout.test/operator/bob";
/// alice's request, audited with the person behind her identity; also reused by bob, refused.
const ALICES: &str = "0f8fad5b-d9cb-469f-a165-70867728950e";
/// bob's request, audited without a person.
const BOBS: &str = "7c9e6679-7425-40de-944b-e07fc1f90ae7";
/// A record the audit log names no caller for.
const NOBODYS: &str = "9a2b3c4d-5e6f-4a1b-8c2d-3e4f5a6b7c8d";

/// One migration of before: SQLite and PostgreSQL SQL.
type Before = (&'static str, &'static str);

/// The coordinator store's migrations before request ids were per caller.
const COORDINATOR_BEFORE: &[Before] = &[
    (
        include_str!("../../../services/rollout-store/migrations/sqlite/coordinator_0001_init.sql"),
        include_str!("../../../services/rollout-store/migrations/postgres/coordinator_0001_init.sql"),
    ),
    (
        include_str!("../../../services/rollout-store/migrations/sqlite/coordinator_0002_meta.sql"),
        include_str!("../../../services/rollout-store/migrations/postgres/coordinator_0002_meta.sql"),
    ),
    (
        include_str!("../../../services/rollout-store/migrations/sqlite/coordinator_0003_effective.sql"),
        include_str!("../../../services/rollout-store/migrations/postgres/coordinator_0003_effective.sql"),
    ),
    (
        include_str!(
            "../../../services/rollout-store/migrations/sqlite/coordinator_0004_opt_out_register.sql"
        ),
        include_str!(
            "../../../services/rollout-store/migrations/postgres/coordinator_0004_opt_out_register.sql"
        ),
    ),
    (
        include_str!("../../../services/rollout-store/migrations/sqlite/coordinator_0005_audit_detail.sql"),
        include_str!("../../../services/rollout-store/migrations/postgres/coordinator_0005_audit_detail.sql"),
    ),
];

/// The supplier store's migrations before request ids were per caller.
const SUPPLIER_BEFORE: &[Before] = &[
    (
        include_str!("../../../services/rollout-store/migrations/sqlite/supplier_0001_init.sql"),
        include_str!("../../../services/rollout-store/migrations/postgres/supplier_0001_init.sql"),
    ),
    (
        include_str!("../../../services/rollout-store/migrations/sqlite/supplier_0002_compaction.sql"),
        include_str!("../../../services/rollout-store/migrations/postgres/supplier_0002_compaction.sql"),
    ),
    (
        include_str!("../../../services/rollout-store/migrations/sqlite/supplier_0003_opt_out_register.sql"),
        include_str!(
            "../../../services/rollout-store/migrations/postgres/supplier_0003_opt_out_register.sql"
        ),
    ),
    (
        include_str!("../../../services/rollout-store/migrations/sqlite/supplier_0004_audit_detail.sql"),
        include_str!("../../../services/rollout-store/migrations/postgres/supplier_0004_audit_detail.sql"),
    ),
];

/// Makes the store at `url` as the version before would have left it: its migrations, three
/// idempotency records without a caller, and the audit events of the calls that wrote them
/// (alice's with her person, after a refusal of bob's reuse of her id; bob's; none for the
/// third).
async fn written_before(url: &str, migrations: &[Before]) {
    sqlx::any::install_default_drivers();
    let sqlite = url.starts_with("sqlite:");
    let connect = if sqlite {
        format!("{url}?mode=rwc")
    } else {
        url.to_owned()
    };
    let mut conn = sqlx::AnyConnection::connect(&connect).await.expect("connect");
    let migrations = migrations
        .iter()
        .zip(1..)
        .map(|((lite, pg), version)| {
            let sql = if sqlite { *lite } else { *pg };
            Migration::new(
                version,
                "before".into(),
                MigrationType::Simple,
                sqlx::SqlSafeStr::into_sql_str(sql),
                false,
            )
        })
        .collect();
    Migrator::with_migrations(migrations)
        .run(&mut conn)
        .await
        .expect("the migrations of before");
    let events = [
        (1, format!("{BOB} (person 222)"), "refused", ALICES),
        (2, format!("{ALICE} (person 111)"), "accepted", ALICES),
        (3, BOB.to_owned(), "accepted", BOBS),
    ];
    for (sequence, identity, outcome, request_id) in events {
        sqlx::query(
            "INSERT INTO audit (sequence, time, identity, action, target, outcome, reason, request_id, \
             previous_hash, hash) VALUES ($1, 0, $2, 'HaltFeature', 'features/f', $3, '', $4, '', '')",
        )
        .bind(sequence)
        .bind(identity)
        .bind(outcome)
        .bind(request_id)
        .execute(&mut conn)
        .await
        .expect("an audit event of before");
    }
    for (request_id, n) in [(ALICES, 1_u8), (BOBS, 2), (NOBODYS, 3)] {
        sqlx::query(
            "INSERT INTO requests (request_id, fingerprint, response, created_at) VALUES ($1, $2, $3, 0)",
        )
        .bind(request_id)
        .bind(vec![n])
        .bind(vec![n * 10])
        .execute(&mut conn)
        .await
        .expect("a record of before");
    }
    conn.close().await.expect("close");
}

fn record(identity: &str, request_id: &str, n: u8) -> RequestRecord {
    RequestRecord {
        identity: identity.into(),
        request_id: request_id.into(),
        fingerprint: vec![n],
        response: vec![n * 10],
    }
}

/// What either store answers after the upgrade, through `recall`.
async fn upgraded<F, Fut>(recall: F)
where
    F: Fn(&'static str, &'static str) -> Fut,
    Fut: Future<Output = Option<RequestRecord>>,
{
    assert_eq!(
        recall(ALICE, ALICES).await,
        Some(record(ALICE, ALICES, 1)),
        "alice's, hers"
    );
    assert_eq!(recall(BOB, ALICES).await, None, "not bob's, though he tried it");
    assert_eq!(recall(BOB, BOBS).await, Some(record(BOB, BOBS, 2)), "bob's, his");
    assert_eq!(recall(ALICE, BOBS).await, None);
    for caller in [ALICE, BOB] {
        assert_eq!(recall(caller, NOBODYS).await, None, "no caller known: no one's");
    }
}

async fn coordinator(url: &str) {
    written_before(url, COORDINATOR_BEFORE).await;
    let store = SqlCoordinatorStore::open(url).await.expect("open and upgrade");
    upgraded(|identity, id| async { store.recall_request(identity, id).await.expect("recall") }).await;
    // bob reuses alice's id: a record of his own beside hers.
    store
        .write(Write {
            request: Some(record(BOB, ALICES, 4)),
            audit: Some(audit("/nhs.gprollout.v1.CoordinatorService/HaltFeature")),
            ..Write::default()
        })
        .await
        .expect("bob's own record");
    assert_eq!(
        store.recall_request(BOB, ALICES).await.expect("recall"),
        Some(record(BOB, ALICES, 4))
    );
    assert_eq!(
        store.recall_request(ALICE, ALICES).await.expect("recall"),
        Some(record(ALICE, ALICES, 1))
    );
    store.close().await;
}

async fn supplier(url: &str) {
    written_before(url, SUPPLIER_BEFORE).await;
    let store = SqlSupplierStore::open(url).await.expect("open and upgrade");
    upgraded(|identity, id| async { store.recall_request(identity, id).await.expect("recall") }).await;
    store.close().await;
}

#[tokio::test]
async fn coordinator_records_of_before_answer_their_callers_on_sqlite() {
    let dir = tempfile::tempdir().expect("tempdir");
    coordinator(&sqlite_url(&dir, "coordinator.db")).await;
}

#[tokio::test]
async fn coordinator_records_of_before_answer_their_callers_on_postgres() {
    if let Some(db) = pg_database().await {
        coordinator(&db.url).await;
        db.drop().await;
    }
}

#[tokio::test]
async fn supplier_records_of_before_answer_their_callers_on_sqlite() {
    let dir = tempfile::tempdir().expect("tempdir");
    supplier(&sqlite_url(&dir, "supplier.db")).await;
}

#[tokio::test]
async fn supplier_records_of_before_answer_their_callers_on_postgres() {
    if let Some(db) = pg_database().await {
        supplier(&db.url).await;
        db.drop().await;
    }
}
