//! The coordinator's state and its write path: features, commands (pending, dispatched,
//! cancelled), the global sequence, approvals, and what each supplier has acknowledged.
//!
//! The model lives in memory behind one async mutex and is rebuilt from the store at start.
//! Every change is computed first, committed to the store (with its audit event and
//! idempotency record) and only then applied to the model, so a failed commit changes nothing.
//! A command's sequence is committed before the operator's call returns.

use std::{
    collections::{BTreeMap, HashMap},
    sync::Arc,
    time::{Duration, SystemTime},
};

use prost::Message;
use rollout_core::{
    Action, Command, CommandId, Estate, FeatureDef, FeatureKey, HistoryHash, PracticeStatus, RuleBook, Scope,
    SupplierId,
    audit::{AuditDraft, now},
};
use rollout_net::{ApiError, wire};
use rollout_proto::v1 as pb;
use rollout_store::{
    RequestRecord,
    coordinator::{CommandRow, CommandState, CoordinatorStore, DeliveryRow, Record, Write, created_at},
};
use tokio::sync::{Mutex, MutexGuard, watch};
use tracing::info;

/// A command as the coordinator holds it.
#[derive(Debug, Clone)]
pub struct Cmd {
    /// The API view (without deliveries).
    pub pb: pb::Command,
    /// The domain command (sequence 0 until dispatched).
    pub domain: Command,
    /// Where it stands.
    pub state: CommandState,
}

/// What the coordinator knows of a supplier.
#[derive(Debug, Clone, Default)]
pub struct SupplierStatus {
    /// The persisted part of the API view: applied sequence, last error, counts, conflicts,
    /// freeze. `endpoint`, `state` and `target_sequence` are filled when read.
    pub pb: pb::Supplier,
    /// The highest sequence the supplier has acknowledged to us.
    pub acked: u64,
    /// When it last answered (not persisted: it is fresh within a heartbeat after a restart).
    pub last_contact: Option<SystemTime>,
}

/// The in-memory model.
#[derive(Debug, Default)]
pub struct Model {
    /// Feature definitions with their API view.
    pub features: BTreeMap<FeatureKey, (FeatureDef, pb::Feature)>,
    /// Commands by id.
    pub commands: HashMap<CommandId, Cmd>,
    /// Command ids in issue order.
    pub order: Vec<CommandId>,
    /// Dispatched command ids by sequence.
    pub by_sequence: BTreeMap<u64, CommandId>,
    /// Deliveries by sequence, then supplier.
    pub deliveries: BTreeMap<u64, BTreeMap<SupplierId, pb::Delivery>>,
    /// Supplier status.
    pub suppliers: BTreeMap<SupplierId, SupplierStatus>,
    /// The stored version the model reflects (compare-and-set by API writes).
    pub store_version: u64,
    /// The store's change count the model reflects.
    pub store_changes: u64,
    /// The history hash at every dispatched sequence, from 0 (the index is the sequence).
    hashes: Vec<HistoryHash>,
}

impl Model {
    /// The history hash of the log up to `sequence`, if the log reaches it.
    pub fn history_hash(&self, sequence: u64) -> Option<HistoryHash> {
        self.hashes.get(usize::try_from(sequence).ok()?).copied()
    }

    /// Extends `hashes` over sequences dispatched since it was last extended.
    fn extend_hashes(&mut self) {
        if self.hashes.is_empty() {
            self.hashes.push(HistoryHash::EMPTY);
        }
        let from = self.hashes.len() as u64;
        for (sequence, id) in self.by_sequence.range(from..) {
            let Some(last) = self.hashes.last().copied() else {
                break;
            };
            if *sequence != self.hashes.len() as u64 {
                // Sequences are gap-free; a gap would be a corrupt log, and the hashes stop.
                break;
            }
            self.hashes.push(last.next(*sequence, id));
        }
    }

    /// The first supplier the coordinator found diverged from its log, if any.
    pub fn diverged(&self) -> Option<(&SupplierId, &str)> {
        self.suppliers
            .iter()
            .find(|(_, s)| !s.pb.divergence.is_empty())
            .map(|(id, s)| (id, s.pb.divergence.as_str()))
    }

    /// Refuses to dispatch while a supplier holds commands this log does not: a new command
    /// would take a sequence that supplier already holds.
    fn refuse_if_diverged(&self) -> Result<(), ApiError> {
        match self.diverged() {
            None => Ok(()),
            Some((supplier, why)) => Err(ApiError::failed_precondition(
                "SUPPLIER_DIVERGED",
                format!(
                    "suppliers/{supplier} has diverged from this coordinator's log ({why}); nothing new is dispatched until an operator recovers the missing commands (rolloutctl recover --from {supplier})"
                ),
            )
            .with_metadata("supplier", format!("suppliers/{supplier}"))),
        }
    }

    /// The last dispatched sequence.
    pub fn last_sequence(&self) -> u64 {
        self.by_sequence.keys().next_back().copied().unwrap_or(0)
    }

    /// The command, or NOT_FOUND.
    pub fn command(&self, id: &CommandId) -> Result<&Cmd, ApiError> {
        self.commands
            .get(id)
            .ok_or_else(|| ApiError::not_found("COMMAND_NOT_FOUND", format!("commands/{id}")))
    }

