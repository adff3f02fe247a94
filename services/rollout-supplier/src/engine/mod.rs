//! The supplier's one write path.
//!
//! Reads take an immutable [`Serving`] snapshot from an `ArcSwap` and never wait. Every write
//! goes the same way: [`Engine::begin`] takes the write lock and the current state (caught up
//! with the store first if other replicas share it), the writer works out the next state beside
//! it, and [`Engine::commit`] stores the change at the next stored version (compare and set)
//! and only then swaps the new state in and tells the watchers. A failed commit changes nothing
//! in memory. The commit and the swap run on a task of their own, holding the write lock, so
//! a caller that goes away (a client's deadline or cancel) cannot leave a change stored but
//! not served: the write finishes, or fails as a whole, either way.
//!
//! What is served and rebuilt at start is the effective state, not the history: the store
//! keeps every command as received, but marks which are rules in force, and start-up reads
//! only those (see `rollout_core::rules` for what compaction retires and when).

use std::{
    future::Future,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicI64, AtomicU64},
    },
    time::{Duration, SystemTime},
};

use arc_swap::ArcSwap;
use prost::Message;
use rollout_core::{ApplyError, Command, Context, FailMode, HistoryHash, RuleBook, RuleKind, SupplierId};
use rollout_net::{ApiError, wire};
use rollout_proto::v1 as pb;
use rollout_store::{
    StoreError,
    supplier::{StoredCommand, SupplierState, SupplierStore, SyncPoint},
};
use tokio::sync::{Mutex, Notify, OwnedMutexGuard, broadcast, watch};
use tracing::{Instrument, Span, field::Empty, info, info_span, warn};

use crate::fanout::{self, Hub};
mod commands;
mod contact;
mod practices;

pub use commands::SnapshotHeader;
pub use practices::withdrawn;

pub use crate::{
    fanout::{ChangeBatch, WatchStart},
    snapshot::{Answer, Serving, SyncMark},
};

/// The supplier's state and its write path.
pub struct Engine {
    store: Arc<dyn SupplierStore>,
    state: ArcSwap<Serving>,
    /// The write lock: owned by a write from [`Engine::begin`] to the end of its commit task.
    write: Arc<Mutex<()>>,
    /// Last coordinator contact that counted (see `contact.rs`), in microseconds since the
    /// epoch; `i64::MIN` for never.
    last_contact: AtomicI64,
    /// When the last contact was written to the store.
    persisted_contact: AtomicI64,
    /// The coordinator's latest sequence as it last told this supplier: its last heartbeat's
    /// target, raised by each command or snapshot it sent since.
    target: AtomicU64,
    /// Whether the last call from the coordinator found this supplier behind its target.
    behind: AtomicBool,
    hub: std::sync::Mutex<Hub>,
    /// Where the state being served stands (applied sequence, history hash, opt-out change,
    /// held practices), for WatchSyncState: a watch channel holds only the latest, so a slow
    /// reader never makes a queue.
    sync_point: watch::Sender<SyncMark>,
    /// Wakes the clock task (a write or a heartbeat may move the next time boundary).
    pub clock: Notify,
    /// This supplier.
    pub supplier: SupplierId,
    /// The declared change-freeze reason, if any.
    pub freeze: Option<String>,
    /// The store's identity (SyncState.store_id): the same for every replica of one store.
    pub store_id: String,
    /// Figures recorded for the metrics as things happen.
    pub(crate) recorded: crate::metrics::Recorded,
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine")
            .field("supplier", &self.supplier)
            .finish_non_exhaustive()
    }
}

/// A write in progress: the write lock, and the state it started from.
struct Write {
    _guard: OwnedMutexGuard<()>,
    current: Arc<Serving>,
}

fn store_error(context: &str) -> impl FnOnce(StoreError) -> ApiError + '_ {
    move |e| ApiError::internal(context, e)
}

/// A start-up failure rebuilding the state from the store.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A stored command no longer decodes or applies.
    #[error("stored command {sequence} cannot be replayed: {problem}")]
    Replay {
        /// Its sequence.
        sequence: u64,
        /// What is wrong.
        problem: String,
    },
}

/// Decodes and validates a stored command body.
fn decode(stored: &StoredCommand) -> Result<Command, LoadError> {
    let replay = |problem: String| LoadError::Replay {
        sequence: stored.sequence,
        problem,
    };
    let pb = pb::Command::decode(stored.body.as_slice()).map_err(|e| replay(e.to_string()))?;
    wire::command("command", &pb).map_err(|e| replay(e.to_string()))
}

/// The marks a store written before compaction needs: the sequences of its rules in force, and
/// its sync point.
type Upgrade = (Vec<u64>, SyncPoint);

