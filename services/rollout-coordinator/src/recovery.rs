//! Recovering commands a supplier holds beyond the coordinator's log: the way out of DIVERGED
//! after the coordinator was restored from an older backup (or a stale leader lost writes).
//!
//! Suppliers keep every command as they received it. The coordinator reads the commands after
//! its last sequence from one supplier (ListAppliedCommands), checks that they continue its own
//! history (sequence by sequence, and the history hash the supplier reports at its applied
//! sequence), and appends them to its log as dispatched commands: APPLIED (or REJECTED) at the
//! supplier they came from, pending at the others, which then answer from their own records.
//! Nothing is sent to any supplier that could lift what it holds.

use std::time::SystemTime;

use rollout_core::{Action, HistoryHash, SupplierId, audit::AuditDraft};
use rollout_net::{ApiError, MessageLimits, wire};
use rollout_proto::v1::{self as pb, control_service_client::ControlServiceClient};
use rollout_store::coordinator::CommandState;
use tonic::transport::Channel;
use tracing::info;

use crate::coordinator::{Change, Cmd, Core, Idempotency, SupplierStatus};

/// Most commands one recovery takes; past that the operator is told to restore a newer backup.
pub(crate) const MAX_RECOVERED: usize = 10_000;
/// Most recovered commands the answer lists (all are counted).
const MAX_LISTED: usize = 1_000;
/// Deadline for each call to the supplier.
const CALL_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

/// What a supplier holds beyond a sequence.
#[derive(Debug)]
pub struct Held {
    /// The supplier's applied sequence.
    pub applied: u64,
    /// Its history hash there.
    pub history_hash: HistoryHash,
    /// The commands it holds after the requested sequence, in order.
    pub commands: Vec<pb::AppliedCommand>,
}

fn unreachable(supplier: &SupplierId) -> impl FnOnce(tonic::Status) -> ApiError + '_ {
    move |s| {
        ApiError::new(
            tonic::Code::Unavailable,
            "SUPPLIER_UNREACHABLE",
            format!(
                "suppliers/{supplier} could not be read ({:?}: {}); try again, or recover from another supplier",
                s.code(),
                s.message()
            ),
        )
        .with_metadata("supplier", format!("suppliers/{supplier}"))
    }
}

fn call<T>(msg: T) -> tonic::Request<T> {
    let mut req = tonic::Request::new(msg);
    req.set_timeout(CALL_TIMEOUT);
    req
}

/// Reads from `supplier` its applied sequence, history hash, and the commands it holds after
/// `after`, page by page.
pub async fn read_held(supplier: &SupplierId, channel: Channel, after: u64) -> Result<Held, ApiError> {
    let mut client = ControlServiceClient::new(channel).with_message_limits();
    let state = client
        .get_sync_state(call(pb::GetSyncStateRequest::default()))
        .await
        .map_err(unreachable(supplier))?
        .into_inner();
    let applied = u64::try_from(state.applied_sequence).unwrap_or(0);
    let history_hash = HistoryHash::from_slice(&state.history_hash).ok_or_else(|| {
        ApiError::failed_precondition(
            "HISTORY_DIVERGED",
            format!("suppliers/{supplier} reported a malformed history hash"),
        )
    })?;
    let wanted = applied.saturating_sub(after);
    if usize::try_from(wanted).unwrap_or(usize::MAX) > MAX_RECOVERED {
        return Err(ApiError::new(
            tonic::Code::ResourceExhausted,
            "RECOVERY_TOO_LARGE",
            format!(
                "suppliers/{supplier} holds {wanted} commands beyond this coordinator's log; at most {MAX_RECOVERED} are recovered at once: restore a newer backup"
            ),
        ));
    }
    let mut commands = Vec::new();
    let mut page_token = String::new();
    while wanted > commands.len() as u64 {
        let page = client
            .list_applied_commands(call(pb::ListAppliedCommandsRequest {
                after_sequence: i64::try_from(after).unwrap_or(i64::MAX),
                page_size: 500,
                page_token: page_token.clone(),
            }))
            .await
            .map_err(unreachable(supplier))?
            .into_inner();
        commands.extend(page.commands);
        if page.next_page_token.is_empty() || commands.len() >= MAX_RECOVERED {
            break;
        }
        page_token = page.next_page_token;
    }
    Ok(Held {
        applied,
        history_hash,
        commands,
    })
}

