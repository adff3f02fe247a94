//! The gRPC handlers of the supplier: ToggleService, PracticeSettingsService, ControlService.
//! They validate with `rollout_net::wire`, call the [`Engine`], and answer with `ApiError`s.

use std::{
    collections::{HashMap, HashSet},
    pin::Pin,
    sync::Arc,
    time::SystemTime,
};

use prost::Message;
use rollout_core::{
    FeatureKey, OdsCode, Practice, Reason, State,
    audit::{AuditDraft, AuditOutcome},
};
use rollout_net::{ApiError, Caller, MAX_MESSAGE_BYTES, Page, limits::element_len, wire};
use rollout_proto::v1::{
    self as pb, control_service_server::ControlService,
    practice_settings_service_server::PracticeSettingsService, toggle_service_server::ToggleService,
};
use rollout_store::supplier::OptOutRecord;
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
}

impl Handlers {
    /// Handlers over `engine`; watch streams end when `shutdown` turns true.
    pub fn new(engine: Arc<Engine>, shutdown: watch::Receiver<bool>) -> Self {
        Handlers { engine, shutdown }
    }

    /// Runs a mutating call, recording a refusal in the audit log.
    async fn audited<T>(
        &self,
        draft: AuditDraft,
        call: impl Future<Output = Result<T, ApiError>>,
    ) -> Result<Response<T>, Status> {
        rollout_net::audited(draft, call, |refused| self.engine.record_refusal(refused)).await
    }
}