    /// The API view of a command, with its deliveries.
    pub fn command_view(&self, cmd: &Cmd) -> pb::Command {
        let mut view = cmd.pb.clone();
        if let Some(d) = self.deliveries.get(&cmd.domain.sequence) {
            view.deliveries = d.values().cloned().collect();
        }
        view
    }

    /// Whether a halt has been lifted by a dispatched resume.
    pub fn lifted_by(&self, halt: &CommandId) -> Option<&CommandId> {
        self.by_sequence.values().find(|id| {
            self.commands
                .get(*id)
                .is_some_and(|c| matches!(&c.domain.action, Action::Resume { halts } if halts.contains(halt)))
        })
    }
}

/// A configured supplier.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SupplierEndpoint {
    /// Its id.
    pub id: SupplierId,
    /// `host:port` of its gRPC port.
    pub endpoint: String,
    /// The identity its server certificate must carry.
    pub identity: String,
}

/// Most command bytes in one snapshot chunk: with the chunk's own framing, under the 1 MiB a
/// ReplaceRules chunk may take.
const SNAPSHOT_CHUNK_BYTES: usize = 1_000_000;

/// A snapshot of the effective state for one supplier, in chunks.
#[derive(Debug, Clone)]
pub struct Snapshot {
    /// What the snapshot is and what it was built against.
    pub header: pb::replace_rules_request::Header,
    /// The effective commands, at most [`SNAPSHOT_CHUNK_BYTES`] a chunk, in sequence order
    /// (one chunk, perhaps empty, at the least).
    pub chunks: Vec<Vec<pb::Command>>,
    /// The sequences the supplier rejected (their deliveries stay REJECTED).
    pub rejected: std::collections::HashSet<u64>,
}

/// What a GetSyncState answer told the coordinator.
#[derive(Debug, Clone, Copy)]
pub struct SyncCheck {
    /// The supplier holds commands the log does not, or its history differs: nothing may be
    /// sent to it.
    pub diverged: bool,
    /// The highest sequence the supplier had acknowledged before.
    pub acked: u64,
}

/// The coordinator core.
pub struct Core {
    store: Arc<dyn CoordinatorStore>,
    model: Mutex<Model>,
    /// The last dispatched sequence, watched by the delivery tasks.
    pub target: watch::Sender<u64>,
    /// Bumped on every change, watched by WatchCommand streams.
    pub changes: watch::Sender<u64>,
    /// The national estate (for impact, routing and verification).
    pub estate: Arc<Estate>,
    /// The configured suppliers.
    pub suppliers: Vec<SupplierEndpoint>,
    /// No contact for this long makes a supplier STALE.
    pub stale_after: Duration,
}

impl std::fmt::Debug for Core {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Core")
            .field("suppliers", &self.suppliers)
            .finish_non_exhaustive()
    }
}

/// A start-up failure rebuilding the model.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// The store failed.
    #[error(transparent)]
    Store(#[from] rollout_store::StoreError),
    /// A stored record does not decode.
    #[error("stored {what} {key} cannot be read: {problem}")]
    Record {
        /// Kind of record.
        what: &'static str,
        /// Its key.
        key: String,
        /// What is wrong.
        problem: String,
    },
}

fn decode<M: Message + Default>(what: &'static str, key: &str, body: &[u8]) -> Result<M, LoadError> {
    M::decode(body).map_err(|e| LoadError::Record {
        what,
        key: key.to_owned(),
        problem: e.to_string(),
    })
}

fn store_error(context: &'static str) -> impl FnOnce(rollout_store::StoreError) -> ApiError {
    move |e| ApiError::internal(context, e)
}

/// A change to commit then apply.
#[derive(Debug, Default)]
pub(crate) struct Change {
    pub(crate) features: Vec<(FeatureDef, pb::Feature)>,
    pub(crate) commands: Vec<Cmd>,
    pub(crate) deliveries: Vec<((u64, SupplierId), pb::Delivery)>,
    pub(crate) suppliers: Vec<(SupplierId, SupplierStatus)>,
}

impl Change {
    fn write(&self, request: Option<RequestRecord>, audit: Option<AuditDraft>) -> Write {
        Write {
            features: self
                .features
                .iter()
                .map(|(d, f)| Record {
                    key: d.key.to_string(),
                    body: f.encode_to_vec(),
                })
                .collect(),
            commands: self
                .commands
                .iter()
                .map(|c| CommandRow {
                    id: c.domain.id.to_string(),
                    sequence: (c.domain.sequence > 0).then_some(c.domain.sequence),
                    state: c.state,
                    created_at: created_at(c.domain.issued_at),
                    body: c.pb.encode_to_vec(),
                })
                .collect(),
            deliveries: self
                .deliveries
                .iter()
                .map(|((seq, sup), d)| DeliveryRow {
                    sequence: *seq,
                    supplier: sup.to_string(),
                    body: d.encode_to_vec(),
                })
                .collect(),
            suppliers: self
                .suppliers
                .iter()
                .map(|(id, s)| Record {
                    key: id.to_string(),
                    body: s.pb.encode_to_vec(),
                })
                .collect(),
            request,
            audit,
            expected_version: None,
        }
    }

