//! The coordinator core on a real SQLite store: the model holds only the state, history is
//! read from the store, a snapshot equals the replay it replaced, and a restart (also from a
//! store written before migration 3) answers as before.

use std::{
    collections::{BTreeMap, HashMap},
    sync::Arc,
    time::Duration,
};

use rollout_core::{
    Action, CommandId, Estate, FailMode, FeatureDef, FeatureKey, OdsCode, RuleBook, Scope, SupplierId,
    audit::{AuditDraft, AuditOutcome},
};
use rollout_net::wire;
use rollout_proto::v1 as pb;
use rollout_store::coordinator::{CoordinatorStore, SqlCoordinatorStore};

use crate::{
    coordinator::{Core, SupplierEndpoint},
    history::ListQuery,
    model::cmd_of,
    snapshot::Snapshot,
};

pub(crate) const EMIS: &str = "emis";
pub(crate) const TPP: &str = "tpp";

fn audit() -> AuditDraft {
    AuditDraft {
        identity: "test".into(),
        action: "test".into(),
        target: String::new(),
        outcome: AuditOutcome::Accepted,
        reason: String::new(),
        request_id: String::new(),
        ..rollout_core::audit::AuditDraft::default()
    }
}

fn supplier(id: &str) -> SupplierId {
    SupplierId::parse(id).expect("supplier id")
}

pub(crate) struct Harness {
    _dir: tempfile::TempDir,
    url: String,
    store: SqlCoordinatorStore,
    pub(crate) core: Arc<Core>,
}

/// A core on a fresh store with the suppliers emis and tpp, for tests elsewhere in the crate;
/// the store's directory goes with the first value.
pub(crate) async fn empty_core() -> (tempfile::TempDir, Arc<Core>) {
    let Harness { _dir, core, .. } = Harness::new().await;
    (_dir, core)
}

impl Harness {
    pub(crate) async fn new() -> Harness {
        let dir = tempfile::tempdir().expect("tempdir");
        let url = format!("sqlite://{}", dir.path().join("coordinator.db").display());
        let (store, core) = Harness::open(&url).await;
        Harness {
            _dir: dir,
            url,
            store,
            core,
        }
    }

    async fn open(url: &str) -> (SqlCoordinatorStore, Arc<Core>) {
        let store = SqlCoordinatorStore::open(url).await.expect("open");
        let suppliers = [EMIS, TPP]
            .iter()
            .map(|s| SupplierEndpoint {
                id: supplier(s),
                endpoint: format!("{s}.example:443"),
                identity: s.to_string(),
            })
            .collect();
        let core = Core::load(
            Arc::new(store.clone()),
            Arc::new(Estate::default()),
            suppliers,
            Duration::from_secs(30),
        )
        .await
        .expect("load");
        (store, core)
    }

    /// Closes the store and starts a new core on it (after `between` ran on the closed file).
    async fn restart(&mut self) {
        self.store.close().await;
        let (store, core) = Harness::open(&self.url).await;
        self.store = store;
        self.core = core;
    }

    pub(crate) async fn define(&self, key: &str) -> FeatureKey {
        let key = FeatureKey::parse(key).expect("key");
        let def = FeatureDef {
            key: key.clone(),
            description: String::new(),
            fail_mode: FailMode::Static,
            approvals_required: 1,
        };
        self.core
            .create_feature(&"alice".into(), def, "define".into(), None, audit())
            .await
            .expect("define");
        key
    }

    pub(crate) async fn issue(&self, feature: &FeatureKey, action: Action) -> CommandId {
        let c = self
            .core
            .issue(
                &"alice".into(),
                feature.clone(),
                action,
                "test".into(),
                false,
                None,
                audit(),
            )
            .await
            .expect("issue");
        wire::command_name("name", &c.name).expect("name")
    }

    pub(crate) async fn approve(&self, id: &CommandId) {
        self.core
            .approve(&"bob".into(), &|_: &str| None, id, String::new(), None, audit())
            .await
            .expect("approve");
    }

    async fn halt(&self, feature: &FeatureKey, codes: &[&str]) -> CommandId {
        let set = codes.iter().map(|c| OdsCode::parse(c).expect("ods")).collect();
        self.issue(
            feature,
            Action::Halt {
                scope: Scope::Practices(Arc::new(set)),
            },
        )
        .await
    }

