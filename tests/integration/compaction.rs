//! A supplier's store keeps the whole command log but starts from the rules in force; a store
//! written before compaction (no sync point, every row marked in force) is replayed once at its
//! first start, marked, and answers as it did.

use rollout_core::Scope;
use rollout_proto::v1::{self as pb, practice_feature::Reason as R, practice_feature::State as S};
use rollout_store::supplier::{SqlSupplierStore, SupplierStore};

use crate::{
    support::supplier::{EMIS_A, EMIS_B, apply, control, emis, get, toggle},
    support::{define, go_live, halt, history_of, practices, resume},
};

fn answer(p: &pb::PracticeFeature) -> (S, R, Vec<String>) {
    (
        p.state(),
        p.reason(),
        p.rules.iter().map(|r| r.command.clone()).collect(),
    )
}

#[tokio::test]
async fn a_store_from_before_compaction_is_replayed_once_and_answers_as_before() {
    let (_tmp, files, server) = emis().await;
    let mut control = control(&files, &server);
    let log = [
        define(1, None),
        go_live(2, "golive-1", Scope::National, None),
        halt(3, "halt-a", practices(&[EMIS_A])),
        halt(4, "halt-ab", practices(&[EMIS_A, EMIS_B])),
        resume(5, "resume-1", &["halt-a"]),
    ];
    for c in &log {
        apply(&mut control, c.clone()).await;
    }
    let mut backend = toggle(&files, "backend-emis", &server);
    let before = (
        answer(&get(&mut backend, EMIS_A).await),
        answer(&get(&mut backend, EMIS_B).await),
    );
    assert_eq!(
        before.0,
        (
            S::Disabled,
            R::Halted,
            vec!["commands/halt-ab".into(), "commands/golive-1".into()]
        ),
        "the lifted halt is retired"
    );
    server.stop().await;

    // What the store looks like compacted: the log whole, the rules in force marked.
    let url = format!("sqlite://{}", files.database.display());
    let store = SqlSupplierStore::open(&url).await.expect("open");
    let state = store.load().await.expect("load");
    let in_force: Vec<u64> = state.commands.iter().map(|c| c.sequence).collect();
    assert_eq!(
        in_force,
        [1, 2, 4],
        "start-up reads the definition, the go-live and the halt in force"
    );
    let sync = state.sync.expect("sync point");
    assert_eq!(sync.applied_sequence, 5);
    assert_eq!(
        sync.history_hash,
        history_of(&log.iter().collect::<Vec<_>>()).to_hex()
    );
    assert_eq!(
        store.list_commands(0, 100).await.expect("log").len(),
        5,
        "the log stays whole"
    );
    store.close().await;

    // Make it a store from before compaction: no sync point, every row marked in force.
    {
        use sqlx::Connection;
        let mut conn = sqlx::SqliteConnection::connect(&url).await.expect("connect");
        sqlx::query("DELETE FROM sync")
            .execute(&mut conn)
            .await
            .expect("delete sync");
        sqlx::query("UPDATE commands SET effective = 1")
            .execute(&mut conn)
            .await
            .expect("mark all");
        conn.close().await.expect("close");
    }

    let server = files.start(None).await;
    let mut backend = toggle(&files, "backend-emis", &server);
    let after = (
        answer(&get(&mut backend, EMIS_A).await),
        answer(&get(&mut backend, EMIS_B).await),
    );
    assert_eq!(after, before, "the replayed store answers as before");
    let sync_state = crate::support::supplier::control(&files, &server)
        .get_sync_state(pb::GetSyncStateRequest::default())
        .await
        .expect("sync state")
        .into_inner();
    assert_eq!(
        (sync_state.applied_sequence, sync_state.history_hash.clone()),
        (5, history_of(&log.iter().collect::<Vec<_>>()).as_bytes().to_vec())
    );
    server.stop().await;

    let store = SqlSupplierStore::open(&url).await.expect("open");
    let state = store.load().await.expect("load");
    assert_eq!(
        state.commands.iter().map(|c| c.sequence).collect::<Vec<_>>(),
        [1, 2, 4],
        "marked at the first start, so the next start reads only the rules in force"
    );
    assert_eq!(state.sync.map(|s| s.applied_sequence), Some(5));
    store.close().await;
}
