//! The coordinator's in-memory model: what grows with the state, never with the history.
//! Features; the commands waiting for approval; the commands in force ([`InForce`]); the
//! history hash at every sequence (32 bytes a sequence); the deliveries not yet settled (every
//! delivery of every sequence from the lowest one still pending at some supplier); the
//! sequences each supplier rejected, and whether each rejection is resolved there
//! ([`Conflicts`]); and what each supplier has acknowledged. Everything else
//! (retired and cancelled commands, settled deliveries) is read from the store when asked
//! (`history.rs`). Its fields are private: [`crate::coordinator::Core`] lends it to readers in
//! a closure, and changes it only by applying a [`Change`] it has committed.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    sync::Arc,
    time::SystemTime,
};

use prost::Message;
use rollout_core::{Action, Command, CommandId, FeatureDef, FeatureKey, HistoryHash, SupplierId};
use rollout_net::{ApiError, wire};
use rollout_proto::v1 as pb;
use rollout_store::coordinator::{CommandRow, CommandState};
use tracing::info;

pub use crate::in_force::InForce;
use crate::{
    change::Change,
    conflicts::{Conflicts, Rejection},
    rejections::Filed,
};

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

pub(crate) fn decode<M: Message + Default>(
    what: &'static str,
    key: &str,
    body: &[u8],
) -> Result<M, LoadError> {
    M::decode(body).map_err(|e| LoadError::Record {
        what,
        key: key.to_owned(),
        problem: e.to_string(),
    })
}

/// A stored command row as the coordinator holds a command: its API view (without
/// deliveries) and its domain form (sequence 0 until dispatched).
pub fn cmd_of(row: &CommandRow) -> Result<Cmd, LoadError> {
    let pb: pb::Command = decode("command", &row.id, &row.body)?;
    let mut domain = wire::command_unsequenced("command", &pb).map_err(|e| LoadError::Record {
        what: "command",
        key: row.id.clone(),
        problem: e.to_string(),
    })?;
    domain.sequence = row.sequence.unwrap_or(0);
    Ok(Cmd {
        pb,
        domain,
        state: row.state,
    })
}

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
    /// The persisted part of the API view: applied sequence, last error, counts, freeze.
    /// `endpoint`, `state`, `target_sequence` and `conflicts` are filled when read.
    pub pb: pb::Supplier,
    /// The freeze reason it last reported (not persisted: the next heartbeat brings it back).
    pub freeze_reason: String,
    /// The highest sequence the supplier has acknowledged to us.
    pub acked: u64,
    /// When it last answered (not persisted: it is fresh within a heartbeat after a restart).
    pub last_contact: Option<SystemTime>,
    /// When it last answered having applied every command dispatched then (not persisted):
    /// a supplier counts the coordinator's contact towards its fail-closed features' control
    /// TTL only while it has, so this, not `last_contact`, is when their TTL last started.
    pub in_step_contact: Option<SystemTime>,
}

type Deliveries = BTreeMap<SupplierId, pb::Delivery>;

/// The in-memory model.
#[derive(Debug, Default)]
pub struct Model {
    /// Feature definitions with their API view.
    features: BTreeMap<FeatureKey, (FeatureDef, pb::Feature)>,
    /// Commands waiting for approval, by id.
    pending: HashMap<CommandId, Cmd>,
    /// The dispatched commands in force.
    in_force: InForce,
    /// Deliveries of the sequences from `settled_below` on, by sequence, then supplier.
    deliveries: BTreeMap<u64, Deliveries>,
    /// Every sequence below this one has no pending delivery (its deliveries are in the store).
    settled_below: u64,
    /// The sequences each supplier rejected (every one: snapshots skip them).
    rejected: BTreeMap<SupplierId, BTreeSet<u64>>,
    /// Each supplier's rejections, resolved or not.
    conflicts: Conflicts,
    /// Supplier status.
    suppliers: BTreeMap<SupplierId, SupplierStatus>,
    /// The stored version the model reflects (compare-and-set by API writes).
    store_version: u64,
    /// The store's change count the model reflects.
    store_changes: u64,
    /// The history hash at every dispatched sequence, from 0 (the index is the sequence).
    hashes: Vec<HistoryHash>,
}