/// The serving state of what the store holds for `supplier`, at watch version `version`
/// (answers not yet computed). A compacted store gives only the rules in force, which are
/// restored as they are.
/// A store written before compaction gives its whole log: it is replayed once, and the marks
/// to store (the effective sequences and the sync point) are returned with the state.
fn build(
    stored: SupplierState,
    supplier: &SupplierId,
    version: u64,
) -> Result<(Serving, Option<Upgrade>), LoadError> {
    let problem = |sequence: u64| {
        move |e: ApplyError| LoadError::Replay {
            sequence,
            problem: e.to_string(),
        }
    };
    let mut book = RuleBook::for_supplier(supplier.clone());
    let mut upgrade = None;
    let (head, last_apply_time) = match &stored.sync {
        Some(sync) => {
            for s in &stored.commands {
                book.restore(&decode(s)?).map_err(problem(s.sequence))?;
            }
            book.mark_synchronised(sync.applied_sequence);
            let head = HistoryHash::from_hex(&sync.history_hash).ok_or_else(|| LoadError::Replay {
                sequence: sync.applied_sequence,
                problem: "the stored history hash is not 64 hex digits".into(),
            })?;
            (head, Some(sync.applied_at))
        }
        None => {
            let mut head = HistoryHash::EMPTY;
            let mut last = None;
            for s in &stored.commands {
                let cmd = decode(s)?;
                match &s.rejection {
                    Some(_) => book.skip(&cmd),
                    None => book.apply(&cmd, None).map(|_| ()),
                }
                .map_err(problem(s.sequence))?;
                head = head.next(s.sequence, &cmd.id);
                last = Some(s.applied_at);
            }
            if let Some(applied_at) = last {
                let effective = book.effective_commands().into_iter().map(|(s, _)| s).collect();
                let sync = SyncPoint {
                    applied_sequence: book.applied_sequence(),
                    history_hash: head.to_hex(),
                    applied_at,
                };
                upgrade = Some((effective, sync));
            }
            (head, last)
        }
    };
    let serving = Serving {
        book: Arc::new(book),
        head,
        last_apply_time,
        estate: Arc::new(stored.practices.into_iter().collect()),
        opt_outs: Arc::new(
            stored
                .opt_outs
                .into_iter()
                .map(|r| ((r.opt_out.practice, r.opt_out.feature.clone()), r))
                .collect(),
        ),
        opt_out_change: stored.opt_out_change,
        held: Arc::new(stored.held.into_iter().collect()),
        version,
        store_version: stored.version,
        answers: Arc::default(),
    };
    Ok((serving, upgrade))
}

impl Engine {
    /// Rebuilds the serving state from the store: the rules in force, never a replay of the
    /// history (except once, for a store written before compaction).
    pub async fn load(
        store: Arc<dyn SupplierStore>,
        supplier: SupplierId,
        freeze: Option<String>,
    ) -> Result<Arc<Engine>, LoadError> {
        let stored = store.load().await?;
        let store_id = stored.store_id.clone();
        let last_contact = contact::loaded(store.as_ref(), stored.last_contact).await;
        let epoch = u64::from(fastrand::u32(1..0x7fff_ffff)) << 32;
        let (mut serving, upgrade) = build(stored, &supplier, epoch + 1)?;
        if let Some((effective, sync)) = upgrade {
            store.mark_compacted(&effective, &sync).await?;
            info!(
                applied_sequence = sync.applied_sequence,
                rules_in_force = effective.len(),
                "store written before compaction: replayed once and marked"
            );
        }
        let engine = Engine {
            store,
            state: ArcSwap::from_pointee(serving.clone()),
            write: Arc::new(Mutex::new(())),
            last_contact: AtomicI64::new(last_contact),
            persisted_contact: AtomicI64::new(last_contact),
            target: AtomicU64::new(0),
            behind: AtomicBool::new(false),
            hub: std::sync::Mutex::new(Hub::new(serving.version)),
            sync_point: watch::Sender::new(serving.sync_mark()),
            clock: Notify::new(),
            supplier,
            freeze,
            store_id,
            recorded: Default::default(),
        };
        serving.answers = Arc::new(serving.compute_answers(&engine.context(&serving)));
        info!(
            applied_sequence = serving.book.applied_sequence(),
            rules_in_force = serving.book.rule_count(),
            practices = serving.estate.len(),
            store_version = serving.store_version,
            "state rebuilt from the store"
        );
        engine.state.store(Arc::new(serving));
        Ok(Arc::new(engine))
    }

