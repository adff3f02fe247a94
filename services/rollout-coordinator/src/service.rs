//! The CoordinatorService handlers.

use std::{collections::BTreeMap, pin::Pin, sync::Arc, time::SystemTime};

use prost::Message;
use rollout_core::{
    Action, IcbCode, OdsCode, Practice, PracticeStatus, RegionCode, Scope, SubIcbCode, SupplierId,
    audit::{AuditDraft, AuditOutcome},
};
use rollout_net::{ApiError, Caller, MessageLimits, Page, wire};
use rollout_proto::v1::{
    self as pb, coordinator_service_server::CoordinatorService, toggle_service_client::ToggleServiceClient,
};
use rollout_store::coordinator::CommandState;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, transport::Channel};
use tracing::{Span, instrument};

use crate::{
    coordinator::{Core, Idempotency, Model},
    recovery::{self, Recovery},
};

const SERVICE: &str = "/nhs.gprollout.v1.CoordinatorService";

/// The coordinator's handlers.
#[derive(Debug, Clone)]
pub struct Handlers {
    core: Arc<Core>,
    /// A channel to each supplier, as the coordinator.
    channels: Arc<BTreeMap<SupplierId, Channel>>,
}

impl Handlers {
    /// Handlers over `core`, reaching suppliers through `channels`.
    pub fn new(core: Arc<Core>, channels: BTreeMap<SupplierId, Channel>) -> Self {
        Handlers {
            core,
            channels: Arc::new(channels),
        }
    }

    /// Runs a mutating call, recording a refusal in the audit log.
    async fn audited<T>(
        &self,
        draft: AuditDraft,
        call: impl Future<Output = Result<T, ApiError>>,
    ) -> Result<Response<T>, Status> {
        rollout_net::audited(draft, call, |refused| self.core.record_refusal(refused)).await
    }

