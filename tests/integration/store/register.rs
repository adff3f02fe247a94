//! The national opt-out register's part of each store's contract, on SQLite and PostgreSQL: the
//! supplier's numbered opt-out writes, store identity and held practices (and migration 3
//! numbering the rows already stored), and the coordinator's register (a later copy wins, the
//! cursors, the transfer, the filters and counts).

use rollout_core::{
    OdsCode, OptOut,
    audit::{AuditDraft, verify_chain},
};
use rollout_store::{
    StoreError,
    coordinator::{
        CoordinatorStore, OptOutCursor, RegisterCount, RegisterEntry, RegisterQuery, SqlCoordinatorStore,
    },
    supplier::{OptOutRecord, Origin, SqlSupplierStore, SupplierStore, Withdrawal},
};

use super::{at, audit, practices, sqlite_url};
use crate::support::pg_database;

const PRA: &str = "prospective-record-access";

fn opt_out(ods: OdsCode, change: u64, updated: u64, origin: Origin) -> OptOutRecord {
    OptOutRecord {
        opt_out: OptOut {
            practice: ods,
            feature: PRA.parse().expect("key"),
            reason: format!("{ods} asked"),
            source: "letter".into(),
            recorded_by: "admin".into(),
            recorded_at: at(1),
        },
        updated_at: at(updated),
        withdrawal: None,
        change,
        origin,
    }
}

fn withdrawn(r: &OptOutRecord, change: u64, updated: u64) -> OptOutRecord {
    OptOutRecord {
        updated_at: at(updated),
        withdrawal: Some(Withdrawal {
            by: "admin".into(),
            at: at(updated),
            reason: "reviewed".into(),
        }),
        change,
        ..r.clone()
    }
}

fn changes(records: &[OptOutRecord]) -> Vec<(String, u64)> {
    records
        .iter()
        .map(|r| (r.opt_out.practice.to_string(), r.change))
        .collect()
}

