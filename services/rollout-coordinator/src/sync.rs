//! What the coordinator records of each supplier's synchronisation, and what its delivery task
//! reads: heartbeats (with the history check that finds a DIVERGED supplier), attempts,
//! acknowledgements (of settled sequences checked against the store), and the command at a
//! sequence. The snapshot of the effective state is in `snapshot.rs`.

use std::time::SystemTime;

use rollout_core::{Action, HistoryHash, SupplierId, audit::now};
use rollout_net::{ApiError, wire};
use rollout_proto::v1 as pb;
use tracing::info;

use crate::{
    answers::{self, Fault, Outcome},
    coordinator::{Change, Core, Model, SupplierEndpoint},
    in_force::InForce,
};

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
    /// A command in force comes from the model, any other from the store.
    pub async fn sequenced(&self, sequence: u64) -> Option<(pb::Command, HistoryHash)> {
        let (previous, held) = self
            .read(|m| {
                let previous = m.history_hash(sequence.checked_sub(1)?)?;
                m.history_hash(sequence)?;
                Some((previous, m.in_force().at(sequence).cloned()))
            })
            .await?;
        if let Some(c) = held {
            return Some((wire::command_pb(&c), previous));
        }
        let row = match self.store().command_at(sequence).await {
            Ok(row) => row?,
            Err(error) => {
                tracing::warn!(%error, sequence, "cannot read the command at a sequence");
                return None;
            }
        };
        match crate::model::cmd_of(&row) {
            Ok(c) => Some((wire::command_pb(&c.domain), previous)),
            Err(error) => {
                tracing::warn!(%error, sequence, "cannot read the command at a sequence");
                None
            }
        }
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
        let held = i32::try_from(state.held_practices.len()).unwrap_or(i32::MAX);
        let durable_change = s.pb.applied_sequence != state.applied_sequence
            || s.pb.frozen != state.frozen
            || s.pb.held_practices != held
            || s.pb.divergence != divergence
            || !s.pb.last_error.is_empty()
            || contact_due;
        let diverged = !divergence.is_empty();
        let counts_changed = s.pb.feature_counts != state.feature_counts;
        s.pb.applied_sequence = state.applied_sequence;
        s.pb.frozen = state.frozen;
        s.pb.held_practices = held;
        s.freeze_reason = if state.frozen {
            state.freeze_reason.chars().take(1_000).collect()
        } else {
            String::new()
        };
        s.pb.divergence = divergence;
        s.pb.feature_counts = state.feature_counts.clone();
        s.pb.counts_time = state.read_time;
        s.pb.counts_sequence = state.applied_sequence;
        s.pb.refusal_audit = state.refusal_audit.clone().map(|mut r| {
            // The supplier's words: kept bounded.
            r.last_error = rollout_core::audit::printable(&r.last_error, 300);
            r
        });
        // The supplier's words: kept bounded.
        s.pb.tls_warnings = state
            .tls_warnings
            .iter()
            .take(rollout_net::tls::TlsWarnings::MAX)
            .map(|w| rollout_core::audit::printable(w, rollout_net::tls::TlsWarnings::MAX_CHARS))
            .collect();
        s.pb.last_error = String::new();
        s.last_contact = Some(SystemTime::now());
        s.pb.last_contact_time = s.last_contact.map(wire::timestamp);
        if applied >= target {
            s.in_step_contact = s.last_contact;
        }
        if durable_change {
            let change = Change {
                suppliers: vec![(supplier.clone(), s)],
                ..Change::default()
            };
            self.commit(m, change, None, None).await?;
        } else {
            m.note_supplier(supplier.clone(), s);
            if counts_changed {
                // Watchers of the national picture (the status page) show the new counts.
                self.changes.send_modify(|n| *n += 1);
            }
        }
        Ok(SyncCheck { diverged, acked })
    }

    /// Checks a GetSyncState answer before anything of it is believed (see `answers.rs`): a
    /// fault is recorded and returned; otherwise the answer, bounded.
    pub(crate) async fn checked_sync_state(
        &self,
        supplier: &SupplierId,
        state: pb::SyncState,
    ) -> Result<pb::SyncState, Fault> {
        let mut m = self.lock().await;
        let log_end = m.last_sequence();
        let checked = answers::sync_state(state, log_end, |key| {
            rollout_core::FeatureKey::parse(key).is_ok_and(|k| m.feature(&k).is_some())
        });
        if let Err(fault) = &checked {
            self.note_fault(&mut m, supplier, fault);
        }
        checked
    }

    /// Records an answer of the supplier's that cannot be true: logged at WARN, and kept (in
    /// memory) for the supplier view, which shows it FAULTY until it has answered sensibly up
    /// to the latest dispatched command ([`Core::answered_sensibly`]).
    pub(crate) async fn record_fault(&self, supplier: &SupplierId, fault: &Fault) {
        let mut m = self.lock().await;
        self.note_fault(&mut m, supplier, fault);
    }

    fn note_fault(&self, m: &mut Model, supplier: &SupplierId, fault: &Fault) {
        tracing::warn!(supplier = %supplier, %fault, "the supplier answered something that cannot be true; nothing of that answer is recorded");
        m.note_fault(supplier, &fault.to_string(), SystemTime::now());
        self.changes.send_modify(|n| *n += 1);
    }

    /// The supplier has answered sensibly up to the latest dispatched command, in a sync begun
    /// at `since`: a fault found before then is forgotten.
    pub(crate) async fn answered_sensibly(&self, supplier: &SupplierId, since: SystemTime) {
        if self.lock().await.clear_fault(supplier, since) {
            info!(supplier = %supplier, "the supplier answers sensibly again; its fault is cleared");
            self.changes.send_modify(|n| *n += 1);
        }
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
    /// applied sequence. The supplier's latest word stands: an outcome unlike the one recorded
    /// (a supplier that lost its store judged the command again, perhaps under a freeze) takes
    /// its place. A rejection is filed as a conflict, and every rejection of this supplier's
    /// that a command it has now applied resolves is resolved (see `conflicts.rs`). Returns the
    /// sequences recorded APPLIED that were pending until now (not those judged again).
    pub async fn record_applied(
        &self,
        supplier: &SupplierId,
        outcomes: Vec<Outcome>,
        applied_sequence: u64,
    ) -> Result<Vec<u64>, ApiError> {
        let m = self.lock().await;
        let acknowledged = Some(wire::timestamp(now()));
        let mut change = Change::default();
        let mut rejected = Vec::new();
        let mut first_applied = Vec::new();
        let mut status = m.supplier(supplier).cloned().unwrap_or_default();
        // Deliveries of settled sequences are in the store only: read them at once.
        let settled: Vec<u64> = outcomes
            .iter()
            .map(|(s, ..)| *s)
            .filter(|s| m.settled(*s))
            .collect();
        let mut stored = match (settled.iter().min(), settled.iter().max()) {
            (Some(lo), Some(hi)) => self.stored_deliveries_to(supplier, *lo, *hi).await?,
            _ => Default::default(),
        };
        for (sequence, rejection, apply_time) in outcomes {
            let held = if m.settled(sequence) {
                stored.remove(&sequence)
            } else {
                m.delivery(sequence, supplier).cloned()
            };
            let mut d = held.unwrap_or_else(|| pb::Delivery {
                supplier: format!("suppliers/{supplier}"),
                ..Default::default()
            });
            let state = if rejection.is_some() {
                pb::delivery::State::Rejected
            } else {
                pb::delivery::State::Applied
            };
            let was = d.state();
            if was == state && d.rejection_reason == rejection.clone().unwrap_or_default() {
                continue;
            }
            if matches!(was, pb::delivery::State::Applied | pb::delivery::State::Rejected) {
                tracing::warn!(supplier = %supplier, sequence, was = was.as_str_name(), now = state.as_str_name(), "the supplier judged a command again (it lost its store): its new outcome replaces the one recorded");
            }
            d.state = state.into();
            d.resolved_by = String::new();
            d.rejection_reason = rejection.clone().unwrap_or_default();
            d.apply_time = apply_time;
            d.acknowledge_time = acknowledged;
            d.last_error = String::new();
            if rejection.is_some() {
                rejected.push((supplier.clone(), sequence));
            } else if !matches!(was, pb::delivery::State::Applied | pb::delivery::State::Rejected) {
                first_applied.push(sequence);
            }
            change.deliveries.push(((sequence, supplier.clone()), d));
        }
        // Rejections are filed with what would resolve them; the model judges them (and the
        // ones filed before) against this supplier's acknowledgement once committed.
        change.rejections = crate::rejections::file(self.store().as_ref(), &m, &[], &rejected)
            .await
            .map_err(|e| ApiError::internal("reading the commands a supplier rejected", e))?;
        status.acked = applied_sequence;
        status.pb.applied_sequence = i64::try_from(applied_sequence).unwrap_or(i64::MAX);
        status.last_contact = Some(SystemTime::now());
        status.pb.last_contact_time = status.last_contact.map(wire::timestamp);
        if applied_sequence >= m.last_sequence() {
            status.in_step_contact = status.last_contact;
        }
        status.pb.last_error = String::new();
        change.suppliers.push((supplier.clone(), status));
        self.commit(m, change, None, None).await?;
        Ok(first_applied)
    }

    /// The API view of a supplier now.
    pub fn supplier_view(&self, m: &Model, s: &SupplierEndpoint) -> pb::Supplier {
        let status = m.supplier(&s.id).cloned().unwrap_or_default();
        let mut view = status.pb.clone();
        let target = m.last_sequence();
        view.name = format!("suppliers/{}", s.id);
        view.endpoint = s.endpoint.clone();
        view.target_sequence = i64::try_from(target).unwrap_or(i64::MAX);
        view.conflicts = m.conflicts_of(&s.id);
        let applied = u64::try_from(view.applied_sequence).unwrap_or(0);
        (view.unapplied_halts, view.unapplied_halt_count) = unapplied_halts(m.in_force(), &s.id, applied);
        let fresh = status
            .last_contact
            .is_some_and(|t| t.elapsed().map_or(true, |e| e <= self.stale_after));
        // Behind is PENDING whatever its conflicts (listed all the same): a conflict must not
        // hide that a later command, perhaps a halt, has not been applied there yet.
        view.state = if !view.divergence.is_empty() {
            pb::supplier::State::Diverged
        } else if !view.fault.is_empty() {
            pb::supplier::State::Faulty
        } else if !fresh {
            pb::supplier::State::Stale
        } else if u64::try_from(view.applied_sequence).unwrap_or(0) < target {
            pb::supplier::State::Pending
        } else if !view.conflicts.is_empty() {
            pb::supplier::State::Rejected
        } else {
            pb::supplier::State::Synced
        }
        .into();
        view
    }
}

