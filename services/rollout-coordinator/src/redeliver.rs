//! RedeliverCommand: a command one supplier rejected (a resume or go-live refused under a
//! change freeze), delivered again to that supplier alone.
//!
//! A redelivery is a new command in the global log: a new id, the next sequence once approved,
//! in the history hash like any other. It repeats the original's action (same feature; a
//! resume names the same halts, a go-live has the same scope and effective time) with its own
//! reason and requester, `redelivery_of` naming the original and `supplier` the supplier it is
//! addressed to. Every supplier receives it in sequence; the others apply it as a no-op, so
//! that the order and the history stay one for all. It waits for approval as the original did
//! (the feature's approvals, never its requester's own), and the approval that dispatches it
//! goes through the usual dispatch. Once applied at its supplier it resolves the original's
//! rejection there (`conflicts.rs`).

use std::collections::BTreeMap;

use rollout_core::{Action, CommandId, Scope, SupplierId, audit::AuditDraft, audit::now};
use rollout_net::ApiError;
use rollout_proto::v1 as pb;
use rollout_store::coordinator::CommandState;
use tracing::info;

use crate::{
    change::Change,
    coordinator::{Cmd, Core, Idempotency, Model},
    model::cmd_of,
};

/// What RedeliverCommand asks for, validated.
#[derive(Debug)]
pub struct Redelivery {
    /// The rejected command.
    pub original: CommandId,
    /// The supplier that rejected it, to deliver it to again.
    pub supplier: SupplierId,
    /// Why, in the operator's words (at most 1,000 characters).
    pub reason: String,
    /// Only show the command; save nothing.
    pub dry_run: bool,
    /// The request's idempotency key.
    pub idem: Option<Idempotency>,
}

fn not_a_conflict(message: String, r: &Redelivery) -> ApiError {
    ApiError::failed_precondition("NOT_A_CONFLICT", message)
        .with_metadata("name", format!("commands/{}", r.original))
        .with_metadata("supplier", format!("suppliers/{}", r.supplier))
}

fn store_error(e: impl std::fmt::Display) -> ApiError {
    ApiError::internal("reading the command to redeliver", e)
}

impl Core {
    /// Creates the redelivery of `r.original` to `r.supplier`, waiting for approval (with
    /// `dry_run`, only shows it). Refused with NOT_FOUND for an unknown command or supplier;
    /// FAILED_PRECONDITION `NOT_A_CONFLICT` unless the original is a dispatched resume or
    /// go-live whose delivery to that supplier is REJECTED and unresolved,
    /// `SUPPLIER_FROZEN` while the supplier last reported a change freeze, and
    /// `REDELIVERY_PENDING` while a redelivery of it to that supplier already waits for
    /// approval. Audited by the caller's audit event, committed with the command.
    pub async fn redeliver(
        &self,
        requester: &crate::coordinator::Who,
        r: Redelivery,
        audit: AuditDraft,
    ) -> Result<pb::Command, ApiError> {
        if !self.suppliers.iter().any(|s| s.id == r.supplier) {
            return Err(ApiError::not_found(
                "SUPPLIER_NOT_FOUND",
                format!("suppliers/{}", r.supplier),
            ));
        }
        let mut m = self.lock().await;
        self.catch_up(&mut m).await?;
        let original = self.rejected_original(&m, &r).await?;
        refuse_if_frozen(&m, &r, &original)?;
        if let Some(waiting) = m.pending_redelivery(&r.original, &r.supplier) {
            return Err(ApiError::failed_precondition(
                "REDELIVERY_PENDING",
                format!(
                    "commands/{} already redelivers commands/{} to suppliers/{} and is waiting for approval; approve or cancel it",
                    waiting.domain.id, r.original, r.supplier
                ),
            )
            .with_metadata("pending", format!("commands/{}", waiting.domain.id)));
        }
        let approvals = m
            .feature(&original.feature)
            .map(|(def, _)| def.approvals_required)
            .ok_or_else(|| ApiError::internal("redelivering a command", "its feature is not defined"))?;
        let scopes = self.scopes(&m, &original.action).await?;
        let at = now();
        let mut cmd = self.new_command(
            requester,
            original.feature.clone(),
            original.action.clone(),
            r.reason.clone(),
            at,
            approvals,
        );
        cmd.domain.redelivery_of = Some(r.original.clone());
        cmd.domain.supplier = Some(r.supplier.clone());
        cmd.pb.redelivery_of = format!("commands/{}", r.original);
        cmd.pb.supplier = format!("suppliers/{}", r.supplier);
        let scopes: Vec<&Scope> = scopes.iter().collect();
        let configured = self.supplier_ids();
        cmd.pb.impact = Some(crate::impact::impact_at(
            &self.estate,
            &configured,
            &scopes,
            &r.supplier,
        ));
        if r.dry_run {
            // As for any dry run: the approver's view (what it lifts, the preview).
            cmd.pb.name = String::new();
            cmd.pb.state = pb::command::State::DryRun.into();
            drop(m);
            let mut view = cmd.pb;
            self.annotate(&mut view, &cmd.domain).await?;
            return Ok(view);
        }
        let id = cmd.domain.id.clone();
        let view = self
            .commit_command(m, cmd, Change::default(), r.idem, audit)
            .await?;
        info!(command = %id, original = %r.original, supplier = %r.supplier, "redelivery waiting for approval");
        Ok(view)
    }