    /// Reloads everything from the store (another replica wrote), under the write lock, and
    /// publishes what changed.
    async fn reload(&self, current: &Serving) -> Result<Arc<Serving>, ApiError> {
        let stored = self
            .store
            .load()
            .await
            .map_err(store_error("reloading the state"))?;
        let (next, _) = build(stored, &self.supplier, current.version + 1)
            .map_err(|e| ApiError::internal("reloading the state", e))?;
        info!(
            store_version = next.store_version,
            "state reloaded: another replica changed it"
        );
        self.publish(current, next, "changed through another replica");
        Ok(self.current())
    }

    /// Takes the write lock and the state to write from, first catching up with the store if
    /// another replica may have written to it.
    async fn begin(&self) -> Result<Write, ApiError> {
        let guard = Arc::clone(&self.write).lock_owned().await;
        let current = self.current();
        let current = if !self.store.shared() {
            current
        } else {
            let (version, _) = self
                .store
                .head()
                .await
                .map_err(store_error("reading the store version"))?;
            if version == current.store_version {
                current
            } else {
                self.reload(&current).await?
            }
        };
        Ok(Write {
            _guard: guard,
            current,
        })
    }

    /// Finishes a write: awaits `stored` (the store write the caller made at
    /// `current.store_version + 1`), then swaps in `next` and publishes what changed. On a
    /// failed store write nothing changes in memory. All of it runs on a task of its own that
    /// keeps the write lock to its end ([`rollout_net::detached`]): dropping the returned future
    /// (the caller's deadline passed) neither stops the write nor separates the swap from the
    /// commit. A panic in it answers INTERNAL. Within a traced call the store write is its
    /// `commit` span and the swap with the publication to watchers its `publish` span.
    async fn commit<T, F>(
        self: &Arc<Self>,
        w: Write,
        stored: F,
        next: Serving,
        cause: String,
        context: &'static str,
    ) -> Result<T, ApiError>
    where
        T: Send + 'static,
        F: Future<Output = Result<T, StoreError>> + Send + 'static,
    {
        let engine = Arc::clone(self);
        rollout_net::detached::to_completion(context, async move {
            // Within a traced call (ApplyCommand, ReplaceRules), the store write and the
            // publication are spans of the call's trace.
            let traced = rollout_net::trace::active();
            let commit = if traced {
                let version = w.current.store_version + 1;
                info_span!(target: rollout_net::trace::TARGET, "commit", gprollout.store_version = version)
            } else {
                Span::none()
            };
            let started = std::time::Instant::now();
            let stored = stored.instrument(commit).await;
            engine.recorded.commit_took(started.elapsed().as_secs_f64());
            let value = match stored {
                Ok(v) => v,
                Err(e) => return Err(engine.commit_failed(&w.current, e, context).await),
            };
            let next = Serving {
                version: w.current.version + 1,
                store_version: w.current.store_version + 1,
                ..next
            };
            let publish = if traced {
                info_span!(
                    target: rollout_net::trace::TARGET,
                    "publish",
                    gprollout.version = next.version,
                    gprollout.changed_answers = Empty,
                    gprollout.watchers = Empty,
                )
            } else {
                Span::none()
            };
            publish.in_scope(|| engine.publish(&w.current, next, &cause));
            drop(w);
            Ok(value)
        })
        .await
    }

    /// Follows changes made through other replicas: reloads when the stored version moved and
    /// takes a newer coordinator contact. Replicas call it on every change notification and
    /// periodically.
    pub async fn follow_store(&self) {
        let head = match self.store.head().await {
            Ok(h) => h,
            Err(error) => {
                warn!(%error, "cannot read the store version");
                return;
            }
        };
        if let Some(contact) = head.1
            && self.follow_contact(contact)
        {
            self.clock.notify_one();
        }
        if head.0 != self.current().store_version {
            let _guard = self.write.lock().await;
            let current = self.current();
            if head.0 != current.store_version
                && let Err(e) = self.reload(&current).await
            {
                warn!(error = %e, "could not reload the state");
            }
        }
    }

    /// A commit failed: on a conflict (another replica wrote first) reload and ask the caller
    /// to retry; otherwise an internal error.
    async fn commit_failed(&self, current: &Serving, error: StoreError, context: &'static str) -> ApiError {
        match error {
            StoreError::Conflict(message) => {
                let _ = self.reload(current).await;
                ApiError::new(
                    tonic::Code::Aborted,
                    "CONCURRENT_CHANGE",
                    format!("another replica changed the state first ({message}); retry the call"),
                )
            }
            other => ApiError::internal(context, other),
        }
    }

    /// The current snapshot.
    pub fn current(&self) -> Arc<Serving> {
        self.state.load_full()
    }

