//! VerifyCommand: an outcome per supplier for a halt (judged in `crate::verification`). Each
//! supplier that has applied the halt is asked for its ENABLED practices, paged, judged
//! against the halt's scope; the suppliers are asked at once, each within the per-supplier
//! timeout, so a hung or black-holed supplier costs the caller that timeout and no more.

use std::{
    collections::BTreeSet,
    time::{Duration, Instant, SystemTime},
};

use rollout_core::{
    Action, FailMode, IcbCode, OdsCode, Practice, PracticeStatus, RegionCode, Scope, SubIcbCode, SupplierId,
};
use rollout_net::{ApiError, Caller, wire};
use rollout_proto::v1::{self as pb, toggle_service_client::ToggleServiceClient};
use rollout_store::coordinator::CommandState;
use tonic::{Request, Response, Status, transport::Channel};
use tracing::{Span, instrument};

use super::Handlers;
use crate::{
    answers::Fault,
    coordinator::Core,
    model::Cmd,
    verification::{
        self, DEFAULT_SUPPLIER_TIMEOUT, Facts, Halt, MAX_SUPPLIER_TIMEOUT, MIN_SUPPLIER_TIMEOUT, ReadBack,
    },
};

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

/// Practices asked for in one ListPracticeFeatures page.
const VERIFY_PAGE: i32 = 5_000;
/// Most pages read from one supplier: 100,000 practices, far more than any supplier's estate
/// (the national estate is under 7,000). A supplier that keeps answering pages is faulty.
const MAX_VERIFY_PAGES: usize = 20;
/// Most practices named per supplier (all are counted).
const MAX_NAMED: usize = 100;
/// Most suppliers a request may name.
const MAX_FILTER: usize = 20;

/// Reads one supplier's ENABLED practices in the halt's scope, every page before `deadline`.
async fn read_back(
    core: &Core,
    mut client: ToggleServiceClient<Channel>,
    supplier: &SupplierId,
    feature: String,
    scope: &Scope,
    deadline: Instant,
    timeout: Duration,
) -> ReadBack {
    let (mut enabled, mut named) = (0, Vec::new());
    let mut token = String::new();
    for _ in 0..MAX_VERIFY_PAGES {
        let mut req = Request::new(pb::ListPracticeFeaturesRequest {
            feature: feature.clone(),
            page_size: VERIFY_PAGE,
            page_token: token.clone(),
            state: pb::practice_feature::State::Enabled.into(),
            ..Default::default()
        });
        // Tells the supplier when to give up; the caller's timer is what bounds the wait.
        req.set_timeout(deadline.saturating_duration_since(Instant::now()));
        let page = match client.list_practice_features(req).await {
            Ok(page) => page.into_inner(),
            Err(status) => return ReadBack::Failed(unanswered(&status, timeout)),
        };
        for answer in &page.practice_features {
            let covered = answer
                .practice
                .as_ref()
                .and_then(practice_of)
                .is_none_or(|p| scope.covers(&p));
            if covered {
                enabled += 1;
                if named.len() < MAX_NAMED {
                    named.push(
                        wire::practice_feature_name("name", &answer.name)
                            .map_or_else(|_| wire::shown(&answer.name), |_| answer.name.clone()),
                    );
                }
            }
        }
        if page.next_page_token.is_empty() {
            return ReadBack::Answered { enabled, named };
        }
        token = page.next_page_token;
    }
    let fault = Fault::new(format!(
        "ListPracticeFeatures kept answering pages after {} practices ({MAX_VERIFY_PAGES} pages), more than any estate holds",
        MAX_VERIFY_PAGES * VERIFY_PAGE as usize
    ));
    core.record_fault(supplier, &fault).await;
    ReadBack::Failed(format!("answered nonsense: {fault}"))
}

/// Why a read-back failed, in words: the timeout (the supplier's own deadline may end the call
/// a moment before the coordinator's timer), a supplier not reached, or what it answered.
fn unanswered(status: &Status, timeout: Duration) -> String {
    use tonic::Code;
    let why = match status.code() {
        Code::Cancelled | Code::DeadlineExceeded => format!("did not answer within {timeout:?}"),
        Code::Unavailable | Code::Unknown => format!("could not be reached: {}", status.message()),
        code => format!("answered {code:?}: {}", status.message()),
    };
    rollout_core::audit::printable(&why, crate::answers::MAX_FAULT_CHARS)
}

