//! The JSON the status page reads, each answer made by calling the coordinator's own gRPC
//! handlers as the caller (so with the same bounds, errors and views) and written as protobuf
//! JSON ([`rollout_net::wire::json_value`]), with a few figures of the page's own: the
//! national table by ICB (`national.rs`), the practices a search finds in the estate, and how
//! far the audit chain has been verified.

use std::{sync::Arc, time::SystemTime};

use axum::{
    Extension, Json,
    extract::{Query, State},
    response::{IntoResponse, Response},
};
use rollout_core::{OdsCode, audit::verify_chain_after};
use rollout_net::{ApiError, Caller, wire};
use rollout_proto::v1::{self as pb, coordinator_service_server::CoordinatorService};
use serde::Deserialize;
use serde_json::{Value, json};

use super::{Web, national, refusal};

/// A handler's error as the page reads it.
fn failed(status: tonic::Status) -> Response {
    super::failed(&status)
}

/// Commands on one page of the commands view.
const COMMANDS_PAGE: i32 = 20;
/// Commands waiting for approval the commands view lists apart, at most.
const PENDING_PAGE: i32 = 50;
/// Practices a search lists at most.
const SEARCH_MATCHES: usize = 20;
/// Recent audit events the audit view shows.
const AUDIT_RECENT: u64 = 50;
/// Events the chain check reads on one request at most (the rest on the next ones), so that a
/// long chain never makes one request slow.
const CHAIN_STEP: u64 = 5_000;

/// A gRPC request as `caller` makes it.
fn request<T>(caller: &Caller, msg: T) -> tonic::Request<T> {
    let mut req = tonic::Request::new(msg);
    req.extensions_mut().insert(caller.clone());
    req
}

fn now() -> Value {
    json!(humantime::format_rfc3339_millis(SystemTime::now()).to_string())
}

/// `GET /api/national`: every feature, every configured supplier as ListSuppliers shows it,
/// and the table by region and ICB of each feature.
pub(super) async fn national(State(web): State<Arc<Web>>, Extension(caller): Extension<Caller>) -> Response {
    let suppliers = match web
        .handlers
        .list_suppliers(request(&caller, pb::ListSuppliersRequest::default()))
        .await
    {
        Ok(r) => r.into_inner(),
        Err(s) => return failed(s),
    };
    // The table follows the commands in force, which the command log decides: keyed on the
    // log (its last sequence and history hash), not on every change the page is told of (a
    // heartbeat's counts).
    let (log, features, in_force) = web
        .core
        .read(|m| {
            let log = (m.last_sequence(), m.history_hash(m.last_sequence()));
            let features: Vec<pb::Feature> = m.features().cloned().collect();
            (log, features, m.in_force().iter().cloned().collect::<Vec<_>>())
        })
        .await;
    let keys: Vec<_> = features
        .iter()
        .filter_map(|f| rollout_core::FeatureKey::parse(f.name.trim_start_matches("features/")).ok())
        .collect();
    // Practices times halts in force: worked out on a blocking thread, once per change however
    // many ask at once (the cache's lock is held while it is worked out).
    let page = web.clone();
    let tables = tokio::task::spawn_blocking(move || {
        page.national
            .get_or(log, || national::tables(&page.core.estate, &keys, &in_force))
    })
    .await;
    let tables = match tables {
        Ok(t) => t,
        Err(e) => return refusal(&ApiError::internal("working out the national table", e)),
    };
    Json(json!({
        "features": features.iter().map(wire::json_value).collect::<Vec<_>>(),
        "suppliers": wire::json_value(&suppliers),
        "tables": *tables,
        "updateTime": now(),
    }))
    .into_response()
}

#[derive(Debug, Deserialize)]
pub(super) struct Page {
    #[serde(default)]
    page_token: String,
}