    async fn go_live(&self, feature: &FeatureKey) -> CommandId {
        let id = self
            .issue(
                feature,
                Action::GoLive {
                    scope: Scope::National,
                    effective_at: None,
                },
            )
            .await;
        self.approve(&id).await;
        id
    }

    async fn resume(&self, feature: &FeatureKey, halts: &[CommandId]) -> CommandId {
        let id = self
            .issue(
                feature,
                Action::Resume {
                    halts: halts.to_vec(),
                },
            )
            .await;
        self.approve(&id).await;
        id
    }

    /// `supplier` answers every sequence up to the log's end: rejecting those `reject` picks.
    pub(crate) async fn deliver(&self, to: &str, reject: impl Fn(u64, &Action) -> bool) {
        let id = supplier(to);
        let (acked, last) = self
            .core
            .read(|m| (m.supplier(&id).map_or(0, |s| s.acked), m.last_sequence()))
            .await;
        for sequence in acked + 1..=last {
            let cmd = self.command_at(sequence).await;
            let rejection = reject(sequence, &cmd.action).then(|| "freeze".to_owned());
            self.core
                .record_applied(&id, vec![(sequence, rejection, None)], sequence)
                .await
                .expect("record");
        }
    }

    /// Redelivers (alice asks, bob approves) some of `to`'s conflicts, as `pick` chooses.
    async fn redeliver(&self, to: &str, mut pick: impl FnMut() -> bool) -> usize {
        let id = supplier(to);
        let open = self.core.read(|m| m.conflicts_of(&id)).await;
        let mut count = 0;
        for name in open.into_iter().filter(|_| pick()) {
            let redelivery = crate::redeliver::Redelivery {
                original: wire::command_name("name", &name).expect("name"),
                supplier: id.clone(),
                reason: "the freeze is over".into(),
                dry_run: false,
                idem: None,
            };
            let c = self
                .core
                .redeliver(&"alice".into(), redelivery, audit())
                .await
                .expect("redeliver");
            self.approve(&wire::command_name("name", &c.name).expect("name"))
                .await;
            count += 1;
        }
        count
    }

    /// Every supplier's conflicts and every rejection's resolution, as the model holds them.
    async fn resolutions(&self) -> Vec<Resolutions> {
        self.core
            .read(|m| {
                [EMIS, TPP]
                    .iter()
                    .map(|s| {
                        let id = supplier(s);
                        let resolved = m
                            .rejected_by(&id)
                            .into_iter()
                            .map(|q| (q, m.rejection(&id, q).and_then(|r| r.resolved_by.clone())))
                            .collect();
                        (id.clone(), m.conflicts_of(&id), resolved)
                    })
                    .collect()
            })
            .await
    }

    async fn command_at(&self, sequence: u64) -> rollout_core::Command {
        let row = self.store.command_at(sequence).await.expect("read").expect("row");
        cmd_of(&row).expect("decode").domain
    }

    /// Every command view, newest first, page by page.
    async fn all_commands(&self) -> Vec<pb::Command> {
        let mut out: Vec<pb::Command> = Vec::new();
        loop {
            let page = self
                .core
                .list_commands(&ListQuery {
                    feature: None,
                    state: None,
                    after: out
                        .last()
                        .map(|c| c.name.trim_start_matches("commands/").to_owned()),
                    size: 7,
                })
                .await
                .expect("list");
            let (items, next) = page.finish(|c| c.name.clone());
            out.extend(items);
            if next.is_empty() {
                return out;
            }
        }
    }
}

/// A supplier's conflicts, and each of its rejections (by sequence) with what resolved it.
type Resolutions = (SupplierId, Vec<String>, Vec<(u64, Option<CommandId>)>);

