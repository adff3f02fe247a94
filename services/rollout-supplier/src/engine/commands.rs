//! The coordinator's writes: commands applied one by one in sequence order, and snapshots
//! installed whole. Neither ever takes the supplier back: a command or snapshot that does not
//! continue the history applied here is refused.

use std::{sync::Arc, time::SystemTime};

use rollout_core::{
    Action, ApplyError, Command, CommandId, HistoryHash, Outcome, RuleBook, RuleKind,
    audit::{AuditDraft, AuditOutcome},
};
use rollout_net::ApiError;
use rollout_store::supplier::{StoredCommand, SyncPoint};
use tracing::info;

use super::{Engine, Serving, store_error};

/// What the supplier recorded for an applied (or rejected) sequence.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Applied {
    /// The command's id.
    pub id: CommandId,
    /// `Some(reason)` if rejected.
    pub rejection: Option<String>,
    /// When.
    pub at: SystemTime,
}

/// What a snapshot is: the state it brings, and the state it was built against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SnapshotHeader {
    /// The effective state is as of this sequence.
    pub sequence: u64,
    /// The coordinator's history hash there.
    pub history_hash: HistoryHash,
    /// The supplier's applied sequence the coordinator built the snapshot against.
    pub base_sequence: u64,
    /// The coordinator's history hash at `base_sequence`.
    pub base_history_hash: HistoryHash,
}

impl Engine {
    /// Applies the next command, durably, before returning. A sequence already applied
    /// answers as it did the first time. With `previous`, the coordinator's history hash before
    /// the command, refuses a command that does not continue the history applied here.
    pub async fn apply(
        self: &Arc<Self>,
        body: Vec<u8>,
        cmd: Command,
        previous: Option<HistoryHash>,
        audit: AuditDraft,
    ) -> Result<Applied, ApiError> {
        let w = self.begin().await?;
        let current = &w.current;
        let applied_sequence = current.book.applied_sequence();
        if cmd.sequence <= applied_sequence {
            return self.recorded(&cmd, applied_sequence).await;
        }
        continues(current, &cmd, previous)?;
        let mut book = (*current.book).clone();
        // A command addressed to another supplier (a redelivery) is a no-op here: it takes its
        // sequence and its place in the history, and lifts, files and serves nothing.
        let acts_here = book.acts_on(&cmd);
        let lifts = book.lifts(&cmd);
        let outcome = book
            .apply(&cmd, self.freeze.as_deref())
            .map_err(|e| apply_error(e, applied_sequence))?;
        let at = rollout_core::audit::now();
        let rejection = match outcome {
            Outcome::Applied => None,
            Outcome::Rejected(r) => Some(r),
        };
        let retire = if rejection.is_none() { lifts } else { Vec::new() };
        let stored = StoredCommand {
            sequence: cmd.sequence,
            id: cmd.id.to_string(),
            feature: cmd.feature.to_string(),
            body,
            rejection: rejection.clone(),
            applied_at: at,
            effective: acts_here && rejection.is_none() && !matches!(cmd.action, Action::Resume { .. }),
        };
        let audit = match &rejection {
            Some(r) => AuditDraft {
                outcome: AuditOutcome::Refused,
                reason: r.clone(),
                ..audit
            },
            None => audit,
        };
        let head = current.head.next(cmd.sequence, &cmd.id);
        let next = Serving {
            book: Arc::new(book),
            head,
            last_apply_time: Some(at),
            ..(**current).clone()
        };
        let version = current.store_version + 1;
        let hex = head.to_hex();
        let store = Arc::clone(&self.store);
        let (id, action, rejected) = (cmd.id.clone(), cmd.action.name(), rejection.is_some());
        let write = async move {
            store
                .append_command(&stored, &retire, &hex, version, audit)
                .await?;
            info!(sequence = stored.sequence, command = %id, action, rejected, retired = retire.len(), addressed_elsewhere = !acts_here, "command applied");
            Ok(())
        };
        let cause = format!("commands/{} applied", cmd.id);
        self.commit(w, write, next, cause, "storing an applied command")
            .await?;
        Ok(Applied {
            id: cmd.id,
            rejection,
            at,
        })
    }

