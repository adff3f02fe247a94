//! The supplier's serving state and the one write path that changes it.
//!
//! Reads take an immutable [`Serving`] snapshot from an `ArcSwap` and never wait: a write
//! builds the next snapshot beside the current one, commits it to the store, and only then
//! swaps it in and tells the watchers. Writes are serialised by one async mutex.

use std::{
    collections::{BTreeMap, HashMap, HashSet, VecDeque},
    sync::{
        Arc,
        atomic::{AtomicI64, Ordering},
    },
    time::{Duration, SystemTime},
};

use arc_swap::ArcSwap;
use prost::Message;
use rollout_core::{
    ApplyError, Command, CommandId, Context, Estate, Evaluation, FailMode, FeatureKey, OdsCode, OptOut,
    Outcome, Practice, Reason, RuleBook, RuleKind, State, SupplierId,
    audit::{AuditDraft, AuditOutcome, from_micros, micros},
    evaluate,
};
use rollout_net::{ApiError, wire};
use rollout_proto::v1 as pb;
use rollout_store::{
    StoreError,
    supplier::{EstateChange, OptOutRecord, RequestRecord, StoredCommand, SupplierStore, Withdrawal},
};
use tokio::sync::{Mutex, Notify, broadcast};
use tracing::{info, warn};

/// How many change batches are kept for watchers resuming from a version.
const RETAINED_BATCHES: usize = 4096;

/// What the supplier recorded for an applied (or rejected) sequence.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Applied {
    /// The command's id.
    pub id: CommandId,
    /// `Some(reason)` if rejected.
    pub rejection: Option<String>,
    /// When.
    pub at: SystemTime,
}

/// One answer in the answers cache.
pub type Answer = (OdsCode, State, Reason);

/// An immutable snapshot of everything the supplier answers from.
#[derive(Debug, Clone)]
pub struct Serving {
    /// Applied features and rules.
    pub book: Arc<RuleBook>,
    /// The supplier's practices.
    pub estate: Arc<Estate>,
    /// Opt-outs, current and withdrawn.
    pub opt_outs: Arc<BTreeMap<(OdsCode, FeatureKey), OptOutRecord>>,
    /// Per applied sequence, what happened.
    pub applied: Arc<BTreeMap<u64, Applied>>,
    /// The watch version: this process's position in its stream of changes. Its high 32 bits
    /// are a random epoch per process, so a watcher that resumes on another replica (or after
    /// a restart) starts with a snapshot instead of trusting another process's numbering.
    pub version: u64,
    /// The stored version this snapshot reflects (compare-and-set on every write).
    pub store_version: u64,
    /// Every practice's answer per defined feature, by ODS code, as of `version`.
    pub answers: Arc<HashMap<FeatureKey, Vec<Answer>>>,
}

impl Serving {
    /// The practice's current opt-out from the feature, if any.
    pub fn opt_out(&self, ods: OdsCode, feature: &FeatureKey) -> Option<&OptOut> {
        self.opt_outs
            .get(&(ods, feature.clone()))
            .filter(|r| r.withdrawal.is_none())
            .map(|r| &r.opt_out)
    }

    /// Evaluates a feature for a practice. `None` if the feature is not defined here and the
    /// supplier has synchronised (so it really does not exist); an undefined feature before the
    /// first synchronisation is UNKNOWN.
    pub fn evaluate<'a>(
        &'a self,
        p: &Practice,
        feature: &FeatureKey,
        ctx: &Context,
        explain: bool,
    ) -> Option<Evaluation<'a>> {
        let opt = self.opt_out(p.ods, feature);
        match self.book.feature(feature) {
            Some(f) => Some(evaluate(f, p, opt, ctx, explain)),
            None if !ctx.synchronised => Some(Evaluation {
                state: State::Unknown,
                reason: Reason::NeverSynchronised,
                deciding: None,
                rules: opt
                    .filter(|_| explain)
                    .map(rollout_core::Applicable::OptOut)
                    .into_iter()
                    .collect(),
            }),
            None => None,
        }
    }

    fn compute_answers(&self, ctx: &Context) -> HashMap<FeatureKey, Vec<Answer>> {
        self.book
            .features()
            .map(|f| {
                let key = &f.def.key;
                let answers = self
                    .estate
                    .practices()
                    .map(|p| {
                        let e = evaluate(f, p, self.opt_out(p.ods, key), ctx, false);
                        (p.ods, e.state, e.reason)
                    })
                    .collect();
                (key.clone(), answers)
            })
            .collect()
    }
}