/// The snapshot as it was built before: the whole log replayed into the supplier's rule book
/// with its rejections skipped.
async fn replayed(h: &Harness, to: &SupplierId, applied: u64, frozen: bool) -> Option<Snapshot> {
    let (last, rejected) = h.core.read(|m| (m.last_sequence(), m.rejected_by(to))).await;
    let mut log = Vec::new();
    for s in 1..=last {
        log.push(h.command_at(s).await);
    }
    // A supplier that lost its store lost its judgements too: only what it holds is judged.
    let sequence = if frozen {
        log.iter()
            .find(|c| c.sequence > applied && c.action.turns_on())
            .map_or(last, |c| c.sequence - 1)
    } else {
        last
    };
    if sequence <= applied {
        return None;
    }
    // The supplier's own book: a command addressed to another supplier is a no-op in it.
    let mut book = RuleBook::for_supplier(to.clone());
    for c in log.iter().take_while(|c| c.sequence <= sequence) {
        if rejected.contains(&c.sequence) {
            book.skip(c).expect("skip");
        } else {
            book.apply(c, None).expect("apply");
        }
    }
    let by_sequence: HashMap<u64, &rollout_core::Command> = log.iter().map(|c| (c.sequence, c)).collect();
    let commands: Vec<pb::Command> = book
        .effective_commands()
        .iter()
        .map(|(s, _)| wire::command_pb(by_sequence[s]))
        .collect();
    Some(Snapshot {
        header: pb::replace_rules_request::Header {
            sequence: sequence as i64,
            history_hash: Vec::new(),
            base_sequence: applied as i64,
            base_history_hash: Vec::new(),
        },
        chunks: vec![commands],
        rejected: rejected.into_iter().collect(),
    })
}

/// Compares a snapshot with the replay: the same sequences, the same commands in the same
/// order, the same rejections, and the hashes of the log.
async fn assert_same(h: &Harness, to: &SupplierId, applied: u64, frozen: bool) {
    let built = h.core.snapshot(to, applied, frozen).await.expect("snapshot");
    let replay = replayed(h, to, applied, frozen).await;
    match (built, replay) {
        (None, None) => {}
        (Some(b), Some(r)) => {
            assert_eq!(
                (b.header.sequence, b.header.base_sequence),
                (r.header.sequence, r.header.base_sequence),
                "applied {applied}, frozen {frozen}"
            );
            let (s, a) = (b.header.sequence as u64, applied);
            let hashes = h.core.read(|m| (m.history_hash(s), m.history_hash(a))).await;
            assert_eq!(
                (
                    Some(b.header.history_hash.clone()),
                    Some(b.header.base_history_hash.clone())
                ),
                (
                    hashes.0.map(|x| x.as_bytes().to_vec()),
                    hashes.1.map(|x| x.as_bytes().to_vec())
                )
            );
            let flat: Vec<pb::Command> = b.chunks.into_iter().flatten().collect();
            assert_eq!(
                flat.iter().map(|c| c.sequence).collect::<Vec<_>>(),
                r.chunks[0].iter().map(|c| c.sequence).collect::<Vec<_>>(),
                "applied {applied}, frozen {frozen}"
            );
            assert_eq!(flat, r.chunks[0], "applied {applied}, frozen {frozen}");
            assert_eq!(b.rejected, r.rejected);
        }
        (b, r) => panic!(
            "applied {applied}, frozen {frozen}: built {:?}, replayed {:?}",
            b.map(|s| s.header),
            r.map(|s| s.header)
        ),
    }
}

