//! One delivery task per supplier: heartbeats through GetSyncState (each checking the
//! supplier's history against the log), ordered ApplyCommand, a snapshot resync (ReplaceRules,
//! in chunks) when the supplier has lost state or is far behind, and retries with exponential
//! backoff and full jitter. A slow or dead supplier only ever delays its own task. A supplier
//! that holds commands the log does not is never sent anything but heartbeats. Between syncs the
//! task holds the supplier's WatchSyncState stream open ([`StateWatch`]), so that a supplier
//! that restarts (perhaps on an empty store) is synchronised as soon as it is back, not at the
//! next heartbeat. After every heartbeat, before anything else is sent, the national opt-out
//! register is brought up to date with the supplier ([`RegisterLink`]).

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use rollout_core::SupplierId;
use rollout_net::MessageLimits;
use rollout_proto::v1::{self as pb, control_service_client::ControlServiceClient};
use tokio::sync::watch;
use tonic::{Code, transport::Channel};
use tracing::{Instrument, info, info_span, warn};

use crate::{
    answers::{self, Fault},
    coordinator::Core,
    failure::{Cause, Failure},
    metrics::Timed,
    register::RegisterLink,
    state_watch::StateWatch,
    sync::SyncCheck,
};

/// The first retry delay; it doubles on each failure up to [`MAX_BACKOFF`]. Short, so that a
/// supplier found gone (its state watch ended) and back within about 100 ms is reached within
/// tens of milliseconds of its return; the doubling soon spaces out attempts at one that stays
/// down.
const MIN_BACKOFF: Duration = Duration::from_millis(20);
/// The longest retry delay.
const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// Deadline for one call to a supplier.
const CALL_TIMEOUT: Duration = Duration::from_secs(10);
/// A supplier more than this many commands behind gets a snapshot rather than one
/// ApplyCommand per command.
const SNAPSHOT_AFTER: u64 = 64;

/// Exponential backoff with full jitter: a delay drawn uniformly from zero to the current cap,
/// so that many coordinators (or many suppliers coming back) do not retry in lockstep.
#[derive(Debug)]
pub(crate) struct Backoff {
    cap: Duration,
}

impl Backoff {
    pub(crate) fn new() -> Self {
        Backoff { cap: MIN_BACKOFF }
    }

    pub(crate) fn next(&mut self) -> Duration {
        let delay = self.cap.mul_f64(fastrand::f64()).max(Duration::from_millis(10));
        self.cap = (self.cap * 2).min(MAX_BACKOFF);
        delay
    }

    pub(crate) fn reset(&mut self) {
        self.cap = MIN_BACKOFF;
    }
}

/// What delivery knows of its supplier after a sync.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Known {
    /// In step with the log, at this applied sequence.
    Applied(u64),
    /// Diverged from the log (nothing is sent to it): what it reported.
    Diverged {
        /// Its applied sequence.
        applied: i64,
        /// Its history hash there.
        history_hash: Vec<u8>,
    },
}

/// Runs until `stop` turns true.
pub async fn run(
    core: Arc<Core>,
    supplier: SupplierId,
    channel: Channel,
    heartbeat: Duration,
    mut stop: watch::Receiver<bool>,
) {
    let span = info_span!("delivery", supplier = %supplier);
    async move {
        let mut client = ControlServiceClient::new(channel).with_message_limits();
        let mut target = core.target.subscribe();
        let mut backoff = Backoff::new();
        let mut watch = StateWatch::new();
        let mut register = RegisterLink::default();
        // The supplier's applied sequence as last learned; `None` means ask it first.
        let mut known: Option<u64> = None;
        loop {
            // A fault is cleared by a whole sync begun after it: asked its state, and answered
            // sensibly up to the latest command (a fault found meanwhile, say by the register,
            // stands).
            let (asked, began) = (known.is_none(), std::time::SystemTime::now());
            let result = sync(&core, &supplier, &mut client, &mut register, known).await;
            core.recorded
                .delivery_pass(&supplier, result.as_ref().err().map(|f| f.cause));
            match result {
                Ok(now) => {
                    // A diverged supplier is asked again at every heartbeat: its answer is the
                    // contact its fail-closed features need, and it is how the coordinator sees
                    // that a recovery has brought the histories together.
                    known = match now {
                        Known::Applied(applied) => {
                            if asked && applied >= *core.target.borrow() {
                                core.answered_sensibly(&supplier, began).await;
                            }
                            Some(applied)
                        }
                        Known::Diverged { .. } => None,
                    };
                    backoff.reset();
                    tokio::select! {
                        _ = tokio::time::sleep(heartbeat) => known = None,
                        _ = target.changed() => {}
                        why = watch.changed(&mut client, &now, &register) => {
                            info!(reason = %why, "the supplier may have changed: synchronising now");
                            known = None;
                        }
                        _ = stop.wait_for(|s| *s) => return,
                    }
                }
                Err(error) => {
                    known = None;
                    watch.supplier_lost();
                    register.supplier_lost();
                    let delay = backoff.next();
                    warn!(%error, cause = error.cause.as_str(), retry_in = ?delay, "supplier not reached");
                    core.record_error(&supplier, &error.to_string()).await;
                    tokio::select! {
                        _ = tokio::time::sleep(delay) => {}
                        _ = stop.wait_for(|s| *s) => return,
                    }
                }
            }
        }
    }
    .instrument(span)
    .await
}

