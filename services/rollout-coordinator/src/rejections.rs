//! What the coordinator reads of the log to file a supplier's rejection ([`Rejection`]): when
//! an outcome is recorded (`sync.rs`, `recovery.rs`) and, for every rejection in the store,
//! at start, without replaying the log. Rejections are few, so this reads only the rejected
//! commands, the halts a rejected resume names, and the resumes (or go-lives) of their
//! features dispatched since, which are offered to them as candidates.

use std::{
    collections::{BTreeMap, BTreeSet},
    sync::Arc,
};

use rollout_core::{Action, Command, CommandId, FeatureKey, SupplierId};
use rollout_store::coordinator::{CommandAction, CommandState, CoordinatorStore};

use crate::{
    conflicts::Rejection,
    model::{Cmd, LoadError, Model, cmd_of},
};

/// A rejection to file: (supplier, sequence, what it waits for).
pub type Filed = (SupplierId, u64, Rejection);

/// What a rejected command's candidates are.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Kind {
    Resume,
    GoLive,
}

impl Kind {
    fn of(action: &Action) -> Option<Kind> {
        match action {
            Action::Resume { .. } => Some(Kind::Resume),
            Action::GoLive { .. } => Some(Kind::GoLive),
            Action::Halt { .. } | Action::CreateFeature(_) => None,
        }
    }

    fn action(self) -> CommandAction {
        match self {
            Kind::Resume => CommandAction::Resume,
            Kind::GoLive => CommandAction::GoLive,
        }
    }
}

/// Where the commands come from: a change not yet stored (`extra`), the model's commands in
/// force, then the store.
struct Lookup<'a> {
    store: &'a dyn CoordinatorStore,
    m: &'a Model,
    extra: &'a [Cmd],
}

impl Lookup<'_> {
    async fn at(&self, sequence: u64) -> Result<Option<Arc<Command>>, LoadError> {
        if let Some(c) = self.extra.iter().find(|c| c.domain.sequence == sequence) {
            return Ok(Some(Arc::new(c.domain.clone())));
        }
        if let Some(c) = self.m.in_force().at(sequence) {
            return Ok(Some(c.clone()));
        }
        match self.store.command_at(sequence).await? {
            Some(row) => Ok(Some(Arc::new(cmd_of(&row)?.domain))),
            None => Ok(None),
        }
    }

    /// The sequence of `id` if it is a dispatched halt of `feature`.
    async fn halt_of(&self, id: &CommandId, feature: &FeatureKey) -> Result<Option<u64>, LoadError> {
        let is_halt = |c: &Command| matches!(c.action, Action::Halt { .. }) && c.feature == *feature;
        if let Some(c) = self.extra.iter().find(|c| c.domain.id == *id) {
            return Ok(is_halt(&c.domain).then_some(c.domain.sequence));
        }
        if let Some(c) = self.m.in_force().get(id) {
            return Ok(is_halt(c).then_some(c.sequence));
        }
        let Some(row) = self.store.command(id.as_str()).await? else {
            return Ok(None);
        };
        Ok(match row.sequence {
            Some(s)
                if row.state == CommandState::Dispatched
                    && row.action == CommandAction::Halt
                    && row.feature == feature.as_str() =>
            {
                Some(s)
            }
            _ => None,
        })
    }
}

/// Files the rejections `wanted` ((supplier, sequence) pairs the model records as rejected):
/// each rejected command is read (from `extra`, the commands of a change not yet stored, then
/// the model, then the store), and offered the resumes or go-lives of its feature dispatched
/// in the log since the earliest command that could resolve it. Commands of `extra` are
/// offered by the model when it applies the change. A sequence the log does not hold, or a
/// command a supplier cannot reject (a halt, a definition), files nothing.
pub async fn file(
    store: &dyn CoordinatorStore,
    m: &Model,
    extra: &[Cmd],
    wanted: &[(SupplierId, u64)],
) -> Result<Vec<Filed>, LoadError> {
    let look = Lookup { store, m, extra };
    let mut rejected: BTreeMap<u64, (Arc<Command>, BTreeSet<CommandId>)> = BTreeMap::new();
    // Per feature and action, the lowest sequence from which candidates are read.
    let mut reads: BTreeMap<(FeatureKey, Kind), u64> = BTreeMap::new();
    for sequence in wanted.iter().map(|(_, s)| *s).collect::<BTreeSet<u64>>() {
        let Some(cmd) = look.at(sequence).await? else {
            tracing::warn!(
                sequence,
                "a rejected sequence is not in the log; no conflict is filed"
            );
            continue;
        };
        let Some(kind) = Kind::of(&cmd.action) else {
            continue;
        };
        let mut liftable = BTreeSet::new();
        let mut from = sequence + 1;
        if let Action::Resume { halts } = &cmd.action {
            for h in halts {
                if let Some(at) = look.halt_of(h, &cmd.feature).await?
                    && at < sequence
                {
                    liftable.insert(h.clone());
                    from = from.min(at + 1);
                }
            }
        }
        let low = reads.entry((cmd.feature.clone(), kind)).or_insert(from);
        *low = (*low).min(from);
        rejected.insert(sequence, (cmd, liftable));
    }
    let last = m.last_sequence();
    let mut candidates: BTreeMap<(FeatureKey, Kind), Vec<Command>> = BTreeMap::new();
    for ((feature, kind), from) in reads {
        let mut list = Vec::new();
        if from <= last {
            for row in store
                .commands_between(from, last, Some(kind.action()), Some(feature.as_str()))
                .await?
            {
                list.push(cmd_of(&row)?.domain);
            }
        }
        candidates.insert((feature, kind), list);
    }
    let mut filed = Vec::new();
    for (supplier, sequence) in wanted {
        let Some((cmd, liftable)) = rejected.get(sequence) else {
            continue;
        };
        let Some(mut rejection) = Rejection::of(cmd, liftable.clone()) else {
            continue;
        };
        let kind = Kind::of(&cmd.action);
        for c in kind
            .and_then(|k| candidates.get(&(cmd.feature.clone(), k)))
            .into_iter()
            .flatten()
        {
            rejection.offer(supplier, c);
        }
        filed.push((supplier.clone(), *sequence, rejection));
    }
    Ok(filed)
}

/// Files every rejection the model records (at start, and after a reload), and judges each
/// against what its supplier acknowledged.
pub async fn file_all(store: &dyn CoordinatorStore, m: &mut Model) -> Result<(), LoadError> {
    let wanted = m.rejections();
    let filed = file(store, m, &[], &wanted).await?;
    m.file_rejections(filed);
    Ok(())
}