/// The supplier store's part: numbered opt-out writes read back in change order, the store's
/// identity, held practices, and records installed from the register with their audit events.
async fn supplier_register_suite(url: &str) {
    let store = SqlSupplierStore::open(url).await.expect("open");
    let empty = store.load().await.expect("load");
    assert!(
        !empty.store_id.is_empty(),
        "a store has an identity from its first opening"
    );
    assert_eq!((empty.opt_out_change, empty.held.len()), (0, 0));
    store.close().await;
    let store = SqlSupplierStore::open(url).await.expect("reopen");
    assert_eq!(
        store.load().await.expect("load").store_id,
        empty.store_id,
        "the identity is made once"
    );

    // The first import holds nobody; practices new to a later import are held, and a held
    // practice gone from the estate is let go.
    let all = practices();
    let (first, joined) = all.split_at(40);
    store
        .import_estate(first, &[], 1, audit("import"))
        .await
        .expect("import");
    let new: Vec<OdsCode> = joined.iter().map(|p| p.ods).collect();
    store
        .import_estate(&all, &new, 2, audit("import"))
        .await
        .expect("re-import");
    assert_eq!(store.load().await.expect("load").held, new);
    store
        .import_estate(&all[..49], &[], 3, audit("import"))
        .await
        .expect("re-import without the last practice");
    assert_eq!(store.load().await.expect("load").held, new[..new.len() - 1]);

    // Every write takes the next change number; a withdrawal moves its row to the end.
    let (a, b, c, d) = (all[0].ods, all[1].ods, all[2].ods, all[3].ods);
    let set_a = opt_out(a, 1, 10, Origin::Recorded);
    store
        .put_opt_out(&set_a, 4, None, audit("set"))
        .await
        .expect("set a");
    let set_b = opt_out(b, 2, 11, Origin::Recorded);
    store
        .put_opt_out(&set_b, 5, None, audit("set"))
        .await
        .expect("set b");
    let withdrawn_a = withdrawn(&set_a, 3, 12);
    store
        .put_opt_out(&withdrawn_a, 6, None, audit("withdraw"))
        .await
        .expect("withdraw a");
    let read = store.opt_out_changes(0, 10).await.expect("changes");
    assert_eq!(changes(&read), [(b.to_string(), 2), (a.to_string(), 3)]);
    assert_eq!(read[1], withdrawn_a, "a withdrawn row stays, as the withdrawal");
    assert_eq!(
        changes(&store.opt_out_changes(2, 10).await.expect("changes")),
        [(a.to_string(), 3)]
    );
    assert_eq!(
        changes(&store.opt_out_changes(0, 1).await.expect("changes")),
        [(b.to_string(), 2)]
    );
    assert_eq!(store.load().await.expect("load").opt_out_change, 3);

    // Records from the register, each numbered, with their audit events and the release, all
    // at once; a write at a stale version changes nothing.
    let restored = opt_out(c, 4, 13, Origin::Restored("emis".parse().expect("id")));
    let transferred = opt_out(d, 5, 14, Origin::Transferred("tpp".parse().expect("id")));
    let events_before = store.list_audit(0, 1_000).await.expect("audit").len();
    let stale = store
        .import_opt_outs(
            std::slice::from_ref(&restored),
            &[new[0]],
            6,
            vec![audit("restored")],
        )
        .await;
    assert!(matches!(stale, Err(StoreError::Conflict(_))), "{stale:?}");
    store
        .import_opt_outs(
            &[restored.clone(), transferred.clone()],
            &[new[0]],
            7,
            vec![audit("restored"), audit("transferred"), audit("released")],
        )
        .await
        .expect("import opt-outs");
    let state = store.load().await.expect("load");
    assert_eq!(state.opt_out_change, 5);
    assert_eq!(state.held, new[1..new.len() - 1]);
    assert!(state.opt_outs.contains(&restored) && state.opt_outs.contains(&transferred));
    assert_eq!(state.opt_outs.len(), 4);
    let events = store.list_audit(0, 1_000).await.expect("audit");
    assert_eq!(
        events.len(),
        events_before + 3,
        "one event each, nothing of the stale write"
    );
    assert_eq!(verify_chain(&events), Ok(events.len() as u64));
    store.close().await;
}

/// A supplier store written before migration 3: its opt-out columns, identity, held practices
/// and the migration's record gone, as they were.
async fn before_migration_3(url: &str) {
    use sqlx::Connection;
    let mut conn = sqlx::AnyConnection::connect(url).await.expect("connect");
    for sql in [
        "DROP INDEX opt_outs_change",
        "ALTER TABLE opt_outs DROP COLUMN change",
        "ALTER TABLE opt_outs DROP COLUMN origin",
        "ALTER TABLE opt_outs DROP COLUMN origin_supplier",
        "DROP TABLE store_identity",
        "DROP TABLE held_practices",
        "DELETE FROM meta WHERE key = 'opt_out_change'",
        "DELETE FROM _sqlx_migrations WHERE version = 3",
    ] {
        sqlx::query(sql).execute(&mut conn).await.expect(sql);
    }
    conn.close().await.ok();
}

/// Rows stored before migration 3 are numbered 1..n in (practice, feature) order, and the store
/// gets an identity.
async fn supplier_migration_3_suite(url: &str) {
    let store = SqlSupplierStore::open(url).await.expect("open");
    let all = practices();
    // Numbered out of code order (as no store before the migration was: it had no numbers).
    for (i, p) in [&all[3], &all[0], &all[2]].into_iter().enumerate() {
        let record = opt_out(p.ods, i as u64 + 1, 10, Origin::Recorded);
        store
            .put_opt_out(&record, i as u64 + 1, None, audit("set"))
            .await
            .expect("set");
    }
    store.close().await;
    before_migration_3(url).await;
    let store = SqlSupplierStore::open(url).await.expect("open after the upgrade");
    let state = store.load().await.expect("load");
    let mut want: Vec<(String, u64)> = [&all[0], &all[2], &all[3]]
        .iter()
        .map(|p| p.ods.to_string())
        .zip(1..)
        .collect();
    want.sort();
    assert_eq!(changes(&state.opt_outs), want);
    assert_eq!(state.opt_out_change, 3);
    assert!(!state.store_id.is_empty());
    assert!(state.opt_outs.iter().all(|r| r.origin == Origin::Recorded));
    assert_eq!(
        changes(&store.opt_out_changes(0, 10).await.expect("changes")).len(),
        3
    );
    store.close().await;
}

