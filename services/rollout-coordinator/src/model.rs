//! The coordinator's in-memory model: features, commands (pending, dispatched, cancelled), the
//! global sequence with its history hashes, deliveries per sequence and supplier, and what each
//! supplier has acknowledged. Its fields are private: [`crate::coordinator::Core`] lends it to
//! readers in a closure, and changes it only by applying a [`Change`] it has committed.

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    time::SystemTime,
};

use prost::Message;
use rollout_core::{Action, Command, CommandId, FeatureDef, FeatureKey, HistoryHash, SupplierId};
use rollout_net::{ApiError, wire};
use rollout_proto::v1 as pb;
use rollout_store::coordinator::CommandState;

use crate::change::Change;

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
    features: BTreeMap<FeatureKey, (FeatureDef, pb::Feature)>,
    /// Commands by id.
    commands: HashMap<CommandId, Cmd>,
    /// Command ids in issue order.
    order: Vec<CommandId>,
    /// Dispatched command ids by sequence.
    by_sequence: BTreeMap<u64, CommandId>,
    /// Deliveries by sequence, then supplier.
    deliveries: BTreeMap<u64, BTreeMap<SupplierId, pb::Delivery>>,
    /// Supplier status.
    suppliers: BTreeMap<SupplierId, SupplierStatus>,
    /// The stored version the model reflects (compare-and-set by API writes).
    store_version: u64,
    /// The store's change count the model reflects.
    store_changes: u64,
    /// The history hash at every dispatched sequence, from 0 (the index is the sequence).
    hashes: Vec<HistoryHash>,
}

impl Model {
    /// The model of what the store holds.
    pub fn from_store(stored: rollout_store::coordinator::CoordinatorState) -> Result<Model, LoadError> {
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
                // Acknowledged is what has an outcome recorded, up to the first delivery still
                // pending: the applied sequence a supplier reported may be past it (answers
                // lost, or commands recovered from another supplier), and delivery settles
                // the difference from the supplier's records.
                let reported = u64::try_from(pb.applied_sequence).unwrap_or(0);
                let first_pending = m
                    .deliveries
                    .iter()
                    .find(|(_, per)| {
                        per.get(&id)
                            .is_some_and(|d| d.state() == pb::delivery::State::Pending)
                    })
                    .map(|(sequence, _)| *sequence);
                // Nor past the log's end: a supplier ahead of the log (DIVERGED) has
                // acknowledged nothing beyond it.
                let acked = first_pending
                    .map_or(reported, |p| reported.min(p - 1))
                    .min(m.last_sequence());
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

    /// Applies a committed change, and extends the history hashes over any new sequence.
    pub fn apply(&mut self, change: Change) {
        let m = self;
        for (def, f) in change.features {
            m.features.insert(def.key.clone(), (def, f));
        }
        for c in change.commands {
            if c.domain.sequence > 0 {
                m.by_sequence.insert(c.domain.sequence, c.domain.id.clone());
            }
            if !m.commands.contains_key(&c.domain.id) {
                m.order.push(c.domain.id.clone());
            }
            m.commands.insert(c.domain.id.clone(), c);
        }
        for ((seq, supplier), d) in change.deliveries {
            m.deliveries.entry(seq).or_default().insert(supplier, d);
        }
        for (id, s) in change.suppliers {
            m.suppliers.insert(id, s);
        }
        m.extend_hashes();
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
                s.acked = s.acked.max(old.acked);
                if s.pb.last_error.is_empty() {
                    s.pb.last_error = old.pb.last_error.clone();
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

    /// The command with this id, if there is one.
    pub fn find(&self, id: &CommandId) -> Option<&Cmd> {
        self.commands.get(id)
    }

    /// Every command, newest first (issue order).
    pub fn commands_newest_first(&self) -> impl Iterator<Item = &Cmd> {
        self.order.iter().rev().filter_map(|id| self.commands.get(id))
    }

    /// The dispatched command at `sequence`.
    pub fn at_sequence(&self, sequence: u64) -> Option<&Cmd> {
        self.commands.get(self.by_sequence.get(&sequence)?)
    }

    /// Every dispatched command, in sequence order: the log.
    pub fn log(&self) -> impl Iterator<Item = &Cmd> {
        self.by_sequence.values().filter_map(|id| self.commands.get(id))
    }

    /// The sequences `supplier` rejected.
    pub fn rejected_by(&self, supplier: &SupplierId) -> HashSet<u64> {
        self.deliveries
            .iter()
            .filter(|(_, per)| {
                per.get(supplier)
                    .is_some_and(|d| d.state() == pb::delivery::State::Rejected)
            })
            .map(|(sequence, _)| *sequence)
            .collect()
    }

    /// What the coordinator knows of `supplier`.
    pub fn supplier(&self, id: &SupplierId) -> Option<&SupplierStatus> {
        self.suppliers.get(id)
    }

    /// The delivery of `sequence` to `supplier`.
    pub fn delivery(&self, sequence: u64, supplier: &SupplierId) -> Option<&pb::Delivery> {
        self.deliveries.get(&sequence)?.get(supplier)
    }

    /// The history hash at every sequence of the log, from 0.
    pub fn hashes(&self) -> &[HistoryHash] {
        &self.hashes
    }

    /// Counts a delivery attempt (in memory: attempts are not persisted).
    pub fn note_attempt(&mut self, supplier: &SupplierId, sequence: u64, at: SystemTime) {
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

    /// Replaces what is known of a supplier in memory only (a heartbeat with nothing durable).
    pub fn note_supplier(&mut self, supplier: SupplierId, status: SupplierStatus) {
        self.suppliers.insert(supplier, status);
    }

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