/// The most unapplied halts a supplier view lists ([`unapplied_halts`]).
pub const UNAPPLIED_HALTS_LISTED: usize = 20;

/// The halts in force that `supplier` has not applied (their sequence is above `applied`),
/// oldest first: the first [`UNAPPLIED_HALTS_LISTED`], and how many there are in all. A halt
/// addressed to another supplier alone is not counted. Reads only the commands in force above
/// `applied`, so it costs with what the supplier has still to apply, not with the log.
pub fn unapplied_halts(
    in_force: &InForce,
    supplier: &SupplierId,
    applied: u64,
) -> (Vec<pb::supplier::UnappliedHalt>, i32) {
    let mut listed = Vec::new();
    let mut count: i32 = 0;
    let halts = in_force
        .after(applied)
        .filter(|c| matches!(c.action, Action::Halt { .. }) && c.addressed_to(supplier));
    for c in halts {
        count = count.saturating_add(1);
        if listed.len() < UNAPPLIED_HALTS_LISTED {
            listed.push(pb::supplier::UnappliedHalt {
                command: format!("commands/{}", c.id),
                sequence: i64::try_from(c.sequence).unwrap_or(i64::MAX),
                feature: format!("features/{}", c.feature),
                create_time: Some(wire::timestamp(c.issued_at)),
            });
        }
    }
    (listed, count)
}

