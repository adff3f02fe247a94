//! The CoordinatorService calls that change something (features, halts, resumes, go-lives,
//! approvals, cancellations, redeliveries, recoveries): each validates, honours its request id
//! and audits a refusal. `mod.rs` runs each in its exported span (docs/OBSERVABILITY.md,
//! "Traces").

use rollout_core::Action;
use rollout_net::{ApiError, wire};
use rollout_proto::v1 as pb;
use tonic::{Request, Response, Status};
use tracing::Span;

use super::{Handlers, decode, draft, idempotency, identity, who};
use crate::{
    coordinator::Model,
    recovery::{self, Recovery},
    redeliver::Redelivery,
    scope_check::Allowances,
};

impl Handlers {
    /// CreateFeature, in its span.
    pub(super) async fn create(
        &self,
        req: &Request<pb::CreateFeatureRequest>,
    ) -> Result<Response<pb::Feature>, Status> {
        let r = req.get_ref();
        let audit = draft(
            req,
            "CreateFeature",
            &format!("features/{}", r.feature_id),
            &r.request_id,
            &r.reason,
        );
        self.audited(audit.clone(), async {
            let who = who(req)?;
            let key = rollout_core::FeatureKey::parse(&r.feature_id)
                .map_err(|e| ApiError::invalid_field("feature_id", e))?;
            Span::current().record("gprollout.feature", key.as_str());
            let f = r
                .feature
                .as_ref()
                .ok_or_else(|| ApiError::invalid_field("feature", "is required"))?;
            // The description travels in the feature's definition to every supplier: checked
            // here, where it is written, as a reason is.
            wire::optional_text(
                "feature.description",
                &f.description,
                rollout_core::rules::MAX_REASON_CHARS,
            )?;
            let def = wire::feature_def("feature", key, f)?;
            let reason = wire::text("reason", &r.reason)?;
            let idem = idempotency(
                req,
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

    /// HaltFeature, in its span.
    pub(super) async fn halt(
        &self,
        req: &Request<pb::HaltFeatureRequest>,
    ) -> Result<Response<pb::Command>, Status> {
        let r = req.get_ref();
        let audit = draft(req, "HaltFeature", &r.name, &r.request_id, &r.reason);
        let idem = idempotency(
            req,
            "HaltFeature",
            &r.request_id,
            &pb::HaltFeatureRequest {
                request_id: String::new(),
                ..r.clone()
            },
        );
        self.issue(who(req), audit, &r.name, &r.reason, r.dry_run, idem, || {
            let allow = Allowances {
                unknown_practices: r.allow_unknown_practices,
                empty_scope: r.allow_empty_scope,
            };
            Ok(Action::Halt {
                scope: self.known_scope(r.scope.as_ref(), allow)?,
            })
        })
        .await
    }

    /// ResumeFeature, in its span.
    pub(super) async fn resume(
        &self,
        req: &Request<pb::ResumeFeatureRequest>,
    ) -> Result<Response<pb::Command>, Status> {
        let r = req.get_ref();
        let audit = draft(req, "ResumeFeature", &r.name, &r.request_id, &r.reason);
        let idem = idempotency(
            req,
            "ResumeFeature",
            &r.request_id,
            &pb::ResumeFeatureRequest {
                request_id: String::new(),
                ..r.clone()
            },
        );
        self.issue(who(req), audit, &r.name, &r.reason, r.dry_run, idem, || {
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

    /// ScheduleGoLive, in its span.
    pub(super) async fn go_live(
        &self,
        req: &Request<pb::ScheduleGoLiveRequest>,
    ) -> Result<Response<pb::Command>, Status> {
        let r = req.get_ref();
        let audit = draft(req, "ScheduleGoLive", &r.name, &r.request_id, &r.reason);
        let idem = idempotency(
            req,
            "ScheduleGoLive",
            &r.request_id,
            &pb::ScheduleGoLiveRequest {
                request_id: String::new(),
                ..r.clone()
            },
        );
        self.issue(who(req), audit, &r.name, &r.reason, r.dry_run, idem, || {
            let allow = Allowances {
                unknown_practices: r.allow_unknown_practices,
                empty_scope: r.allow_empty_scope,
            };
            Ok(Action::GoLive {
                scope: self.known_scope(r.scope.as_ref(), allow)?,
                effective_at: r
                    .effective_time
                    .as_ref()
                    .map(|t| wire::time("effective_time", t))
                    .transpose()?,
            })
        })
        .await
    }

    /// ApproveCommand, in its span.
    pub(super) async fn approve(
        &self,
        req: &Request<pb::ApproveCommandRequest>,
    ) -> Result<Response<pb::Command>, Status> {
        let r = req.get_ref();
        let audit = draft(req, "ApproveCommand", &r.name, &r.request_id, &r.comment);
        self.audited(audit.clone(), async {
            let who = who(req)?;
            let id = wire::command_name("name", &r.name)?;
            let comment = wire::optional_text("comment", &r.comment, rollout_core::rules::MAX_REASON_CHARS)?;
            let idem = idempotency(
                req,
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
            let policy = self.policy.load_full();
            let person_of = |identity: &str| policy.person(identity).map(str::to_owned);
            self.core
                .approve(&who, &person_of, &id, comment, idem, audit.clone())
                .await
        })
        .await
    }

    /// CancelCommand, in its span.
    pub(super) async fn cancel(
        &self,
        req: &Request<pb::CancelCommandRequest>,
    ) -> Result<Response<pb::Command>, Status> {
        let r = req.get_ref();
        let audit = draft(req, "CancelCommand", &r.name, &r.request_id, &r.reason);
        self.audited(audit.clone(), async {
            let who = identity(req)?;
            let id = wire::command_name("name", &r.name)?;
            wire::text("reason", &r.reason)?;
            let idem = idempotency(
                req,
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

    /// RecoverCommands, in its span.
    pub(super) async fn recover(
        &self,
        req: &Request<pb::RecoverCommandsRequest>,
    ) -> Result<Response<pb::RecoverCommandsResponse>, Status> {
        let r = req.get_ref();
        let audit = draft(req, "RecoverCommands", &r.supplier, &r.request_id, &r.reason);
        let call = async {
            identity(req)?;
            let supplier = wire::supplier_name("supplier", &r.supplier)?;
            Span::current().record("gprollout.supplier", supplier.as_str());
            wire::text("reason", &r.reason)?;
            let idem = idempotency(req, "RecoverCommands", &r.request_id, r)?;
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

    /// RedeliverCommand, in its span.
    pub(super) async fn redeliver(
        &self,
        req: &Request<pb::RedeliverCommandRequest>,
    ) -> Result<Response<pb::Command>, Status> {
        let r = req.get_ref();
        let target = format!("{} {}", r.name, r.supplier);
        let audit = draft(req, "RedeliverCommand", &target, &r.request_id, &r.reason);
        let call = async {
            let who = who(req)?;
            let original = wire::command_name("name", &r.name)?;
            let supplier = wire::supplier_name("supplier", &r.supplier)?;
            Span::current().record("gprollout.supplier", supplier.as_str());
            let reason = wire::text("reason", &r.reason)?;
            let idem = idempotency(
                req,
                "RedeliverCommand",
                &r.request_id,
                &pb::RedeliverCommandRequest {
                    request_id: String::new(),
                    ..r.clone()
                },
            )?;
            if let Some(bytes) = self.core.recall(idem.as_ref()).await? {
                return decode(&bytes);
            }
            let redelivery = Redelivery {
                original,
                supplier,
                reason,
                dry_run: r.dry_run,
                idem,
            };
            self.core.redeliver(&who, redelivery, audit.clone()).await
        };
        if r.dry_run {
            return Ok(Response::new(call.await?));
        }
        self.audited(audit.clone(), call).await
    }
}