    /// The answer to a command at or below the applied sequence: what was recorded for it, if
    /// it is the same command.
    async fn recorded(&self, cmd: &Command, applied_sequence: u64) -> Result<Applied, ApiError> {
        let row = self
            .store
            .command_at(cmd.sequence)
            .await
            .map_err(store_error("reading an applied command"))?;
        match row {
            Some(r) if r.id == cmd.id.as_str() => Ok(Applied {
                id: cmd.id.clone(),
                rejection: r.rejection,
                at: r.applied_at,
            }),
            Some(r) => Err(diverged(
                format!(
                    "sequence {} was applied here as command {}, not {}: the histories differ",
                    cmd.sequence, r.id, cmd.id
                ),
                applied_sequence,
                cmd.sequence,
            )),
            None => Err(ApiError::failed_precondition(
                "SEQUENCE_UNKNOWN",
                format!(
                    "sequence {} is at or below the applied sequence {applied_sequence} but is not held here (it arrived inside a snapshot)",
                    cmd.sequence
                ),
            )
            .with_metadata("applied_sequence", applied_sequence.to_string())),
        }
    }

    /// Installs a snapshot of the coordinator's effective state, all or nothing. Refuses one
    /// that would go back (older than what is applied here) or that does not continue the
    /// history applied here; and, while a change freeze is declared, one that would turn
    /// access on without this supplier judging it (a go-live it has not applied, or a halt it
    /// holds that the snapshot lifts). Returns how many commands the new state holds.
    pub async fn install_snapshot(
        self: &Arc<Self>,
        header: SnapshotHeader,
        commands: Vec<(Vec<u8>, Command)>,
        audit: AuditDraft,
    ) -> Result<usize, ApiError> {
        let w = self.begin().await?;
        let current = &w.current;
        let applied = current.book.applied_sequence();
        builds_on(current, &header)?;
        let book = self.snapshot_book(current, &header, &commands)?;
        let at = rollout_core::audit::now();
        let count = commands.len();
        let stored: Vec<StoredCommand> = commands
            .into_iter()
            .map(|(body, cmd)| StoredCommand {
                sequence: cmd.sequence,
                id: cmd.id.to_string(),
                feature: cmd.feature.to_string(),
                body,
                rejection: None,
                applied_at: at,
                effective: true,
            })
            .collect();
        let sync = SyncPoint {
            applied_sequence: header.sequence,
            history_hash: header.history_hash.to_hex(),
            applied_at: at,
        };
        let next = Serving {
            book: Arc::new(book),
            head: header.history_hash,
            last_apply_time: Some(at),
            ..(**current).clone()
        };
        let version = current.store_version + 1;
        let store = Arc::clone(&self.store);
        let write = async move {
            store.install_snapshot(&stored, &sync, version, audit).await?;
            info!(
                sequence = header.sequence,
                from = applied,
                commands = count,
                "snapshot installed"
            );
            Ok(())
        };
        self.commit(
            w,
            write,
            next,
            "snapshot installed".into(),
            "installing a snapshot",
        )
        .await?;
        Ok(count)
    }

    /// The rule book a snapshot brings, refused if it does not keep what this supplier applied
    /// itself or, under a change freeze, if it turns access on without this supplier judging it.
    fn snapshot_book(
        &self,
        current: &Serving,
        header: &SnapshotHeader,
        commands: &[(Vec<u8>, Command)],
    ) -> Result<RuleBook, ApiError> {
        let applied = current.book.applied_sequence();
        let mut book = RuleBook::for_supplier(self.supplier.clone());
        for (i, (_, cmd)) in commands.iter().enumerate() {
            book.restore(cmd)
                .map_err(|e| ApiError::invalid_field(format!("commands[{i}]"), e))?;
        }
        book.mark_synchronised(header.sequence);
        // What this supplier applied itself stands: a snapshot may add commands after
        // `applied`, and retire halts (a resume after `applied` may lift them), nothing else.
        let in_force_here = current.book.effective_commands();
        for (sequence, id) in commands.iter().map(|(_, c)| (c.sequence, &c.id)) {
            if sequence <= applied && !in_force_here.iter().any(|(s, i)| *s == sequence && i == id) {
                return Err(diverged(
                    format!(
                        "the snapshot holds command {id} at sequence {sequence}, which is not in force here at that sequence"
                    ),
                    applied,
                    header.sequence,
                ));
            }
        }
        for (sequence, id) in &in_force_here {
            let lifted_later = header.sequence > applied && current.book.halt(id).is_some();
            if book.held_at(id).is_none() && !lifted_later {
                return Err(diverged(
                    format!(
                        "the snapshot drops command {id} (sequence {sequence}), which is in force here and which nothing after sequence {applied} could retire"
                    ),
                    applied,
                    header.sequence,
                ));
            }
        }
        if let Some(freeze) = &self.freeze {
            let unjudged_go_live = commands
                .iter()
                .any(|(_, c)| c.sequence > applied && matches!(c.action, Action::GoLive { .. }));
            let lifted_here = current.book.features().any(|f| {
                f.rules()
                    .any(|r| matches!(r.kind, RuleKind::Halt { .. }) && book.halt(&r.command).is_none())
            });
            if unjudged_go_live || lifted_here {
                return Err(ApiError::failed_precondition(
                    "SNAPSHOT_NEEDS_JUDGEMENT",
                    format!(
                        "this supplier is under a change freeze ({freeze}) and the snapshot turns access on beyond sequence {applied}; deliver those commands one by one"
                    ),
                )
                .with_metadata("applied_sequence", applied.to_string()));
            }
        }
        Ok(book)
    }
}

