//! The coordinator store's conformance suite: commands, deliveries, idempotency records and the
//! history reads, and the upgrade of rows from before migration 3.

use super::*;

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
pub(super) async fn coordinator_suite(url: &str) {
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
pub(super) async fn legacy_upgrade(url: &str) {
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