fn supplier_id(key: &str) -> Option<SupplierId> {
    SupplierId::parse(key).ok()
}

impl Model {
    /// The model of what the store holds. Decodes the features, the pending commands, the
    /// commands in force and the unsettled deliveries; of the rest of the log only the
    /// (sequence, id) pairs, for the history hashes.
    pub fn from_store(stored: rollout_store::coordinator::CoordinatorState) -> Result<Model, LoadError> {
        let mut m = Model::default();
        for f in &stored.features {
            let pb: pb::Feature = decode("feature", &f.key, &f.body)?;
            let problem = |e: String| LoadError::Record {
                what: "feature",
                key: f.key.clone(),
                problem: e,
            };
            let key = FeatureKey::parse(&f.key).map_err(|e| problem(e.to_string()))?;
            let def = wire::feature_def("feature", key.clone(), &pb).map_err(|e| problem(e.to_string()))?;
            m.features.insert(key, (def, pb));
        }
        for row in &stored.pending {
            let c = cmd_of(row)?;
            m.pending.insert(c.domain.id.clone(), c);
        }
        for row in &stored.effective {
            m.in_force.apply(Arc::new(cmd_of(row)?.domain));
        }
        m.hashes.push(HistoryHash::EMPTY);
        for (sequence, id) in &stored.log {
            let (Some(last), Ok(id)) = (m.hashes.last().copied(), CommandId::parse(id)) else {
                break;
            };
            if *sequence != m.hashes.len() as u64 {
                // Sequences are gap-free; a gap would be a corrupt log, and the hashes stop.
                break;
            }
            m.hashes.push(last.next(*sequence, &id));
        }
        for d in &stored.deliveries {
            let pb: pb::Delivery = decode("delivery", &d.supplier, &d.body)?;
            if let Some(id) = supplier_id(&d.supplier) {
                m.deliveries.entry(d.sequence).or_default().insert(id, pb);
            }
        }
        for (sequence, supplier) in &stored.rejected {
            if let Some(id) = supplier_id(supplier) {
                m.rejected.entry(id).or_default().insert(*sequence);
            }
        }
        m.settle();
        for s in &stored.suppliers {
            let mut pb: pb::Supplier = decode("supplier", &s.key, &s.body)?;
            // Conflicts are computed from the rejections, never read back (a store written
            // before they were kept a list that only grew).
            pb.conflicts.clear();
            if let Some(id) = supplier_id(&s.key) {
                let acked = m.acked_at_load(&id, &pb);
                let status = SupplierStatus {
                    pb,
                    acked,
                    ..SupplierStatus::default()
                };
                m.suppliers.insert(id, status);
            }
        }
        m.store_version = stored.version;
        m.store_changes = stored.changes;
        Ok(m)
    }

    /// Acknowledged is what has an outcome recorded, up to the first delivery still pending:
    /// the applied sequence a supplier reported may be past it (answers lost, or commands
    /// recovered from another supplier), and delivery settles the difference from the
    /// supplier's records. Nor past the log's end: a supplier ahead of the log (DIVERGED) has
    /// acknowledged nothing beyond it.
    fn acked_at_load(&self, id: &SupplierId, pb: &pb::Supplier) -> u64 {
        let reported = u64::try_from(pb.applied_sequence).unwrap_or(0);
        let first_pending = self
            .deliveries
            .iter()
            .find(|(_, per)| per.get(id).is_some_and(is_pending))
            .map(|(sequence, _)| *sequence);
        first_pending
            .map_or(reported, |p| reported.min(p - 1))
            .min(self.last_sequence())
    }

