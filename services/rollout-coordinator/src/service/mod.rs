//! The CoordinatorService handlers: the writes in `writes.rs`, each run here in its exported
//! span (`rollout_net::call_span!`, a child of the caller's W3C trace context if it sends one),
//! the reads in `read.rs`, WatchCommand (each
//! command's view computed once per change for all its watchers) in `views.rs`, VerifyCommand
//! in `verify.rs`, GetPracticeStatus in `practice_status.rs`, the national opt-out register
//! (ListOptOuts) in `register.rs`. WatchCommand and VerifyCommand are held to budgets per
//! identity.

use std::{collections::BTreeMap, pin::Pin, sync::Arc};

use arc_swap::ArcSwap;
use prost::Message;
use rollout_core::{
    Action, Scope, SupplierId,
    audit::{AuditDraft, AuditOutcome},
};
use rollout_net::{ApiError, Caller, IdentityBudget, MessageLimits, PeerInfo, Refusals, RolePolicy, wire};
use rollout_proto::v1::{
    self as pb, coordinator_service_server::CoordinatorService, toggle_service_client::ToggleServiceClient,
};
use tokio::sync::watch;
use tonic::{Request, Response, Status, metadata::MetadataMap, transport::Channel};
use tracing::Span;

use crate::{
    coordinator::{Core, Idempotency, Who},
    scope_check::Allowances,
};

mod practice_status;
mod read;
mod register;
mod verify;
mod views;
mod writes;

pub(crate) use views::CommandViews;

/// The WatchCommand stream.
pub(super) type WatchStream =
    Pin<Box<dyn tokio_stream::Stream<Item = Result<pb::WatchCommandResponse, Status>> + Send>>;

const SERVICE: &str = "/nhs.gprollout.v1.CoordinatorService";

/// The coordinator's handlers.
#[derive(Debug, Clone)]
pub struct Handlers {
    core: Arc<Core>,
    /// A channel to each supplier, as the coordinator.
    channels: Arc<BTreeMap<SupplierId, Channel>>,
    /// Turns true when the server shuts down: WatchCommand streams end.
    shutdown: watch::Receiver<bool>,
    /// The watched commands' views, shared by their watchers.
    views: Arc<CommandViews>,
    /// WatchCommand streams per identity.
    watches: Arc<IdentityBudget>,
    /// VerifyCommand calls in flight per identity.
    verifies: Arc<IdentityBudget>,
    /// The role policy, for the person behind a command's requester (four eyes).
    policy: Arc<ArcSwap<RolePolicy>>,
    /// Where refused calls are recorded (summarised in a flood).
    refusals: Refusals,
    /// What is wrong with this process's TLS files, for ListSuppliers.
    tls_warnings: rollout_net::tls::TlsWarnings,
}

impl Handlers {
    /// Handlers over `core`, reaching suppliers through `channels`, within `budgets`;
    /// WatchCommand streams end when `shutdown` turns true; `policy` names the person behind
    /// an identity; refusals are recorded through `refusals`.
    pub fn new(
        core: Arc<Core>,
        channels: BTreeMap<SupplierId, Channel>,
        shutdown: watch::Receiver<bool>,
        budgets: &crate::Budgets,
        policy: Arc<ArcSwap<RolePolicy>>,
        refusals: Refusals,
    ) -> Self {
        Handlers {
            views: CommandViews::new(core.clone()),
            core,
            channels: Arc::new(channels),
            shutdown,
            watches: Arc::new(IdentityBudget::new(
                "WatchCommand streams",
                "TOO_MANY_WATCH_STREAMS",
                "--max-watches-per-identity",
                budgets.watches_per_identity,
            )),
            verifies: Arc::new(IdentityBudget::new(
                "VerifyCommand calls",
                "TOO_MANY_CONCURRENT_CALLS",
                "--max-verifies-per-identity",
                budgets.verifies_per_identity,
            )),
            policy,
            refusals,
            tls_warnings: Default::default(),
        }
    }

    /// Reports `warnings` in ListSuppliers (see [`rollout_net::tls::TlsWarnings`]).
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

    /// A halt, resume or go-live: validates (the action last, after the feature name),
    /// honours `request_id`, and audits a refusal. A dry run is neither saved nor audited.
    #[allow(clippy::too_many_arguments)]
    async fn issue(
        &self,
        who: Result<Who, ApiError>,
        audit: AuditDraft,
        name: &str,
        reason: &str,
        dry_run: bool,
        idem: Result<Option<Idempotency>, ApiError>,
        action: impl FnOnce() -> Result<Action, ApiError>,
    ) -> Result<Response<pb::Command>, Status> {
        let call = async {
            let who = who?;
            let key = wire::feature_name("name", name)?;
            Span::current().record("gprollout.feature", key.as_str());
            let action = action()?;
            let reason = wire::text("reason", reason)?;
            let idem = idem?;
            if let Some(bytes) = self.core.recall(idem.as_ref()).await? {
                return decode(&bytes);
            }
            self.core
                .issue(&who, key, action, reason, dry_run, idem, audit.clone())
                .await
        };
        if dry_run {
            return Ok(Response::new(call.await?));
        }
        self.audited(audit.clone(), call).await
    }

