//! `flagd.evaluation.v2.Service`, called by the Python, Java, JavaScript and .NET providers.

use rollout_proto::flagd::evaluation::v2::{self as pb, service_server::Service};
use tonic::{Request, Response, Status};
use tracing::instrument;

use super::{EventStream, Handlers};

#[tonic::async_trait]
impl Service for Handlers {
    // The hot read, like GetPracticeFeature: its span is at DEBUG.
    #[instrument(level = "debug", skip_all, fields(flag = %req.get_ref().flag_key))]
    async fn resolve_boolean(
        &self,
        req: Request<pb::ResolveBooleanRequest>,
    ) -> Result<Response<pb::ResolveBooleanResponse>, Status> {
        let r = req.get_ref();
        let a = self.boolean_answer(&r.flag_key, r.context.as_ref())?;
        Ok(Response::new(pb::ResolveBooleanResponse {
            value: Some(a.value),
            reason: a.reason.to_owned(),
            variant: Some(a.variant.to_owned()),
            metadata: Some(a.metadata),
        }))
    }

    async fn resolve_string(
        &self,
        req: Request<pb::ResolveStringRequest>,
    ) -> Result<Response<pb::ResolveStringResponse>, Status> {
        Err(self.not_boolean(&req.get_ref().flag_key, "a string").into())
    }

    async fn resolve_float(
        &self,
        req: Request<pb::ResolveFloatRequest>,
    ) -> Result<Response<pb::ResolveFloatResponse>, Status> {
        Err(self.not_boolean(&req.get_ref().flag_key, "a float").into())
    }

    async fn resolve_int(
        &self,
        req: Request<pb::ResolveIntRequest>,
    ) -> Result<Response<pb::ResolveIntResponse>, Status> {
        Err(self.not_boolean(&req.get_ref().flag_key, "an integer").into())
    }

    async fn resolve_object(
        &self,
        req: Request<pb::ResolveObjectRequest>,
    ) -> Result<Response<pb::ResolveObjectResponse>, Status> {
        Err(self.not_boolean(&req.get_ref().flag_key, "an object").into())
    }

    type EventStreamStream = EventStream<pb::EventStreamResponse>;

    #[instrument(skip_all)]
    async fn event_stream(
        &self,
        req: Request<pb::EventStreamRequest>,
    ) -> Result<Response<Self::EventStreamStream>, Status> {
        self.events(&req, |r#type, data| pb::EventStreamResponse { r#type, data })
    }
}
