//! PracticeSettingsService: practice opt-outs.

use rollout_store::supplier::{Origin, RequestRecord};

use super::*;

#[tonic::async_trait]
impl PracticeSettingsService for Handlers {
    #[instrument(skip_all, fields(practice, feature))]
    async fn set_practice_opt_out(
        &self,
        req: Request<pb::SetPracticeOptOutRequest>,
    ) -> Result<Response<pb::PracticeOptOut>, Status> {
        let method = format!("{SETTINGS}/SetPracticeOptOut");
        let r = req.get_ref();
        let target = r.opt_out.as_ref().map(|o| o.name.clone()).unwrap_or_default();
        let audit = draft(&req, &method, &target, &r.request_id);
        let identity = Caller::of(&req)?.identity.to_string();
        self.audited(audit.clone(), async {
            let o = r
                .opt_out
                .as_ref()
                .ok_or_else(|| ApiError::invalid_field("opt_out", "is required"))?;
            let (ods, key) = wire::opt_out_name("opt_out.name", &o.name)?;
            Span::current()
                .record("practice", ods.as_str())
                .record("feature", key.as_str());
            let reason = wire::text("opt_out.reason", &o.reason)?;
            let source = wire::text("opt_out.source", &o.source)?;
            let request_id = wire::request_id("request_id", &r.request_id)?;
            let print = wire::request_fingerprint(
                &method,
                &pb::SetPracticeOptOutRequest {
                    request_id: String::new(),
                    ..r.clone()
                },
            );
            if let Some(id) = &request_id
                && let Some(bytes) = self.engine.recall(&identity, id, &print).await?
            {
                return pb::PracticeOptOut::decode(bytes.as_slice())
                    .map_err(|e| ApiError::internal("decoding a stored response", e));
            }
            practice(&self.engine.current(), ods, &self.engine.supplier)?;
            let audit = AuditDraft {
                reason: reason.clone(),
                ..audit.clone()
            };
            let record = self
                .engine
                .put_opt_out(
                    (ods, key.clone()),
                    |existing| {
                        let now = rollout_core::audit::now();
                        let active = existing.filter(|e| e.withdrawal.is_none());
                        Ok(OptOutRecord {
                            opt_out: rollout_core::OptOut {
                                practice: ods,
                                feature: key.clone(),
                                reason,
                                source,
                                recorded_by: active
                                    .map_or(identity.clone(), |e| e.opt_out.recorded_by.clone()),
                                recorded_at: active.map_or(now, |e| e.opt_out.recorded_at),
                            },
                            updated_at: rollout_core::register::next_update(
                                now,
                                existing.map(|e| e.updated_at),
                            ),
                            withdrawal: None,
                            // Numbered and marked recorded by the engine.
                            change: 0,
                            origin: Origin::Recorded,
                        })
                    },
                    request_id.map(|request_id| RequestRecord {
                        identity: identity.clone(),
                        request_id,
                        fingerprint: print,
                        response: Vec::new(),
                    }),
                    |rec| opt_out_pb(rec).encode_to_vec(),
                    audit,
                )
                .await?;
            Ok(opt_out_pb(&record))
        })
        .await
    }

    #[instrument(skip_all, fields(practice, feature))]
    async fn withdraw_practice_opt_out(
        &self,
        req: Request<pb::WithdrawPracticeOptOutRequest>,
    ) -> Result<Response<pb::PracticeOptOut>, Status> {
        let method = format!("{SETTINGS}/WithdrawPracticeOptOut");
        let r = req.get_ref();
        let audit = draft(&req, &method, &r.name, &r.request_id);
        let identity = Caller::of(&req)?.identity.to_string();
        self.audited(audit.clone(), async {
            let (ods, key) = wire::opt_out_name("name", &r.name)?;
            Span::current()
                .record("practice", ods.as_str())
                .record("feature", key.as_str());
            let reason = wire::text("reason", &r.reason)?;
            let request_id = wire::request_id("request_id", &r.request_id)?;
            let print = wire::request_fingerprint(
                &method,
                &pb::WithdrawPracticeOptOutRequest {
                    request_id: String::new(),
                    ..r.clone()
                },
            );
            if let Some(id) = &request_id
                && let Some(bytes) = self.engine.recall(&identity, id, &print).await?
            {
                return pb::PracticeOptOut::decode(bytes.as_slice())
                    .map_err(|e| ApiError::internal("decoding a stored response", e));
            }
            let audit = AuditDraft {
                reason: reason.clone(),
                ..audit.clone()
            };
            // Only a practice this supplier serves: a practice that moved to another supplier
            // took its opt-out with it, and a withdrawal here would override its record there.
            practice(&self.engine.current(), ods, &self.engine.supplier)?;
            let name = r.name.clone();
            let record = self
                .engine
                .put_opt_out(
                    (ods, key),
                    |existing| match existing {
                        None => Err(ApiError::not_found("OPT_OUT_NOT_FOUND", name)),
                        Some(e) if e.withdrawal.is_some() => Err(ApiError::failed_precondition(
                            "OPT_OUT_WITHDRAWN",
                            format!("{name} was already withdrawn; nothing to withdraw"),
                        )),
                        Some(e) => Ok(withdrawn(e, &identity, reason)),
                    },
                    request_id.map(|request_id| RequestRecord {
                        identity: identity.clone(),
                        request_id,
                        fingerprint: print,
                        response: Vec::new(),
                    }),
                    |rec| opt_out_pb(rec).encode_to_vec(),
                    audit,
                )
                .await?;
            Ok(opt_out_pb(&record))
        })
        .await
    }

    async fn list_practice_opt_outs(
        &self,
        req: Request<pb::ListPracticeOptOutsRequest>,
    ) -> Result<Response<pb::ListPracticeOptOutsResponse>, Status> {
        let r = req.get_ref();
        let feature = (!r.feature.is_empty())
            .then(|| wire::feature_name("feature", &r.feature))
            .transpose()?;
        let ods = (!r.practice.is_empty())
            .then(|| OdsCode::parse(&r.practice))
            .transpose()
            .map_err(|e| ApiError::invalid_field("practice", e))?;
        let size = wire::page_size("page_size", r.page_size, 100, 1_000)?;
        let query = format!("{}|{}|{}", r.feature, r.practice, r.show_withdrawn);
        let after = wire::page_token_after("page_token", &r.page_token, &query)?;
        let s = self.engine.current();
        let matching = s
            .opt_outs
            .values()
            .filter(|rec| r.show_withdrawn || rec.withdrawal.is_none())
            .filter(|rec| feature.as_ref().is_none_or(|f| *f == rec.opt_out.feature))
            .filter(|rec| ods.is_none_or(|o| o == rec.opt_out.practice))
            .map(opt_out_pb)
            .filter(|o| after.as_deref().is_none_or(|a| o.name.as_str() > a));
        let (opt_outs, next_page_token) = Page::new(size)
            .fill(matching)
            .finish(|o| wire::page_token(&query, &o.name));
        Ok(Response::new(pb::ListPracticeOptOutsResponse {
            opt_outs,
            next_page_token,
        }))
    }
}