    /// The request's `scope`, valid on the wire and naming what the national estate knows
    /// (see [`crate::scope_check`]).
    fn known_scope(&self, scope: Option<&pb::Scope>, allow: Allowances) -> Result<Scope, ApiError> {
        if let Some(pb::scope::Target::Region(r)) = scope.and_then(|s| s.target.as_ref()) {
            crate::scope_check::known_region(&self.core.estate, "scope", r)?;
        }
        let scope = wire::scope("scope", scope)?;
        let suppliers = self.core.supplier_ids();
        crate::scope_check::check(&self.core.estate, &suppliers, "scope", &scope, allow)?;
        Ok(scope)
    }

    fn toggle(&self, supplier: &SupplierId) -> Result<ToggleServiceClient<Channel>, ApiError> {
        self.channels
            .get(supplier)
            .cloned()
            .map(|c| ToggleServiceClient::new(c).with_message_limits())
            .ok_or_else(|| ApiError::not_found("SUPPLIER_NOT_FOUND", format!("suppliers/{supplier}")))
    }
}

fn identity<T>(req: &Request<T>) -> Result<String, ApiError> {
    Caller::of(req).map(|c| c.identity.to_string())
}

/// The caller: its identity and the person the role policy names behind it.
fn who<T>(req: &Request<T>) -> Result<Who, ApiError> {
    Caller::of(req).map(|c| Who {
        identity: c.identity.to_string(),
        person: c.person.as_deref().map(str::to_owned),
    })
}

fn draft<T>(req: &Request<T>, method: &str, target: &str, request_id: &str, reason: &str) -> AuditDraft {
    AuditDraft {
        // The identity, and the person behind it when the policy names one.
        identity: Caller::of(req).map_or_else(|_| "-".into(), Caller::audited),
        action: format!("{SERVICE}/{method}"),
        target: rollout_core::audit::printable(target, 200),
        outcome: AuditOutcome::Accepted,
        reason: rollout_core::audit::printable(reason, 1_000),
        request_id: rollout_core::audit::printable(request_id, 64),
        peer: rollout_net::refusals::peer_ip(req.extensions().get::<PeerInfo>()),
        ..AuditDraft::default()
    }
}

/// The idempotency key of a request (its caller's identity and its request id), with the
/// fingerprint of the request without its id.
fn idempotency<T>(
    req: &Request<T>,
    method: &str,
    request_id: &str,
    body: &impl Message,
) -> Result<Option<Idempotency>, ApiError> {
    let Some(request_id) = wire::request_id("request_id", request_id)? else {
        return Ok(None);
    };
    Ok(Some(Idempotency {
        identity: identity(req)?,
        request_id,
        fingerprint: wire::request_fingerprint(method, body),
    }))
}

fn decode<M: Message + Default>(bytes: &[u8]) -> Result<M, ApiError> {
    M::decode(bytes).map_err(|e| ApiError::internal("decoding a stored response", e))
}

/// Runs a call that answers with a command in `span` (of `rollout_net::call_span!`, see
/// [`rollout_net::trace::traced`]), recording the command's id and, once dispatched, its
/// sequence on the span.
async fn command_call(
    span: Span,
    metadata: &MetadataMap,
    call: impl Future<Output = Result<Response<pb::Command>, Status>>,
) -> Result<Response<pb::Command>, Status> {
    let traced = span.clone();
    rollout_net::trace::traced(span, metadata, async move {
        let result = call.await;
        if let Ok(answer) = &result {
            let c = answer.get_ref();
            if let Some(id) = c.name.strip_prefix("commands/") {
                traced.record("gprollout.command_id", id);
            }
            if c.sequence > 0 {
                traced.record("gprollout.sequence", c.sequence);
            }
        }
        result
    })
    .await
}

#[tonic::async_trait]
impl CoordinatorService for Handlers {
    async fn redeliver_command(
        &self,
        req: Request<pb::RedeliverCommandRequest>,
    ) -> Result<Response<pb::Command>, Status> {
        let span = rollout_net::call_span!("RedeliverCommand");
        command_call(span, req.metadata(), self.redeliver(&req)).await
    }