    /// Applies a committed change: pending commands kept, dispatched ones filed in force (a
    /// resume retiring the halts it lifts) and hashed and offered to the unresolved
    /// rejections, deliveries kept while unsettled, rejections filed, and every supplier's
    /// rejections judged against what it has now acknowledged.
    pub fn apply(&mut self, change: Change) {
        let m = self;
        for (def, f) in change.features {
            m.features.insert(def.key.clone(), (def, f));
        }
        for (supplier, sequence, rejection) in change.rejections {
            m.conflicts.insert(supplier, sequence, rejection);
        }
        for c in change.commands {
            if c.state == CommandState::Pending {
                m.pending.insert(c.domain.id.clone(), c);
                continue;
            }
            m.pending.remove(&c.domain.id);
            let sequence = c.domain.sequence;
            if c.state == CommandState::Dispatched && sequence > 0 {
                if let Some(last) = m.hashes.last().copied()
                    && sequence == m.hashes.len() as u64
                {
                    m.hashes.push(last.next(sequence, &c.domain.id));
                }
                m.conflicts.offer(&c.domain);
                m.in_force.apply(Arc::new(c.domain));
            }
        }
        for ((sequence, supplier), d) in change.deliveries {
            if d.state() == pb::delivery::State::Rejected {
                m.rejected.entry(supplier.clone()).or_default().insert(sequence);
            } else if m.rejected.get_mut(&supplier).is_some_and(|r| r.remove(&sequence)) {
                // A supplier that lost its store judged the command again and applied it: no
                // longer a rejection there (as a restart would file it).
                m.conflicts.remove(&supplier, sequence);
            }
            if sequence >= m.settled_below {
                m.deliveries.entry(sequence).or_default().insert(supplier, d);
            }
        }
        for (id, s) in change.suppliers {
            m.suppliers.insert(id, s);
        }
        m.settle();
        m.judge();
    }

    /// Judges every supplier's unresolved rejections against what it has acknowledged.
    fn judge(&mut self) {
        let suppliers: Vec<SupplierId> = self.conflicts.suppliers().cloned().collect();
        let none = BTreeSet::new();
        for s in suppliers {
            let acked = self.suppliers.get(&s).map_or(0, |st| st.acked);
            let rejected = self.rejected.get(&s).unwrap_or(&none);
            for sequence in self.conflicts.judge(&s, acked, rejected) {
                let by = self
                    .conflicts
                    .get(&s, sequence)
                    .and_then(|r| r.resolved_by.as_ref());
                info!(supplier = %s, sequence, resolved_by = ?by.map(ToString::to_string), "a supplier's rejection is resolved");
            }
        }
    }

    /// Every rejection recorded, as (supplier, sequence).
    pub fn rejections(&self) -> Vec<(SupplierId, u64)> {
        self.rejected
            .iter()
            .flat_map(|(s, set)| set.iter().map(|q| (s.clone(), *q)))
            .collect()
    }

    /// Files rejections read at start (see `rejections.rs`) and judges them.
    pub fn file_rejections(&mut self, filed: Vec<Filed>) {
        for (supplier, sequence, rejection) in filed {
            self.conflicts.insert(supplier, sequence, rejection);
        }
        self.judge();
    }

    /// `supplier`'s unresolved rejections (its conflicts), as `commands/{command}` names in
    /// sequence order.
    pub fn conflicts_of(&self, supplier: &SupplierId) -> Vec<String> {
        self.conflicts
            .open_at(supplier)
            .map(|(_, id)| format!("commands/{id}"))
            .collect()
    }

    /// `supplier`'s rejection of the command at `sequence`, if it rejected it.
    pub fn rejection(&self, supplier: &SupplierId, sequence: u64) -> Option<&Rejection> {
        self.conflicts.get(supplier, sequence)
    }

    /// The suppliers whose rejection of the command at `sequence` is unresolved.
    pub fn unresolved_at(&self, sequence: u64) -> Vec<&SupplierId> {
        self.conflicts.unresolved(sequence)
    }

