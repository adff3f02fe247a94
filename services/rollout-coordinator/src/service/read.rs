//! The CoordinatorService reads: features, commands (from the store, with the model's
//! unsettled deliveries), suppliers and the audit log. WatchCommand is in `views.rs`.

use rollout_net::{ApiError, MessageLimits, Page, wire};
use rollout_proto::v1::{self as pb, audit_service_client::AuditServiceClient};
use tonic::{Request, Response, Status};

use super::Handlers;
use crate::history::ListQuery;

pub(super) async fn get_feature(
    h: &Handlers,
    req: Request<pb::GetFeatureRequest>,
) -> Result<Response<pb::Feature>, Status> {
    let key = wire::feature_name("name", &req.get_ref().name)?;
    let feature = h.core.read(|m| m.feature(&key).map(|(_, f)| f.clone())).await;
    let f = feature.ok_or_else(|| ApiError::not_found("FEATURE_NOT_FOUND", format!("features/{key}")))?;
    Ok(Response::new(f))
}

pub(super) async fn list_features(
    h: &Handlers,
    req: Request<pb::ListFeaturesRequest>,
) -> Result<Response<pb::ListFeaturesResponse>, Status> {
    let r = req.get_ref();
    let size = wire::page_size("page_size", r.page_size, 100, 1_000)?;
    let after = wire::page_token_after("page_token", &r.page_token, "features")?;
    let (features, next_page_token) = h
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

pub(super) async fn get_command(
    h: &Handlers,
    req: Request<pb::GetCommandRequest>,
) -> Result<Response<pb::Command>, Status> {
    let id = wire::command_name("name", &req.get_ref().name)?;
    Ok(Response::new(h.core.annotated_view(&id).await?))
}

pub(super) async fn list_commands(
    h: &Handlers,
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
    // Newest first, starting after the token's command, read from the store. A command
    // carries its whole scope (up to 10,000 practice codes, about 80 KB) and its impact the
    // codes the estate does not know (as much again), so a page is bounded by bytes as well as
    // by count.
    let page = h
        .core
        .list_commands(&ListQuery {
            feature,
            state,
            after,
            size,
        })
        .await?;
    let (commands, next_page_token) =
        page.finish(|c| wire::page_token(&query, c.name.strip_prefix("commands/").unwrap_or(&c.name)));
    Ok(Response::new(pb::ListCommandsResponse {
        commands,
        next_page_token,
    }))
}

pub(super) async fn list_suppliers(
    h: &Handlers,
    req: Request<pb::ListSuppliersRequest>,
) -> Result<Response<pb::ListSuppliersResponse>, Status> {
    let r = req.get_ref();
    let size = wire::page_size("page_size", r.page_size, 100, 100)?;
    let after = wire::page_token_after("page_token", &r.page_token, "suppliers")?;
    let mut configured: Vec<_> = h
        .core
        .suppliers
        .iter()
        .filter(|s| after.as_deref().is_none_or(|a| s.id.as_str() > a))
        .collect();
    configured.sort_by(|a, b| a.id.cmp(&b.id));
    let (mut suppliers, next_page_token) = h
        .core
        .read(|m| {
            Page::new(size)
                .fill(configured.into_iter().map(|s| h.core.supplier_view(m, s)))
                .finish(|s| {
                    wire::page_token("suppliers", s.name.strip_prefix("suppliers/").unwrap_or(&s.name))
                })
        })
        .await;
    super::register::with_register(h, &mut suppliers).await?;
    Ok(Response::new(pb::ListSuppliersResponse {
        suppliers,
        next_page_token,
        coordinator_refusal_audit: Some(h.refusals.status()),
        coordinator_tls_warnings: h.tls_warnings.list(),
    }))
}

pub(super) async fn get_supplier(
    h: &Handlers,
    req: Request<pb::GetSupplierRequest>,
) -> Result<Response<pb::Supplier>, Status> {
    let id = wire::supplier_name("name", &req.get_ref().name)?;
    let s = h
        .core
        .suppliers
        .iter()
        .find(|s| s.id == id)
        .ok_or_else(|| ApiError::not_found("SUPPLIER_NOT_FOUND", format!("suppliers/{id}")))?;
    let mut view = h.core.read(|m| h.core.supplier_view(m, s)).await;
    super::register::with_register(h, std::slice::from_mut(&mut view)).await?;
    Ok(Response::new(view))
}

pub(super) async fn list_audit_events(
    h: &Handlers,
    req: Request<pb::ListAuditEventsRequest>,
) -> Result<Response<pb::ListAuditEventsResponse>, Status> {
    let r = req.get_ref();
    let (after, size) = wire::audit_page_start(r)?;
    if !r.supplier.is_empty() {
        let supplier = wire::supplier_name("supplier", &r.supplier)?;
        return Ok(Response::new(supplier_audit(h, &supplier, r).await?));
    }
    let events = h
        .core
        .store()
        .list_audit(after, u32::try_from(size + 1).unwrap_or(u32::MAX))
        .await
        .map_err(|e| ApiError::internal("reading the audit log", e))?;
    Ok(Response::new(wire::audit_page(&events, size)))
}

/// A page of a supplier's audit log, read from the supplier as it wrote it.
async fn supplier_audit(
    h: &Handlers,
    supplier: &rollout_core::SupplierId,
    r: &pb::ListAuditEventsRequest,
) -> Result<pb::ListAuditEventsResponse, ApiError> {
    let channel = h
        .channels
        .get(supplier)
        .cloned()
        .ok_or_else(|| ApiError::not_found("SUPPLIER_NOT_FOUND", format!("suppliers/{supplier}")))?;
    let mut client = AuditServiceClient::new(channel).with_message_limits();
    let mut call = Request::new(pb::ListAuditEventsRequest {
        supplier: String::new(),
        ..r.clone()
    });
    call.set_timeout(std::time::Duration::from_secs(10));
    match client.list_audit_events(call).await {
        Ok(page) => Ok(page.into_inner()),
        Err(s) if s.code() == tonic::Code::Unimplemented => Err(ApiError::failed_precondition(
            "SUPPLIER_AUDIT_UNAVAILABLE",
            format!("suppliers/{supplier} runs a version that does not offer its audit log (AuditService)"),
        )
        .with_metadata("supplier", supplier.to_string())),
        Err(s) => Err(ApiError::unavailable(
            "SUPPLIER_UNAVAILABLE",
            format!(
                "suppliers/{supplier} did not answer: {:?} {}",
                s.code(),
                s.message()
            ),
        )
        .with_metadata("supplier", supplier.to_string())),
    }
}