/// `GET /api/commands?page_token=`: ListCommands, newest first, [`COMMANDS_PAGE`] a page, with
/// each halt's time to verification at each supplier as far as this replica has seen it, and
/// the commands waiting for approval, however old.
pub(super) async fn commands(
    State(web): State<Arc<Web>>,
    Extension(caller): Extension<Caller>,
    Query(page): Query<Page>,
) -> Response {
    let listed = web
        .handlers
        .list_commands(request(
            &caller,
            pb::ListCommandsRequest {
                page_size: COMMANDS_PAGE,
                page_token: page.page_token,
                ..Default::default()
            },
        ))
        .await;
    let listed = match listed {
        Ok(r) => r.into_inner(),
        Err(s) => return failed(s),
    };
    // However old, a command waiting for approval is listed on its own (the newest
    // PENDING_PAGE of them).
    let pending = web
        .handlers
        .list_commands(request(
            &caller,
            pb::ListCommandsRequest {
                state: pb::command::State::PendingApproval.into(),
                page_size: PENDING_PAGE,
                ..Default::default()
            },
        ))
        .await;
    let pending = match pending {
        Ok(r) => r.into_inner(),
        Err(s) => return failed(s),
    };
    let verified: Vec<Value> = listed
        .commands
        .iter()
        .map(|c| {
            let sequence = u64::try_from(c.sequence).unwrap_or(0);
            let times = web.core.recorded.verified_times(sequence);
            json!(
                times
                    .into_iter()
                    .map(|(s, seconds)| json!({"supplier": format!("suppliers/{s}"), "seconds": seconds}))
                    .collect::<Vec<_>>()
            )
        })
        .collect();
    Json(json!({
        "commands": wire::json_value(&listed),
        "pending": wire::json_value(&pending),
        "verified": verified,
        "updateTime": now(),
    }))
    .into_response()
}

#[derive(Debug, Deserialize)]
pub(super) struct Search {
    #[serde(default)]
    q: String,
}

/// `GET /api/practices?q=`: a practice by its ODS code (its explained answer for each
/// feature, read live from its supplier by GetPracticeStatus, and its opt-outs from the
/// national register), or else up to [`SEARCH_MATCHES`] practices whose code starts with, or
/// whose name contains, `q` (case ignored).
pub(super) async fn practices(
    State(web): State<Arc<Web>>,
    Extension(caller): Extension<Caller>,
    Query(search): Query<Search>,
) -> Response {
    let q = search.q.trim();
    if q.is_empty() || q.chars().count() > 100 {
        return refusal(&ApiError::invalid_field(
            "q",
            "give an ODS code or part of a name, up to 100 characters",
        ));
    }
    if let Ok(ods) = OdsCode::parse(&q.to_ascii_uppercase())
        && web.core.estate.get(&ods).is_some()
    {
        return practice(&web, &caller, &ods).await;
    }
    let wanted = q.to_lowercase();
    let matches: Vec<Value> = web
        .core
        .estate
        .practices()
        .filter(|p| {
            p.ods.as_str().to_lowercase().starts_with(&wanted) || p.name.to_lowercase().contains(&wanted)
        })
        .take(SEARCH_MATCHES)
        .map(practice_json)
        .collect();
    Json(json!({ "matches": matches, "updateTime": now() })).into_response()
}

fn practice_json(p: &rollout_core::Practice) -> Value {
    json!({
        "ods": p.ods.as_str(),
        "name": p.name,
        "region": p.region.to_string(),
        "icb": p.icb.to_string(),
        "subIcb": p.sub_icb.to_string(),
        "supplier": format!("suppliers/{}", p.supplier),
        "active": p.status == rollout_core::PracticeStatus::Active,
    })
}

