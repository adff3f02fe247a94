//! AuditService: the supplier's audit log, read by the coordinator (for `rolloutctl audit
//! verify --supplier`) or by the supplier's own auditors.

use rollout_proto::v1::audit_service_server::AuditService;

use super::*;

#[tonic::async_trait]
impl AuditService for Handlers {
    async fn list_audit_events(
        &self,
        req: Request<pb::ListAuditEventsRequest>,
    ) -> Result<Response<pb::ListAuditEventsResponse>, Status> {
        let r = req.get_ref();
        if !r.supplier.is_empty() {
            return Err(ApiError::invalid_field(
                "supplier",
                "must be empty at a supplier: it serves its own audit log",
            )
            .into());
        }
        let (after, size) = wire::audit_page_start(r)?;
        let events = self
            .engine
            .store()
            .list_audit(after, u32::try_from(size + 1).unwrap_or(u32::MAX))
            .await
            .map_err(|e| ApiError::internal("reading the audit log", e))?;
        Ok(Response::new(wire::audit_page(&events, size)))
    }
}