#[cfg(test)]
mod tests {
    use std::{
        sync::Arc,
        time::{Duration, SystemTime},
    };

    use rollout_core::{Action, Command, CommandId, FeatureKey, Scope, SupplierId};
    use rollout_net::wire;

    use super::unapplied_halts;
    use crate::{answers::Fault, in_force::InForce};

    #[tokio::test]
    async fn a_fault_is_cleared_only_by_a_sync_begun_after_it() {
        let (_dir, core) = crate::tests::empty_core().await;
        let emis = SupplierId::parse("emis").expect("supplier");
        let before = SystemTime::now() - Duration::from_secs(1);
        core.record_fault(&emis, &Fault::new("ApplyCommand answered nonsense"))
            .await;
        core.answered_sensibly(&emis, before).await;
        assert_eq!(
            fault_of(&core, &emis).await,
            "ApplyCommand answered nonsense",
            "found during that sync"
        );
        core.answered_sensibly(&emis, SystemTime::now() + Duration::from_secs(1))
            .await;
        assert_eq!(fault_of(&core, &emis).await, "");
    }

    /// A dispatched command of `feature` at `sequence`, issued `sequence` seconds after the
    /// epoch, addressed to `to` alone if given.
    fn command(sequence: u64, feature: &str, action: Action, to: Option<&str>) -> Arc<Command> {
        Arc::new(Command {
            id: CommandId::parse(&format!("00000000-0000-4000-8000-{sequence:012}")).expect("id"),
            sequence,
            feature: FeatureKey::parse(feature).expect("feature"),
            action,
            reason: String::new(),
            requester: "alice".into(),
            issued_at: SystemTime::UNIX_EPOCH + Duration::from_secs(sequence),
            approved_by: vec![],
            redelivery_of: None,
            supplier: to.map(|s| SupplierId::parse(s).expect("supplier")),
        })
    }

