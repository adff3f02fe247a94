//! Reads of the command log from the store: the model holds only what is pending, in force or
//! unsettled, so GetCommand, ListCommands, WatchCommand, VerifyCommand, the checks on a
//! resume's halts and the command delivery sends at a sequence read the history here. The
//! unsettled deliveries (with their in-memory attempt counts) come from the model; settled ones
//! from the store.

use std::collections::{BTreeMap, BTreeSet};

use rollout_core::{Action, CommandId, FeatureKey, SupplierId};
use rollout_net::{ApiError, Page};
use rollout_proto::v1 as pb;
use rollout_store::coordinator::{CommandAction, CommandQuery, CommandRow, CommandState};

use crate::{
    coordinator::{Cmd, Core, Model},
    model::{cmd_of, decode},
};

/// Most command rows read from the store at once for a ListCommands page (a row is at most
/// about 160 KB).
const LIST_BATCH: usize = 32;

fn store_error(e: rollout_store::StoreError) -> ApiError {
    ApiError::internal("reading the command log", e)
}

fn record_error(e: crate::model::LoadError) -> ApiError {
    ApiError::internal("reading the command log", e)
}

/// The API state of a stored command state.
pub fn state_pb(state: CommandState) -> pb::command::State {
    match state {
        CommandState::Pending => pb::command::State::PendingApproval,
        CommandState::Dispatched => pb::command::State::Dispatched,
        CommandState::Cancelled => pb::command::State::Cancelled,
    }
}

/// What ListCommands asks for.
#[derive(Debug, Clone)]
pub struct ListQuery {
    /// Only this feature's commands.
    pub feature: Option<FeatureKey>,
    /// Only commands in this state.
    pub state: Option<pb::command::State>,
    /// Start after this command (newest first).
    pub after: Option<String>,
    /// At most this many commands.
    pub size: usize,
}

impl Core {
    /// The stored command row with this id, or NOT_FOUND.
    async fn stored(&self, id: &CommandId) -> Result<CommandRow, ApiError> {
        self.store()
            .command(id.as_str())
            .await
            .map_err(store_error)?
            .ok_or_else(|| ApiError::not_found("COMMAND_NOT_FOUND", format!("commands/{id}")))
    }

    /// The API state of a stored command, or NOT_FOUND.
    pub(crate) async fn stored_state(&self, id: &CommandId) -> Result<pb::command::State, ApiError> {
        Ok(state_pb(self.stored(id).await?.state))
    }

    /// Whether the store holds a command with this id (and where it stands).
    pub(crate) async fn stored_command_state(
        &self,
        id: &CommandId,
    ) -> Result<Option<CommandState>, ApiError> {
        Ok(self
            .store()
            .command(id.as_str())
            .await
            .map_err(store_error)?
            .map(|r| r.state))
    }

    /// The command with this id: a pending one from the model, any other from the store.
    pub async fn find_command(&self, id: &CommandId) -> Result<Cmd, ApiError> {
        if let Some(c) = self.read(|m| m.pending(id).cloned()).await {
            return Ok(c);
        }
        cmd_of(&self.stored(id).await?).map_err(record_error)
    }

    /// The API view of a command with its deliveries, or NOT_FOUND.
    pub async fn command_view(&self, id: &CommandId) -> Result<pb::Command, ApiError> {
        self.view_of(self.find_command(id).await?).await
    }

    /// The API view of `cmd` with its deliveries.
    pub(crate) async fn view_of(&self, cmd: Cmd) -> Result<pb::Command, ApiError> {
        let mut view = cmd.pb;
        if cmd.state == CommandState::Dispatched {
            view.deliveries = self.deliveries_view(cmd.domain.sequence).await?;
        }
        Ok(view)
    }

    /// The deliveries of `sequence`, by supplier: from the model while unsettled (with the
    /// attempts it counts), else from the store; a REJECTED one names what resolved it, if
    /// anything has.
    pub async fn deliveries_view(&self, sequence: u64) -> Result<Vec<pb::Delivery>, ApiError> {
        let held = self
            .read(|m| {
                (!m.settled(sequence)).then(|| {
                    let mut d: Vec<pb::Delivery> = m
                        .deliveries_at(sequence)
                        .map(|d| d.values().cloned().collect())
                        .unwrap_or_default();
                    m.mark_resolved(sequence, &mut d);
                    d
                })
            })
            .await;
        match held {
            Some(d) => Ok(d),
            None => {
                let mut d = self
                    .stored_deliveries(sequence, sequence)
                    .await?
                    .remove(&sequence)
                    .unwrap_or_default();
                self.read(|m| m.mark_resolved(sequence, &mut d)).await;
                Ok(d)
            }
        }
    }

