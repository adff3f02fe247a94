//! The dispatched commands in force: the coordinator's compacted log.

use std::{
    collections::{BTreeMap, HashMap},
    ops::Bound,
    sync::Arc,
};

use rollout_core::{Action, Command, CommandId};

/// The dispatched commands in force, in their domain form: every feature definition, every
/// go-live, and every halt no dispatched resume has lifted. It compacts exactly as
/// `rollout_core::RuleBook::apply` does with no change freeze (a resume retires the named
/// halts of its own feature that are in force, and is not kept itself), without the book's
/// scope index, which only evaluation needs. Scopes are shared (`Arc`), so a snapshot's copy
/// costs pointers.
///
/// Commands addressed to one supplier (redeliveries) are the log's too: a go-live is filed
/// like any other (a snapshot keeps it for its supplier alone), and a resume lifts nothing
/// here: the halts it names were lifted in the log by the resume it repeats, and the
/// supplier's snapshot accounts for it (`snapshot.rs`).
#[derive(Debug, Clone, Default)]
pub struct InForce {
    by_sequence: BTreeMap<u64, Arc<Command>>,
    by_id: HashMap<CommandId, u64>,
}

impl InForce {
    /// Applies the next dispatched command: files a definition, go-live or halt; retires what
    /// a resume lifts. Returns the ids retired.
    pub fn apply(&mut self, cmd: Arc<Command>) -> Vec<CommandId> {
        if matches!(cmd.action, Action::Resume { .. }) {
            let lifted = self.lifts(&cmd);
            for id in &lifted {
                if let Some(sequence) = self.by_id.remove(id) {
                    self.by_sequence.remove(&sequence);
                }
            }
            return lifted;
        }
        if !self.by_id.contains_key(&cmd.id) {
            self.by_id.insert(cmd.id.clone(), cmd.sequence);
            self.by_sequence.insert(cmd.sequence, cmd);
        }
        Vec::new()
    }

    /// The halts in force a resume would lift: the ones it names of its own feature (none for
    /// any other command, nor for a resume addressed to one supplier).
    pub fn lifts(&self, cmd: &Command) -> Vec<CommandId> {
        let Action::Resume { halts } = &cmd.action else {
            return Vec::new();
        };
        if cmd.supplier.is_some() {
            return Vec::new();
        }
        halts
            .iter()
            .filter(|h| {
                self.get(h)
                    .is_some_and(|c| c.feature == cmd.feature && matches!(c.action, Action::Halt { .. }))
            })
            .cloned()
            .collect()
    }

    /// The command in force with this id.
    pub fn get(&self, id: &CommandId) -> Option<&Arc<Command>> {
        self.by_sequence.get(self.by_id.get(id)?)
    }

    /// The command in force at `sequence`.
    pub fn at(&self, sequence: u64) -> Option<&Arc<Command>> {
        self.by_sequence.get(&sequence)
    }

    /// The commands in force with a sequence above `sequence`, in sequence order: a range
    /// query, costing with the commands it yields (not with everything in force).
    pub fn after(&self, sequence: u64) -> impl Iterator<Item = &Arc<Command>> {
        self.by_sequence
            .range((Bound::Excluded(sequence), Bound::Unbounded))
            .map(|(_, c)| c)
    }

    /// Every command in force, in sequence order.
    pub fn iter(&self) -> impl Iterator<Item = &Arc<Command>> {
        self.by_sequence.values()
    }

    /// How many commands are in force.
    pub fn len(&self) -> usize {
        self.by_sequence.len()
    }
}