fn entry(practice: &str, supplier: &str, update_time: i64, withdrawn: bool) -> RegisterEntry {
    RegisterEntry {
        practice: practice.into(),
        feature: PRA.into(),
        supplier: supplier.into(),
        withdrawn,
        update_time,
        body: format!("{practice}@{supplier}@{update_time}").into_bytes(),
    }
}

fn paired(entries: &[RegisterEntry]) -> Vec<(RegisterEntry, AuditDraft)> {
    entries.iter().map(|e| (e.clone(), audit("pulled"))).collect()
}

fn cursor(store_id: &str, change: u64) -> OptOutCursor {
    OptOutCursor {
        store_id: store_id.into(),
        change,
    }
}

/// The coordinator store's part: a later copy wins (an equal or older one changes nothing and
/// is not audited), cursors, the rows of held practices, transfers, filters, pages and counts.
async fn coordinator_register_suite(url: &str) {
    let store = SqlCoordinatorStore::open(url).await.expect("open");
    assert!(store.opt_out_cursors().await.expect("cursors").is_empty());
    let all = RegisterQuery {
        show_withdrawn: true,
        limit: 100,
        ..RegisterQuery::default()
    };
    assert!(store.list_register(&all).await.expect("list").is_empty());

    let a = entry("A81001", "emis", 10, false);
    let b = entry("A81002", "emis", 10, true);
    let merged = store
        .merge_opt_outs("emis", &cursor("s1", 2), paired(&[a.clone(), b.clone()]))
        .await
        .expect("merge");
    assert_eq!(merged, 2);
    let again = store
        .merge_opt_outs("emis", &cursor("s1", 4), paired(&[a.clone(), b.clone()]))
        .await
        .expect("merge the same copies");
    assert_eq!(again, 0, "an equal copy changes nothing");
    assert_eq!(
        store.list_audit(0, 100).await.expect("audit").len(),
        2,
        "only the rows that changed are audited"
    );
    assert_eq!(
        store.opt_out_cursors().await.expect("cursors"),
        [("emis".to_owned(), cursor("s1", 4))]
    );
    let older = entry("A81001", "tpp", 5, true);
    let newer = entry("A81001", "tpp", 20, false);
    assert_eq!(
        store
            .merge_opt_outs("tpp", &cursor("t1", 1), paired(&[older]))
            .await
            .expect("merge"),
        0,
        "an older copy changes nothing"
    );
    assert_eq!(
        store
            .merge_opt_outs("tpp", &cursor("t1", 2), paired(std::slice::from_ref(&newer)))
            .await
            .expect("merge"),
        1
    );
    assert_eq!(
        store.list_register(&all).await.expect("list"),
        [newer.clone(), b.clone()]
    );

    // Filters, withdrawn rows only when asked, pages by name, counts over every match.
    let only = |q: RegisterQuery| RegisterQuery { limit: 100, ..q };
    let in_force = only(RegisterQuery::default());
    assert_eq!(
        store.list_register(&in_force).await.expect("list"),
        vec![newer.clone()]
    );
    let emis = only(RegisterQuery {
        supplier: Some("emis".into()),
        show_withdrawn: true,
        ..RegisterQuery::default()
    });
    assert_eq!(store.list_register(&emis).await.expect("list"), vec![b.clone()]);
    let practice = only(RegisterQuery {
        practice: Some("A81002".into()),
        show_withdrawn: true,
        ..RegisterQuery::default()
    });
    assert_eq!(
        store.list_register(&practice).await.expect("list"),
        vec![b.clone()]
    );
    let other_feature = only(RegisterQuery {
        feature: Some("other-feature".into()),
        show_withdrawn: true,
        ..RegisterQuery::default()
    });
    assert!(
        store
            .list_register(&other_feature)
            .await
            .expect("list")
            .is_empty()
    );
    let page = RegisterQuery {
        limit: 1,
        ..all.clone()
    };
    assert_eq!(
        store.list_register(&page).await.expect("list"),
        vec![newer.clone()]
    );
    let next = RegisterQuery {
        after: Some(("A81001".into(), PRA.into())),
        ..page
    };
    assert_eq!(store.list_register(&next).await.expect("list"), vec![b.clone()]);
    let count = |supplier: &str, opted_out, withdrawn| RegisterCount {
        supplier: supplier.into(),
        feature: PRA.into(),
        opted_out,
        withdrawn,
    };
    assert_eq!(
        store.count_register(&in_force).await.expect("count"),
        [count("emis", 0, 1), count("tpp", 1, 0)],
        "counts cover withdrawn rows whatever the page shows"
    );

    // The opt-outs in force of held practices held by other suppliers, and their transfer.
    let practices = ["A81001".to_owned(), "A81002".to_owned()];
    assert_eq!(
        store
            .opt_outs_of_practices(&practices, "cegedim")
            .await
            .expect("read"),
        vec![newer.clone()],
        "withdrawn ones stay behind"
    );
    assert!(
        store
            .opt_outs_of_practices(&practices, "tpp")
            .await
            .expect("read")
            .is_empty()
    );
    let moved = RegisterEntry {
        supplier: "cegedim".into(),
        body: b"transferred".to_vec(),
        ..newer.clone()
    };
    let stale = RegisterEntry {
        update_time: 1,
        supplier: "microtest".into(),
        ..b.clone()
    };
    store
        .transfer_opt_outs(vec![moved.clone(), stale], vec![audit("transferred")])
        .await
        .expect("transfer");
    assert_eq!(
        store.list_register(&all).await.expect("list"),
        [moved, b],
        "a row replaced since by a later copy is left as it is"
    );

    store
        .reset_opt_out_cursor("emis", &cursor("s2", 0), audit("restored"))
        .await
        .expect("reset");
    assert_eq!(
        store.opt_out_cursors().await.expect("cursors"),
        [
            ("emis".to_owned(), cursor("s2", 0)),
            ("tpp".to_owned(), cursor("t1", 2))
        ]
    );
    let events = store.list_audit(0, 100).await.expect("audit");
    assert_eq!(events.len(), 5);
    assert_eq!(verify_chain(&events), Ok(5));
    store.close().await;
}

#[tokio::test]
async fn supplier_register_conformance_on_sqlite() {
    let dir = tempfile::tempdir().expect("tempdir");
    supplier_register_suite(&sqlite_url(&dir, "supplier.db")).await;
    supplier_migration_3_suite(&sqlite_url(&dir, "upgraded.db")).await;
}

#[tokio::test]
async fn supplier_register_conformance_on_postgres() {
    if let Some(db) = pg_database().await {
        supplier_register_suite(&db.url).await;
        db.drop().await;
    }
    if let Some(db) = pg_database().await {
        supplier_migration_3_suite(&db.url).await;
        db.drop().await;
    }
}

#[tokio::test]
async fn coordinator_register_conformance_on_sqlite() {
    let dir = tempfile::tempdir().expect("tempdir");
    coordinator_register_suite(&sqlite_url(&dir, "coordinator.db")).await;
}

#[tokio::test]
async fn coordinator_register_conformance_on_postgres() {
    if let Some(db) = pg_database().await {
        coordinator_register_suite(&db.url).await;
        db.drop().await;
    }
}