    /// Fills `resolved_by` on the REJECTED deliveries of the command at `sequence` whose
    /// rejection is resolved.
    pub fn mark_resolved(&self, sequence: u64, deliveries: &mut [pb::Delivery]) {
        for d in deliveries {
            if d.state() != pb::delivery::State::Rejected {
                continue;
            }
            let by = d
                .supplier
                .strip_prefix("suppliers/")
                .and_then(supplier_id)
                .and_then(|s| self.conflicts.get(&s, sequence))
                .and_then(|r| r.resolved_by.as_ref());
            if let Some(by) = by {
                d.resolved_by = format!("commands/{by}");
            }
        }
    }

    /// Drops the deliveries of the lowest sequences once none of them is pending.
    fn settle(&mut self) {
        while let Some(entry) = self.deliveries.first_entry() {
            if entry.get().values().any(is_pending) {
                break;
            }
            entry.remove();
        }
        self.settled_below = self
            .deliveries
            .first_key_value()
            .map_or(self.last_sequence() + 1, |(s, _)| *s);
    }

    /// The command ids a change's dispatched resumes lift (halts in force, or dispatched
    /// earlier in the same change, of the resume's own feature): the store marks them no longer
    /// effective in the same write.
    pub fn retirements(&self, change: &Change) -> Vec<CommandId> {
        let mut halts: HashMap<&CommandId, &FeatureKey> = HashMap::new();
        let mut retired = Vec::new();
        for c in &change.commands {
            if c.state != CommandState::Dispatched || c.domain.sequence == 0 {
                continue;
            }
            match &c.domain.action {
                Action::Halt { .. } => {
                    halts.insert(&c.domain.id, &c.domain.feature);
                }
                Action::Resume { .. } => {
                    for h in self.in_force.lifts(&c.domain) {
                        retired.push(h);
                    }
                    if let Action::Resume { halts: named } = &c.domain.action
                        && c.domain.supplier.is_none()
                    {
                        for h in named {
                            if halts.get(h) == Some(&&c.domain.feature) && !retired.contains(h) {
                                retired.push(h.clone());
                            }
                        }
                    }
                }
                _ => {}
            }
        }
        retired
    }

    /// Applies a change just committed; an API write (`guarded`) also moved the stored version.
    pub fn committed(&mut self, change: Change, guarded: bool) {
        if guarded {
            self.store_version += 1;
        }
        self.store_changes += 1;
        self.apply(change);
    }

    /// Keeps what this replica knows better than the store it reloaded from (it may be the one
    /// talking to the suppliers): contact times, acknowledgements, the last error.
    pub fn keep_contact(&mut self, old: &Model) {
        for (id, s) in &mut self.suppliers {
            if let Some(old) = old.suppliers.get(id) {
                s.last_contact = s.last_contact.max(old.last_contact);
                s.in_step_contact = s.in_step_contact.max(old.in_step_contact);
                s.acked = s.acked.max(old.acked);
                if s.freeze_reason.is_empty() {
                    s.freeze_reason = old.freeze_reason.clone();
                }
                if s.pb.last_error.is_empty() {
                    s.pb.last_error = old.pb.last_error.clone();
                }
                if s.pb.fault.is_empty() {
                    s.pb.fault = old.pb.fault.clone();
                    s.pb.fault_time = old.pb.fault_time;
                }
            }
        }
    }

    /// The stored version the model reflects (compare-and-set by API writes).
    pub fn store_version(&self) -> u64 {
        self.store_version
    }

    /// The store's change count the model reflects.
    pub fn store_changes(&self) -> u64 {
        self.store_changes
    }

    /// A feature's definition and API view.
    pub fn feature(&self, key: &FeatureKey) -> Option<&(FeatureDef, pb::Feature)> {
        self.features.get(key)
    }

    /// Every feature's API view, by key.
    pub fn features(&self) -> impl Iterator<Item = &pb::Feature> {
        self.features.values().map(|(_, f)| f)
    }

    /// The command waiting for approval with this id, if there is one.
    pub fn pending(&self, id: &CommandId) -> Option<&Cmd> {
        self.pending.get(id)
    }