    /// The evaluation context now, for a snapshot.
    pub fn context(&self, s: &Serving) -> Context {
        Context {
            now: SystemTime::now(),
            synchronised: s.book.synchronised(),
            last_contact: self.last_contact(),
        }
    }

    /// Swaps in `next` (already committed), working out and publishing what changed.
    fn publish(&self, previous: &Serving, mut next: Serving, cause: &str) {
        let ctx = self.context(&next);
        next.answers = Arc::new(next.compute_answers(&ctx));
        let batches = fanout::batches(previous, &next, cause);
        let mut hub = self.hub.lock().unwrap_or_else(|e| e.into_inner());
        let point = next.sync_mark();
        self.state.store(Arc::new(next));
        let changed: usize = batches.iter().map(|b| b.changes.len()).sum();
        for batch in batches {
            hub.send(batch);
        }
        // For the `publish` span, when there is one (nothing otherwise).
        Span::current()
            .record("gprollout.changed_answers", changed)
            .record("gprollout.watchers", hub.watchers());
        drop(hub);
        // Told after the swap, so a reader woken by it reads (at least) this state.
        self.sync_point.send_if_modified(|p| {
            let changed = *p != point;
            *p = point;
            changed
        });
        self.clock.notify_one();
    }

    /// Follows where the state being served stands ([`SyncMark`]): the receiver's current
    /// value is the latest, and `changed()` wakes on each change of the applied sequence, the
    /// history hash, the opt-out change number or the held practices (never for a write that
    /// leaves them all alone, such as an estate import that holds nobody new).
    pub fn watch_sync_point(&self) -> watch::Receiver<SyncMark> {
        self.sync_point.subscribe()
    }

    /// Subscribes a watcher: resumes after `start_version` if the changes since are held,
    /// else starts from a snapshot.
    pub fn subscribe(&self, start_version: u64) -> (broadcast::Receiver<Arc<ChangeBatch>>, WatchStart) {
        let hub = self.hub.lock().unwrap_or_else(|e| e.into_inner());
        hub.subscribe(start_version, self.current())
    }

    /// Re-evaluates every answer at the current time and publishes what changed (a go-live
    /// taking effect, a fail-closed feature going stale or coming back).
    pub async fn refresh(&self) {
        let _guard = self.write.lock().await;
        let current = self.current();
        let ctx = self.context(&current);
        let answers = current.compute_answers(&ctx);
        if answers == *current.answers {
            return;
        }
        // Time moved the answers on: a new version, held in memory only (nothing was written).
        let next = Serving {
            version: current.version + 1,
            ..(*current).clone()
        };
        self.publish(&current, next, "time");
    }

    /// The next time at which an answer may change with no write: a scheduled go-live taking
    /// effect, or a fail-closed feature's control TTL running out.
    pub fn next_boundary(&self) -> Option<SystemTime> {
        let now = SystemTime::now();
        let s = self.current();
        let contact = self.last_contact();
        s.book
            .features()
            .flat_map(|f| {
                let ttl_end = match (f.def.fail_mode, contact) {
                    (FailMode::Closed { ttl }, Some(c)) => Some(c + ttl + Duration::from_millis(1)),
                    _ => None,
                };
                f.rules()
                    .filter_map(|r| match r.kind {
                        RuleKind::GoLive { effective_at, .. } => Some(effective_at),
                        RuleKind::Halt { .. } => None,
                    })
                    .chain(ttl_end)
            })
            .filter(|t| *t > now)
            .min()
    }

    /// Looks up `identity`'s idempotency record: `Ok(Some(response))` for a retry of the same
    /// request, an error for the same id with a different body. Another identity's request
    /// with the same id is a request of its own. Waits for the write in progress, if any: it
    /// may be this request's first try, whose caller went away while it committed.
    pub async fn recall(
        &self,
        identity: &str,
        request_id: &str,
        fingerprint: &[u8],
    ) -> Result<Option<Vec<u8>>, ApiError> {
        let _after_writes = self.write.lock().await;
        let stored = self.store.recall_request(identity, request_id);
        match stored.await.map_err(store_error("reading a request id"))? {
            Some(r) if r.fingerprint == fingerprint => Ok(Some(r.response)),
            Some(_) => Err(ApiError::new(
                tonic::Code::InvalidArgument,
                "REQUEST_ID_REUSED",
                format!("request_id {request_id} was already used for a different request; use a new UUID for a new request"),
            )
            .with_violation("request_id", "already used for a different request")
            .with_metadata("request_id", request_id)),
            None => Ok(None),
        }
    }

    /// The store, for reading the audit log and the command log.
    pub fn store(&self) -> &Arc<dyn SupplierStore> {
        &self.store
    }
}