/// The audit draft of a call: who, what, on what, and the request's id.
fn draft<T>(req: &Request<T>, method: &str, target: &str, request_id: &str) -> AuditDraft {
    AuditDraft {
        identity: Caller::of(req)
            .map(|c| c.identity.to_string())
            .unwrap_or_else(|_| "-".into()),
        action: method.to_owned(),
        target: target.chars().take(200).collect(),
        outcome: AuditOutcome::Accepted,
        reason: String::new(),
        request_id: request_id.chars().take(64).collect(),
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

/// The explained (or plain) answer for one practice.
fn answer(
    s: &Serving,
    p: &Practice,
    key: &FeatureKey,
    ctx: &rollout_core::Context,
    explain: bool,
) -> Result<pb::PracticeFeature, ApiError> {
    let e = s
        .evaluate(p, key, ctx, explain)
        .ok_or_else(|| feature_not_found(key))?;
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
    }
}

fn version_i64(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

const SETTINGS: &str = "/nhs.gprollout.v1.PracticeSettingsService";
const CONTROL: &str = "/nhs.gprollout.v1.ControlService";

type WatchStream =
    Pin<Box<dyn tokio_stream::Stream<Item = Result<pb::WatchPracticeFeaturesResponse, Status>> + Send>>;

#[tonic::async_trait]
impl ToggleService for Handlers {
    // The hot read (tens of thousands a second): its span is at DEBUG so that at the default
    // INFO level it costs nothing; a refusal is still logged by the auth layer.
    #[instrument(level = "debug", skip_all, fields(practice, feature))]
    async fn get_practice_feature(
        &self,
        req: Request<pb::GetPracticeFeatureRequest>,
    ) -> Result<Response<pb::PracticeFeature>, Status> {
        let (ods, key) = wire::practice_feature_name("name", &req.get_ref().name)?;
        Span::current()
            .record("practice", ods.as_str())
            .record("feature", key.as_str());
        let s = self.engine.current();
        let p = practice(&s, ods, &self.engine.supplier)?;
        let ctx = self.engine.context(&s);
        Ok(Response::new(answer(&s, p, &key, &ctx, true)?))
    }

    #[instrument(skip_all, fields(count))]
    async fn batch_get_practice_features(
        &self,
        req: Request<pb::BatchGetPracticeFeaturesRequest>,
    ) -> Result<Response<pb::BatchGetPracticeFeaturesResponse>, Status> {
        let r = req.get_ref();
        Span::current().record("count", r.names.len());
        if r.names.is_empty() || r.names.len() > MAX_BATCH {
            return Err(ApiError::invalid_field(
                "names",
                format!("give between 1 and {MAX_BATCH} names, not {}", r.names.len()),
            )
            .into());
        }
        let s = self.engine.current();
        let ctx = self.engine.context(&s);
        // Not pageable: an answer that would be over the message limit is refused (counting
        // as it is built, so an oversized one is never built whole).
        let mut answers = Vec::with_capacity(r.names.len());
        let mut bytes = 0;
        for (i, name) in r.names.iter().enumerate() {
            let (ods, key) = wire::practice_feature_name(&format!("names[{i}]"), name)?;
            let p = practice(&s, ods, &self.engine.supplier)?;
            let a = answer(&s, p, &key, &ctx, r.explain)?;
            bytes += element_len(&a);
            if bytes > MAX_MESSAGE_BYTES {
                return Err(response_too_large(r.names.len(), i, r.explain).into());
            }
            answers.push(a);
        }
        Ok(Response::new(pb::BatchGetPracticeFeaturesResponse {
            practice_features: answers,
        }))
    }

    #[instrument(skip_all, fields(feature))]
    async fn list_practice_features(
        &self,
        req: Request<pb::ListPracticeFeaturesRequest>,
    ) -> Result<Response<pb::ListPracticeFeaturesResponse>, Status> {
        let r = req.get_ref();
        let key = wire::feature_name("feature", &r.feature)?;
        Span::current().record("feature", key.as_str());
        let size = wire::page_size("page_size", r.page_size, 500, 5_000)?;
        let want_state = match pb::practice_feature::State::try_from(r.state) {
            Ok(pb::practice_feature::State::Unspecified) => None,
            Ok(s) => Some(s),
            Err(_) => {
                return Err(ApiError::invalid_field("state", format!("{} is not a state", r.state)).into());
            }
        };
        let region = (!r.region.is_empty())
            .then(|| rollout_core::RegionCode::parse_region(&r.region))
            .transpose()
            .map_err(|e| ApiError::invalid_field("region", e))?;
        let icb = (!r.icb.is_empty())
            .then(|| rollout_core::IcbCode::parse(&r.icb))
            .transpose()
            .map_err(|e| ApiError::invalid_field("icb", e))?;
        let query = format!("{key}|{}|{}|{}", r.state, r.region, r.icb);
        let after = wire::page_token_after("page_token", &r.page_token, &query)?;
        let s = self.engine.current();
        if s.book.synchronised() && s.book.feature(&key).is_none() {
            return Err(feature_not_found(&key).into());
        }
        let ctx = self.engine.context(&s);
        let mut matching = Vec::new();
        let mut total = 0;
        for p in s.estate.practices() {
            if region.is_some_and(|r| r != p.region) || icb.is_some_and(|i| i != p.icb) {
                continue;
            }
            let Some(e) = s.evaluate(p, &key, &ctx, false) else {
                continue;
            };
            if want_state.is_some_and(|w| w != wire::state_pb(e.state)) {
                continue;
            }
            total += 1;
            if after.as_deref().is_some_and(|a| p.ods.as_str() <= a) || matching.len() > size {
                continue;
            }
            matching.push(p);
        }
        // Explained answers carry every applicable rule with its scope, so a page is bounded by
        // bytes as well as by count.
        let mut page = Page::new(size);
        for p in matching {
            if !page.push(answer(&s, p, &key, &ctx, r.explain)?) {
                break;
            }
        }
        let (practice_features, next_page_token) = page.finish(|a| {
            let ods = a
                .practice
                .as_ref()
                .map_or("", |p| p.name.trim_start_matches("practices/"));
            wire::page_token(&query, ods)
        });
        Ok(Response::new(pb::ListPracticeFeaturesResponse {
            practice_features,
            next_page_token,
            total_size: total,
        }))
    }

    type WatchPracticeFeaturesStream = WatchStream;

    #[instrument(skip_all, fields(feature, identity))]
    async fn watch_practice_features(
        &self,
        req: Request<pb::WatchPracticeFeaturesRequest>,
    ) -> Result<Response<WatchStream>, Status> {
        if let Ok(c) = Caller::of(&req) {
            Span::current().record("identity", c.identity.as_str());
        }
        let r = req.get_ref();
        let key = wire::feature_name("feature", &r.feature)?;
        Span::current().record("feature", key.as_str());
        let start_version = u64::try_from(r.start_version)
            .map_err(|_| ApiError::invalid_field("start_version", "must not be negative"))?;
        if r.practices.len() > MAX_BATCH {
            return Err(
                ApiError::invalid_field("practices", format!("at most {MAX_BATCH} practices")).into(),
            );
        }
        let s = self.engine.current();
        let filter = if r.practices.is_empty() {
            None
        } else {
            let set = r
                .practices
                .iter()
                .enumerate()
                .map(|(i, c)| {
                    let ods = OdsCode::parse(c)
                        .map_err(|e| ApiError::invalid_field(format!("practices[{i}]"), e))?;
                    practice(&s, ods, &self.engine.supplier).map(|p| p.ods)
                })
                .collect::<Result<HashSet<_>, ApiError>>()?;
            Some(Arc::new(set))
        };
        if s.book.synchronised() && s.book.feature(&key).is_none() {
            return Err(feature_not_found(&key).into());
        }
        let (tx, rx) = mpsc::channel(16);
        let watcher = Watcher {
            engine: self.engine.clone(),
            feature: key,
            filter,
            tx,
        };
        tokio::spawn(watcher.run(start_version, self.shutdown.clone()));
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}

/// One watch stream's task.
struct Watcher {
    engine: Arc<Engine>,
    feature: FeatureKey,
    filter: Option<Arc<HashSet<OdsCode>>>,
    tx: mpsc::Sender<Result<pb::WatchPracticeFeaturesResponse, Status>>,
}

impl Watcher {
    fn message(
        &self,
        event: pb::watch_practice_features_response::EventType,
        version: u64,
        answers: &[Answer],
        cause: &str,
    ) -> pb::WatchPracticeFeaturesResponse {
        let version = version_i64(version);
        pb::WatchPracticeFeaturesResponse {
            event_type: event.into(),
            version,
            practice_features: answers
                .iter()
                .filter(|(ods, ..)| self.filter.as_ref().is_none_or(|f| f.contains(ods)))
                .map(|(ods, state, reason)| pb::PracticeFeature {
                    name: wire::practice_feature_resource(ods, &self.feature),
                    state: wire::state_pb(*state).into(),
                    reason: wire::reason_pb(*reason).into(),
                    version,
                    ..Default::default()
                })
                .collect(),
            cause: cause.to_owned(),
        }
    }

    /// Sends the snapshot of `s`; returns its version, or `None` if the client has gone.
    async fn snapshot(&self, s: &Serving) -> Option<u64> {
        use pb::watch_practice_features_response::EventType;
        let unknown: Vec<Answer>;
        let answers = match s.answers.get(&self.feature) {
            Some(a) => a.as_slice(),
            None => {
                unknown = s
                    .estate
                    .practices()
                    .map(|p| (p.ods, State::Unknown, Reason::NeverSynchronised))
                    .collect();
                &unknown
            }
        };
        let selected: Vec<Answer> = answers
            .iter()
            .filter(|(ods, ..)| self.filter.as_ref().is_none_or(|f| f.contains(ods)))
            .copied()
            .collect();
        for chunk in selected.chunks(SNAPSHOT_CHUNK) {
            self.tx
                .send(Ok(self.message(
                    EventType::Snapshot,
                    s.version,
                    chunk,
                    "snapshot",
                )))
                .await
                .ok()?;
        }
        self.tx
            .send(Ok(self.message(
                EventType::SnapshotComplete,
                s.version,
                &[],
                "snapshot complete",
            )))
            .await
            .ok()?;
        Some(s.version)
    }

    /// Sends a change batch if it concerns this watcher; `None` if the client has gone.
    async fn change(&self, batch: &ChangeBatch) -> Option<()> {
        // A watcher of fewer practices than the batch holds looks its own up in the batch's
        // index rather than scanning the whole batch.
        let picked: Vec<Answer>;
        let answers = match &self.filter {
            Some(filter) if filter.len() < batch.changes.len() => {
                let mut mine: Vec<Answer> = filter
                    .iter()
                    .filter_map(|ods| batch.index.get(ods).map(|&i| batch.changes[i]))
                    .collect();
                mine.sort_by_key(|(ods, ..)| *ods);
                picked = mine;
                picked.as_slice()
            }
            _ => batch.changes.as_slice(),
        };
        let msg = self.message(
            pb::watch_practice_features_response::EventType::Change,
            batch.version,
            answers,
            &batch.cause,
        );
        if !msg.practice_features.is_empty() {
            self.tx.send(Ok(msg)).await.ok()?;
        }
        Some(())
    }

    async fn run(self, start_version: u64, mut shutdown: watch::Receiver<bool>) {
        let (mut rx, start) = self.engine.subscribe(start_version);
        // The last version of this feature the client has seen in full.
        let mut seen = match start {
            WatchStart::Resume(backlog) => {
                let mut seen = start_version;
                for batch in backlog.iter().filter(|b| b.feature == self.feature) {
                    if self.change(batch).await.is_none() {
                        return;
                    }
                    seen = batch.version;
                }
                seen
            }
            WatchStart::Snapshot(s) => match self.snapshot(&s).await {
                Some(v) => v,
                None => return,
            },
        };
        loop {
            tokio::select! {
                _ = async { shutdown.wait_for(|stop| *stop).await.map(|_| ()) } => {
                    // Shutting down (or the server is gone): tell the client where to resume.
                    let status = ApiError::unavailable(
                        "SHUTTING_DOWN",
                        format!("the server is shutting down; reconnect and resume from version {seen}"),
                    )
                    .with_metadata("version", seen.to_string());
                    let _ = self.tx.send(Err(status.into())).await;
                    return;
                }
                _ = self.tx.closed() => return,
                received = rx.recv() => match received {
                    Ok(batch) if batch.feature == self.feature && batch.version > seen => {
                        if self.change(&batch).await.is_none() {
                            return;
                        }
                        seen = batch.version;
                    }
                    Ok(_) => {}
                    Err(broadcast::error::RecvError::Lagged(missed)) => {
                        tracing::warn!(missed, feature = %self.feature, "watcher fell behind; sending a fresh snapshot");
                        match self.snapshot(&self.engine.current()).await {
                            Some(v) => seen = v,
                            None => return,
                        }
                    }
                    Err(broadcast::error::RecvError::Closed) => return,
                },
            }
        }
    }
}

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
                && let Some(bytes) = self.engine.recall(id, &print).await?
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
                            updated_at: now,
                            withdrawal: None,
                        })
                    },
                    request_id.map(|id| (id, print)),
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
                && let Some(bytes) = self.engine.recall(id, &print).await?
            {
                return pb::PracticeOptOut::decode(bytes.as_slice())
                    .map_err(|e| ApiError::internal("decoding a stored response", e));
            }
            let audit = AuditDraft {
                reason: reason.clone(),
                ..audit.clone()
            };
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
                    request_id.map(|id| (id, print)),
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