/// `supplier_timeout`, checked: default 2 s, from 100 ms to 30 s.
fn supplier_timeout(given: Option<&prost_types::Duration>) -> Result<Duration, ApiError> {
    let Some(given) = given else {
        return Ok(DEFAULT_SUPPLIER_TIMEOUT);
    };
    Duration::try_from(*given)
        .ok()
        .filter(|d| (MIN_SUPPLIER_TIMEOUT..=MAX_SUPPLIER_TIMEOUT).contains(d))
        .ok_or_else(|| {
            ApiError::new(
                tonic::Code::InvalidArgument,
                "SUPPLIER_TIMEOUT_OUT_OF_RANGE",
                format!(
                    "supplier_timeout must be between {MIN_SUPPLIER_TIMEOUT:?} and {MAX_SUPPLIER_TIMEOUT:?}"
                ),
            )
            .with_violation("supplier_timeout", "between 100ms and 30s")
        })
}

/// The suppliers a request names (none: every supplier), each configured or in the estate (the
/// estate is read only when a filter is given).
fn supplier_filter(h: &Handlers, names: &[String]) -> Result<BTreeSet<SupplierId>, ApiError> {
    if names.is_empty() {
        return Ok(BTreeSet::new());
    }
    if names.len() > MAX_FILTER {
        return Err(ApiError::invalid_field(
            "suppliers",
            format!("names {} suppliers; at most {MAX_FILTER}", names.len()),
        ));
    }
    let known: BTreeSet<SupplierId> = h
        .core
        .supplier_ids()
        .into_iter()
        .chain(h.core.estate.active_by_supplier().into_keys())
        .collect();
    let mut only = BTreeSet::new();
    for (i, name) in names.iter().enumerate() {
        let field = format!("suppliers[{i}]");
        let id = wire::supplier_name(&field, name)?;
        if !known.contains(&id) {
            let known: Vec<String> = known.iter().map(ToString::to_string).collect();
            return Err(ApiError::new(
                tonic::Code::InvalidArgument,
                "UNKNOWN_SUPPLIER",
                format!(
                    "suppliers/{id} is neither configured here nor in the national estate (known: {})",
                    known.join(", ")
                ),
            )
            .with_violation(field, "not a known supplier"));
        }
        only.insert(id);
    }
    Ok(only)
}

/// The halt's scope, if `c` is a dispatched halt; else why it cannot be verified.
fn dispatched_halt(c: &Cmd) -> Result<Scope, ApiError> {
    match (&c.domain.action, c.state) {
        (Action::Halt { scope }, CommandState::Dispatched) => Ok(scope.clone()),
        (Action::Halt { .. }, _) => Err(ApiError::failed_precondition(
            "NOT_DISPATCHED",
            format!("commands/{} has not been dispatched", c.domain.id),
        )),
        _ => Err(ApiError::failed_precondition(
            "NOT_A_HALT",
            format!(
                "commands/{} is not a halt; only a halt can be verified",
                c.domain.id
            ),
        )),
    }
}

/// What the coordinator knows now of each supplier to verify: the configured suppliers in
/// order, then any other of the estate with practices in scope; `only` if not empty.
async fn facts_now(core: &Core, scope: &Scope, only: &BTreeSet<SupplierId>) -> Vec<Facts> {
    let configured = core.supplier_ids();
    let counts = crate::impact::impact_delivered(&core.estate, &configured, &[scope]);
    let in_scope = |id: &SupplierId| {
        let name = format!("suppliers/{id}");
        counts
            .suppliers
            .iter()
            .find(|s| s.supplier == name)
            .map_or(0, |s| s.practices)
    };
    let not_delivered = counts
        .suppliers
        .iter()
        .filter(|s| s.not_delivered)
        .filter_map(|s| SupplierId::parse(s.supplier.strip_prefix("suppliers/")?).ok());
    let listed: Vec<(SupplierId, bool)> = configured
        .iter()
        .map(|id| (id.clone(), true))
        .chain(not_delivered.map(|id| (id, false)))
        .filter(|(id, _)| only.is_empty() || only.contains(id))
        .collect();
    core.read(|m| {
        listed
            .into_iter()
            .map(|(id, delivered)| {
                let status = m.supplier(&id);
                Facts {
                    in_scope: in_scope(&id),
                    delivered,
                    applied_sequence: status.map_or(0, |s| u64::try_from(s.pb.applied_sequence).unwrap_or(0)),
                    last_contact: status.and_then(|s| s.last_contact),
                    contact_on_record: status
                        .and_then(|s| s.pb.last_contact_time)
                        .and_then(|t| SystemTime::try_from(t).ok()),
                    in_step_contact: status.and_then(|s| s.in_step_contact),
                    last_error: status.map(|s| s.pb.last_error.clone()).unwrap_or_default(),
                    read_back: ReadBack::NotAsked,
                    supplier: id,
                }
            })
            .collect()
    })
    .await
}