#[tokio::test]
async fn a_snapshot_from_the_commands_in_force_equals_the_replay_of_the_log() {
    let mut h = Harness::new().await;
    let mut rng = fastrand::Rng::with_seed(7);
    let features = [h.define("feature-one").await, h.define("feature-two").await];
    let mut halts: BTreeMap<usize, Vec<CommandId>> = BTreeMap::new();
    let (emis, tpp) = (supplier(EMIS), supplier(TPP));
    let mut deferred = Vec::new();
    let mut redelivered = 0;
    for round in 0..8 {
        for _ in 0..10 {
            let f = rng.usize(..features.len());
            match rng.u8(..10) {
                0..=3 => {
                    let codes = ["A81001", "A81002", "B82001", "C83001"];
                    let pick: Vec<&str> = codes.iter().copied().filter(|_| rng.bool()).collect();
                    let pick = if pick.is_empty() { vec!["A81001"] } else { pick };
                    let id = h.halt(&features[f], &pick).await;
                    halts.entry(f).or_default().push(id);
                }
                4..=5 => {
                    h.go_live(&features[f]).await;
                }
                6 => {
                    // Two resumes pending at once naming the same halt: both are dispatched,
                    // the second perhaps much later.
                    let Some(named) = halts.get(&f).and_then(|v| v.first().cloned()) else {
                        continue;
                    };
                    let resume = Action::Resume {
                        halts: vec![named.clone()],
                    };
                    let first = h.issue(&features[f], resume.clone()).await;
                    deferred.push(h.issue(&features[f], resume).await);
                    h.approve(&first).await;
                    halts.get_mut(&f).expect("halts").retain(|x| *x != named);
                }
                7 if !deferred.is_empty() => {
                    let id = deferred.remove(0);
                    h.approve(&id).await;
                }
                _ => {
                    let Some(list) = halts.get_mut(&f).filter(|v| !v.is_empty()) else {
                        continue;
                    };
                    let n = rng.usize(1..=list.len().min(3));
                    let named: Vec<CommandId> = list.drain(..n).collect();
                    h.resume(&features[f], &named).await;
                }
            }
        }
        // emis rejects some go-lives and resumes (redeliveries too); tpp some in rounds 2 to
        // 4; in the last round emis answers nothing, so its later sequences stay unsettled.
        // Some conflicts are redelivered: commands addressed to one supplier, which the other
        // takes as a no-op, and which the next round's deliveries judge.
        if round < 7 {
            let seed = round as u64;
            h.deliver(EMIS, move |s, a| {
                a.turns_on() && (s.wrapping_mul(2_654_435_761) ^ seed) % 5 < 2
            })
            .await;
        }
        // tpp rejects a superset of what emis rejects, so that some commands are rejected by
        // both and then redelivered to one of them only.
        let (tpp_rejects, seed) = ((2..5).contains(&round), round as u64);
        h.deliver(TPP, move |s, a| {
            tpp_rejects && a.turns_on() && (s.wrapping_mul(2_654_435_761) ^ seed) % 5 < 3
        })
        .await;
        if round < 6 {
            redelivered += h.redeliver(EMIS, || rng.bool()).await;
            redelivered += h.redeliver(TPP, || rng.bool()).await;
        }
        let last = h.core.read(|m| m.last_sequence()).await;
        for applied in (0..=last).step_by(3) {
            assert_same(&h, &emis, applied, false).await;
            assert_same(&h, &emis, applied, true).await;
            assert_same(&h, &tpp, applied, false).await;
            assert_same(&h, &tpp, applied, true).await;
        }
    }
    let rejected = h.core.read(|m| m.rejected_by(&emis).len()).await;
    assert!(rejected > 2, "the history has rejections to skip ({rejected})");
    assert!(redelivered > 2, "the history has redeliveries ({redelivered})");
    let before = h.resolutions().await;
    let resolved = before
        .iter()
        .flat_map(|(_, _, q)| q)
        .filter(|(_, by)| by.is_some())
        .count();
    assert!(resolved > 0, "some rejections are resolved: {before:?}");
    h.restart().await;
    assert_eq!(
        h.resolutions().await,
        before,
        "conflicts and resolutions are filed again at start"
    );
}