    /// The stored deliveries of `from..=to`, by sequence, each list by supplier.
    async fn stored_deliveries(
        &self,
        from: u64,
        to: u64,
    ) -> Result<BTreeMap<u64, Vec<pb::Delivery>>, ApiError> {
        let mut out: BTreeMap<u64, Vec<pb::Delivery>> = BTreeMap::new();
        for row in self
            .store()
            .deliveries(from, to, None)
            .await
            .map_err(store_error)?
        {
            let d: pb::Delivery = decode("delivery", &row.supplier, &row.body).map_err(record_error)?;
            out.entry(row.sequence).or_default().push(d);
        }
        Ok(out)
    }

    /// One ListCommands page, newest first, bounded by `query.size` and the page byte budget.
    /// Rows are read from the store a few at a time, so a page costs what it holds.
    pub async fn list_commands(&self, query: &ListQuery) -> Result<Page<pb::Command>, ApiError> {
        let mut page = Page::new(query.size);
        let state = match query.state {
            None => None,
            Some(pb::command::State::PendingApproval) => Some(CommandState::Pending),
            Some(pb::command::State::Dispatched) => Some(CommandState::Dispatched),
            Some(pb::command::State::Cancelled) => Some(CommandState::Cancelled),
            // Dry runs are never stored.
            Some(_) => return Ok(page),
        };
        let before = match &query.after {
            None => None,
            Some(after) => match self.store().command(after).await.map_err(store_error)? {
                Some(row) => Some((row.created_at, row.id)),
                None => return Ok(page),
            },
        };
        let mut q = CommandQuery {
            feature: query.feature.as_ref().map(ToString::to_string),
            state,
            before,
            limit: u32::try_from(query.size.clamp(1, LIST_BATCH)).unwrap_or(1),
        };
        loop {
            let rows = self.store().list_commands(&q).await.map_err(store_error)?;
            let Some(last) = rows.last() else {
                return Ok(page);
            };
            q.before = Some((last.created_at, last.id.clone()));
            let exhausted = rows.len() < q.limit as usize;
            for view in self.views(&rows).await? {
                if !page.push(view) {
                    return Ok(page);
                }
            }
            if exhausted {
                return Ok(page);
            }
        }
    }

    /// The API views of stored rows with their deliveries (one store read for the settled
    /// ones).
    async fn views(&self, rows: &[CommandRow]) -> Result<Vec<pb::Command>, ApiError> {
        let sequences: BTreeSet<u64> = rows.iter().filter_map(|r| r.sequence).collect();
        let (mut held, settled): (BTreeMap<u64, Vec<pb::Delivery>>, Vec<u64>) = self
            .read(|m| {
                let mut held = BTreeMap::new();
                let mut settled = Vec::new();
                for s in &sequences {
                    if m.settled(*s) {
                        settled.push(*s);
                    } else if let Some(d) = m.deliveries_at(*s) {
                        held.insert(*s, d.values().cloned().collect());
                    }
                }
                (held, settled)
            })
            .await;
        // One read per run of consecutive sequences: a filtered page (one feature's commands,
        // say) may hold sequences far apart, and reading every delivery between its first and
        // last would grow with the history, not with the page.
        for (lo, hi) in runs(&settled) {
            held.extend(self.stored_deliveries(lo, hi).await?);
        }
        self.read(|m| {
            for (s, d) in &mut held {
                m.mark_resolved(*s, d);
            }
        })
        .await;
        rows.iter()
            .map(|row| {
                let mut view: pb::Command = decode("command", &row.id, &row.body).map_err(record_error)?;
                if let Some(s) = row.sequence {
                    view.deliveries = held.get(&s).cloned().unwrap_or_default();
                }
                Ok(view)
            })
            .collect()
    }

    /// Checks that halt `h`, named at `halts[i]` by a resume of `feature`, can be lifted: a
    /// halt of that feature in force. The model answers for a halt in force; the store says
    /// why any other cannot be (unknown, not such a halt, never dispatched, already lifted).
    pub(crate) async fn check_liftable(
        &self,
        m: &Model,
        feature: &FeatureKey,
        i: usize,
        h: &CommandId,
    ) -> Result<(), ApiError> {
        let field = format!("halts[{i}]");
        let not_a_halt = || {
            ApiError::invalid_field(
                field.clone(),
                format!("commands/{h} is not a halt of features/{feature}"),
            )
        };
        if let Some(c) = m.in_force().get(h) {
            return if matches!(c.action, Action::Halt { .. }) && c.feature == *feature {
                Ok(())
            } else {
                Err(not_a_halt())
            };
        }
        let row = match self.store().command(h.as_str()).await.map_err(store_error)? {
            Some(row) => row,
            None => {
                return Err(ApiError::not_found("HALT_NOT_FOUND", format!("commands/{h}"))
                    .with_violation(&field, "no such command"));
            }
        };
        if row.action != CommandAction::Halt || row.feature != feature.as_str() {
            return Err(not_a_halt());
        }
        if row.state != CommandState::Dispatched {
            return Err(ApiError::invalid_field(
                field,
                format!("commands/{h} was never dispatched"),
            ));
        }
        let by = self
            .lifted_by(row.sequence.unwrap_or(0), feature, h, m.last_sequence())
            .await?;
        Err(already_lifted(m, h, by))
    }