    /// A redelivery of `original` to `supplier` waiting for approval, if there is one.
    pub fn pending_redelivery(&self, original: &CommandId, supplier: &SupplierId) -> Option<&Cmd> {
        self.pending.values().find(|c| {
            c.domain.redelivery_of.as_ref() == Some(original) && c.domain.supplier.as_ref() == Some(supplier)
        })
    }

    /// How many commands wait for approval.
    pub fn pending_count(&self) -> usize {
        self.pending.len()
    }

    /// The dispatched commands in force.
    pub fn in_force(&self) -> &InForce {
        &self.in_force
    }

    /// The sequences `supplier` rejected.
    pub fn rejected_by(&self, supplier: &SupplierId) -> BTreeSet<u64> {
        self.rejected.get(supplier).cloned().unwrap_or_default()
    }

    /// What the coordinator knows of `supplier`.
    pub fn supplier(&self, id: &SupplierId) -> Option<&SupplierStatus> {
        self.suppliers.get(id)
    }

    /// Whether every delivery of `sequence` is settled (then they are read from the store).
    pub fn settled(&self, sequence: u64) -> bool {
        sequence < self.settled_below
    }

    /// How many sequences have their deliveries held in memory (the unsettled ones).
    pub fn unsettled_count(&self) -> usize {
        self.deliveries.len()
    }

    /// The deliveries of an unsettled `sequence`, by supplier.
    pub fn deliveries_at(&self, sequence: u64) -> Option<&Deliveries> {
        self.deliveries.get(&sequence)
    }

    /// The delivery of an unsettled `sequence` to `supplier`.
    pub fn delivery(&self, sequence: u64, supplier: &SupplierId) -> Option<&pb::Delivery> {
        self.deliveries.get(&sequence)?.get(supplier)
    }

    /// Counts a delivery attempt (in memory: attempts are not persisted).
    pub fn note_attempt(&mut self, supplier: &SupplierId, sequence: u64, at: SystemTime) {
        if self.settled(sequence) {
            return;
        }
        let d = self
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
            d.first_attempt_time = Some(wire::timestamp(at));
        }
    }

    /// Keeps a supplier's last error (in memory; it shows in the supplier view).
    pub fn note_error(&mut self, supplier: &SupplierId, error: &str) {
        let s = self.suppliers.entry(supplier.clone()).or_default();
        s.pb.last_error = error.chars().take(500).collect();
    }

    /// Keeps what a supplier answered that cannot be true (in memory; it shows in the
    /// supplier view, which is then STATE_FAULTY).
    pub fn note_fault(&mut self, supplier: &SupplierId, fault: &str, at: SystemTime) {
        let s = self.suppliers.entry(supplier.clone()).or_default();
        s.pb.fault = fault.to_owned();
        s.pb.fault_time = Some(wire::timestamp(at));
    }

    /// Forgets a supplier's fault found before `before`; returns whether it had one.
    pub fn clear_fault(&mut self, supplier: &SupplierId, before: SystemTime) -> bool {
        let Some(s) = self.suppliers.get_mut(supplier) else {
            return false;
        };
        let found = s.pb.fault_time.and_then(|t| SystemTime::try_from(t).ok());
        if s.pb.fault.is_empty() || found.is_some_and(|t| t >= before) {
            return false;
        }
        s.pb.fault_time = None;
        s.pb.fault.clear();
        true
    }

    /// Replaces what is known of a supplier in memory only (a heartbeat with nothing durable).
    pub fn note_supplier(&mut self, supplier: SupplierId, status: SupplierStatus) {
        self.suppliers.insert(supplier, status);
    }

    /// The history hash of the log up to `sequence`, if the log reaches it.
    pub fn history_hash(&self, sequence: u64) -> Option<HistoryHash> {
        self.hashes.get(usize::try_from(sequence).ok()?).copied()
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
    pub fn refuse_if_diverged(&self) -> Result<(), ApiError> {
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
        self.hashes.len().saturating_sub(1) as u64
    }
}

fn is_pending(d: &pb::Delivery) -> bool {
    d.state() == pb::delivery::State::Pending
}