    /// The original command, if it is a dispatched resume or go-live whose rejection by
    /// `r.supplier` is unresolved; otherwise why not.
    async fn rejected_original(&self, m: &Model, r: &Redelivery) -> Result<rollout_core::Command, ApiError> {
        let (id, supplier) = (&r.original, &r.supplier);
        if m.pending(id).is_some() {
            return Err(not_a_conflict(
                format!("commands/{id} is waiting for approval; it has not been delivered to anyone"),
                r,
            ));
        }
        let row = self
            .store()
            .command(id.as_str())
            .await
            .map_err(store_error)?
            .ok_or_else(|| ApiError::not_found("COMMAND_NOT_FOUND", format!("commands/{id}")))?;
        let original: Cmd = cmd_of(&row).map_err(store_error)?;
        if row.state != CommandState::Dispatched {
            return Err(not_a_conflict(
                format!("commands/{id} was cancelled; it was never delivered"),
                r,
            ));
        }
        if !original.domain.action.turns_on() {
            return Err(not_a_conflict(
                format!(
                    "commands/{id} is a {}; only a resume or go-live is ever rejected, so only those are redelivered",
                    original.domain.action.name()
                ),
                r,
            ));
        }
        let sequence = original.domain.sequence;
        match m.rejection(supplier, sequence) {
            Some(rejection) => match &rejection.resolved_by {
                None => Ok(original.domain),
                Some(by) => Err(not_a_conflict(
                    format!(
                        "suppliers/{supplier} rejected commands/{id}, but that is resolved: commands/{by} did there what it would have"
                    ),
                    r,
                )
                .with_metadata("resolved_by", format!("commands/{by}"))),
            },
            None => {
                let state = self.delivery_state(m, supplier, sequence).await?;
                Err(not_a_conflict(
                    format!(
                        "suppliers/{supplier} did not reject commands/{id} (its delivery there is {}); only a rejected command is redelivered",
                        state.as_str_name()
                    ),
                    r,
                ))
            }
        }
    }

    /// Where the delivery of `sequence` to `supplier` stands.
    async fn delivery_state(
        &self,
        m: &Model,
        supplier: &SupplierId,
        sequence: u64,
    ) -> Result<pb::delivery::State, ApiError> {
        if !m.settled(sequence) {
            return Ok(m
                .delivery(sequence, supplier)
                .map_or(pb::delivery::State::Pending, pb::Delivery::state));
        }
        let stored: BTreeMap<u64, pb::Delivery> =
            self.stored_deliveries_to(supplier, sequence, sequence).await?;
        Ok(stored
            .get(&sequence)
            .map_or(pb::delivery::State::Unspecified, pb::Delivery::state))
    }

    /// The scopes an action covers: a go-live's own; a resume's, those of the halts it names
    /// (in force, or read from the store: a rejected or redelivered resume's halts were lifted
    /// in the log). For a redelivery's impact and for a preview.
    pub(crate) async fn scopes(&self, m: &Model, action: &Action) -> Result<Vec<Scope>, ApiError> {
        let store_error = |e: String| ApiError::internal("reading a halt a resume names", e);
        match action {
            Action::GoLive { scope, .. } | Action::Halt { scope } => Ok(vec![scope.clone()]),
            Action::CreateFeature(_) => Ok(Vec::new()),
            Action::Resume { halts } => {
                let mut scopes = Vec::new();
                for h in halts {
                    if let Some(c) = m.in_force().get(h) {
                        if let Action::Halt { scope } = &c.action {
                            scopes.push(scope.clone());
                        }
                        continue;
                    }
                    if let Some(row) = self
                        .store()
                        .command(h.as_str())
                        .await
                        .map_err(|e| store_error(e.to_string()))?
                        && let Action::Halt { scope } = cmd_of(&row)
                            .map_err(|e| store_error(e.to_string()))?
                            .domain
                            .action
                    {
                        scopes.push(scope);
                    }
                }
                Ok(scopes)
            }
        }
    }
}

/// FAILED_PRECONDITION `SUPPLIER_FROZEN` while the supplier's last reported state declares a
/// change freeze: it would reject the redelivery too.
fn refuse_if_frozen(m: &Model, r: &Redelivery, original: &rollout_core::Command) -> Result<(), ApiError> {
    let Some(status) = m.supplier(&r.supplier).filter(|s| s.pb.frozen) else {
        return Ok(());
    };
    // The reason it reports now, or (until its first answer since this coordinator started)
    // the one it gave when it rejected the original.
    let reason = if status.freeze_reason.is_empty() {
        m.delivery(original.sequence, &r.supplier)
            .map(|d| d.rejection_reason.clone())
            .unwrap_or_else(|| "reason not reported yet".to_owned())
    } else {
        status.freeze_reason.clone()
    };
    Err(ApiError::failed_precondition(
        "SUPPLIER_FROZEN",
        format!(
            "suppliers/{} is under a change freeze ({reason}) and would reject commands/{} again; ask again when the freeze ends",
            r.supplier, r.original
        ),
    )
    .with_metadata("supplier", format!("suppliers/{}", r.supplier))
    .with_metadata("freeze_reason", reason))
}