/// A request with the deadline of one call to a supplier.
pub(crate) fn call<T>(msg: T) -> tonic::Request<T> {
    let mut req = tonic::Request::new(msg);
    req.set_timeout(CALL_TIMEOUT);
    req
}

/// Brings the supplier up to the current target. With `known`, trusts it as the supplier's
/// applied sequence (a wrong guess is answered FAILED_PRECONDITION); otherwise asks
/// GetSyncState, which is also the heartbeat, checks the supplier's history against the log,
/// and brings the opt-out register up to date with it. A supplier that lost state, or is far
/// behind, gets a snapshot first; the rest go one command at a time, each carrying the history
/// hash before it. Returns the supplier's applied sequence, or what it reported if it has
/// diverged from the log (nothing is sent to it, opt-outs included).
async fn sync(
    core: &Core,
    supplier: &SupplierId,
    client: &mut ControlServiceClient<Channel>,
    register: &mut RegisterLink,
    known: Option<u64>,
) -> Result<Known, Failure> {
    let target = *core.target.borrow();
    let mut applied = match known {
        Some(a) => a,
        None => {
            let (state, check) = heartbeat(core, supplier, client, target).await?;
            if check.diverged {
                return Ok(Known::Diverged {
                    applied: state.applied_sequence,
                    history_hash: state.history_hash,
                });
            }
            let applied = u64::try_from(state.applied_sequence).unwrap_or(0);
            keep_register(core, supplier, client, register, &state).await?;
            if applied > check.acked {
                crate::gap::settle(core, supplier, client, check.acked, applied).await?;
            }
            if applied < check.acked || target.saturating_sub(applied) > SNAPSHOT_AFTER {
                if applied < check.acked {
                    warn!(
                        applied,
                        acked = check.acked,
                        target,
                        "supplier has lost state it acknowledged; resynchronising with a snapshot"
                    );
                }
                let replaced = replace(core, supplier, client, applied, state.frozen).await?;
                if replaced != applied {
                    // The counts it reported were of the state the snapshot replaced: ask
                    // again, so that the supplier view is right now, not at the next heartbeat.
                    heartbeat(core, supplier, client, target).await?;
                }
                replaced
            } else {
                applied
            }
        }
    };
    while applied < target {
        let sequence = applied + 1;
        let Some((command, previous)) = core.sequenced(sequence).await else {
            return Err(Failure::new(
                Cause::CoordinatorStore,
                format!("sequence {sequence} is not in the command log"),
            ));
        };
        core.record_attempt(supplier, sequence).await;
        let timed = Timed::of(&command);
        let request = pb::ApplyCommandRequest {
            command: Some(command),
            previous_history_hash: previous.as_bytes().to_vec(),
            target_sequence: i64::try_from(target).unwrap_or(i64::MAX),
        };
        match apply(core, supplier, client, sequence, request).await {
            Ok(resp) => {
                // The answer is the supplier's word, for the sequence sent and no other: an
                // answer that cannot be true is recorded as the supplier's fault, not as an
                // outcome.
                let outcome = match answers::applied(resp.get_ref(), sequence, target) {
                    Ok(outcome) => outcome,
                    Err(fault) => return Err(faulty(core, supplier, fault).await),
                };
                if let Some(reason) = &outcome.1 {
                    warn!(sequence, reason, "supplier rejected the command");
                }
                applied = sequence;
                let apply_time = outcome.2.and_then(|t| std::time::SystemTime::try_from(t).ok());
                let first = core
                    .record_applied(supplier, vec![outcome], applied)
                    .await
                    .map_err(Failure::store)?;
                if let Some(timed) = timed.filter(|_| !first.is_empty()) {
                    core.recorded.propagated(supplier, timed, apply_time);
                }
            }
            Err(status) if status.code() == Code::FailedPrecondition => {
                // Out of step (a gap, or a history that does not match): ask its state again.
                return Err(Failure::call(&status).context("supplier is out of step"));
            }
            Err(status) => return Err(Failure::call(&status)),
        }
    }
    Ok(Known::Applied(applied))
}