#[tonic::async_trait]
impl ControlService for Handlers {
    #[instrument(skip_all, fields(sequence, command))]
    async fn apply_command(
        &self,
        req: Request<pb::ApplyCommandRequest>,
    ) -> Result<Response<pb::ApplyCommandResponse>, Status> {
        let method = format!("{CONTROL}/ApplyCommand");
        let r = req.get_ref();
        let target = r.command.as_ref().map(|c| c.name.clone()).unwrap_or_default();
        let audit = draft(&req, &method, &target, "");
        self.engine.heartbeat();
        self.audited(audit.clone(), async {
            let pbc = r
                .command
                .as_ref()
                .ok_or_else(|| ApiError::invalid_field("command", "is required"))?;
            let cmd = wire::command("command", pbc)?;
            Span::current()
                .record("sequence", cmd.sequence)
                .record("command", cmd.id.as_str());
            let audit = AuditDraft {
                reason: format!("{} {}: {}", cmd.action.name(), cmd.feature, cmd.reason),
                ..audit.clone()
            };
            let applied = self.engine.apply(pbc.encode_to_vec(), cmd, audit).await?;
            Ok(pb::ApplyCommandResponse {
                applied_sequence: version_i64(self.engine.current().book.applied_sequence()),
                outcome: if applied.rejection.is_some() {
                    pb::apply_command_response::Outcome::Rejected
                } else {
                    pb::apply_command_response::Outcome::Applied
                }
                .into(),
                rejection_reason: applied.rejection.unwrap_or_default(),
                apply_time: Some(wire::timestamp(applied.at)),
            })
        })
        .await
    }

