//! One delivery task per supplier: heartbeats through GetSyncState, ordered ApplyCommand, a
//! full resync with ReplaceRules on a gap or when the supplier has lost state, and retries with
//! exponential backoff and full jitter. A slow or dead supplier only ever delays its own task.

use std::{sync::Arc, time::Duration};

use rollout_core::SupplierId;
use rollout_net::MessageLimits;
use rollout_proto::v1::{self as pb, control_service_client::ControlServiceClient};
use tokio::sync::watch;
use tonic::{Code, transport::Channel};
use tracing::{Instrument, info, info_span, warn};

use crate::core::Core;

/// The first retry delay; it doubles on each failure up to [`MAX_BACKOFF`].
const MIN_BACKOFF: Duration = Duration::from_millis(100);
/// The longest retry delay.
const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// Deadline for one call to a supplier.
const CALL_TIMEOUT: Duration = Duration::from_secs(10);

/// Exponential backoff with full jitter: a delay drawn uniformly from zero to the current cap,
/// so that many coordinators (or many suppliers coming back) do not retry in lockstep.
#[derive(Debug)]
struct Backoff {
    cap: Duration,
}

impl Backoff {
    fn new() -> Self {
        Backoff { cap: MIN_BACKOFF }
    }

    fn next(&mut self) -> Duration {
        let delay = self.cap.mul_f64(fastrand::f64()).max(Duration::from_millis(10));
        self.cap = (self.cap * 2).min(MAX_BACKOFF);
        delay
    }

    fn reset(&mut self) {
        self.cap = MIN_BACKOFF;
    }
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
        // The supplier's applied sequence as last learned; `None` means ask it first.
        let mut known: Option<u64> = None;
        loop {
            match sync(&core, &supplier, &mut client, known).await {
                Ok(applied) => {
                    known = Some(applied);
                    backoff.reset();
                    tokio::select! {
                        _ = tokio::time::sleep(heartbeat) => known = None,
                        _ = target.changed() => {}
                        _ = stop.wait_for(|s| *s) => return,
                    }
                }
                Err(error) => {
                    known = None;
                    let delay = backoff.next();
                    warn!(%error, retry_in = ?delay, "supplier not reached");
                    core.record_error(&supplier, &error).await;
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

fn call<T>(msg: T) -> tonic::Request<T> {
    let mut req = tonic::Request::new(msg);
    req.set_timeout(CALL_TIMEOUT);
    req
}

/// Brings the supplier up to the current target. With `known`, trusts it as the supplier's
/// applied sequence (a wrong guess is answered FAILED_PRECONDITION); otherwise asks
/// GetSyncState, which is also the heartbeat. Returns the supplier's applied sequence.
async fn sync(
    core: &Core,
    supplier: &SupplierId,
    client: &mut ControlServiceClient<Channel>,
    known: Option<u64>,
) -> Result<u64, String> {
    let target = *core.target.borrow();
    let mut applied = match known {
        Some(a) => a,
        None => {
            let state = client
                .get_sync_state(call(pb::GetSyncStateRequest {
                    target_sequence: i64::try_from(target).unwrap_or(i64::MAX),
                }))
                .await
                .map_err(|s| describe(&s))?
                .into_inner();
            core.record_sync(supplier, &state)
                .await
                .map_err(|e| e.to_string())?;
            let applied = u64::try_from(state.applied_sequence).unwrap_or(0);
            let acked = core.supplier_status(supplier).await.acked;
            if applied < acked || applied > target {
                warn!(
                    applied,
                    acked, target, "supplier state does not match what it acknowledged; resynchronising"
                );
                return replace(core, supplier, client).await;
            }
            applied
        }
    };
    while applied < target {
        let sequence = applied + 1;
        let Some(command) = core.sequenced(sequence).await else {
            return Err(format!("sequence {sequence} is not in the command log"));
        };
        core.record_attempt(supplier, sequence).await;
        match client
            .apply_command(call(pb::ApplyCommandRequest {
                command: Some(command),
            }))
            .await
        {
            Ok(resp) => {
                let resp = resp.into_inner();
                let rejection = (resp.outcome() == pb::apply_command_response::Outcome::Rejected)
                    .then(|| resp.rejection_reason.clone());
                if let Some(reason) = &rejection {
                    warn!(sequence, reason, "supplier rejected the command");
                }
                applied = u64::try_from(resp.applied_sequence).unwrap_or(sequence);
                core.record_applied(supplier, vec![(sequence, rejection, resp.apply_time)], applied)
                    .await
                    .map_err(|e| e.to_string())?;
            }
            Err(status) if status.code() == Code::FailedPrecondition => {
                warn!(sequence, error = %status.message(), "supplier is out of step; resynchronising");
                return replace(core, supplier, client).await;
            }
            Err(status) => return Err(describe(&status)),
        }
    }
    Ok(applied)
}

/// Sends the full rule set (every command to the target) and records every outcome.
async fn replace(
    core: &Core,
    supplier: &SupplierId,
    client: &mut ControlServiceClient<Channel>,
) -> Result<u64, String> {
    let (sequence, commands, rejected_sequences) = core.world(supplier).await;
    let resp = client
        .replace_rules(call(pb::ReplaceRulesRequest {
            sequence: i64::try_from(sequence).unwrap_or(i64::MAX),
            commands,
            rejected_sequences,
        }))
        .await
        .map_err(|s| describe(&s))?
        .into_inner();
    let applied = u64::try_from(resp.applied_sequence).unwrap_or(0);
    let outcomes = (1..=applied)
        .map(|s| {
            let rejection = resp
                .rejections
                .iter()
                .find(|r| u64::try_from(r.sequence).ok() == Some(s))
                .map(|r| r.reason.clone());
            (s, rejection, resp.apply_time)
        })
        .collect();
    core.record_applied(supplier, outcomes, applied)
        .await
        .map_err(|e| e.to_string())?;
    info!(applied, "supplier resynchronised with ReplaceRules");
    Ok(applied)
}

/// The status with its chain of causes (a refused handshake says why, not just "transport
/// error").
fn describe(status: &tonic::Status) -> String {
    let mut text = format!("{:?}: {}", status.code(), status.message());
    let mut source = std::error::Error::source(status);
    while let Some(e) = source {
        text.push_str(": ");
        text.push_str(&e.to_string());
        source = e.source();
    }
    text
}