    /// A halt, resume or go-live: validates (the action last, after the feature name),
    /// honours `request_id`, and audits a refusal. A dry run is neither saved nor audited.
    #[allow(clippy::too_many_arguments)]
    async fn issue(
        &self,
        who: Result<String, ApiError>,
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
            Span::current().record("feature", key.as_str());
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

fn draft<T>(req: &Request<T>, method: &str, target: &str, request_id: &str, reason: &str) -> AuditDraft {
    AuditDraft {
        identity: identity(req).unwrap_or_else(|_| "-".into()),
        action: format!("{SERVICE}/{method}"),
        target: target.chars().take(200).collect(),
        outcome: AuditOutcome::Accepted,
        reason: reason.chars().take(1_000).collect(),
        request_id: request_id.chars().take(64).collect(),
    }
}

/// The idempotency key of a request, with the fingerprint of the request without its id.
fn idempotency(method: &str, request_id: &str, body: &impl Message) -> Result<Option<Idempotency>, ApiError> {
    Ok(
        wire::request_id("request_id", request_id)?.map(|request_id| Idempotency {
            request_id,
            fingerprint: wire::request_fingerprint(method, body),
        }),
    )
}

fn decode<M: Message + Default>(bytes: &[u8]) -> Result<M, ApiError> {
    M::decode(bytes).map_err(|e| ApiError::internal("decoding a stored response", e))
}

/// A practice's attributes from a supplier's answer, to judge scopes by.
fn practice_of(p: &pb::Practice) -> Option<Practice> {
    Some(Practice {
        ods: OdsCode::parse(p.name.strip_prefix("practices/")?).ok()?,
        name: p.display_name.clone(),
        region: RegionCode::parse(&p.region).ok()?,
        icb: IcbCode::parse(&p.icb).ok()?,
        sub_icb: SubIcbCode::parse(&p.sub_icb).ok()?,
        supplier: SupplierId::parse(&p.supplier).ok()?,
        status: PracticeStatus::Active,
    })
}

type WatchStream = Pin<Box<dyn tokio_stream::Stream<Item = Result<pb::WatchCommandResponse, Status>> + Send>>;

/// The result of checking one supplier for practices in a halt's scope still enabled.
async fn verify_supplier(
    mut client: ToggleServiceClient<Channel>,
    supplier: SupplierId,
    feature: String,
    scope: Scope,
) -> pb::verify_command_response::SupplierResult {
    let mut result = pb::verify_command_response::SupplierResult {
        supplier: format!("suppliers/{supplier}"),
        ..Default::default()
    };
    let mut token = String::new();
    loop {
        let mut req = Request::new(pb::ListPracticeFeaturesRequest {
            feature: feature.clone(),
            page_size: 5_000,
            page_token: token.clone(),
            state: pb::practice_feature::State::Enabled.into(),
            ..Default::default()
        });
        req.set_timeout(std::time::Duration::from_secs(30));
        match client.list_practice_features(req).await {
            Ok(page) => {
                let page = page.into_inner();
                for answer in &page.practice_features {
                    let covered = answer
                        .practice
                        .as_ref()
                        .and_then(practice_of)
                        .is_none_or(|p| scope.covers(&p));
                    if covered {
                        result.enabled_count += 1;
                        if result.enabled_practices.len() < 100 {
                            result.enabled_practices.push(answer.name.clone());
                        }
                    }
                }
                if page.next_page_token.is_empty() {
                    return result;
                }
                token = page.next_page_token;
            }
            Err(status) => {
                result.error = format!("{:?}: {}", status.code(), status.message());
                return result;
            }
        }
    }
}

#[tonic::async_trait]
impl CoordinatorService for Handlers {
    #[instrument(skip_all, fields(feature))]
    async fn create_feature(
        &self,
        req: Request<pb::CreateFeatureRequest>,
    ) -> Result<Response<pb::Feature>, Status> {
        let r = req.get_ref();
        let audit = draft(
            &req,
            "CreateFeature",
            &format!("features/{}", r.feature_id),
            &r.request_id,
            &r.reason,
        );
        self.audited(audit.clone(), async {
            let who = identity(&req)?;
            let key = rollout_core::FeatureKey::parse(&r.feature_id)
                .map_err(|e| ApiError::invalid_field("feature_id", e))?;
            Span::current().record("feature", key.as_str());
            let f = r
                .feature
                .as_ref()
                .ok_or_else(|| ApiError::invalid_field("feature", "is required"))?;
            let def = wire::feature_def("feature", key, f)?;
            let reason = wire::text("reason", &r.reason)?;
            let idem = idempotency(
                "CreateFeature",
                &r.request_id,
                &pb::CreateFeatureRequest {
                    request_id: String::new(),
                    ..r.clone()
                },
            )?;
            if let Some(bytes) = self.core.recall(idem.as_ref()).await? {
                return decode(&bytes);
            }
            self.core
                .create_feature(&who, def, reason, idem, audit.clone())
                .await
        })
        .await
    }

    async fn get_feature(
        &self,
        req: Request<pb::GetFeatureRequest>,
    ) -> Result<Response<pb::Feature>, Status> {
        let key = wire::feature_name("name", &req.get_ref().name)?;
        let feature = self.core.read(|m| m.feature(&key).map(|(_, f)| f.clone())).await;
        let f = feature.ok_or_else(|| ApiError::not_found("FEATURE_NOT_FOUND", format!("features/{key}")))?;
        Ok(Response::new(f))
    }

    async fn list_features(
        &self,
        req: Request<pb::ListFeaturesRequest>,
    ) -> Result<Response<pb::ListFeaturesResponse>, Status> {
        let r = req.get_ref();
        let size = wire::page_size("page_size", r.page_size, 100, 1_000)?;
        let after = wire::page_token_after("page_token", &r.page_token, "features")?;
        let (features, next_page_token) = self
            .core
            .read(|m| {
                Page::new(size)
                    .fill(
                        m.features()
                            .filter(|f| after.as_deref().is_none_or(|a| f.name.as_str() > a))
                            .cloned(),
                    )
                    .finish(|f| wire::page_token("features", &f.name))
            })
            .await;
        Ok(Response::new(pb::ListFeaturesResponse {
            features,
            next_page_token,
        }))
    }

    #[instrument(skip_all, fields(feature))]
    async fn halt_feature(
        &self,
        req: Request<pb::HaltFeatureRequest>,
    ) -> Result<Response<pb::Command>, Status> {
        let r = req.get_ref();
        let audit = draft(&req, "HaltFeature", &r.name, &r.request_id, &r.reason);
        let idem = idempotency(
            "HaltFeature",
            &r.request_id,
            &pb::HaltFeatureRequest {
                request_id: String::new(),
                ..r.clone()
            },
        );
        self.issue(identity(&req), audit, &r.name, &r.reason, r.dry_run, idem, || {
            Ok(Action::Halt {
                scope: wire::scope("scope", r.scope.as_ref())?,
            })
        })
        .await
    }

    #[instrument(skip_all, fields(feature))]
    async fn resume_feature(
        &self,
        req: Request<pb::ResumeFeatureRequest>,
    ) -> Result<Response<pb::Command>, Status> {
        let r = req.get_ref();
        let audit = draft(&req, "ResumeFeature", &r.name, &r.request_id, &r.reason);
        let idem = idempotency(
            "ResumeFeature",
            &r.request_id,
            &pb::ResumeFeatureRequest {
                request_id: String::new(),
                ..r.clone()
            },
        );
        self.issue(identity(&req), audit, &r.name, &r.reason, r.dry_run, idem, || {
            if r.halts.is_empty() {
                return Err(ApiError::invalid_field("halts", "name at least one halt to lift"));
            }
            let halts = r
                .halts
                .iter()
                .enumerate()
                .map(|(i, h)| wire::command_name(&format!("halts[{i}]"), h))
                .collect::<Result<Vec<_>, _>>()?;
            Ok(Action::Resume { halts })
        })
        .await
    }

    #[instrument(skip_all, fields(feature))]
    async fn schedule_go_live(
        &self,
        req: Request<pb::ScheduleGoLiveRequest>,
    ) -> Result<Response<pb::Command>, Status> {
        let r = req.get_ref();
        let audit = draft(&req, "ScheduleGoLive", &r.name, &r.request_id, &r.reason);
        let idem = idempotency(
            "ScheduleGoLive",
            &r.request_id,
            &pb::ScheduleGoLiveRequest {
                request_id: String::new(),
                ..r.clone()
            },
        );
        self.issue(identity(&req), audit, &r.name, &r.reason, r.dry_run, idem, || {
            Ok(Action::GoLive {
                scope: wire::scope("scope", r.scope.as_ref())?,
                effective_at: r
                    .effective_time
                    .as_ref()
                    .map(|t| wire::time("effective_time", t))
                    .transpose()?,
            })
        })
        .await
    }

    #[instrument(skip_all, fields(command))]
    async fn approve_command(
        &self,
        req: Request<pb::ApproveCommandRequest>,
    ) -> Result<Response<pb::Command>, Status> {
        let r = req.get_ref();
        let audit = draft(&req, "ApproveCommand", &r.name, &r.request_id, &r.comment);
        self.audited(audit.clone(), async {
            let who = identity(&req)?;
            let id = wire::command_name("name", &r.name)?;
            Span::current().record("command", id.as_str());
            if r.comment.chars().count() > rollout_core::rules::MAX_REASON_CHARS {
                return Err(ApiError::invalid_field(
                    "comment",
                    "is longer than 1000 characters",
                ));
            }
            let idem = idempotency(
                "ApproveCommand",
                &r.request_id,
                &pb::ApproveCommandRequest {
                    request_id: String::new(),
                    ..r.clone()
                },
            )?;
            if let Some(bytes) = self.core.recall(idem.as_ref()).await? {
                return decode(&bytes);
            }
            self.core
                .approve(&who, &id, r.comment.trim().to_owned(), idem, audit.clone())
                .await
        })
        .await
    }

    #[instrument(skip_all, fields(command))]
    async fn cancel_command(
        &self,
        req: Request<pb::CancelCommandRequest>,
    ) -> Result<Response<pb::Command>, Status> {
        let r = req.get_ref();
        let audit = draft(&req, "CancelCommand", &r.name, &r.request_id, &r.reason);
        self.audited(audit.clone(), async {
            let who = identity(&req)?;
            let id = wire::command_name("name", &r.name)?;
            Span::current().record("command", id.as_str());
            wire::text("reason", &r.reason)?;
            let idem = idempotency(
                "CancelCommand",
                &r.request_id,
                &pb::CancelCommandRequest {
                    request_id: String::new(),
                    ..r.clone()
                },
            )?;
            if let Some(bytes) = self.core.recall(idem.as_ref()).await? {
                return decode(&bytes);
            }
            self.core.cancel(&who, &id, idem, audit.clone()).await
        })
        .await
    }

    async fn get_command(
        &self,
        req: Request<pb::GetCommandRequest>,
    ) -> Result<Response<pb::Command>, Status> {
        let id = wire::command_name("name", &req.get_ref().name)?;
        let view = self
            .core
            .read(|m| m.command(&id).map(|c| m.command_view(c)))
            .await?;
        Ok(Response::new(view))
    }

    async fn list_commands(
        &self,
        req: Request<pb::ListCommandsRequest>,
    ) -> Result<Response<pb::ListCommandsResponse>, Status> {
        let r = req.get_ref();
        let feature = (!r.feature.is_empty())
            .then(|| wire::feature_name("feature", &r.feature))
            .transpose()?;
        let state = match pb::command::State::try_from(r.state) {
            Ok(pb::command::State::Unspecified) => None,
            Ok(s) => Some(s),
            Err(_) => {
                return Err(
                    ApiError::invalid_field("state", format!("{} is not a command state", r.state)).into(),
                );
            }
        };
        let size = wire::page_size("page_size", r.page_size, 50, 500)?;
        let query = format!("{}|{}", r.feature, r.state);
        let after = wire::page_token_after("page_token", &r.page_token, &query)?;
        // Newest first, starting after the token's command. A command carries its whole scope
        // (up to 10,000 practice codes, about 80 KB) and its impact the codes the estate does
        // not know (as much again), so a page is bounded by bytes as well as by count.
        let page = self
            .core
            .read(|m| {
                let mut skipping = after.is_some();
                let mut page = Page::new(size);
                for c in m.commands_newest_first() {
                    if skipping {
                        skipping = after.as_deref() != Some(c.domain.id.as_str());
                        continue;
                    }
                    if feature.as_ref().is_some_and(|f| *f != c.domain.feature)
                        || state.is_some_and(|s| s != c.pb.state())
                    {
                        continue;
                    }
                    if !page.push(m.command_view(c)) {
                        break;
                    }
                }
                page
            })
            .await;
        let (commands, next_page_token) =
            page.finish(|c| wire::page_token(&query, c.name.strip_prefix("commands/").unwrap_or(&c.name)));
        Ok(Response::new(pb::ListCommandsResponse {
            commands,
            next_page_token,
        }))
    }

    type WatchCommandStream = WatchStream;

    async fn watch_command(
        &self,
        req: Request<pb::WatchCommandRequest>,
    ) -> Result<Response<WatchStream>, Status> {
        let id = wire::command_name("name", &req.get_ref().name)?;
        self.core.read(|m| m.command(&id).map(|_| ())).await?;
        let (tx, rx) = mpsc::channel(16);
        let core = self.core.clone();
        tokio::spawn(async move {
            let mut changes = core.changes.subscribe();
            let mut last: Option<pb::Command> = None;
            loop {
                let Some(view) = core.read(|m| m.find(&id).map(|c| m.command_view(c))).await else {
                    return;
                };
                let complete = match view.state() {
                    pb::command::State::Cancelled => true,
                    pb::command::State::Dispatched => {
                        !view.deliveries.is_empty()
                            && view
                                .deliveries
                                .iter()
                                .all(|d| d.state() != pb::delivery::State::Pending)
                    }
                    _ => false,
                };
                if last.as_ref() != Some(&view) {
                    last = Some(view.clone());
                    if tx
                        .send(Ok(pb::WatchCommandResponse {
                            command: Some(view),
                            complete,
                        }))
                        .await
                        .is_err()
                    {
                        return;
                    }
                }
                if complete {
                    return;
                }
                tokio::select! {
                    changed = changes.changed() => if changed.is_err() { return },
                    _ = tx.closed() => return,
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn list_suppliers(
        &self,
        req: Request<pb::ListSuppliersRequest>,
    ) -> Result<Response<pb::ListSuppliersResponse>, Status> {
        let r = req.get_ref();
        let size = wire::page_size("page_size", r.page_size, 100, 100)?;
        let after = wire::page_token_after("page_token", &r.page_token, "suppliers")?;
        let mut configured: Vec<_> = self
            .core
            .suppliers
            .iter()
            .filter(|s| after.as_deref().is_none_or(|a| s.id.as_str() > a))
            .collect();
        configured.sort_by(|a, b| a.id.cmp(&b.id));
        let (suppliers, next_page_token) = self
            .core
            .read(|m| {
                Page::new(size)
                    .fill(configured.into_iter().map(|s| self.core.supplier_view(m, s)))
                    .finish(|s| {
                        wire::page_token("suppliers", s.name.strip_prefix("suppliers/").unwrap_or(&s.name))
                    })
            })
            .await;
        Ok(Response::new(pb::ListSuppliersResponse {
            suppliers,
            next_page_token,
        }))
    }

    async fn get_supplier(
        &self,
        req: Request<pb::GetSupplierRequest>,
    ) -> Result<Response<pb::Supplier>, Status> {
        let id = wire::supplier_name("name", &req.get_ref().name)?;
        let s = self
            .core
            .suppliers
            .iter()
            .find(|s| s.id == id)
            .ok_or_else(|| ApiError::not_found("SUPPLIER_NOT_FOUND", format!("suppliers/{id}")))?;
        Ok(Response::new(
            self.core.read(|m| self.core.supplier_view(m, s)).await,
        ))
    }

    #[instrument(skip_all, fields(command))]
    async fn verify_command(
        &self,
        req: Request<pb::VerifyCommandRequest>,
    ) -> Result<Response<pb::VerifyCommandResponse>, Status> {
        let id = wire::command_name("name", &req.get_ref().name)?;
        Span::current().record("command", id.as_str());
        let (scope, feature) = self
            .core
            .read(|m| {
                let c = m.command(&id)?;
                match (&c.domain.action, c.state) {
                    (Action::Halt { scope }, CommandState::Dispatched) => {
                        Ok((scope.clone(), format!("features/{}", c.domain.feature)))
                    }
                    (Action::Halt { .. }, _) => Err(ApiError::failed_precondition(
                        "NOT_DISPATCHED",
                        format!("commands/{id} has not been dispatched"),
                    )),
                    _ => Err(ApiError::failed_precondition(
                        "NOT_A_HALT",
                        format!("commands/{id} is not a halt; only a halt can be verified"),
                    )),
                }
            })
            .await?;
        let checks = self.core.suppliers.iter().map(|s| {
            let client = self.toggle(&s.id);
            let (supplier, feature, scope) = (s.id.clone(), feature.clone(), scope.clone());
            async move {
                match client {
                    Ok(c) => verify_supplier(c, supplier, feature, scope).await,
                    Err(e) => pb::verify_command_response::SupplierResult {
                        supplier: format!("suppliers/{supplier}"),
                        error: e.to_string(),
                        ..Default::default()
                    },
                }
            }
        });
        let mut results = Vec::new();
        for handle in checks.map(tokio::spawn).collect::<Vec<_>>() {
            results.push(
                handle
                    .await
                    .map_err(|e| ApiError::internal("verifying a supplier", e))?,
            );
        }
        let scope_counts = crate::impact::impact(&self.core.estate, &[&scope]);
        for r in &mut results {
            r.checked_count = scope_counts
                .suppliers
                .iter()
                .find(|s| s.supplier == r.supplier)
                .map_or(0, |s| s.practices);
        }
        let enabled_count = results.iter().map(|r| r.enabled_count).sum();
        let verified = enabled_count == 0 && results.iter().all(|r| r.error.is_empty());
        Ok(Response::new(pb::VerifyCommandResponse {
            command: format!("commands/{id}"),
            verified,
            enabled_count,
            suppliers: results,
            verify_time: Some(wire::timestamp(SystemTime::now())),
        }))
    }

    #[instrument(skip_all, fields(practice, feature))]
    async fn get_practice_status(
        &self,
        req: Request<pb::GetPracticeStatusRequest>,
    ) -> Result<Response<pb::PracticeFeature>, Status> {
        let (ods, key) = wire::practice_feature_name("name", &req.get_ref().name)?;
        Span::current()
            .record("practice", ods.as_str())
            .record("feature", key.as_str());
        let practice = self
            .core
            .estate
            .get(&ods)
            .ok_or_else(|| ApiError::not_found("PRACTICE_NOT_FOUND", format!("practices/{ods}")))?;
        let mut client = self.toggle(&practice.supplier)?;
        let mut call = Request::new(pb::GetPracticeFeatureRequest {
            name: wire::practice_feature_resource(&ods, &key),
        });
        call.set_timeout(std::time::Duration::from_secs(10));
        match client.get_practice_feature(call).await {
            Ok(answer) => Ok(answer),
            Err(s) if s.code() == tonic::Code::NotFound => Err(ApiError::not_found(
                "NOT_FOUND_AT_SUPPLIER",
                format!(
                    "{} at suppliers/{}: {}",
                    wire::practice_feature_resource(&ods, &key),
                    practice.supplier,
                    s.message()
                ),
            )
            .into()),
            Err(s) => Err(ApiError::unavailable(
                "SUPPLIER_UNAVAILABLE",
                format!(
                    "suppliers/{} did not answer: {:?} {}",
                    practice.supplier,
                    s.code(),
                    s.message()
                ),
            )
            .with_metadata("supplier", practice.supplier.to_string())
            .into()),
        }
    }

    async fn list_audit_events(
        &self,
        req: Request<pb::ListAuditEventsRequest>,
    ) -> Result<Response<pb::ListAuditEventsResponse>, Status> {
        let r = req.get_ref();
        let size = wire::page_size("page_size", r.page_size, 100, 1_000)?;
        let after = match wire::page_token_after("page_token", &r.page_token, "audit")? {
            Some(t) => t
                .parse::<u64>()
                .map_err(|_| ApiError::invalid_field("page_token", "is not a page token this server gave"))?,
            None => u64::try_from(r.after_sequence)
                .map_err(|_| ApiError::invalid_field("after_sequence", "must not be negative"))?,
        };
        let events = self
            .core
            .store()
            .list_audit(after, u32::try_from(size + 1).unwrap_or(u32::MAX))
            .await
            .map_err(|e| ApiError::internal("reading the audit log", e))?;
        let (events, next_page_token) = Page::new(size)
            .fill(events.iter().map(wire::audit_pb))
            .finish(|e| wire::page_token("audit", &e.sequence.to_string()));
        Ok(Response::new(pb::ListAuditEventsResponse {
            events,
            next_page_token,
        }))
    }

    #[instrument(skip_all, fields(supplier))]
    async fn recover_commands(
        &self,
        req: Request<pb::RecoverCommandsRequest>,
    ) -> Result<Response<pb::RecoverCommandsResponse>, Status> {
        let r = req.get_ref();
        let audit = draft(&req, "RecoverCommands", &r.supplier, &r.request_id, &r.reason);
        let call = async {
            identity(&req)?;
            let supplier = wire::supplier_name("supplier", &r.supplier)?;
            Span::current().record("supplier", supplier.as_str());
            wire::text("reason", &r.reason)?;
            let idem = idempotency("RecoverCommands", &r.request_id, r)?;
            if let Some(bytes) = self.core.recall(idem.as_ref()).await? {
                return decode(&bytes);
            }
            let channel =
                self.channels.get(&supplier).cloned().ok_or_else(|| {
                    ApiError::not_found("SUPPLIER_NOT_FOUND", format!("suppliers/{supplier}"))
                })?;
            let after = self.core.read(Model::last_sequence).await;
            let held = recovery::read_held(&supplier, channel, after).await?;
            let recovery = Recovery {
                supplier,
                held,
                dry_run: r.dry_run,
                idem,
            };
            self.core.recover(recovery, audit.clone()).await
        };
        if r.dry_run {
            return Ok(Response::new(call.await?));
        }
        self.audited(audit.clone(), call).await
    }
}