    fn apply(self, m: &mut Model) {
        for (def, f) in self.features {
            m.features.insert(def.key.clone(), (def, f));
        }
        for c in self.commands {
            if c.domain.sequence > 0 {
                m.by_sequence.insert(c.domain.sequence, c.domain.id.clone());
            }
            if !m.commands.contains_key(&c.domain.id) {
                m.order.push(c.domain.id.clone());
            }
            m.commands.insert(c.domain.id.clone(), c);
        }
        for ((seq, supplier), d) in self.deliveries {
            m.deliveries.entry(seq).or_default().insert(supplier, d);
        }
        for (id, s) in self.suppliers {
            m.suppliers.insert(id, s);
        }
    }
}

/// An idempotency key with the request's fingerprint.
#[derive(Debug, Clone)]
pub struct Idempotency {
    /// The request id.
    pub request_id: String,
    /// The request's fingerprint.
    pub fingerprint: Vec<u8>,
}

/// The model of what the store holds.
fn build_model(stored: rollout_store::coordinator::CoordinatorState) -> Result<Model, LoadError> {
    let mut m = Model::default();
    for f in &stored.features {
        let pb: pb::Feature = decode("feature", &f.key, &f.body)?;
        let key = FeatureKey::parse(&f.key).map_err(|e| LoadError::Record {
            what: "feature",
            key: f.key.clone(),
            problem: e.to_string(),
        })?;
        let def = wire::feature_def("feature", key.clone(), &pb).map_err(|e| LoadError::Record {
            what: "feature",
            key: f.key.clone(),
            problem: e.to_string(),
        })?;
        m.features.insert(key, (def, pb));
    }
    for c in &stored.commands {
        let pb: pb::Command = decode("command", &c.id, &c.body)?;
        let mut domain = wire::command_unsequenced("command", &pb).map_err(|e| LoadError::Record {
            what: "command",
            key: c.id.clone(),
            problem: e.to_string(),
        })?;
        domain.sequence = c.sequence.unwrap_or(0);
        if let Some(s) = c.sequence {
            m.by_sequence.insert(s, domain.id.clone());
        }
        m.order.push(domain.id.clone());
        m.commands.insert(
            domain.id.clone(),
            Cmd {
                pb,
                domain,
                state: c.state,
            },
        );
    }
    for d in &stored.deliveries {
        let pb: pb::Delivery = decode("delivery", &d.supplier, &d.body)?;
        if let Ok(id) = SupplierId::parse(&d.supplier) {
            m.deliveries.entry(d.sequence).or_default().insert(id, pb);
        }
    }
    for s in &stored.suppliers {
        let pb: pb::Supplier = decode("supplier", &s.key, &s.body)?;
        if let Ok(id) = SupplierId::parse(&s.key) {
            let acked = u64::try_from(pb.applied_sequence).unwrap_or(0);
            m.suppliers.insert(
                id,
                SupplierStatus {
                    pb,
                    acked,
                    last_contact: None,
                },
            );
        }
    }
    m.store_version = stored.version;
    m.store_changes = stored.changes;
    m.extend_hashes();
    Ok(m)
}

impl Core {
    /// Rebuilds the model from the store.
    pub async fn load(
        store: Arc<dyn CoordinatorStore>,
        estate: Arc<Estate>,
        suppliers: Vec<SupplierEndpoint>,
        stale_after: Duration,
    ) -> Result<Arc<Core>, LoadError> {
        let stored = store.load().await?;
        let m = build_model(stored)?;
        let last = m.last_sequence();
        info!(
            commands = m.commands.len(),
            last_sequence = last,
            "coordinator state rebuilt from the store"
        );
        Ok(Arc::new(Core {
            store,
            model: Mutex::new(m),
            target: watch::channel(last).0,
            changes: watch::channel(0).0,
            estate,
            suppliers,
            stale_after,
        }))
    }

