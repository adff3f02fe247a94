//! A snapshot of the effective state for one supplier, built from the commands in force the
//! model maintains, not by replaying the log.
//!
//! What a supplier holds at sequence `s` is what a replay of the log up to `s` with its own
//! rejections skipped would hold; a command addressed to another supplier (a redelivery) is a
//! no-op there, so it counts exactly as one the supplier rejected: the commands *skipped* for
//! the supplier are its rejections and the commands addressed elsewhere. The model keeps the
//! log's commands in force at its end (`InForce`, a replay with nothing skipped, where a
//! redelivered go-live is filed and a redelivered resume lifts nothing). The two differ only
//! in:
//! - commands after `s` (left out), and the halts that resumes after `s` lifted (put back if
//!   still in force at `s` for this supplier);
//! - the skipped go-lives (left out) and the halts the supplier's rejected resumes would have
//!   lifted (put back, unless a resume it did not skip lifted them before `s`: perhaps a
//!   redelivery addressed to it).
//!
//! A halt missing from the commands in force was lifted by the first resume of its feature
//! naming it and addressed to every supplier; for this supplier it is still in force at `s`
//! exactly when no resume of its feature naming it up to `s` is one the supplier applied (did
//! not skip). So only the resumes the supplier rejected and those after `s` are read from the
//! store (resumes are small), with the halts they name that are put back, and each put-back
//! halt's feature's resumes up to `s`; nothing else of the history is read. A test holds the
//! result to the replay it replaces.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap, HashSet},
    sync::Arc,
};

use prost::Message;
use rollout_core::{Action, Command, CommandId, FeatureKey, SupplierId};
use rollout_net::wire;
use rollout_proto::v1 as pb;
use rollout_store::coordinator::{CommandAction, CommandRow, CommandState};

use crate::{coordinator::Core, model::cmd_of};

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
    pub rejected: HashSet<u64>,
}

/// What the model lends a snapshot: taken under its lock, in one piece.
struct Base {
    /// The log's end when taken.
    last: u64,
    /// The commands in force up to the snapshot's sequence that the supplier did not skip.
    kept: BTreeMap<u64, Arc<Command>>,
    /// Every id in force at the log's end.
    in_force: HashSet<CommandId>,
}

fn read_error(e: impl std::fmt::Display) -> String {
    format!("the log cannot be read for a snapshot: {e}")
}

impl Core {
    /// A snapshot of the effective state for `supplier`, whose applied sequence is `applied`:
    /// the state a replay of the log with the commands this supplier rejected skipped would
    /// hold (and those addressed to another supplier: a no-op here), so that the halts a
    /// rejected resume named stay in force there until it applies one lifting them. It
    /// reaches as far as the supplier can take without judging anything: to the target, or,
    /// while the supplier declares a change freeze, to just before the first go-live or resume
    /// after what it holds (those go one by one, so that it can reject them). `None` if that
    /// is no further than `applied`. Built from the commands in force (see the module docs); the
    /// store reads run outside the model's lock.
    pub async fn snapshot(
        &self,
        supplier: &SupplierId,
        applied: u64,
        frozen: bool,
    ) -> Result<Option<Snapshot>, String> {
        let (target, rejected) = self.read(|m| (m.last_sequence(), m.rejected_by(supplier))).await;
        // What the supplier holds is what it has judged: one that lost its store lost its
        // judgements with it (a go-live it applied before may be one it rejects now), so a
        // frozen one judges again, one by one, every go-live and resume after what it holds.
        let sequence = if frozen {
            match self.store().first_turning_on(applied).await.map_err(read_error)? {
                Some(s) if s <= target => s - 1,
                _ => target,
            }
        } else {
            target
        };
        if sequence <= applied {
            return Ok(None);
        }
        let hashes = self
            .read(|m| {
                m.history_hash(sequence)
                    .zip(m.history_hash(applied))
                    .map(|(a, b)| (*a.as_bytes(), *b.as_bytes()))
            })
            .await;
        let Some((hash, base_hash)) = hashes else {
            return Err(format!(
                "the log has no history hash at sequence {sequence} or {applied}"
            ));
        };
        let kept = self.effective_at(supplier, sequence, &rejected).await?;
        Ok(Some(Snapshot {
            header: pb::replace_rules_request::Header {
                sequence: i64::try_from(sequence).unwrap_or(i64::MAX),
                history_hash: hash.to_vec(),
                base_sequence: i64::try_from(applied).unwrap_or(i64::MAX),
                base_history_hash: base_hash.to_vec(),
            },
            chunks: chunks(kept.values().map(|c| wire::command_pb(c))),
            rejected: rejected.into_iter().collect(),
        }))
    }