    async fn get_sync_state(
        &self,
        _req: Request<pb::GetSyncStateRequest>,
    ) -> Result<Response<pb::SyncState>, Status> {
        self.engine.heartbeat();
        let s = self.engine.current();
        let mut counts: Vec<pb::FeatureCounts> = s
            .answers
            .iter()
            .map(|(feature, answers)| {
                let mut c = pb::FeatureCounts {
                    feature: format!("features/{feature}"),
                    practices: i32::try_from(answers.len()).unwrap_or(i32::MAX),
                    ..Default::default()
                };
                for (_, state, reason) in answers {
                    let slot = match (state, reason) {
                        (State::Enabled, _) => &mut c.enabled,
                        (State::Unknown, _) => &mut c.unknown,
                        (_, Reason::Halted) => &mut c.halted,
                        (_, Reason::OptedOut) => &mut c.opted_out,
                        (_, Reason::NotLive | Reason::Scheduled) => &mut c.not_live,
                        _ => &mut c.other_disabled,
                    };
                    *slot += 1;
                }
                c
            })
            .collect();
        counts.sort_by(|a, b| a.feature.cmp(&b.feature));
        Ok(Response::new(pb::SyncState {
            supplier: format!("suppliers/{}", self.engine.supplier),
            applied_sequence: version_i64(s.book.applied_sequence()),
            last_apply_time: s.applied.values().next_back().map(|a| wire::timestamp(a.at)),
            frozen: self.engine.freeze.is_some(),
            freeze_reason: self.engine.freeze.clone().unwrap_or_default(),
            feature_counts: counts,
            version: version_i64(s.version),
            read_time: Some(wire::timestamp(SystemTime::now())),
        }))
    }