async fn practice(web: &Web, caller: &Caller, ods: &OdsCode) -> Response {
    let Ok(_lookup) = web.lookups.clone().try_acquire_owned() else {
        return refusal(&ApiError::resource_exhausted(
            "TOO_MANY_PRACTICE_LOOKUPS",
            format!(
                "{} practice lookups are in progress on the status page; try again in a moment",
                super::PRACTICE_LOOKUPS
            ),
        ));
    };
    let Some(p) = web.core.estate.get(ods) else {
        return refusal(&ApiError::not_found("PRACTICE_NOT_FOUND", "no such practice"));
    };
    let features: Vec<String> = web
        .core
        .read(|m| m.features().map(|f| f.name.clone()).collect())
        .await;
    // Each feature's answer asked of the supplier at once, not one after another: a supplier
    // that does not answer costs one call's deadline, not one per feature.
    let asked = features.into_iter().map(|feature| async move {
        let name = format!("practices/{ods}/{feature}");
        let answer = web
            .handlers
            .get_practice_status(request(caller, pb::GetPracticeStatusRequest { name }))
            .await;
        match answer {
            Ok(r) => json!({ "feature": feature, "answer": wire::json_value(r.get_ref()) }),
            Err(s) => json!({ "feature": feature, "error": s.message() }),
        }
    });
    let answers: Vec<Value> = futures_util::future::join_all(asked).await;
    let opt_outs = web
        .handlers
        .list_opt_outs(request(
            caller,
            pb::ListOptOutsRequest {
                practice: ods.to_string(),
                show_withdrawn: true,
                ..Default::default()
            },
        ))
        .await;
    let opt_outs = match opt_outs {
        Ok(r) => wire::json_value(r.get_ref()),
        Err(s) => return failed(s),
    };
    Json(json!({
        "practice": practice_json(p),
        "answers": answers,
        "optOuts": opt_outs,
        "updateTime": now(),
    }))
    .into_response()
}

/// How far the coordinator's audit chain has been verified by this process: the last event
/// checked (its sequence and hash), or where it broke. Kept between requests, so each request
/// checks only the events appended since (at most [`CHAIN_STEP`]).
#[derive(Debug, Default)]
pub struct ChainCheck(tokio::sync::Mutex<Checked>);

#[derive(Debug, Default, Clone)]
struct Checked {
    last: Option<(u64, String)>,
    broken: Option<rollout_core::audit::ChainError>,
}

impl ChainCheck {
    /// Verifies the events after the last one checked, up to [`CHAIN_STEP`] of them.
    async fn advance(
        &self,
        store: &dyn rollout_store::coordinator::CoordinatorStore,
    ) -> Result<Checked, ApiError> {
        let mut checked = self.0.lock().await;
        if checked.broken.is_some() {
            return Ok(checked.clone());
        }
        let mut read = 0;
        while read < CHAIN_STEP {
            let after = checked.last.as_ref().map_or(0, |(s, _)| *s);
            let events = store
                .list_audit(after, 1_000)
                .await
                .map_err(|e| ApiError::internal("reading the audit log", e))?;
            if events.is_empty() {
                break;
            }
            read += events.len() as u64;
            let previous = checked.last.as_ref().map(|(s, h)| (*s, h.as_str()));
            if let Err(e) = verify_chain_after(previous, &events) {
                checked.broken = Some(e);
                break;
            }
            let last = events.last().map(|e| (e.sequence, e.hash.clone()));
            checked.last = last;
        }
        Ok(checked.clone())
    }
}

/// `GET /api/audit` (role auditor, as ListAuditEvents): the last [`AUDIT_RECENT`] events of the
/// coordinator's audit log, newest first, and how far its chain has been verified.
pub(super) async fn audit(State(web): State<Arc<Web>>, Extension(caller): Extension<Caller>) -> Response {
    let store = web.core.store().clone();
    let head = match store.audit_head().await {
        Ok(h) => h,
        Err(e) => return refusal(&ApiError::internal("reading the audit log", e)),
    };
    let listed = web
        .handlers
        .list_audit_events(request(
            &caller,
            pb::ListAuditEventsRequest {
                after_sequence: i64::try_from(head.saturating_sub(AUDIT_RECENT)).unwrap_or(0),
                page_size: i32::try_from(AUDIT_RECENT).unwrap_or(50),
                ..Default::default()
            },
        ))
        .await;
    let mut listed = match listed {
        Ok(r) => r.into_inner(),
        Err(s) => return failed(s),
    };
    listed.events.reverse();
    let checked = match web.chain.advance(store.as_ref()).await {
        Ok(c) => c,
        Err(e) => return refusal(&e),
    };
    Json(json!({
        "events": wire::json_value(&listed)["events"],
        "head": head,
        "verifiedThrough": checked.last.map_or(0, |(s, _)| s),
        "broken": checked.broken.map(|b| json!({"sequence": b.sequence, "problem": b.problem})),
        "updateTime": now(),
    }))
    .into_response()
}