    /// The commands in force at `supplier`, whose skipped sequences are `rejected`, as of
    /// `sequence`, by sequence: what a replay of the log up to `sequence` with those skipped
    /// would hold (feature definitions, go-lives, halts). Built from the commands in force
    /// (module docs).
    pub(crate) async fn effective_at(
        &self,
        supplier: &SupplierId,
        sequence: u64,
        rejected: &BTreeSet<u64>,
    ) -> Result<BTreeMap<u64, Arc<Command>>, String> {
        let base = self
            .read(|m| Base {
                last: m.last_sequence(),
                kept: m
                    .in_force()
                    .iter()
                    .take_while(|c| c.sequence <= sequence)
                    .filter(|c| !rejected.contains(&c.sequence) && c.addressed_to(supplier))
                    .map(|c| (c.sequence, c.clone()))
                    .collect(),
                in_force: m.in_force().iter().map(|c| c.id.clone()).collect(),
            })
            .await;
        let mut kept = base.kept;
        for halt in self
            .put_back(supplier, sequence, rejected, &base.in_force, base.last)
            .await?
        {
            kept.insert(halt.sequence, Arc::new(halt));
        }
        Ok(kept)
    }

    /// The halts lifted in the log but still in force for `supplier` at `sequence`: named by a
    /// resume it rejected (up to `sequence`) or by one after `sequence` (up to `last`), and
    /// lifted by no resume it applied up to `sequence`.
    async fn put_back(
        &self,
        supplier: &SupplierId,
        sequence: u64,
        rejected: &BTreeSet<u64>,
        in_force: &HashSet<CommandId>,
        last: u64,
    ) -> Result<Vec<Command>, String> {
        let store = self.store();
        let mut resumes: Vec<CommandRow> = Vec::new();
        for s in rejected.range(..=sequence) {
            if let Some(row) = store.command_at(*s).await.map_err(read_error)?
                && row.action == CommandAction::Resume
            {
                resumes.push(row);
            }
        }
        if last > sequence {
            resumes.extend(
                store
                    .commands_between(sequence + 1, last, Some(CommandAction::Resume), None)
                    .await
                    .map_err(read_error)?,
            );
        }
        let mut lifters: HashMap<FeatureKey, Vec<Command>> = HashMap::new();
        let mut seen: HashSet<CommandId> = HashSet::new();
        let mut out = Vec::new();
        for row in &resumes {
            let resume = cmd_of(row).map_err(read_error)?.domain;
            let Action::Resume { halts } = &resume.action else {
                continue;
            };
            for h in halts {
                if in_force.contains(h) || !seen.insert(h.clone()) {
                    continue;
                }
                let Some(row) = store.command(h.as_str()).await.map_err(read_error)? else {
                    continue;
                };
                let Some(at) = row.sequence else { continue };
                if row.state != CommandState::Dispatched
                    || row.action != CommandAction::Halt
                    || row.feature != resume.feature.as_str()
                    || at > sequence
                    || rejected.contains(&at)
                {
                    continue;
                }
                if !lifters.contains_key(&resume.feature) {
                    let own = self
                        .resumes_applied(supplier, &resume.feature, sequence, rejected)
                        .await?;
                    lifters.insert(resume.feature.clone(), own);
                }
                let lifted = lifters[&resume.feature].iter().any(|r| {
                    r.sequence > at && matches!(&r.action, Action::Resume { halts } if halts.contains(h))
                });
                if !lifted {
                    out.push(cmd_of(&row).map_err(read_error)?.domain);
                }
            }
        }
        Ok(out)
    }

    /// The resumes of `feature` up to `sequence` that `supplier`, with these rejections,
    /// applied: not rejected, and addressed to it or to every supplier.
    async fn resumes_applied(
        &self,
        supplier: &SupplierId,
        feature: &FeatureKey,
        sequence: u64,
        rejected: &BTreeSet<u64>,
    ) -> Result<Vec<Command>, String> {
        let mut applied = Vec::new();
        for r in self
            .store()
            .commands_between(1, sequence, Some(CommandAction::Resume), Some(feature.as_str()))
            .await
            .map_err(read_error)?
        {
            if r.sequence.is_some_and(|s| !rejected.contains(&s)) {
                let resume = cmd_of(&r).map_err(read_error)?.domain;
                if resume.addressed_to(supplier) {
                    applied.push(resume);
                }
            }
        }
        Ok(applied)
    }
}

/// Commands cut into chunks of at most [`SNAPSHOT_CHUNK_BYTES`] (one chunk, perhaps empty, at
/// the least; a command larger than a chunk goes alone).
fn chunks(commands: impl Iterator<Item = pb::Command>) -> Vec<Vec<pb::Command>> {
    let mut chunks: Vec<Vec<pb::Command>> = vec![Vec::new()];
    let mut bytes = 0;
    for command in commands {
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
    chunks
}