/// Sends `request`, the command at `sequence`, to the supplier in a `dispatch` span
/// (docs/OBSERVABILITY.md, "Traces"): a child of the call that dispatched the command while this
/// replica still holds that trace ([`crate::traces`]), else the start of a trace of its own. The
/// call carries the span as W3C `traceparent` and the command's id in
/// [`rollout_net::trace::COMMAND_ID_HEADER`], with the deadline of one call to a supplier.
async fn apply(
    core: &Core,
    supplier: &SupplierId,
    client: &mut ControlServiceClient<Channel>,
    sequence: u64,
    request: pb::ApplyCommandRequest,
) -> Result<tonic::Response<pb::ApplyCommandResponse>, tonic::Status> {
    let id = request
        .command
        .as_ref()
        .and_then(|c| c.name.strip_prefix("commands/"))
        .unwrap_or_default()
        .to_owned();
    let span = tracing::info_span!(
        target: rollout_net::trace::TARGET,
        "dispatch",
        otel.kind = "client",
        gprollout.supplier = %supplier,
        gprollout.sequence = sequence,
        gprollout.command_id = %id,
    );
    if let Some(parent) = core.traces.parent(sequence, &id) {
        parent.adopt(&span);
    }
    let mut request = call(request);
    rollout_net::trace::inject(&span, request.metadata_mut());
    if let Some(Ok(value)) = (!id.is_empty()).then(|| id.parse()) {
        request
            .metadata_mut()
            .insert(rollout_net::trace::COMMAND_ID_HEADER, value);
    }
    let answer = client.apply_command(request).instrument(span.clone()).await;
    rollout_net::trace::outcome(&span, &answer);
    if answer.is_ok() {
        core.traces.answered(sequence, supplier);
    }
    answer
}

/// Brings the opt-out register up to date with the supplier that reported `state`, before
/// anything else is sent to it. A failure is logged and shown in the supplier view, and
/// delivery goes on, except when the supplier holds no rule (applied sequence 0: every practice
/// off) and its own opt-outs, owed back after it lost its store, could not be restored: then
/// nothing is sent until they are, since a rule back before its opt-outs could switch an
/// opted-out practice on.
async fn keep_register(
    core: &Core,
    supplier: &SupplierId,
    client: &mut ControlServiceClient<Channel>,
    register: &mut RegisterLink,
    state: &pb::SyncState,
) -> Result<(), Failure> {
    let Err(error) = register.sync(core, supplier, client, state).await else {
        return Ok(());
    };
    if error.restore_owed && state.applied_sequence == 0 {
        return Err(Failure::new(
            Cause::Register,
            format!("opt-out register: {error}; no rule is sent until its opt-outs are back"),
        ));
    }
    warn!(%error, "opt-out register not brought up to date with the supplier; delivering commands all the same");
    core.record_error(supplier, &format!("opt-out register: {error}"))
        .await;
    Ok(())
}