fn diverged(message: String, supplier: &SupplierId) -> ApiError {
    ApiError::failed_precondition("HISTORY_DIVERGED", message)
        .with_metadata("supplier", format!("suppliers/{supplier}"))
}

fn summary(c: &Cmd, rejected: bool) -> pb::recover_commands_response::RecoveredCommand {
    let scope = match &c.domain.action {
        Action::Halt { scope } | Action::GoLive { scope, .. } => Some(wire::scope_summary_pb(scope)),
        _ => None,
    };
    pb::recover_commands_response::RecoveredCommand {
        name: format!("commands/{}", c.domain.id),
        sequence: i64::try_from(c.domain.sequence).unwrap_or(i64::MAX),
        feature: format!("features/{}", c.domain.feature),
        action: c.domain.action.name().to_owned(),
        scope,
        requester: c.domain.requester.clone(),
        reason: c.domain.reason.clone(),
        rejected,
    }
}

/// What a recovery is asked to do.
#[derive(Debug)]
pub struct Recovery {
    /// The supplier the commands come from.
    pub supplier: SupplierId,
    /// What it holds.
    pub held: Held,
    /// Only show what would be recovered.
    pub dry_run: bool,
    /// The request's idempotency key.
    pub idem: Option<Idempotency>,
}

impl Core {
    /// Appends to the log the commands `recovery.held` holds beyond it, after checking that
    /// they continue its history; with `dry_run`, only says what would be appended.
    pub async fn recover(
        &self,
        recovery: Recovery,
        audit: AuditDraft,
    ) -> Result<pb::RecoverCommandsResponse, ApiError> {
        let Recovery {
            supplier,
            held,
            dry_run,
            idem,
        } = recovery;
        let mut guard = self.lock().await;
        let m = &mut *guard;
        self.catch_up(m).await?;
        let last = m.last_sequence();
        if held.applied <= last {
            return Err(ApiError::failed_precondition(
                "NOTHING_TO_RECOVER",
                format!(
                    "suppliers/{supplier} has applied sequence {}; this coordinator's log already reaches {last}",
                    held.applied
                ),
            ));
        }
        let mut hash = m.history_hash(last).ok_or_else(|| {
            ApiError::internal("recovering commands", "the log has no history hash at its end")
        })?;
        let now = SystemTime::now();
        let configured = self.supplier_ids();
        let mut change = Change::default();
        let mut listed = Vec::new();
        let mut expected = last + 1;
        for (i, held_command) in held.commands.iter().enumerate() {
            let field = format!("suppliers/{supplier} command {i}");
            let Some(pbc) = held_command.command.as_ref() else {
                continue;
            };
            let domain = wire::command(&field, pbc)
                .map_err(|e| diverged(format!("{field} does not read as a command: {e}"), &supplier))?;
            if domain.sequence <= last {
                continue;
            }
            if domain.sequence > held.applied {
                break;
            }
            if domain.sequence != expected {
                return Err(ApiError::failed_precondition(
                    "RECOVERY_INCOMPLETE",
                    format!(
                        "suppliers/{supplier} does not hold sequence {expected} (it reached it inside a snapshot); recover from another supplier"
                    ),
                )
                .with_metadata("sequence", expected.to_string()));
            }
            // A command this log holds as pending may have been approved and dispatched in
            // the history it lost; one it holds as dispatched cannot come back.
            if m.pending(&domain.id).is_none()
                && let Some(existing) = self.stored_command_state(&domain.id).await?
                && existing != CommandState::Pending
            {
                return Err(diverged(
                    format!(
                        "command {} at sequence {} is already in this log ({existing:?}): the histories differ",
                        domain.id, domain.sequence
                    ),
                    &supplier,
                ));
            }
            if let Action::CreateFeature(def) = &domain.action
                && m.feature(&def.key).is_some()
            {
                return Err(diverged(
                    format!("features/{} is already defined in this log", def.key),
                    &supplier,
                ));
            }
            hash = hash.next(domain.sequence, &domain.id);
            expected += 1;
            let rejection =
                (!held_command.rejection_reason.is_empty()).then(|| held_command.rejection_reason.clone());
            let mut pb = pbc.clone();
            pb.state = pb::command::State::Dispatched.into();
            pb.sequence_time = held_command.apply_time;
            if pb.create_time.is_none() {
                pb.create_time = Some(wire::timestamp(now));
            }
            pb.impact = Some(crate::impact::impact_of(
                &self.estate,
                &configured,
                m,
                &domain.action,
            ));
            if let Action::CreateFeature(def) = &domain.action {
                let mut feature = wire::feature_pb(def);
                feature.creator = domain.requester.clone();
                feature.create_time = pb.create_time;
                feature.sequence = pb.sequence;
                change.features.push((def.clone(), feature));
            }
            for s in &self.suppliers {
                let delivery = if s.id == supplier {
                    pb::Delivery {
                        supplier: format!("suppliers/{}", s.id),
                        state: if rejection.is_some() {
                            pb::delivery::State::Rejected
                        } else {
                            pb::delivery::State::Applied
                        }
                        .into(),
                        rejection_reason: rejection.clone().unwrap_or_default(),
                        apply_time: held_command.apply_time,
                        acknowledge_time: Some(wire::timestamp(now)),
                        ..Default::default()
                    }
                } else {
                    pb::Delivery {
                        supplier: format!("suppliers/{}", s.id),
                        state: pb::delivery::State::Pending.into(),
                        ..Default::default()
                    }
                };
                change
                    .deliveries
                    .push(((domain.sequence, s.id.clone()), delivery));
            }
            let cmd = Cmd {
                pb,
                domain,
                state: CommandState::Dispatched,
            };
            if listed.len() < MAX_LISTED {
                listed.push(summary(&cmd, rejection.is_some()));
            }
            change.commands.push(cmd);
        }
        if expected != held.applied + 1 {
            return Err(ApiError::failed_precondition(
                "RECOVERY_INCOMPLETE",
                format!(
                    "suppliers/{supplier} has applied sequence {} but listed commands only up to {}; try again or recover from another supplier",
                    held.applied,
                    expected - 1
                ),
            ));
        }
        if hash != held.history_hash {
            return Err(diverged(
                format!(
                    "the commands suppliers/{supplier} holds after sequence {last} do not continue this coordinator's history (its history hash at {} is {}, these commands give {hash}); it cannot be recovered by appending",
                    held.applied, held.history_hash
                ),
                &supplier,
            ));
        }
        let response = pb::RecoverCommandsResponse {
            supplier: format!("suppliers/{supplier}"),
            from_sequence: i64::try_from(last).unwrap_or(i64::MAX),
            to_sequence: i64::try_from(held.applied).unwrap_or(i64::MAX),
            command_count: i32::try_from(change.commands.len()).unwrap_or(i32::MAX),
            commands: listed,
            dry_run,
        };
        if dry_run {
            return Ok(response);
        }
        let mut status: SupplierStatus = m.supplier(&supplier).cloned().unwrap_or_default();
        status.pb.divergence = String::new();
        status.acked = held.applied;
        status.pb.applied_sequence = i64::try_from(held.applied).unwrap_or(i64::MAX);
        let rejected: Vec<(SupplierId, u64)> = change
            .commands
            .iter()
            .filter(|c| rejected_at(&change, c.domain.sequence, &supplier))
            .map(|c| (supplier.clone(), c.domain.sequence))
            .collect();
        // The recovered commands are not stored yet: the rejected ones are read from the change.
        change.rejections = crate::rejections::file(self.store().as_ref(), m, &change.commands, &rejected)
            .await
            .map_err(|e| ApiError::internal("reading the commands a supplier rejected", e))?;
        change.suppliers.push((supplier.clone(), status));
        let request = idem.map(|i| i.record(&response));
        self.commit(guard, change, request, Some(audit)).await?;
        info!(
            supplier = %supplier,
            from = last,
            to = held.applied,
            commands = response.command_count,
            "commands recovered into the log from a supplier"
        );
        Ok(response)
    }
}

fn rejected_at(change: &Change, sequence: u64, supplier: &SupplierId) -> bool {
    change
        .deliveries
        .iter()
        .any(|((s, id), d)| *s == sequence && id == supplier && d.state() == pb::delivery::State::Rejected)
}