/// Answers that changed for one feature at one version.
#[derive(Debug, Clone)]
pub struct ChangeBatch {
    /// The version the answers are as of.
    pub version: u64,
    /// The feature.
    pub feature: FeatureKey,
    /// The new answers.
    pub changes: Vec<Answer>,
    /// Where each practice's answer is in `changes`, so that a watcher of a few practices
    /// looks them up instead of scanning the batch (10,000 such watchers on a national halt
    /// would otherwise scan it 10,000 times).
    pub index: HashMap<OdsCode, usize>,
    /// What caused the change.
    pub cause: String,
}

/// The answers in `new` that differ from `old` (both sorted by ODS code). A practice missing
/// from `old` counts as changed from `missing`.
fn diff(old: Option<&Vec<Answer>>, new: &[Answer], missing: (State, Reason)) -> Vec<Answer> {
    let old: HashMap<OdsCode, (State, Reason)> = old
        .map(|v| v.iter().map(|(o, s, r)| (*o, (*s, *r))).collect())
        .unwrap_or_default();
    new.iter()
        .filter(|(ods, s, r)| old.get(ods).copied().unwrap_or(missing) != (*s, *r))
        .copied()
        .collect()
}

/// Watch fan-out: a ring of recent batches for resuming, and a broadcast for live ones.
#[derive(Debug)]
struct Hub {
    ring: VecDeque<Arc<ChangeBatch>>,
    /// Every batch with a version at or above this is in the ring.
    retained_from: u64,
    tx: broadcast::Sender<Arc<ChangeBatch>>,
}

/// What a new watcher starts from.
#[derive(Debug)]
pub enum WatchStart {
    /// The changes after the requested version, then live ones.
    Resume(Vec<Arc<ChangeBatch>>),
    /// A snapshot of this state, then live changes after its version.
    Snapshot(Arc<Serving>),
}

/// The supplier's state and its write path.
pub struct Engine {
    store: Arc<dyn SupplierStore>,
    state: ArcSwap<Serving>,
    write: Mutex<()>,
    /// Last coordinator contact in microseconds since the epoch; `i64::MIN` for never.
    last_contact: AtomicI64,
    /// When the last contact was written to the store.
    persisted_contact: AtomicI64,
    hub: std::sync::Mutex<Hub>,
    /// Wakes the clock task (a write or a heartbeat may move the next time boundary).
    pub clock: Notify,
    /// This supplier.
    pub supplier: SupplierId,
    /// The declared change-freeze reason, if any.
    pub freeze: Option<String>,
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine")
            .field("supplier", &self.supplier)
            .finish_non_exhaustive()
    }
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

/// The serving state of what the store holds, at watch version `version` (answers not yet
/// computed).
fn build(stored: rollout_store::supplier::SupplierState, version: u64) -> Result<Serving, LoadError> {
    let mut book = RuleBook::new();
    let mut applied = BTreeMap::new();
    for s in &stored.commands {
        let cmd = decode(s)?;
        let result = match &s.rejection {
            Some(_) => book.skip(&cmd),
            None => book.apply(&cmd, None).map(|_| ()),
        };
        result.map_err(|e| LoadError::Replay {
            sequence: s.sequence,
            problem: e.to_string(),
        })?;
        applied.insert(
            s.sequence,
            Applied {
                id: cmd.id,
                rejection: s.rejection.clone(),
                at: s.applied_at,
            },
        );
    }
    Ok(Serving {
        book: Arc::new(book),
        estate: Arc::new(stored.practices.into_iter().collect()),
        opt_outs: Arc::new(
            stored
                .opt_outs
                .into_iter()
                .map(|r| ((r.opt_out.practice, r.opt_out.feature.clone()), r))
                .collect(),
        ),
        applied: Arc::new(applied),
        version,
        store_version: stored.version,
        answers: Arc::default(),
    })
}