#[instrument(skip_all, fields(command))]
pub(super) async fn verify_command(
    h: &Handlers,
    req: Request<pb::VerifyCommandRequest>,
) -> Result<Response<pb::VerifyCommandResponse>, Status> {
    // Held until the answer: each call pages every applied supplier's enabled practices.
    let _slot = h.verifies.take(&Caller::of(&req)?.identity)?;
    let r = req.get_ref();
    let id = wire::command_name("name", &r.name)?;
    let timeout = supplier_timeout(r.supplier_timeout.as_ref())?;
    let only = supplier_filter(h, &r.suppliers)?;
    Span::current().record("command", id.as_str());
    let c = h.core.find_command(&id).await?;
    let scope = dispatched_halt(&c)?;
    let fail_mode = h
        .core
        .read(|m| m.feature(&c.domain.feature).map(|(def, _)| def.fail_mode))
        .await
        .unwrap_or(FailMode::Static);
    let halt = Halt {
        sequence: c.domain.sequence,
        fail_mode,
    };
    let feature = format!("features/{}", c.domain.feature);
    let deadline = Instant::now() + timeout;
    // A JoinSet, so that a caller who gives up takes the read-backs with it.
    let mut checks = tokio::task::JoinSet::new();
    for (i, mut f) in facts_now(&h.core, &scope, &only).await.into_iter().enumerate() {
        let asked = (f.delivered && f.applied(&halt)).then(|| h.toggle(&f.supplier));
        let (core, feature, scope) = (h.core.clone(), feature.clone(), scope.clone());
        checks.spawn(async move {
            f.read_back = match asked {
                None => ReadBack::NotAsked,
                Some(Err(e)) => ReadBack::Failed(e.message().to_owned()),
                Some(Ok(client)) => {
                    let read = read_back(&core, client, &f.supplier, feature, &scope, deadline, timeout);
                    tokio::time::timeout_at(deadline.into(), read)
                        .await
                        .unwrap_or_else(|_| ReadBack::Failed(format!("did not answer within {timeout:?}")))
                }
            };
            (i, f)
        });
    }
    let mut facts = checks.join_all().await;
    facts.sort_by_key(|(i, _)| *i);
    let results: Vec<_> = facts
        .into_iter()
        .map(|(_, f)| verification::judge(&halt, f))
        .collect();
    let lifted_by = h
        .core
        .lifting_resume(&c)
        .await?
        .map(|r| format!("commands/{r}"))
        .unwrap_or_default();
    if lifted_by.is_empty() {
        for r in results
            .iter()
            .filter(|r| r.outcome() == pb::verify_command_response::Outcome::Verified)
        {
            if let Ok(supplier) = SupplierId::parse(r.supplier.trim_start_matches("suppliers/")) {
                h.core
                    .recorded
                    .halt_verified(halt.sequence, &supplier, c.domain.issued_at);
            }
        }
    }
    let sum =
        |count: fn(&pb::verify_command_response::SupplierResult) -> i32| results.iter().map(count).sum();
    Ok(Response::new(pb::VerifyCommandResponse {
        command: format!("commands/{id}"),
        verified: verification::verified(&results, !lifted_by.is_empty()),
        enabled_count: sum(|r| r.enabled_count),
        checked_count: sum(|r| r.checked_count),
        unverified_count: sum(|r| r.unverified_count),
        in_scope_count: sum(|r| r.in_scope_count),
        sequence: i64::try_from(halt.sequence).unwrap_or(i64::MAX),
        lifted_by,
        suppliers: results,
        verify_time: Some(wire::timestamp(SystemTime::now())),
    }))
}
