//! The gRPC handlers of the supplier, one file per service: [`toggle`] (ToggleService, with
//! the watch task in [`watcher`]), [`settings`] (PracticeSettingsService) and [`control`]
//! (ControlService, with the national opt-out register's two methods in [`register`]), and
//! [`flagd`] (the OpenFeature flagd evaluation protocol, v1 and v2). They
//! validate with `rollout_net::wire`, call the [`Engine`], and answer with `ApiError`s.

mod audit;
mod control;
mod flagd;
mod register;
mod settings;
mod toggle;
mod watcher;

use std::{collections::HashSet, pin::Pin, sync::Arc, time::SystemTime};

use prost::Message;
use rollout_core::{
    FeatureKey, OdsCode, Practice, Reason, State,
    audit::{AuditDraft, AuditOutcome},
};
use rollout_net::{
    ApiError, Caller, IdentityBudget, IdentitySlot, MAX_MESSAGE_BYTES, Page, PeerInfo, Refusals,
    limits::element_len, wire,
};
use rollout_proto::v1::{
    self as pb, control_service_server::ControlService,
    practice_settings_service_server::PracticeSettingsService, toggle_service_server::ToggleService,
};
use rollout_store::supplier::{OptOutRecord, Origin};
use tokio::sync::{broadcast, mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};
use tracing::{Span, instrument};

use crate::engine::{Answer, ChangeBatch, Engine, Serving, WatchStart, withdrawn};

/// Most names in one BatchGetPracticeFeatures.
pub const MAX_BATCH: usize = 10_000;
/// Answers per snapshot message of a watch stream.
const SNAPSHOT_CHUNK: usize = 1_000;

/// The supplier's handlers.
#[derive(Debug, Clone)]
pub struct Handlers {
    engine: Arc<Engine>,
    shutdown: watch::Receiver<bool>,
    /// Watch streams (WatchPracticeFeatures and flagd EventStream) per identity.
    watches: Arc<IdentityBudget>,
    /// Where refused calls are recorded (summarised in a flood).
    refusals: Refusals,
    /// What is wrong with the server's TLS files, for SyncState.
    tls_warnings: rollout_net::tls::TlsWarnings,
}

impl Handlers {
    /// Handlers over `engine`, each identity holding at most `watches_per_identity`
    /// WatchPracticeFeatures streams, recording refusals through `refusals`; watch streams end
    /// when `shutdown` turns true.
    pub fn new(
        engine: Arc<Engine>,
        shutdown: watch::Receiver<bool>,
        watches_per_identity: usize,
        refusals: Refusals,
    ) -> Self {
        Handlers {
            engine,
            shutdown,
            watches: Arc::new(IdentityBudget::new(
                "watch streams (WatchPracticeFeatures and flagd EventStream)",
                "TOO_MANY_WATCH_STREAMS",
                "--max-watches-per-identity",
                watches_per_identity,
            )),
            refusals,
            tls_warnings: Default::default(),
        }
    }

    /// Reports `warnings` in SyncState (see [`rollout_net::tls::TlsWarnings`]).
    pub fn with_tls_warnings(mut self, warnings: rollout_net::tls::TlsWarnings) -> Self {
        self.tls_warnings = warnings;
        self
    }

    /// Runs a mutating call, recording a refusal in the audit log.
    async fn audited<T>(
        &self,
        draft: AuditDraft,
        call: impl Future<Output = Result<T, ApiError>>,
    ) -> Result<Response<T>, Status> {
        rollout_net::audited(draft, call, |reason, refused| {
            self.refusals.refused(reason, refused)
        })
        .await
    }
}

/// The audit draft of a call: who, what, on what, and the request's id.
fn draft<T>(req: &Request<T>, method: &str, target: &str, request_id: &str) -> AuditDraft {
    AuditDraft {
        identity: Caller::of(req)
            .map(|c| c.identity.to_string())
            .unwrap_or_else(|_| "-".into()),
        action: method.to_owned(),
        target: rollout_core::audit::printable(target, 200),
        outcome: AuditOutcome::Accepted,
        reason: String::new(),
        request_id: rollout_core::audit::printable(request_id, 64),
        peer: rollout_net::refusals::peer_ip(req.extensions().get::<PeerInfo>()),
        ..AuditDraft::default()
    }
}