#[tokio::test]
async fn the_model_holds_the_state_and_history_is_read_from_the_store() {
    let mut h = Harness::new().await;
    let f = h.define("long-history").await;
    h.go_live(&f).await;
    let mut kept = Vec::new();
    let mut lifted = Vec::new();
    for i in 0..60 {
        let halt = h.halt(&f, &["A81001", "B82001"]).await;
        if i % 10 == 0 {
            kept.push(halt);
        } else {
            h.resume(&f, std::slice::from_ref(&halt)).await;
            lifted.push(halt);
        }
    }
    let pending = h
        .issue(
            &f,
            Action::GoLive {
                scope: Scope::National,
                effective_at: None,
            },
        )
        .await;
    h.deliver(EMIS, |_, _| false).await;
    h.deliver(TPP, |_, _| false).await;
    let (in_force, waiting, unsettled, last) = h
        .core
        .read(|m| {
            (
                m.in_force().len(),
                m.pending_count(),
                m.unsettled_count(),
                m.last_sequence(),
            )
        })
        .await;
    assert_eq!(last, 2 + 60 + 54, "definition, go-live, 60 halts, 54 resumes");
    assert_eq!(
        in_force,
        2 + kept.len(),
        "the definition, the go-live and the halts in force"
    );
    assert_eq!(waiting, 1);
    assert_eq!(unsettled, 0, "every delivery is settled");

    // A retired halt still answers from the store, with its deliveries.
    let old = h.core.command_view(&lifted[0]).await.expect("get");
    assert_eq!(old.name, format!("commands/{}", lifted[0]));
    assert_eq!(old.deliveries.len(), 2);
    assert!(
        old.deliveries
            .iter()
            .all(|d| d.state() == pb::delivery::State::Applied)
    );
    // Resuming it again is refused with the resume that lifted it.
    let again = h
        .core
        .issue(
            &"alice".into(),
            f.clone(),
            Action::Resume {
                halts: vec![lifted[0].clone()],
            },
            "again".into(),
            false,
            None,
            audit(),
        )
        .await
        .expect_err("already lifted");
    assert!(
        again.to_string().contains("already lifted by commands/"),
        "{again}"
    );

    let before = (
        h.all_commands().await,
        h.core.command_view(&pending).await.expect("pending"),
        h.core
            .read(|m| m.supplier(&supplier(EMIS)).map(|s| (s.acked, s.pb.clone())))
            .await,
    );
    assert_eq!(before.0.len(), 1 + 1 + 60 + 54 + 1);
    h.restart().await;
    let after = (
        h.all_commands().await,
        h.core.command_view(&pending).await.expect("pending"),
        h.core
            .read(|m| m.supplier(&supplier(EMIS)).map(|s| (s.acked, s.pb.clone())))
            .await,
    );
    assert_eq!(before, after, "a restarted coordinator answers as before");
    let counts = h.core.read(|m| (m.in_force().len(), m.pending_count())).await;
    assert_eq!(counts, (in_force, 1));
}

#[tokio::test]
async fn a_store_from_before_migration_3_is_upgraded_once_and_answers_as_before() {
    let mut h = Harness::new().await;
    let f = h.define("legacy").await;
    h.go_live(&f).await;
    let a = h.halt(&f, &["A81001"]).await;
    let b = h.halt(&f, &["B82001"]).await;
    h.resume(&f, std::slice::from_ref(&a)).await;
    h.deliver(TPP, |_, _| false).await;
    h.deliver(EMIS, |_, a| matches!(a, Action::Resume { .. })).await;
    let before = (h.all_commands().await, h.core.read(|m| m.in_force().len()).await);
    let snapshot = h
        .core
        .snapshot(&supplier(EMIS), 0, false)
        .await
        .expect("snapshot");
    h.store.close().await;
    {
        use sqlx::Connection;
        let mut conn = sqlx::AnyConnection::connect(&h.url).await.expect("connect");
        for sql in [
            "UPDATE commands SET feature = NULL, action = NULL, effective = 0",
            "UPDATE deliveries SET state = NULL",
        ] {
            sqlx::query(sql).execute(&mut conn).await.expect("make legacy");
        }
        conn.close().await.ok();
    }
    h.restart().await;
    let after = (h.all_commands().await, h.core.read(|m| m.in_force().len()).await);
    assert_eq!(before, after);
    assert_eq!(after.1, 3, "the definition, the go-live and the halt not lifted");
    let again = h
        .core
        .snapshot(&supplier(EMIS), 0, false)
        .await
        .expect("snapshot");
    let names =
        |s: Option<Snapshot>| s.map(|s| s.chunks.concat().into_iter().map(|c| c.name).collect::<Vec<_>>());
    assert_eq!(names(snapshot), names(again));
    assert!(
        names(
            h.core
                .snapshot(&supplier(EMIS), 0, false)
                .await
                .expect("snapshot")
        )
        .is_some_and(|n| n.contains(&format!("commands/{a}")) && n.contains(&format!("commands/{b}"))),
        "emis rejected the resume, so both halts are in force there"
    );
    assert_eq!(
        h.store.legacy_rows().await.expect("legacy"),
        Default::default(),
        "filled in once"
    );
}