/// Asks the supplier's state (GetSyncState, which is also the heartbeat: it carries the
/// coordinator's `target` sequence) and records it, with the check of its history against the
/// log.
async fn heartbeat(
    core: &Core,
    supplier: &SupplierId,
    client: &mut ControlServiceClient<Channel>,
    target: u64,
) -> Result<(pb::SyncState, SyncCheck), Failure> {
    let state = client
        .get_sync_state(call(pb::GetSyncStateRequest {
            target_sequence: i64::try_from(target).unwrap_or(i64::MAX),
        }))
        .await
        .map_err(|s| Failure::call(&s))?
        .into_inner();
    let state = match core.checked_sync_state(supplier, state).await {
        Ok(state) => state,
        Err(fault) => return Err(Failure::new(Cause::SupplierFault, fault.to_string())),
    };
    let check = core.record_sync(supplier, &state).await.map_err(Failure::store)?;
    Ok((state, check))
}

/// Sends a snapshot of the effective state in chunks and records the outcomes it stands for.
/// Returns the supplier's applied sequence afterwards (unchanged if a snapshot would bring it
/// no further).
async fn replace(
    core: &Core,
    supplier: &SupplierId,
    client: &mut ControlServiceClient<Channel>,
    applied: u64,
    frozen: bool,
) -> Result<u64, Failure> {
    let started = Instant::now();
    let snapshot = core
        .snapshot(supplier, applied, frozen)
        .await
        .map_err(|e| Failure::new(Cause::CoordinatorStore, e))?;
    let Some(snapshot) = snapshot else {
        return Ok(applied);
    };
    let sequence = u64::try_from(snapshot.header.sequence).unwrap_or(0);
    let count = snapshot.chunks.len();
    let commands: usize = snapshot.chunks.iter().map(Vec::len).sum();
    // The timed commands it carries (the halts in force, the feature definitions), whose
    // propagation is observed once the supplier has them.
    let timed: std::collections::BTreeMap<u64, Timed> = snapshot
        .chunks
        .iter()
        .flatten()
        .filter_map(|c| Some((u64::try_from(c.sequence).ok()?, Timed::of(c)?)))
        .collect();
    let mut header = Some(snapshot.header);
    let requests: Vec<pb::ReplaceRulesRequest> = snapshot
        .chunks
        .into_iter()
        .enumerate()
        .map(|(i, commands)| pb::ReplaceRulesRequest {
            header: header.take(),
            commands,
            last: i + 1 == count,
        })
        .collect();
    // One deadline for the whole stream and the supplier's install: the usual one, and a
    // second more for each chunk of up to 1 MB (a supplier takes at most 1,024), so that a
    // large state on a slow link is not cut off, and rebuilt, on every attempt.
    let per_chunk = Duration::from_secs(u64::try_from(count.min(1_024)).unwrap_or(1_024));
    let mut request = tonic::Request::new(tokio_stream::iter(requests));
    request.set_timeout(CALL_TIMEOUT + per_chunk);
    let resp = client
        .replace_rules(request)
        .await
        .map_err(|s| Failure::call(&s))?
        .into_inner();
    let apply_time = match answers::replaced(&resp, sequence) {
        Ok(at) => at,
        Err(fault) => return Err(faulty(core, supplier, fault).await),
    };
    // Every sequence the snapshot stands for is applied there, but those it skips (the
    // supplier's rejections, which stay REJECTED).
    let outcomes = (applied + 1..=sequence)
        .filter(|s| !snapshot.rejected.contains(s))
        .map(|s| (s, None, apply_time))
        .collect();
    let first = core
        .record_applied(supplier, outcomes, sequence)
        .await
        .map_err(Failure::store)?;
    let apply_time = apply_time.and_then(|t| std::time::SystemTime::try_from(t).ok());
    for s in first {
        if let Some(t) = timed.get(&s) {
            core.recorded.propagated(supplier, *t, apply_time);
        }
    }
    info!(
        from = applied,
        to = sequence,
        commands,
        chunks = count,
        elapsed_ms = started.elapsed().as_millis() as u64,
        "supplier resynchronised with a snapshot"
    );
    Ok(sequence)
}

/// Records `fault` as the supplier's and returns it as delivery's error: the task backs off
/// and tries again, as after any failure.
pub(crate) async fn faulty(core: &Core, supplier: &SupplierId, fault: Fault) -> Failure {
    core.record_fault(supplier, &fault).await;
    Failure::new(Cause::SupplierFault, fault.to_string())
}
