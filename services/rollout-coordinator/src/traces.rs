//! The trace each recently dispatched command was dispatched in, so that its delivery (on the
//! supplier's delivery task, apart from the call) continues that trace: each ApplyCommand's
//! `dispatch` span is a child of the HaltFeature (or ApproveCommand, CreateFeature) call that
//! dispatched the command (docs/OBSERVABILITY.md, "Traces").
//!
//! In memory only and bounded: at most [`CAPACITY`] sequences, the oldest forgotten first, and a
//! sequence is forgotten as soon as every configured supplier has answered for it. It never
//! grows with the history. Nothing is kept while tracing is off (no call span is recorded), and
//! a command dispatched by another replica, or before a restart, is delivered in a trace of its
//! own.

use std::{
    collections::{BTreeMap, BTreeSet},
    sync::Mutex,
};

use rollout_core::{CommandId, SupplierId};
use rollout_net::trace::Parent;

/// The most sequences whose trace is kept.
pub(crate) const CAPACITY: usize = 1_024;

/// Sequence → the trace its command was dispatched in.
#[derive(Debug, Default)]
pub(crate) struct DispatchTraces {
    by_sequence: Mutex<BTreeMap<u64, Dispatched>>,
}

#[derive(Debug)]
struct Dispatched {
    command: CommandId,
    parent: Parent,
    /// Suppliers that have not answered for the sequence yet.
    waiting: BTreeSet<SupplierId>,
}

impl DispatchTraces {
    /// Notes that `command` took `sequence` in the trace `parent` (nothing when `None`: tracing
    /// off), to be delivered to `suppliers`. A sequence noted again (the first commit failed and
    /// another command took it) is replaced.
    pub(crate) fn dispatched<'a>(
        &self,
        sequence: u64,
        command: &CommandId,
        parent: Option<Parent>,
        suppliers: impl IntoIterator<Item = &'a SupplierId>,
    ) {
        let Some(parent) = parent else { return };
        let waiting: BTreeSet<SupplierId> = suppliers.into_iter().cloned().collect();
        if waiting.is_empty() {
            return;
        }
        let mut m = self.by_sequence.lock().unwrap_or_else(|e| e.into_inner());
        m.insert(
            sequence,
            Dispatched {
                command: command.clone(),
                parent,
                waiting,
            },
        );
        while m.len() > CAPACITY {
            m.pop_first();
        }
    }

    /// The trace to deliver `sequence` in, if it is known and its command is `command`.
    pub(crate) fn parent(&self, sequence: u64, command: &str) -> Option<Parent> {
        let m = self.by_sequence.lock().unwrap_or_else(|e| e.into_inner());
        m.get(&sequence)
            .filter(|d| d.command.as_str() == command)
            .map(|d| d.parent.clone())
    }

    /// `supplier` has answered for `sequence`: once every supplier has, it is forgotten. A
    /// supplier answering again (a retry) counts once.
    pub(crate) fn answered(&self, sequence: u64, supplier: &SupplierId) {
        let mut m = self.by_sequence.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(d) = m.get_mut(&sequence) {
            d.waiting.remove(supplier);
            if d.waiting.is_empty() {
                m.remove(&sequence);
            }
        }
    }

    /// How many sequences are kept now.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.by_sequence.lock().map_or(0, |m| m.len())
    }
}

#[cfg(test)]
mod tests {
    use tonic::metadata::MetadataMap;

    use super::*;

    fn parent(n: u64) -> Parent {
        let mut metadata = MetadataMap::new();
        let traceparent = format!("00-{n:032x}-00f067aa0ba902b7-01");
        metadata.insert("traceparent", traceparent.parse().expect("ascii"));
        Parent::from_metadata(&metadata).expect("valid")
    }

    fn id(n: u64) -> CommandId {
        CommandId::parse(&format!("00000000-0000-4000-8000-{n:012x}")).expect("id")
    }

    fn suppliers(names: &[&str]) -> Vec<SupplierId> {
        names
            .iter()
            .map(|n| SupplierId::parse(n).expect("supplier"))
            .collect()
    }

    #[test]
    fn a_sequence_is_kept_until_every_supplier_has_answered() {
        let traces = DispatchTraces::default();
        let [emis, tpp] = [&suppliers(&["emis"])[0], &suppliers(&["tpp"])[0]];
        traces.dispatched(7, &id(7), Some(parent(1)), &suppliers(&["emis", "tpp"]));
        assert_eq!(traces.parent(7, id(7).as_str()), Some(parent(1)));
        assert_eq!(traces.parent(7, id(8).as_str()), None, "another command at 7");
        traces.answered(7, emis);
        traces.answered(7, emis);
        assert!(
            traces.parent(7, id(7).as_str()).is_some(),
            "one supplier still to answer, however often the other did"
        );
        traces.answered(7, tpp);
        assert_eq!(traces.parent(7, id(7).as_str()), None);
        assert_eq!(traces.len(), 0);
        traces.answered(7, tpp);
    }

    #[test]
    fn nothing_is_kept_with_tracing_off_and_never_more_than_the_capacity() {
        let traces = DispatchTraces::default();
        let four = suppliers(&["emis", "tpp", "cegedim", "microtest"]);
        traces.dispatched(1, &id(1), None, &four);
        assert_eq!(traces.len(), 0);
        let n = u64::try_from(CAPACITY).expect("fits") + 10;
        for s in 1..=n {
            traces.dispatched(s, &id(s), Some(parent(s)), &four);
        }
        assert_eq!(traces.len(), CAPACITY);
        assert_eq!(traces.parent(10, id(10).as_str()), None, "the oldest went first");
        assert_eq!(traces.parent(n, id(n).as_str()), Some(parent(n)));
        // A commit that failed left its sequence to the next command: the newer one stands.
        traces.dispatched(n, &id(n + 1), Some(parent(n + 1)), &four);
        assert_eq!(traces.parent(n, id(n + 1).as_str()), Some(parent(n + 1)));
    }
}