    #[test]
    fn unapplied_halts_are_listed_oldest_first_at_most_20_and_counted_in_full() {
        let halt = || Action::Halt {
            scope: Scope::National,
        };
        let mut in_force = InForce::default();
        // Halts at 2..=26 (two features), a go-live at 27, a resume at 28 lifting the halt at
        // 3, and a halt at 29 addressed to tpp alone.
        for sequence in 2..=26 {
            let feature = if sequence % 2 == 0 { "f-even" } else { "f-odd" };
            in_force.apply(command(sequence, feature, halt(), None));
        }
        let go_live = Action::GoLive {
            scope: Scope::National,
            effective_at: None,
        };
        in_force.apply(command(27, "f-even", go_live, None));
        let lifted = command(3, "f-odd", halt(), None).id.clone();
        let resume = Action::Resume { halts: vec![lifted] };
        assert_eq!(in_force.apply(command(28, "f-odd", resume, None)).len(), 1);
        in_force.apply(command(29, "f-even", halt(), Some("tpp")));

        let emis = SupplierId::parse("emis").expect("supplier");
        let (listed, count) = unapplied_halts(&in_force, &emis, 1);
        assert_eq!(count, 24, "25 halts, one lifted, one addressed to tpp");
        let sequences: Vec<i64> = listed.iter().map(|h| h.sequence).collect();
        let expected: Vec<i64> = [2].into_iter().chain(4..=22).collect();
        assert_eq!(sequences, expected, "the oldest 20, the lifted one left out");
        assert_eq!(listed[0].command, "commands/00000000-0000-4000-8000-000000000002");
        assert_eq!(listed[0].feature, "features/f-even");
        assert_eq!(listed[2].feature, "features/f-odd", "sequence 5");
        assert_eq!(
            listed[1].create_time,
            Some(wire::timestamp(SystemTime::UNIX_EPOCH + Duration::from_secs(4)))
        );

        let tpp = SupplierId::parse("tpp").expect("supplier");
        assert_eq!(unapplied_halts(&in_force, &tpp, 1).1, 25, "its own halt counts");
        let (listed, count) = unapplied_halts(&in_force, &emis, 20);
        assert_eq!(count, 6);
        assert_eq!(listed.first().map(|h| h.sequence), Some(21));
        assert_eq!(unapplied_halts(&in_force, &tpp, 28).1, 1);
        let (listed, count) = unapplied_halts(&in_force, &emis, 29);
        assert_eq!((listed.len(), count), (0, 0), "applied everything");
    }

    async fn fault_of(core: &crate::coordinator::Core, supplier: &SupplierId) -> String {
        core.read(|m| {
            m.supplier(supplier)
                .map(|s| s.pb.fault.clone())
                .unwrap_or_default()
        })
        .await
    }
}