    async fn list_opt_outs(
        &self,
        req: Request<pb::ListOptOutsRequest>,
    ) -> Result<Response<pb::ListOptOutsResponse>, Status> {
        register::list_opt_outs(self, req).await
    }

    async fn create_feature(
        &self,
        req: Request<pb::CreateFeatureRequest>,
    ) -> Result<Response<pb::Feature>, Status> {
        let span = rollout_net::call_span!("CreateFeature");
        let traced = span.clone();
        let call = async {
            let answer = self.create(&req).await?;
            // The definition's command id is not in the answer; its dispatch spans carry it.
            traced.record("gprollout.sequence", answer.get_ref().sequence);
            Ok(answer)
        };
        rollout_net::trace::traced(span, req.metadata(), call).await
    }

    async fn get_feature(
        &self,
        req: Request<pb::GetFeatureRequest>,
    ) -> Result<Response<pb::Feature>, Status> {
        read::get_feature(self, req).await
    }

    async fn list_features(
        &self,
        req: Request<pb::ListFeaturesRequest>,
    ) -> Result<Response<pb::ListFeaturesResponse>, Status> {
        read::list_features(self, req).await
    }

    async fn halt_feature(
        &self,
        req: Request<pb::HaltFeatureRequest>,
    ) -> Result<Response<pb::Command>, Status> {
        let span = rollout_net::call_span!("HaltFeature");
        command_call(span, req.metadata(), self.halt(&req)).await
    }

    async fn resume_feature(
        &self,
        req: Request<pb::ResumeFeatureRequest>,
    ) -> Result<Response<pb::Command>, Status> {
        let span = rollout_net::call_span!("ResumeFeature");
        command_call(span, req.metadata(), self.resume(&req)).await
    }

    async fn schedule_go_live(
        &self,
        req: Request<pb::ScheduleGoLiveRequest>,
    ) -> Result<Response<pb::Command>, Status> {
        let span = rollout_net::call_span!("ScheduleGoLive");
        command_call(span, req.metadata(), self.go_live(&req)).await
    }

    async fn approve_command(
        &self,
        req: Request<pb::ApproveCommandRequest>,
    ) -> Result<Response<pb::Command>, Status> {
        let span = rollout_net::call_span!("ApproveCommand");
        command_call(span, req.metadata(), self.approve(&req)).await
    }

    async fn cancel_command(
        &self,
        req: Request<pb::CancelCommandRequest>,
    ) -> Result<Response<pb::Command>, Status> {
        let span = rollout_net::call_span!("CancelCommand");
        command_call(span, req.metadata(), self.cancel(&req)).await
    }

    async fn get_command(
        &self,
        req: Request<pb::GetCommandRequest>,
    ) -> Result<Response<pb::Command>, Status> {
        read::get_command(self, req).await
    }

    async fn list_commands(
        &self,
        req: Request<pb::ListCommandsRequest>,
    ) -> Result<Response<pb::ListCommandsResponse>, Status> {
        read::list_commands(self, req).await
    }

    type WatchCommandStream = WatchStream;

    async fn watch_command(
        &self,
        req: Request<pb::WatchCommandRequest>,
    ) -> Result<Response<WatchStream>, Status> {
        views::watch_command(self, req).await
    }

    async fn list_suppliers(
        &self,
        req: Request<pb::ListSuppliersRequest>,
    ) -> Result<Response<pb::ListSuppliersResponse>, Status> {
        read::list_suppliers(self, req).await
    }

    async fn get_supplier(
        &self,
        req: Request<pb::GetSupplierRequest>,
    ) -> Result<Response<pb::Supplier>, Status> {
        read::get_supplier(self, req).await
    }

    async fn verify_command(
        &self,
        req: Request<pb::VerifyCommandRequest>,
    ) -> Result<Response<pb::VerifyCommandResponse>, Status> {
        verify::verify_command(self, req).await
    }

    async fn get_practice_status(
        &self,
        req: Request<pb::GetPracticeStatusRequest>,
    ) -> Result<Response<pb::PracticeFeature>, Status> {
        practice_status::get_practice_status(self, req).await
    }

    async fn list_audit_events(
        &self,
        req: Request<pb::ListAuditEventsRequest>,
    ) -> Result<Response<pb::ListAuditEventsResponse>, Status> {
        read::list_audit_events(self, req).await
    }

    async fn recover_commands(
        &self,
        req: Request<pb::RecoverCommandsRequest>,
    ) -> Result<Response<pb::RecoverCommandsResponse>, Status> {
        let span = rollout_net::call_span!("RecoverCommands");
        rollout_net::trace::traced(span, req.metadata(), self.recover(&req)).await
    }
}
