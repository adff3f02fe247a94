//! What the coordinator records of each supplier's synchronisation, and what its delivery task
//! reads: heartbeats (with the history check that finds a DIVERGED supplier), attempts,
//! acknowledgements, the command at a sequence, and a snapshot of the effective state.

use std::{collections::HashMap, time::SystemTime};

use prost::Message;
use rollout_core::{Command, HistoryHash, RuleBook, SupplierId, audit::now};
use rollout_net::{ApiError, wire};
use rollout_proto::v1 as pb;
use tracing::info;

use crate::coordinator::{Change, Core, Model, SupplierEndpoint};

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

impl Core {
    /// The wire form of the dispatched command at `sequence`, as suppliers receive it, with
    /// the history hash before it.
    pub async fn sequenced(&self, sequence: u64) -> Option<(pb::Command, HistoryHash)> {
        self.read(|m| {
            let previous = m.history_hash(sequence - 1)?;
            m.at_sequence(sequence)
                .map(|c| (wire::command_pb(&c.domain), previous))
        })
        .await
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
        let (log, rejected, judged, hashes) = self
            .read(|m| {
                let log: Vec<Command> = m.log().map(|c| c.domain.clone()).collect();
                let acked = m.supplier(supplier).map_or(0, |s| s.acked);
                (
                    log,
                    m.rejected_by(supplier),
                    applied.max(acked),
                    m.hashes().to_vec(),
                )
            })
            .await;
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
        let mut m = self.lock().await;
        let mut s = m.supplier(supplier).cloned().unwrap_or_default();
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
        let contact_due = self.store().shared()
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
            m.note_supplier(supplier.clone(), s);
        }
        Ok(SyncCheck { diverged, acked })
    }

    /// Records a failed contact (kept in memory; the last error shows in the supplier view).
    pub async fn record_error(&self, supplier: &SupplierId, error: &str) {
        self.lock().await.note_error(supplier, error);
        self.changes.send_modify(|n| *n += 1);
    }

    /// Records a delivery attempt.
    pub async fn record_attempt(&self, supplier: &SupplierId, sequence: u64) {
        self.lock().await.note_attempt(supplier, sequence, now());
    }

    /// Records the supplier's answers for sequences: applied, or rejected with a reason; and its
    /// applied sequence.
    pub async fn record_applied(
        &self,
        supplier: &SupplierId,
        outcomes: Vec<(u64, Option<String>, Option<prost_types::Timestamp>)>,
        applied_sequence: u64,
    ) -> Result<(), ApiError> {
        let mut m = self.lock().await;
        let acknowledged = Some(wire::timestamp(now()));
        let mut change = Change::default();
        let mut status = m.supplier(supplier).cloned().unwrap_or_default();
        for (sequence, rejection, apply_time) in outcomes {
            let mut d = m
                .delivery(sequence, supplier)
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
                && let Some(c) = m.at_sequence(sequence)
            {
                let name = format!("commands/{}", c.domain.id);
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
        let status = m.supplier(&s.id).cloned().unwrap_or_default();
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
}