/// Refuses a snapshot that would take this supplier back (older than what it applied) or that
/// was built on another state than the one applied here.
fn builds_on(current: &Serving, header: &SnapshotHeader) -> Result<(), ApiError> {
    let applied = current.book.applied_sequence();
    if header.sequence < applied {
        return Err(ApiError::failed_precondition(
            "SUPPLIER_AHEAD",
            format!(
                "this supplier has applied sequence {applied}; a snapshot as of {} would undo what it applied after. Recover the coordinator's log from this supplier",
                header.sequence
            ),
        )
        .with_metadata("applied_sequence", applied.to_string())
        .with_metadata("snapshot_sequence", header.sequence.to_string()));
    }
    if header.base_sequence != applied {
        return Err(ApiError::failed_precondition(
            "SNAPSHOT_BASE_MOVED",
            format!(
                "the snapshot was built against applied sequence {}, but this supplier is at {applied}; read the sync state again",
                header.base_sequence
            ),
        )
        .with_metadata("applied_sequence", applied.to_string()));
    }
    if header.base_history_hash != current.head {
        return Err(diverged(
            format!(
                "the snapshot's history at sequence {applied} ({}) is not the one applied here ({})",
                header.base_history_hash, current.head
            ),
            applied,
            header.sequence,
        ));
    }
    Ok(())
}

/// Refuses the next command if `previous`, the coordinator's history hash before it, is not the
/// history applied here.
fn continues(current: &Serving, cmd: &Command, previous: Option<HistoryHash>) -> Result<(), ApiError> {
    let applied_sequence = current.book.applied_sequence();
    match previous {
        Some(previous) if cmd.sequence == applied_sequence + 1 && previous != current.head => Err(diverged(
            format!(
                "command {} at sequence {} does not continue the history applied here (history hash {} at sequence {applied_sequence}, the coordinator's is {previous}); recover the coordinator's log before delivering more",
                cmd.id, cmd.sequence, current.head
            ),
            applied_sequence,
            cmd.sequence - 1,
        )),
        _ => Ok(()),
    }
}

/// FAILED_PRECONDITION `HISTORY_DIVERGED`: what the coordinator sent does not continue the
/// history this supplier applied.
fn diverged(message: String, applied: u64, sequence: u64) -> ApiError {
    ApiError::failed_precondition("HISTORY_DIVERGED", message)
        .with_metadata("applied_sequence", applied.to_string())
        .with_metadata("sequence", sequence.to_string())
}

fn apply_error(e: ApplyError, applied: u64) -> ApiError {
    let precondition = |reason, message: String| {
        ApiError::failed_precondition(reason, message).with_metadata("applied_sequence", applied.to_string())
    };
    match e {
        ApplyError::Gap { got, .. } => precondition(
            "SEQUENCE_GAP",
            format!(
                "sequence {got} does not follow the applied sequence {applied}; send {} next or resynchronise with a snapshot",
                applied + 1
            ),
        ),
        ApplyError::AlreadyApplied { got, .. } => {
            precondition("SEQUENCE_UNKNOWN", format!("sequence {got} is already applied"))
        }
        ApplyError::UnknownFeature(f) => precondition(
            "FEATURE_NOT_FOUND",
            format!("feature {f} is not defined here; its CreateFeature command must come first"),
        ),
        ApplyError::FeatureExists(f) => {
            precondition("FEATURE_EXISTS", format!("feature {f} is already defined"))
        }
        ApplyError::DuplicateCommand(c) => precondition(
            "COMMAND_EXISTS",
            format!("command id {c} is already held here at another sequence"),
        ),
        ApplyError::NotEffective(c) => precondition(
            "NOT_EFFECTIVE",
            format!("command {c} is a resume, which a snapshot never carries"),
        ),
        ApplyError::AddressedElsewhere(c) => precondition(
            "NOT_EFFECTIVE",
            format!(
                "command {c} is addressed to another supplier, which a snapshot for this one never carries"
            ),
        ),
    }
}
