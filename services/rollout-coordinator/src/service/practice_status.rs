//! GetPracticeStatus: the practice's live, explained answer, asked of its supplier.

use rollout_net::{ApiError, wire};
use rollout_proto::v1 as pb;
use tonic::{Request, Response, Status};
use tracing::{Span, instrument};

use super::Handlers;

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
