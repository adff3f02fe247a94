//! VerifyCommand (each supplier's ENABLED practices paged in parallel and judged against the
//! halt's scope) and GetPracticeStatus (asked of the practice's supplier).

use std::time::SystemTime;

use rollout_core::{
    Action, IcbCode, OdsCode, Practice, PracticeStatus, RegionCode, Scope, SubIcbCode, SupplierId,
};
use rollout_net::{ApiError, Caller, wire};
use rollout_proto::v1::{self as pb, toggle_service_client::ToggleServiceClient};
use rollout_store::coordinator::CommandState;
use tonic::{Request, Response, Status, transport::Channel};
use tracing::{Span, instrument};

use super::Handlers;
use crate::{answers::Fault, coordinator::Core};

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

/// The result of checking one supplier for practices in a halt's scope still enabled.
async fn verify_supplier(
    core: &Core,
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
    for _ in 0..MAX_VERIFY_PAGES {
        let mut req = Request::new(pb::ListPracticeFeaturesRequest {
            feature: feature.clone(),
            page_size: VERIFY_PAGE,
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
                        if result.enabled_practices.len() < MAX_NAMED {
                            let named = wire::practice_feature_name("name", &answer.name)
                                .map_or_else(|_| wire::shown(&answer.name), |_| answer.name.clone());
                            result.enabled_practices.push(named);
                        }
                    }
                }
                if page.next_page_token.is_empty() {
                    return result;
                }
                token = page.next_page_token;
            }
            Err(status) => {
                result.error = rollout_core::audit::printable(
                    &format!("{:?}: {}", status.code(), status.message()),
                    crate::answers::MAX_FAULT_CHARS,
                );
                return result;
            }
        }
    }
    let fault = Fault::new(format!(
        "ListPracticeFeatures kept answering pages after {} practices ({MAX_VERIFY_PAGES} pages), more than any estate holds",
        MAX_VERIFY_PAGES * VERIFY_PAGE as usize
    ));
    core.record_fault(&supplier, &fault).await;
    result.error = format!("not verified: {fault}");
    result
}

#[instrument(skip_all, fields(command))]
pub(super) async fn verify_command(
    h: &Handlers,
    req: Request<pb::VerifyCommandRequest>,
) -> Result<Response<pb::VerifyCommandResponse>, Status> {
    // Held until the answer: each call pages every supplier's enabled practices.
    let _slot = h.verifies.take(&Caller::of(&req)?.identity)?;
    let id = wire::command_name("name", &req.get_ref().name)?;
    Span::current().record("command", id.as_str());
    let c = h.core.find_command(&id).await?;
    let (scope, feature) = match (&c.domain.action, c.state) {
        (Action::Halt { scope }, CommandState::Dispatched) => {
            (scope.clone(), format!("features/{}", c.domain.feature))
        }
        (Action::Halt { .. }, _) => {
            return Err(ApiError::failed_precondition(
                "NOT_DISPATCHED",
                format!("commands/{id} has not been dispatched"),
            )
            .into());
        }
        _ => {
            return Err(ApiError::failed_precondition(
                "NOT_A_HALT",
                format!("commands/{id} is not a halt; only a halt can be verified"),
            )
            .into());
        }
    };
    let checks = h.core.suppliers.iter().map(|s| {
        let client = h.toggle(&s.id);
        let (supplier, feature, scope) = (s.id.clone(), feature.clone(), scope.clone());
        let core = h.core.clone();
        async move {
            match client {
                Ok(c) => verify_supplier(&core, c, supplier, feature, scope).await,
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
    let scope_counts = crate::impact::impact(&h.core.estate, &[&scope]);
    for r in &mut results {
        r.checked_count = scope_counts
            .suppliers
            .iter()
            .find(|s| s.supplier == r.supplier)
            .map_or(0, |s| s.practices);
    }
    let enabled_count = results.iter().map(|r| r.enabled_count).sum();
    let checked_count = results.iter().map(|r| r.checked_count).sum();
    let lifted_by = h
        .core
        .lifting_resume(&c)
        .await?
        .map(|r| format!("commands/{r}"))
        .unwrap_or_default();
    // Nothing in scope, or no longer in force, is never a verified halt.
    let verified = enabled_count == 0
        && checked_count > 0
        && lifted_by.is_empty()
        && results.iter().all(|r| r.error.is_empty());
    Ok(Response::new(pb::VerifyCommandResponse {
        command: format!("commands/{id}"),
        verified,
        enabled_count,
        checked_count,
        lifted_by,
        suppliers: results,
        verify_time: Some(wire::timestamp(SystemTime::now())),
        ..Default::default()
    }))
}

#[instrument(skip_all, fields(practice, feature))]
pub(super) async fn get_practice_status(
    h: &Handlers,
    req: Request<pb::GetPracticeStatusRequest>,
) -> Result<Response<pb::PracticeFeature>, Status> {
    let (ods, key) = wire::practice_feature_name("name", &req.get_ref().name)?;
    Span::current()
        .record("practice", ods.as_str())
        .record("feature", key.as_str());
    let practice = h
        .core
        .estate
        .get(&ods)
        .ok_or_else(|| ApiError::not_found("PRACTICE_NOT_FOUND", format!("practices/{ods}")))?;
    let mut client = h.toggle(&practice.supplier)?;
    let mut call = Request::new(pb::GetPracticeFeatureRequest {
        name: wire::practice_feature_resource(&ods, &key),
        explain: true,
    });
    call.set_timeout(std::time::Duration::from_secs(10));
    let name = wire::practice_feature_resource(&ods, &key);
    match client.get_practice_feature(call).await {
        // Passed on bounded: the supplier's answer is input, like a request.
        Ok(answer) => match crate::answers::practice_answer(answer.into_inner(), &name) {
            Ok(answer) => Ok(Response::new(answer)),
            Err(fault) => {
                h.core.record_fault(&practice.supplier, &fault).await;
                Err(ApiError::unavailable(
                    "SUPPLIER_FAULTY",
                    format!("suppliers/{} answered nonsense: {fault}", practice.supplier),
                )
                .with_metadata("supplier", practice.supplier.to_string())
                .into())
            }
        },
        // The supplier's message already says what does not exist.
        Err(s) if s.code() == tonic::Code::NotFound => Err(ApiError::new(
            tonic::Code::NotFound,
            "NOT_FOUND_AT_SUPPLIER",
            format!("{name} at suppliers/{}: {}", practice.supplier, s.message()),
        )
        .with_metadata("name", name)
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