    /// The resume that lifted dispatched halt `halt`, or `None` while it is in force.
    pub(crate) async fn lifting_resume(&self, halt: &Cmd) -> Result<Option<CommandId>, ApiError> {
        let (in_force, last) = self
            .read(|m| (m.in_force().get(&halt.domain.id).is_some(), m.last_sequence()))
            .await;
        if in_force {
            return Ok(None);
        }
        let d = &halt.domain;
        Ok(self
            .lifted_by(d.sequence, &d.feature, &d.id, last)
            .await?
            .map(|(resume, _)| resume))
    }

    /// The dispatched resume of `feature` after `after` and up to `last` that names halt `h`
    /// and lifted it in the log (addressed to every supplier), with its sequence.
    async fn lifted_by(
        &self,
        after: u64,
        feature: &FeatureKey,
        h: &CommandId,
        last: u64,
    ) -> Result<Option<(CommandId, u64)>, ApiError> {
        let resumes = self
            .store()
            .commands_between(
                after + 1,
                last,
                Some(CommandAction::Resume),
                Some(feature.as_str()),
            )
            .await
            .map_err(store_error)?;
        for row in &resumes {
            let c = cmd_of(row).map_err(record_error)?;
            if c.domain.supplier.is_none()
                && matches!(&c.domain.action, Action::Resume { halts } if halts.contains(h))
            {
                return Ok(Some((c.domain.id, c.domain.sequence)));
            }
        }
        Ok(None)
    }

    /// The stored deliveries to `supplier` of `from..=to`, by sequence.
    pub(crate) async fn stored_deliveries_to(
        &self,
        supplier: &SupplierId,
        from: u64,
        to: u64,
    ) -> Result<BTreeMap<u64, pb::Delivery>, ApiError> {
        let mut out = BTreeMap::new();
        for row in self
            .store()
            .deliveries(from, to, Some(supplier.as_str()))
            .await
            .map_err(store_error)?
        {
            let d: pb::Delivery = decode("delivery", &row.supplier, &row.body).map_err(record_error)?;
            out.insert(row.sequence, d);
        }
        Ok(out)
    }
}

/// FAILED_PRECONDITION `HALT_ALREADY_LIFTED` for halt `h`, lifted in the log by `by` (resume,
/// sequence). Where a supplier rejected that resume and the rejection is unresolved, the halt
/// is still in force there: the message names those suppliers and how to redeliver it.
fn already_lifted(m: &Model, h: &CommandId, by: Option<(CommandId, u64)>) -> ApiError {
    let Some((resume, sequence)) = by else {
        return ApiError::failed_precondition(
            "HALT_ALREADY_LIFTED",
            format!("commands/{h} was already lifted"),
        )
        .with_metadata("halt", format!("commands/{h}"));
    };
    let rejected: Vec<String> = m
        .unresolved_at(sequence)
        .into_iter()
        .map(|s| format!("suppliers/{s}"))
        .collect();
    let mut message = format!("commands/{h} was already lifted by commands/{resume}");
    if !rejected.is_empty() {
        let first = rejected[0].trim_start_matches("suppliers/");
        message.push_str(&format!(
            ", but {} rejected commands/{resume} (a change freeze), so the halt is still in force there; \
             once the freeze ends, ask for it to be delivered again to each of them \
             (RedeliverCommand: rolloutctl redeliver {resume} --to {first} --reason ...)",
            rejected.join(" and "),
        ));
    }
    let mut e = ApiError::failed_precondition("HALT_ALREADY_LIFTED", message)
        .with_metadata("halt", format!("commands/{h}"))
        .with_metadata("lifted_by", format!("commands/{resume}"));
    if !rejected.is_empty() {
        e = e.with_metadata("rejected_by", rejected.join(","));
    }
    e
}

/// The runs of consecutive numbers in `sorted` (ascending), as (first, last) pairs.
fn runs(sorted: &[u64]) -> Vec<(u64, u64)> {
    let mut out: Vec<(u64, u64)> = Vec::new();
    for &s in sorted {
        match out.last_mut() {
            Some((_, last)) if *last + 1 == s => *last = s,
            _ => out.push((s, s)),
        }
    }
    out
}

#[cfg(test)]
mod runs_tests {
    use super::runs;

    #[test]
    fn a_page_of_scattered_sequences_reads_one_run_each() {
        assert_eq!(runs(&[]), vec![]);
        assert_eq!(runs(&[7]), vec![(7, 7)]);
        assert_eq!(
            runs(&[3, 4, 5, 9, 10, 2_000]),
            vec![(3, 5), (9, 10), (2_000, 2_000)]
        );
    }
}