    /// The model, locked.
    pub async fn model(&self) -> MutexGuard<'_, Model> {
        self.model.lock().await
    }

    /// The store.
    pub fn store(&self) -> &Arc<dyn CoordinatorStore> {
        &self.store
    }

    pub(crate) async fn commit(
        &self,
        m: &mut Model,
        change: Change,
        request: Option<RequestRecord>,
        audit: Option<AuditDraft>,
    ) -> Result<(), ApiError> {
        // API writes (audited) must not race another replica's; delivery records commute.
        let guarded = audit.is_some();
        let mut write = change.write(request, audit);
        write.expected_version = guarded.then_some(m.store_version);
        if let Err(e) = self.store.write(write).await {
            return Err(match e {
                rollout_store::StoreError::Conflict(message) => {
                    if let Err(reload) = self.reload(m).await {
                        tracing::error!(error = %reload, "could not reload after a conflict");
                    }
                    ApiError::new(
                        tonic::Code::Aborted,
                        "CONCURRENT_CHANGE",
                        format!(
                            "another coordinator replica changed the state first ({message}); retry the call"
                        ),
                    )
                }
                other => ApiError::internal("committing a change", other),
            });
        }
        if guarded {
            m.store_version += 1;
        }
        m.store_changes += 1;
        let before = m.last_sequence();
        change.apply(m);
        m.extend_hashes();
        let after = m.last_sequence();
        if after > before {
            self.target.send_replace(after);
        }
        self.changes.send_modify(|n| *n += 1);
        Ok(())
    }

    /// Replaces the model with what the store holds, keeping the contact times this replica
    /// knows better (it may be the one talking to the suppliers).
    async fn reload(&self, m: &mut Model) -> Result<(), ApiError> {
        let stored = self
            .store
            .load()
            .await
            .map_err(store_error("reloading the state"))?;
        let mut fresh = build_model(stored).map_err(|e| ApiError::internal("reloading the state", e))?;
        for (id, s) in &mut fresh.suppliers {
            if let Some(old) = m.suppliers.get(id) {
                s.last_contact = s.last_contact.max(old.last_contact);
                s.acked = s.acked.max(old.acked);
                if s.pb.last_error.is_empty() {
                    s.pb.last_error = old.pb.last_error.clone();
                }
            }
        }
        *m = fresh;
        self.target.send_replace(m.last_sequence());
        self.changes.send_modify(|n| *n += 1);
        Ok(())
    }

    /// Before an API write on a shared store: catch up if another replica wrote.
    pub(crate) async fn catch_up(&self, m: &mut Model) -> Result<(), ApiError> {
        if !self.store.shared() {
            return Ok(());
        }
        let (version, _) = self
            .store
            .head()
            .await
            .map_err(store_error("reading the store version"))?;
        if version != m.store_version {
            self.reload(m).await?;
        }
        Ok(())
    }

    /// Follows writes made through other replicas (and by this one's delivery leader): reloads
    /// when the store's change count moved.
    pub async fn follow_store(&self) {
        match self.store.head().await {
            Ok((_, changes)) => {
                let mut m = self.model.lock().await;
                if changes != m.store_changes
                    && let Err(e) = self.reload(&mut m).await
                {
                    tracing::warn!(error = %e, "could not reload the state");
                }
            }
            Err(error) => tracing::warn!(%error, "cannot read the store version"),
        }
    }

    /// Returns the stored response of a retried request, or refuses a reused id.
    pub async fn recall(&self, idem: Option<&Idempotency>) -> Result<Option<Vec<u8>>, ApiError> {
        let Some(idem) = idem else { return Ok(None) };
        match self.store.recall_request(&idem.request_id).await.map_err(store_error("reading a request id"))? {
            Some(r) if r.fingerprint == idem.fingerprint => Ok(Some(r.response)),
            Some(_) => Err(ApiError::new(
                tonic::Code::InvalidArgument,
                "REQUEST_ID_REUSED",
                format!(
                    "request_id {} was already used for a different request; use a new UUID for a new request",
                    idem.request_id
                ),
            )
            .with_violation("request_id", "already used for a different request")
            .with_metadata("request_id", idem.request_id.clone())),
            None => Ok(None),
        }
    }

    /// Which practices at which suppliers the scopes cover, from the national estate.
    pub fn impact(&self, scopes: &[&Scope]) -> pb::Impact {
        let mut per: BTreeMap<&SupplierId, i32> = BTreeMap::new();
        let mut total = 0;
        for p in self.estate.practices() {
            if p.status == PracticeStatus::Active && scopes.iter().any(|s| s.covers(p)) {
                total += 1;
                *per.entry(&p.supplier).or_default() += 1;
            }
        }
        let mut unknown: Vec<String> = scopes
            .iter()
            .filter_map(|s| match s {
                Scope::Practices(set) => Some(
                    set.iter()
                        .filter(|o| self.estate.get(o).is_none())
                        .map(ToString::to_string),
                ),
                _ => None,
            })
            .flatten()
            .collect();
        unknown.sort();
        unknown.dedup();
        pb::Impact {
            practices: total,
            suppliers: per
                .into_iter()
                .map(|(s, n)| pb::impact::SupplierImpact {
                    supplier: format!("suppliers/{s}"),
                    practices: n,
                })
                .collect(),
            unknown_practices: unknown,
        }
    }

    /// The impact of a command's action.
    pub fn impact_of(&self, m: &Model, action: &Action) -> pb::Impact {
        match action {
            Action::Halt { scope } | Action::GoLive { scope, .. } => self.impact(&[scope]),
            Action::Resume { halts } => {
                let scopes: Vec<&Scope> = halts
                    .iter()
                    .filter_map(|h| match m.commands.get(h).map(|c| &c.domain.action) {
                        Some(Action::Halt { scope }) => Some(scope),
                        _ => None,
                    })
                    .collect();
                self.impact(&scopes)
            }
            Action::CreateFeature(_) => pb::Impact::default(),
        }
    }

    /// Gives `cmd` the next sequence and pending deliveries to every configured supplier.
    fn dispatch(&self, m: &Model, cmd: &mut Cmd, change: &mut Change, at: SystemTime) {
        let sequence = m.last_sequence() + 1;
        cmd.domain.sequence = sequence;
        cmd.state = CommandState::Dispatched;
        cmd.pb.sequence = i64::try_from(sequence).unwrap_or(i64::MAX);
        cmd.pb.state = pb::command::State::Dispatched.into();
        cmd.pb.sequence_time = Some(wire::timestamp(at));
        for s in &self.suppliers {
            change.deliveries.push((
                (sequence, s.id.clone()),
                pb::Delivery {
                    supplier: format!("suppliers/{}", s.id),
                    state: pb::delivery::State::Pending.into(),
                    ..Default::default()
                },
            ));
        }
        info!(sequence, command = %cmd.domain.id, action = cmd.domain.action.name(), feature = %cmd.domain.feature, "command dispatched");
    }

    /// Defines a feature: a sequenced CreateFeature command, dispatched at once.
    pub async fn create_feature(
        &self,
        requester: &str,
        def: FeatureDef,
        reason: String,
        idem: Option<Idempotency>,
        audit: AuditDraft,
    ) -> Result<pb::Feature, ApiError> {
        let mut m = self.model.lock().await;
        self.catch_up(&mut m).await?;
        if m.features.contains_key(&def.key) {
            return Err(ApiError::new(
                tonic::Code::AlreadyExists,
                "FEATURE_EXISTS",
                format!("features/{} already exists", def.key),
            )
            .with_metadata("name", format!("features/{}", def.key)));
        }
        m.refuse_if_diverged()?;
        let at = now();
        let mut cmd = self.new_command(
            requester,
            def.key.clone(),
            Action::CreateFeature(def.clone()),
            reason,
            at,
            0,
        );
        let mut change = Change::default();
        self.dispatch(&m, &mut cmd, &mut change, at);
        let mut feature = wire::feature_pb(&def);
        feature.creator = requester.to_owned();
        feature.create_time = Some(wire::timestamp(at));
        feature.sequence = cmd.pb.sequence;
        change.commands.push(cmd);
        change.features.push((def, feature.clone()));
        let request = idem.map(|i| RequestRecord {
            request_id: i.request_id,
            fingerprint: i.fingerprint,
            response: feature.encode_to_vec(),
        });
        self.commit(&mut m, change, request, Some(audit)).await?;
        Ok(feature)
    }

    fn new_command(
        &self,
        requester: &str,
        feature: FeatureKey,
        action: Action,
        reason: String,
        at: SystemTime,
        approvals_required: u32,
    ) -> Cmd {
        let id = CommandId::parse(&uuid::Uuid::new_v4().hyphenated().to_string())
            .expect("a hyphenated UUID is a valid command id");
        let domain = Command {
            id,
            sequence: 0,
            feature,
            action,
            reason,
            requester: requester.to_owned(),
            issued_at: at,
            approved_by: vec![],
        };
        let mut pb = wire::command_pb(&domain);
        pb.sequence = 0;
        pb.state = pb::command::State::PendingApproval.into();
        pb.approvals_required = i32::try_from(approvals_required).unwrap_or(i32::MAX);
        pb.create_time = Some(wire::timestamp(at));
        Cmd {
            pb,
            domain,
            state: CommandState::Pending,
        }
    }

    /// Issues a halt (dispatched at once), or a resume or go-live (pending approval). With
    /// `dry_run`, only the impact is worked out and nothing is saved.
    #[allow(clippy::too_many_arguments)]
    pub async fn issue(
        &self,
        requester: &str,
        feature: FeatureKey,
        action: Action,
        reason: String,
        dry_run: bool,
        idem: Option<Idempotency>,
        audit: AuditDraft,
    ) -> Result<pb::Command, ApiError> {
        let mut m = self.model.lock().await;
        self.catch_up(&mut m).await?;
        let (def, _) = m
            .features
            .get(&feature)
            .ok_or_else(|| ApiError::not_found("FEATURE_NOT_FOUND", format!("features/{feature}")))?;
        let approvals = if action.turns_on() {
            def.approvals_required
        } else {
            0
        };
        if let Action::Resume { halts } = &action {
            for (i, h) in halts.iter().enumerate() {
                let field = format!("halts[{i}]");
                let c = m.commands.get(h).ok_or_else(|| {
                    ApiError::not_found("HALT_NOT_FOUND", format!("commands/{h}"))
                        .with_violation(&field, "no such command")
                })?;
                if !matches!(c.domain.action, Action::Halt { .. }) || c.domain.feature != feature {
                    return Err(ApiError::invalid_field(
                        field,
                        format!("commands/{h} is not a halt of features/{feature}"),
                    ));
                }
                if c.state != CommandState::Dispatched {
                    return Err(ApiError::invalid_field(
                        field,
                        format!("commands/{h} was never dispatched"),
                    ));
                }
                if let Some(by) = m.lifted_by(h) {
                    return Err(ApiError::failed_precondition(
                        "HALT_ALREADY_LIFTED",
                        format!("commands/{h} was already lifted by commands/{by}"),
                    )
                    .with_metadata("halt", format!("commands/{h}")));
                }
            }
        }
        let at = now();
        let mut cmd = self.new_command(requester, feature, action, reason, at, approvals);
        cmd.pb.impact = Some(self.impact_of(&m, &cmd.domain.action));
        if dry_run {
            cmd.pb.name = String::new();
            cmd.pb.state = pb::command::State::DryRun.into();
            return Ok(cmd.pb);
        }
        let mut change = Change::default();
        if approvals == 0 {
            m.refuse_if_diverged()?;
            self.dispatch(&m, &mut cmd, &mut change, at);
        }
        let view = {
            let mut v = cmd.pb.clone();
            v.deliveries = change.deliveries.iter().map(|(_, d)| d.clone()).collect();
            v
        };
        change.commands.push(cmd);
        let request = idem.map(|i| RequestRecord {
            request_id: i.request_id,
            fingerprint: i.fingerprint,
            response: view.encode_to_vec(),
        });
        self.commit(&mut m, change, request, Some(audit)).await?;
        Ok(view)
    }

    /// Approves a pending command; the last approval needed dispatches it.
    pub async fn approve(
        &self,
        approver: &str,
        id: &CommandId,
        comment: String,
        idem: Option<Idempotency>,
        audit: AuditDraft,
    ) -> Result<pb::Command, ApiError> {
        let mut m = self.model.lock().await;
        self.catch_up(&mut m).await?;
        let mut cmd = m.command(id)?.clone();
        if cmd.state != CommandState::Pending {
            return Err(ApiError::failed_precondition(
                "NOT_PENDING",
                format!("commands/{id} is not waiting for approval ({:?})", cmd.pb.state()),
            ));
        }
        if cmd.domain.requester == approver {
            return Err(ApiError::permission_denied(
                "SELF_APPROVAL",
                format!("commands/{id} was requested by {approver}; a different approver must approve it"),
            ));
        }
        if cmd.pb.approvals.iter().any(|a| a.approver == approver) {
            return Err(ApiError::failed_precondition(
                "ALREADY_APPROVED",
                format!("{approver} has already approved commands/{id}; another approver is needed"),
            ));
        }
        let at = now();
        cmd.pb.approvals.push(pb::command::Approval {
            approver: approver.to_owned(),
            approve_time: Some(wire::timestamp(at)),
            comment,
        });
        cmd.domain.approved_by.push(approver.to_owned());
        let mut change = Change::default();
        if cmd.pb.approvals.len() >= usize::try_from(cmd.pb.approvals_required).unwrap_or(1) {
            m.refuse_if_diverged()?;
            cmd.pb.approve_time = Some(wire::timestamp(at));
            self.dispatch(&m, &mut cmd, &mut change, at);
        }
        let mut view = cmd.pb.clone();
        view.deliveries = change.deliveries.iter().map(|(_, d)| d.clone()).collect();
        change.commands.push(cmd);
        let request = idem.map(|i| RequestRecord {
            request_id: i.request_id,
            fingerprint: i.fingerprint,
            response: view.encode_to_vec(),
        });
        self.commit(&mut m, change, request, Some(audit)).await?;
        Ok(view)
    }

    /// Withdraws a command still waiting for approval.
    pub async fn cancel(
        &self,
        who: &str,
        id: &CommandId,
        idem: Option<Idempotency>,
        audit: AuditDraft,
    ) -> Result<pb::Command, ApiError> {
        let mut m = self.model.lock().await;
        self.catch_up(&mut m).await?;
        let mut cmd = m.command(id)?.clone();
        if cmd.state != CommandState::Pending {
            return Err(ApiError::failed_precondition(
                "NOT_PENDING",
                format!(
                    "commands/{id} is not waiting for approval, so it cannot be cancelled; issue a halt instead"
                ),
            ));
        }
        cmd.state = CommandState::Cancelled;
        cmd.pb.state = pb::command::State::Cancelled.into();
        cmd.pb.cancelled_by = who.to_owned();
        cmd.pb.cancel_time = Some(wire::timestamp(now()));
        let view = cmd.pb.clone();
        let change = Change {
            commands: vec![cmd],
            ..Change::default()
        };
        let request = idem.map(|i| RequestRecord {
            request_id: i.request_id,
            fingerprint: i.fingerprint,
            response: view.encode_to_vec(),
        });
        self.commit(&mut m, change, request, Some(audit)).await?;
        Ok(view)
    }

    /// The wire form of the dispatched command at `sequence`, as suppliers receive it, with
    /// the history hash before it.
    pub async fn sequenced(&self, sequence: u64) -> Option<(pb::Command, HistoryHash)> {
        let m = self.model.lock().await;
        let id = m.by_sequence.get(&sequence)?;
        let previous = m.history_hash(sequence - 1)?;
        m.commands
            .get(id)
            .map(|c| (wire::command_pb(&c.domain), previous))
    }

    /// A snapshot of the effective state for `supplier`, whose applied sequence is `applied`:
    /// the log replayed into a rule book with the commands this supplier rejected skipped, so
    /// that the halts a rejected resume named stay in force there. It reaches as far as the
    /// supplier can take without judging anything: to the target, or, while the supplier
    /// declares a change freeze, to just before the first go-live or resume it has not yet
    /// judged (those go one by one, so that it can reject them). `None` if that is no
    /// further than `applied`. The replay runs outside the model's lock.
    pub async fn snapshot(
        &self,
        supplier: &SupplierId,
        applied: u64,
        frozen: bool,
    ) -> Result<Option<Snapshot>, String> {
        let (log, rejected, judged, hashes) = {
            let m = self.model.lock().await;
            let log: Vec<Command> = m
                .by_sequence
                .values()
                .filter_map(|id| m.commands.get(id).map(|c| c.domain.clone()))
                .collect();
            let rejected: std::collections::HashSet<u64> = m
                .deliveries
                .iter()
                .filter(|(_, per)| {
                    per.get(supplier)
                        .is_some_and(|d| d.state() == pb::delivery::State::Rejected)
                })
                .map(|(seq, _)| *seq)
                .collect();
            let acked = m.suppliers.get(supplier).map_or(0, |s| s.acked);
            (log, rejected, applied.max(acked), m.hashes.clone())
        };
        let target = log.last().map_or(0, |c| c.sequence);
        let sequence = if frozen {
            log.iter()
                .find(|c| c.sequence > judged && c.action.turns_on())
                .map_or(target, |c| c.sequence - 1)
        } else {
            target
        };
        if sequence <= applied {
            return Ok(None);
        }
        let hash_at = |s: u64| {
            usize::try_from(s)
                .ok()
                .and_then(|i| hashes.get(i).copied())
                .ok_or_else(|| format!("the log has no history hash at sequence {s}"))
        };
        let mut book = RuleBook::new();
        for c in log.iter().take_while(|c| c.sequence <= sequence) {
            let replayed = if rejected.contains(&c.sequence) {
                book.skip(c)
            } else {
                book.apply(c, None).map(|_| ())
            };
            replayed.map_err(|e| format!("the log does not replay at sequence {}: {e}", c.sequence))?;
        }
        let by_sequence: HashMap<u64, &Command> = log.iter().map(|c| (c.sequence, c)).collect();
        let mut chunks: Vec<Vec<pb::Command>> = vec![Vec::new()];
        let mut bytes = 0;
        for (s, _) in book.effective_commands() {
            let Some(c) = by_sequence.get(&s) else { continue };
            let command = wire::command_pb(c);
            let len = command.encoded_len();
            if bytes + len > SNAPSHOT_CHUNK_BYTES && chunks.last().is_some_and(|c| !c.is_empty()) {
                chunks.push(Vec::new());
                bytes = 0;
            }
            bytes += len;
            if let Some(chunk) = chunks.last_mut() {
                chunk.push(command);
            }
        }
        Ok(Some(Snapshot {
            header: pb::replace_rules_request::Header {
                sequence: i64::try_from(sequence).unwrap_or(i64::MAX),
                history_hash: hash_at(sequence)?.as_bytes().to_vec(),
                base_sequence: i64::try_from(applied).unwrap_or(i64::MAX),
                base_history_hash: hash_at(applied)?.as_bytes().to_vec(),
            },
            chunks,
            rejected,
        }))
    }

    /// Records a GetSyncState answer (a heartbeat) and checks the supplier's history against
    /// the log: a supplier whose applied sequence is past the log's end, or whose history hash
    /// there differs, is DIVERGED (and logged at WARN) until a later answer matches again.
    /// Persisted only when something durable changed (applied sequence, freeze, divergence).
    pub async fn record_sync(
        &self,
        supplier: &SupplierId,
        state: &pb::SyncState,
    ) -> Result<SyncCheck, ApiError> {
        let mut m = self.model.lock().await;
        let mut s = m.suppliers.get(supplier).cloned().unwrap_or_default();
        let acked = s.acked;
        let applied = u64::try_from(state.applied_sequence).unwrap_or(0);
        let target = m.last_sequence();
        let divergence = if applied > target {
            format!(
                "it has applied sequence {applied} but this coordinator's log ends at {target}: it holds commands this log does not"
            )
        } else {
            match (
                HistoryHash::from_slice(&state.history_hash),
                m.history_hash(applied),
            ) {
                (Some(theirs), Some(ours)) if theirs == ours => String::new(),
                (Some(theirs), ours) => format!(
                    "its history at sequence {applied} (hash {theirs}) differs from this coordinator's log (hash {})",
                    ours.map(|h| h.to_string()).unwrap_or_default()
                ),
                (None, _) => format!(
                    "it reported a history hash of {} bytes, not 32",
                    state.history_hash.len()
                ),
            }
        };
        if divergence != s.pb.divergence {
            if divergence.is_empty() {
                info!(supplier = %supplier, applied, "supplier's history matches the log again");
            } else {
                tracing::warn!(supplier = %supplier, applied, target, divergence, "supplier has diverged from this coordinator's log; nothing is sent to it and nothing new is dispatched until its commands are recovered");
            }
        }
        // Other replicas learn of contact from the store: on a shared store, write it down
        // every few seconds so that they do not show a live supplier as STALE.
        let contact_due = self.store.shared()
            && s.pb
                .last_contact_time
                .and_then(|t| SystemTime::try_from(t).ok())
                .is_none_or(|t| t.elapsed().is_ok_and(|e| e > self.stale_after / 4));
        let durable_change = s.pb.applied_sequence != state.applied_sequence
            || s.pb.frozen != state.frozen
            || s.pb.divergence != divergence
            || !s.pb.last_error.is_empty()
            || contact_due;
        let diverged = !divergence.is_empty();
        s.pb.applied_sequence = state.applied_sequence;
        s.pb.frozen = state.frozen;
        s.pb.divergence = divergence;
        s.pb.feature_counts = state.feature_counts.clone();
        s.pb.last_error = String::new();
        s.last_contact = Some(SystemTime::now());
        s.pb.last_contact_time = s.last_contact.map(wire::timestamp);
        if durable_change {
            let change = Change {
                suppliers: vec![(supplier.clone(), s)],
                ..Change::default()
            };
            self.commit(&mut m, change, None, None).await?;
        } else {
            m.suppliers.insert(supplier.clone(), s);
        }
        Ok(SyncCheck { diverged, acked })
    }

    /// Records a failed contact (kept in memory; the last error shows in the supplier view).
    pub async fn record_error(&self, supplier: &SupplierId, error: &str) {
        let mut m = self.model.lock().await;
        let s = m.suppliers.entry(supplier.clone()).or_default();
        s.pb.last_error = error.chars().take(500).collect();
        self.changes.send_modify(|n| *n += 1);
    }

    /// Records a delivery attempt.
    pub async fn record_attempt(&self, supplier: &SupplierId, sequence: u64) {
        let mut m = self.model.lock().await;
        let d = m
            .deliveries
            .entry(sequence)
            .or_default()
            .entry(supplier.clone())
            .or_insert_with(|| pb::Delivery {
                supplier: format!("suppliers/{supplier}"),
                state: pb::delivery::State::Pending.into(),
                ..Default::default()
            });
        d.attempts += 1;
        if d.first_attempt_time.is_none() {
            d.first_attempt_time = Some(wire::timestamp(now()));
        }
    }

    /// Records the supplier's answers for sequences: applied, or rejected with a reason; and its
    /// applied sequence.
    pub async fn record_applied(
        &self,
        supplier: &SupplierId,
        outcomes: Vec<(u64, Option<String>, Option<prost_types::Timestamp>)>,
        applied_sequence: u64,
    ) -> Result<(), ApiError> {
        let mut m = self.model.lock().await;
        let acknowledged = Some(wire::timestamp(now()));
        let mut change = Change::default();
        let mut status = m.suppliers.get(supplier).cloned().unwrap_or_default();
        for (sequence, rejection, apply_time) in outcomes {
            let mut d = m
                .deliveries
                .get(&sequence)
                .and_then(|per| per.get(supplier))
                .cloned()
                .unwrap_or_else(|| pb::Delivery {
                    supplier: format!("suppliers/{supplier}"),
                    ..Default::default()
                });
            if d.state() != pb::delivery::State::Pending && d.state() != pb::delivery::State::Unspecified {
                continue;
            }
            d.state = if rejection.is_some() {
                pb::delivery::State::Rejected
            } else {
                pb::delivery::State::Applied
            }
            .into();
            d.rejection_reason = rejection.clone().unwrap_or_default();
            d.apply_time = apply_time;
            d.acknowledge_time = acknowledged;
            d.last_error = String::new();
            if rejection.is_some()
                && let Some(id) = m.by_sequence.get(&sequence)
            {
                let name = format!("commands/{id}");
                if !status.pb.conflicts.contains(&name) {
                    status.pb.conflicts.push(name);
                }
            }
            change.deliveries.push(((sequence, supplier.clone()), d));
        }
        status.acked = applied_sequence;
        status.pb.applied_sequence = i64::try_from(applied_sequence).unwrap_or(i64::MAX);
        status.last_contact = Some(SystemTime::now());
        status.pb.last_contact_time = status.last_contact.map(wire::timestamp);
        status.pb.last_error = String::new();
        change.suppliers.push((supplier.clone(), status));
        self.commit(&mut m, change, None, None).await
    }

    /// The API view of a supplier now.
    pub fn supplier_view(&self, m: &Model, s: &SupplierEndpoint) -> pb::Supplier {
        let status = m.suppliers.get(&s.id).cloned().unwrap_or_default();
        let mut view = status.pb.clone();
        let target = m.last_sequence();
        view.name = format!("suppliers/{}", s.id);
        view.endpoint = s.endpoint.clone();
        view.target_sequence = i64::try_from(target).unwrap_or(i64::MAX);
        let fresh = status
            .last_contact
            .is_some_and(|t| t.elapsed().map_or(true, |e| e <= self.stale_after));
        view.state = if !view.divergence.is_empty() {
            pb::supplier::State::Diverged
        } else if !fresh {
            pb::supplier::State::Stale
        } else if !view.conflicts.is_empty() {
            pb::supplier::State::Rejected
        } else if u64::try_from(view.applied_sequence).unwrap_or(0) < target {
            pb::supplier::State::Pending
        } else {
            pb::supplier::State::Synced
        }
        .into();
        view
    }

    /// Appends the audit event of a refused call (already marked refused), logging rather than
    /// failing if the store cannot take it: the caller is answered either way.
    pub async fn record_refusal(&self, audit: AuditDraft) {
        if let Err(e) = self.store.append_audit(audit).await {
            tracing::error!(error = %e, "could not record a refused call in the audit log");
        }
    }
}