impl Engine {
    /// Rebuilds the serving state from the store.
    pub async fn load(
        store: Arc<dyn SupplierStore>,
        supplier: SupplierId,
        freeze: Option<String>,
    ) -> Result<Arc<Engine>, LoadError> {
        let stored = store.load().await?;
        let last_contact = stored.last_contact.map_or(i64::MIN, micros);
        let epoch = u64::from(fastrand::u32(1..0x7fff_ffff)) << 32;
        let mut serving = build(stored, epoch + 1)?;
        let engine = Engine {
            store,
            state: ArcSwap::from_pointee(serving.clone()),
            write: Mutex::new(()),
            last_contact: AtomicI64::new(last_contact),
            persisted_contact: AtomicI64::new(last_contact),
            hub: std::sync::Mutex::new(Hub {
                ring: VecDeque::new(),
                retained_from: serving.version + 1,
                tx: broadcast::channel(1024).0,
            }),
            clock: Notify::new(),
            supplier,
            freeze,
        };
        serving.answers = Arc::new(serving.compute_answers(&engine.context(&serving)));
        info!(
            applied_sequence = serving.book.applied_sequence(),
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
        let next =
            build(stored, current.version + 1).map_err(|e| ApiError::internal("reloading the state", e))?;
        info!(
            store_version = next.store_version,
            "state reloaded: another replica changed it"
        );
        self.publish(current, next, "changed through another replica");
        Ok(self.current())
    }

    /// The current snapshot, first catching up with the store if another replica may have
    /// written to it. Call with the write lock held.
    async fn current_for_write(&self) -> Result<Arc<Serving>, ApiError> {
        let current = self.current();
        if !self.store.shared() {
            return Ok(current);
        }
        let (version, _) = self
            .store
            .head()
            .await
            .map_err(store_error("reading the store version"))?;
        if version == current.store_version {
            Ok(current)
        } else {
            self.reload(&current).await
        }
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
            && micros(contact) > self.last_contact.load(Ordering::Acquire)
        {
            self.last_contact.store(micros(contact), Ordering::Release);
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

    /// When the coordinator was last heard from.
    pub fn last_contact(&self) -> Option<SystemTime> {
        match self.last_contact.load(Ordering::Acquire) {
            i64::MIN => None,
            m => Some(from_micros(m)),
        }
    }

    /// The evaluation context now, for a snapshot.
    pub fn context(&self, s: &Serving) -> Context {
        Context {
            now: SystemTime::now(),
            synchronised: s.book.synchronised(),
            last_contact: self.last_contact(),
        }
    }

    /// Records a heartbeat from the coordinator. Persisted at most once a second.
    pub fn heartbeat(self: &Arc<Self>) {
        let now = SystemTime::now();
        let was = self.last_contact.swap(micros(now), Ordering::AcqRel);
        // A fail-closed feature may come back from stale: let the clock re-evaluate.
        self.clock.notify_one();
        let persisted = self.persisted_contact.load(Ordering::Acquire);
        if was == i64::MIN || micros(now).saturating_sub(persisted) > 1_000_000 {
            self.persisted_contact.store(micros(now), Ordering::Release);
            let engine = self.clone();
            tokio::spawn(async move {
                if let Err(error) = engine.store.record_contact(now).await {
                    warn!(%error, "could not record the coordinator's last contact");
                }
            });
        }
    }

    /// Swaps in `next` (already committed), working out and publishing what changed.
    fn publish(&self, previous: &Serving, mut next: Serving, cause: &str) {
        let ctx = self.context(&next);
        next.answers = Arc::new(next.compute_answers(&ctx));
        let missing = if previous.book.synchronised() {
            (State::Disabled, Reason::NotLive)
        } else {
            (State::Unknown, Reason::NeverSynchronised)
        };
        let batches: Vec<Arc<ChangeBatch>> = next
            .answers
            .iter()
            .filter_map(|(feature, answers)| {
                let changes = diff(previous.answers.get(feature), answers, missing);
                (!changes.is_empty()).then(|| {
                    Arc::new(ChangeBatch {
                        version: next.version,
                        feature: feature.clone(),
                        index: changes
                            .iter()
                            .enumerate()
                            .map(|(i, (ods, ..))| (*ods, i))
                            .collect(),
                        changes,
                        cause: cause.to_owned(),
                    })
                })
            })
            .collect();
        let mut hub = self.hub.lock().unwrap_or_else(|e| e.into_inner());
        self.state.store(Arc::new(next));
        for batch in batches {
            hub.ring.push_back(batch.clone());
            while hub.ring.len() > RETAINED_BATCHES {
                if let Some(old) = hub.ring.pop_front() {
                    hub.retained_from = hub.retained_from.max(old.version + 1);
                }
            }
            // No receivers is fine: nobody is watching.
            let _ = hub.tx.send(batch);
        }
        drop(hub);
        self.clock.notify_one();
    }

    /// Subscribes a watcher: resumes after `start_version` if the changes since are held,
    /// else starts from a snapshot.
    pub fn subscribe(&self, start_version: u64) -> (broadcast::Receiver<Arc<ChangeBatch>>, WatchStart) {
        let hub = self.hub.lock().unwrap_or_else(|e| e.into_inner());
        let rx = hub.tx.subscribe();
        let state = self.current();
        let start = if start_version > 0
            && start_version + 1 >= hub.retained_from
            && start_version <= state.version
        {
            WatchStart::Resume(
                hub.ring
                    .iter()
                    .filter(|b| b.version > start_version)
                    .cloned()
                    .collect(),
            )
        } else {
            WatchStart::Snapshot(state)
        };
        (rx, start)
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
                    .iter()
                    .filter_map(|r| match r.kind {
                        RuleKind::GoLive { effective_at, .. } => Some(effective_at),
                        RuleKind::Halt { .. } => None,
                    })
                    .chain(ttl_end)
            })
            .filter(|t| *t > now)
            .min()
    }

    /// Applies the next command, durably, before returning. A sequence already applied
    /// answers as it did the first time.
    pub async fn apply(&self, body: Vec<u8>, cmd: Command, audit: AuditDraft) -> Result<Applied, ApiError> {
        let _guard = self.write.lock().await;
        let current = self.current_for_write().await?;
        let applied_sequence = current.book.applied_sequence();
        if cmd.sequence <= applied_sequence {
            return match current.applied.get(&cmd.sequence) {
                Some(a) if a.id == cmd.id => Ok(a.clone()),
                Some(a) => Err(ApiError::failed_precondition(
                    "SEQUENCE_CONFLICT",
                    format!(
                        "sequence {} was applied here as command {}, not {}; resynchronise with ReplaceRules",
                        cmd.sequence, a.id, cmd.id
                    ),
                )
                .with_metadata("applied_sequence", applied_sequence.to_string())),
                None => Err(ApiError::failed_precondition(
                    "SEQUENCE_UNKNOWN",
                    format!(
                        "sequence {} is at or below the applied sequence but has no record here",
                        cmd.sequence
                    ),
                )
                .with_metadata("applied_sequence", applied_sequence.to_string())),
            };
        }
        let mut book = (*current.book).clone();
        let outcome = book
            .apply(&cmd, self.freeze.as_deref())
            .map_err(|e| apply_error(e, applied_sequence))?;
        let at = rollout_core::audit::now();
        let rejection = match outcome {
            Outcome::Applied => None,
            Outcome::Rejected(r) => Some(r),
        };
        let stored = StoredCommand {
            sequence: cmd.sequence,
            id: cmd.id.to_string(),
            feature: cmd.feature.to_string(),
            body,
            rejection: rejection.clone(),
            applied_at: at,
        };
        let audit = match &rejection {
            Some(r) => AuditDraft {
                outcome: AuditOutcome::Refused,
                reason: r.clone(),
                ..audit
            },
            None => audit,
        };
        if let Err(e) = self
            .store
            .append_command(&stored, current.store_version + 1, audit)
            .await
        {
            return Err(self
                .commit_failed(&current, e, "storing an applied command")
                .await);
        }
        let record = Applied {
            id: cmd.id.clone(),
            rejection,
            at,
        };
        let mut applied = (*current.applied).clone();
        applied.insert(cmd.sequence, record.clone());
        let next = Serving {
            book: Arc::new(book),
            applied: Arc::new(applied),
            version: current.version + 1,
            store_version: current.store_version + 1,
            ..(*current).clone()
        };
        info!(sequence = cmd.sequence, command = %cmd.id, action = cmd.action.name(), rejected = record.rejection.is_some(), "command applied");
        self.publish(&current, next, &format!("commands/{} applied", cmd.id));
        Ok(record)
    }

    /// Replaces every rule with the coordinator's state of the world. Commands this supplier
    /// already applied keep the outcome it recorded; those in `rejected` are kept as rejected;
    /// others are judged now (the change freeze applies).
    pub async fn replace(
        &self,
        commands: Vec<(Vec<u8>, Command)>,
        sequence: u64,
        rejected: &HashSet<u64>,
        audit: AuditDraft,
    ) -> Result<BTreeMap<u64, Applied>, ApiError> {
        let _guard = self.write.lock().await;
        let current = self.current_for_write().await?;
        let mut book = RuleBook::new();
        let mut applied = BTreeMap::new();
        let mut stored = Vec::with_capacity(commands.len());
        let now = rollout_core::audit::now();
        for (i, (body, cmd)) in commands.into_iter().enumerate() {
            let field = format!("commands[{i}]");
            if cmd.sequence != i as u64 + 1 {
                return Err(ApiError::invalid_field(
                    format!("{field}.sequence"),
                    format!("expected sequence {}: list every command from 1 in order", i + 1),
                ));
            }
            let previous = current.applied.get(&cmd.sequence).filter(|a| a.id == cmd.id);
            let keep_rejected = previous.map_or(rejected.contains(&cmd.sequence), |a| a.rejection.is_some());
            let rejection = if keep_rejected {
                book.skip(&cmd).map_err(|e| ApiError::invalid_field(&field, e))?;
                Some(
                    previous
                        .and_then(|a| a.rejection.clone())
                        .unwrap_or_else(|| "rejected earlier, as recorded by the coordinator".to_owned()),
                )
            } else {
                let freeze = if previous.is_some() {
                    None
                } else {
                    self.freeze.as_deref()
                };
                match book
                    .apply(&cmd, freeze)
                    .map_err(|e| ApiError::invalid_field(&field, e))?
                {
                    Outcome::Applied => None,
                    Outcome::Rejected(r) => Some(r),
                }
            };
            let at = previous.map_or(now, |a| a.at);
            applied.insert(
                cmd.sequence,
                Applied {
                    id: cmd.id.clone(),
                    rejection: rejection.clone(),
                    at,
                },
            );
            stored.push(StoredCommand {
                sequence: cmd.sequence,
                id: cmd.id.to_string(),
                feature: cmd.feature.to_string(),
                body,
                rejection,
                applied_at: at,
            });
        }
        if stored.len() as u64 != sequence {
            return Err(ApiError::invalid_field(
                "sequence",
                format!(
                    "is {sequence} but {} commands were listed; list every command up to it",
                    stored.len()
                ),
            ));
        }
        book.mark_synchronised(sequence);
        if let Err(e) = self
            .store
            .replace_commands(&stored, current.store_version + 1, audit)
            .await
        {
            return Err(self.commit_failed(&current, e, "replacing the rules").await);
        }
        let next = Serving {
            book: Arc::new(book),
            applied: Arc::new(applied.clone()),
            version: current.version + 1,
            store_version: current.store_version + 1,
            ..(*current).clone()
        };
        info!(sequence, commands = stored.len(), "rules replaced");
        self.publish(&current, next, "rules replaced");
        Ok(applied)
    }

    /// Looks up an idempotency record: `Ok(Some(response))` for a retry of the same request,
    /// an error for the same id with a different body.
    pub async fn recall(&self, request_id: &str, fingerprint: &[u8]) -> Result<Option<Vec<u8>>, ApiError> {
        match self.store.recall_request(request_id).await.map_err(store_error("reading a request id"))? {
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

    /// Stores an opt-out change (new, updated or withdrawn). `make` builds the record from the
    /// existing one (or refuses) under the write lock; `respond` encodes the answer for the
    /// idempotency record.
    pub async fn put_opt_out(
        &self,
        key: (OdsCode, FeatureKey),
        make: impl FnOnce(Option<&OptOutRecord>) -> Result<OptOutRecord, ApiError>,
        request: Option<(String, Vec<u8>)>,
        respond: impl FnOnce(&OptOutRecord) -> Vec<u8>,
        audit: AuditDraft,
    ) -> Result<OptOutRecord, ApiError> {
        let _guard = self.write.lock().await;
        let current = self.current_for_write().await?;
        let record = make(current.opt_outs.get(&key))?;
        let request = request.map(|(request_id, fingerprint)| RequestRecord {
            request_id,
            fingerprint,
            response: respond(&record),
        });
        if let Err(e) = self
            .store
            .put_opt_out(&record, current.store_version + 1, request, audit)
            .await
        {
            return Err(self.commit_failed(&current, e, "storing an opt-out").await);
        }
        let mut opt_outs = (*current.opt_outs).clone();
        opt_outs.insert(key.clone(), record.clone());
        let next = Serving {
            opt_outs: Arc::new(opt_outs),
            version: current.version + 1,
            store_version: current.store_version + 1,
            ..(*current).clone()
        };
        let what = if record.withdrawal.is_some() {
            "withdrawn"
        } else {
            "recorded"
        };
        info!(practice = %key.0, feature = %key.1, "opt-out {what}");
        self.publish(&current, next, &format!("opt-out {what}"));
        Ok(record)
    }

    /// Makes the estate exactly `practices` (this supplier's only), keeping opt-outs and
    /// history.
    pub async fn import_estate(
        &self,
        practices: Vec<Practice>,
        audit: AuditDraft,
    ) -> Result<EstateChange, ApiError> {
        let _guard = self.write.lock().await;
        let current = self.current_for_write().await?;
        if current.estate.practices().eq(practices.iter()) {
            // Nothing to change (another replica, or an earlier start, imported the same files).
            return Ok(EstateChange::default());
        }
        let change = match self
            .store
            .import_estate(&practices, current.store_version + 1, audit)
            .await
        {
            Ok(change) => change,
            Err(e) => return Err(self.commit_failed(&current, e, "importing the estate").await),
        };
        let next = Serving {
            estate: Arc::new(practices.into_iter().collect()),
            version: current.version + 1,
            store_version: current.store_version + 1,
            ..(*current).clone()
        };
        self.publish(&current, next, "estate imported");
        Ok(change)
    }

    /// Appends the audit event of a refused call (already marked refused), logging rather than
    /// failing if the store cannot take it: the caller is answered either way.
    pub async fn record_refusal(&self, audit: AuditDraft) {
        if let Err(e) = self.store.append_audit(audit).await {
            tracing::error!(error = %e, "could not record a refused call in the audit log");
        }
    }

    /// The store, for reading the audit log.
    pub fn store(&self) -> &Arc<dyn SupplierStore> {
        &self.store
    }
}

/// An opt-out record as withdrawn now.
pub fn withdrawn(existing: &OptOutRecord, by: &str, reason: String) -> OptOutRecord {
    let now = rollout_core::audit::now();
    OptOutRecord {
        updated_at: now,
        withdrawal: Some(Withdrawal {
            by: by.to_owned(),
            at: now,
            reason,
        }),
        ..existing.clone()
    }
}

fn apply_error(e: ApplyError, applied: u64) -> ApiError {
    let precondition = |reason, message: String| {
        ApiError::failed_precondition(reason, message).with_metadata("applied_sequence", applied.to_string())
    };
    match e {
        ApplyError::Gap { got, .. } => precondition(
            "SEQUENCE_GAP",
            format!(
                "sequence {got} does not follow the applied sequence {applied}; send {} next or resynchronise with ReplaceRules",
                applied + 1
            ),
        ),
        ApplyError::AlreadyApplied { got, .. } => {
            precondition("SEQUENCE_UNKNOWN", format!("sequence {got} is already applied"))
        }
        ApplyError::UnknownFeature(f) => precondition(
            "FEATURE_NOT_FOUND",
            format!("feature {f} is not defined here; its CreateFeature command must come first"),
        ),
        ApplyError::FeatureExists(f) => {
            precondition("FEATURE_EXISTS", format!("feature {f} is already defined"))
        }
        ApplyError::DuplicateCommand(c) => precondition(
            "COMMAND_EXISTS",
            format!("command id {c} was already applied at another sequence"),
        ),
    }
}