fn practice<'a>(
    s: &'a Serving,
    ods: OdsCode,
    supplier: &rollout_core::SupplierId,
) -> Result<&'a Practice, ApiError> {
    s.estate.get(&ods).ok_or_else(|| {
        ApiError::not_found("PRACTICE_NOT_FOUND", format!("practices/{ods}"))
            .with_metadata("supplier", supplier.to_string())
    })
}

fn feature_not_found(key: &FeatureKey) -> ApiError {
    ApiError::not_found("FEATURE_NOT_FOUND", format!("features/{key}"))
}

/// The explained (or plain) answer for one practice, counted in `served`.
fn answer(
    (s, served): (&Serving, &crate::metrics::Evaluations),
    p: &Practice,
    key: &FeatureKey,
    ctx: &rollout_core::Context,
    explain: bool,
) -> Result<pb::PracticeFeature, ApiError> {
    let e = s
        .evaluate(p, key, ctx, explain)
        .ok_or_else(|| feature_not_found(key))?;
    served.served(e.state);
    let mut out = wire::evaluation_pb(wire::practice_feature_resource(&p.ods, key), &e);
    out.practice = Some(wire::practice_pb(p));
    out.applied_sequence = i64::try_from(s.book.applied_sequence()).unwrap_or(i64::MAX);
    out.version = i64::try_from(s.version).unwrap_or(i64::MAX);
    out.evaluate_time = Some(wire::timestamp(ctx.now));
    Ok(out)
}

/// RESOURCE_EXHAUSTED `RESPONSE_TOO_LARGE`: the answers to a batch of `count` names would be
/// over the message limit from the name at index `at` on.
fn response_too_large(count: usize, at: usize, explain: bool) -> ApiError {
    let less = if explain {
        "ask for fewer names at a time, or without explain"
    } else {
        "ask for fewer names at a time"
    };
    ApiError::resource_exhausted(
        "RESPONSE_TOO_LARGE",
        format!(
            "the answers to these {count} names would be larger than one message may be \
             ({MAX_MESSAGE_BYTES} bytes, 4 MiB); the first {at} fit: {less}"
        ),
    )
    .with_metadata("limit_bytes", MAX_MESSAGE_BYTES.to_string())
    .with_metadata("names_that_fit", at.to_string())
}

fn opt_out_pb(r: &OptOutRecord) -> pb::PracticeOptOut {
    let o = &r.opt_out;
    let w = r.withdrawal.as_ref();
    pb::PracticeOptOut {
        name: format!(
            "{}/optOut",
            wire::practice_feature_resource(&o.practice, &o.feature)
        ),
        reason: o.reason.clone(),
        source: o.source.clone(),
        recorded_by: o.recorded_by.clone(),
        create_time: Some(wire::timestamp(o.recorded_at)),
        update_time: Some(wire::timestamp(r.updated_at)),
        withdrawn: w.is_some(),
        withdrawn_by: w.map(|w| w.by.clone()).unwrap_or_default(),
        withdraw_time: w.map(|w| wire::timestamp(w.at)),
        withdraw_reason: w.map(|w| w.reason.clone()).unwrap_or_default(),
        origin: match r.origin {
            Origin::Recorded => pb::practice_opt_out::Origin::Recorded,
            Origin::Restored(_) => pb::practice_opt_out::Origin::Restored,
            Origin::Transferred(_) => pb::practice_opt_out::Origin::Transferred,
        }
        .into(),
        origin_supplier: match &r.origin {
            Origin::Recorded => String::new(),
            Origin::Restored(s) | Origin::Transferred(s) => format!("suppliers/{s}"),
        },
        change: version_i64(r.change),
        supplier: String::new(),
    }
}

fn version_i64(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

const SETTINGS: &str = "/nhs.gprollout.v1.PracticeSettingsService";