    #[instrument(skip_all, fields(sequence))]
    async fn replace_rules(
        &self,
        req: Request<pb::ReplaceRulesRequest>,
    ) -> Result<Response<pb::ReplaceRulesResponse>, Status> {
        let method = format!("{CONTROL}/ReplaceRules");
        let r = req.get_ref();
        let audit = draft(&req, &method, &format!("suppliers/{}", self.engine.supplier), "");
        self.engine.heartbeat();
        self.audited(audit.clone(), async {
            let sequence = u64::try_from(r.sequence)
                .map_err(|_| ApiError::invalid_field("sequence", "must not be negative"))?;
            Span::current().record("sequence", sequence);
            let commands = r
                .commands
                .iter()
                .enumerate()
                .map(|(i, c)| Ok((c.encode_to_vec(), wire::command(&format!("commands[{i}]"), c)?)))
                .collect::<Result<Vec<_>, ApiError>>()?;
            let rejected: HashSet<u64> = r
                .rejected_sequences
                .iter()
                .filter_map(|s| u64::try_from(*s).ok())
                .collect();
            let audit = AuditDraft {
                reason: format!("full resync to sequence {sequence} ({} commands)", commands.len()),
                ..audit.clone()
            };
            let applied = self.engine.replace(commands, sequence, &rejected, audit).await?;
            let rejections: HashMap<u64, String> = applied
                .iter()
                .filter_map(|(s, a)| a.rejection.clone().map(|r| (*s, r)))
                .collect();
            let mut rejections: Vec<pb::replace_rules_response::Rejection> = rejections
                .into_iter()
                .map(|(sequence, reason)| pb::replace_rules_response::Rejection {
                    sequence: version_i64(sequence),
                    reason,
                })
                .collect();
            rejections.sort_by_key(|r| r.sequence);
            Ok(pb::ReplaceRulesResponse {
                applied_sequence: version_i64(sequence),
                apply_time: Some(wire::timestamp(SystemTime::now())),
                rejections,
            })
        })
        .await
    }
}
