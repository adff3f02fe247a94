//! Traces across the two services (docs/OBSERVABILITY.md, "Traces"): which spans are exported,
//! and the W3C trace context a call carries in its gRPC metadata, so that one trace holds an
//! operator's HaltFeature at the coordinator, its dispatch to every supplier and each supplier's
//! ApplyCommand with its commit and publication to watchers.
//!
//! Only spans of [`TARGET`] are exported, and only when `--otlp-endpoint` is set
//! ([`crate::telemetry`]): the write paths (the coordinator's write calls, its dispatch of a
//! command to a supplier, a supplier's ApplyCommand and ReplaceRules, their commits and
//! publications). The spans that give log lines their context, and every read path, are never
//! exported. With tracing off no layer records these spans beyond a log line's context, and the functions
//! here cost a look-up of the subscriber or a header each, on write paths only.

use opentelemetry::{
    Context,
    propagation::{Extractor, Injector, TextMapPropagator},
    trace::{SpanContext, TraceContextExt},
};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use tonic::metadata::{KeyRef, MetadataKey, MetadataMap, MetadataValue};
use tracing::{Instrument, Span};
use tracing_opentelemetry::OpenTelemetrySpanExt;

/// The `tracing` target of every exported span (and of no other span).
pub const TARGET: &str = "gprollout::trace";

/// The gRPC metadata key that carries a command's id (a UUID) on the coordinator's ApplyCommand
/// to a supplier, beside the W3C `traceparent` (and `tracestate`): a proxy or a supplier's log
/// can name the command before the body is read.
pub const COMMAND_ID_HEADER: &str = "x-gprollout-command-id";

/// The longest command id taken from [`COMMAND_ID_HEADER`] (a UUID is 36 characters); a longer
/// value is ignored.
const MAX_COMMAND_ID_CHARS: usize = 64;

/// A span of [`TARGET`] for one call of a write method, named as the method (`HaltFeature`),
/// of kind server, with the fields the handlers record as they learn them (empty until then):
/// `gprollout.feature` (a feature key), `gprollout.command_id` (a command's UUID),
/// `gprollout.sequence` (its global sequence, once dispatched) and `gprollout.supplier` (a
/// supplier's id). Make it a child of the caller's trace with [`follow`] before it is first
/// entered.
#[macro_export]
macro_rules! call_span {
    ($method:literal) => {
        ::tracing::info_span!(
            target: $crate::trace::TARGET,
            $method,
            otel.kind = "server",
            gprollout.feature = ::tracing::field::Empty,
            gprollout.command_id = ::tracing::field::Empty,
            gprollout.sequence = ::tracing::field::Empty,
            gprollout.supplier = ::tracing::field::Empty,
        )
    };
}

/// Where a trace continues from: the span context of a call, kept to be the parent of work done
/// later on another task (a dispatched command's delivery to each supplier).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Parent(SpanContext);

impl Parent {
    /// The trace `span` is in, if it is recorded (tracing on and `span` exported); `None`
    /// otherwise.
    pub fn of(span: &Span) -> Option<Parent> {
        let context = span.context();
        let span_context = context.span().span_context().clone();
        span_context.is_valid().then_some(Parent(span_context))
    }

    /// The W3C trace context (`traceparent`, `tracestate`) `metadata` carries, if it carries a
    /// valid one.
    pub fn from_metadata(metadata: &MetadataMap) -> Option<Parent> {
        let context = TraceContextPropagator::new().extract(&Carrier(metadata));
        let span_context = context.span().span_context().clone();
        span_context.is_valid().then_some(Parent(span_context))
    }

    /// Makes `span` a child of this context. Call it before `span` is first entered (after, it
    /// changes nothing); nothing happens when tracing is off or `span` is not exported.
    pub fn adopt(&self, span: &Span) {
        // Refused only when tracing is off, the span is not exported or already started: in each
        // case the span stays as it is, which is all there is to do.
        let _ = span.set_parent(Context::new().with_remote_span_context(self.0.clone()));
    }
}

/// Makes `span` (of [`call_span!`]) a child of the trace the caller's `metadata` carries, if it
/// carries one, and records the command id of [`COMMAND_ID_HEADER`] in `gprollout.command_id`
/// until the handler records the body's. Call it before `span` is first entered.
pub fn follow(span: &Span, metadata: &MetadataMap) {
    if span.is_disabled() {
        return;
    }
    if let Some(parent) = Parent::from_metadata(metadata) {
        parent.adopt(span);
    }
    if let Some(id) = command_id(metadata) {
        span.record("gprollout.command_id", id);
    }
}

/// The command id `metadata` carries in [`COMMAND_ID_HEADER`], if any (and no longer than a
/// command id may be). A handler that reads the id from the body records it only if it differs,
/// so the span has the attribute once.
pub fn command_id(metadata: &MetadataMap) -> Option<&str> {
    metadata
        .get(COMMAND_ID_HEADER)
        .and_then(|v| v.to_str().ok())
        .filter(|id| id.len() <= MAX_COMMAND_ID_CHARS)
}

/// Writes `span`'s trace context into `metadata` as W3C `traceparent` (and `tracestate` when
/// there is one). Nothing when the span is not recorded (tracing off).
pub fn inject(span: &Span, metadata: &mut MetadataMap) {
    let context = span.context();
    if context.span().span_context().is_valid() {
        TraceContextPropagator::new().inject_context(&context, &mut Carrier(metadata));
    }
}

/// Whether the task is inside a recorded span: a write's inner spans (commit, publish) are made
/// only then, so that a write outside any traced call (an estate import at start) is no trace of
/// its own.
pub fn active() -> bool {
    Context::current().has_active_span()
}

/// Records the outcome of a traced call on `span`: its gRPC status code as
/// `rpc.grpc.status_code`, and an error status with the message when it failed. Nothing when
/// `span` is not recorded.
pub fn outcome<T>(span: &Span, result: &Result<T, tonic::Status>) {
    if span.is_disabled() {
        return;
    }
    let code = match result {
        Ok(_) => tonic::Code::Ok,
        Err(status) => {
            span.set_status(opentelemetry::trace::Status::error(status.message().to_owned()));
            status.code()
        }
    };
    span.set_attribute("rpc.grpc.status_code", i64::from(code as i32));
}

/// Runs a handler's `call` in `span` (of [`call_span!`]), a child of the trace the caller's
/// `metadata` carries if it carries one, and records the call's outcome on it ([`outcome`]).
pub async fn traced<T>(
    span: Span,
    metadata: &MetadataMap,
    call: impl Future<Output = Result<T, tonic::Status>>,
) -> Result<T, tonic::Status> {
    follow(&span, metadata);
    let result = call.instrument(span.clone()).await;
    outcome(&span, &result);
    result
}

/// gRPC metadata as the propagator reads and writes it: ASCII keys and values only.
struct Carrier<M>(M);

impl Extractor for Carrier<&MetadataMap> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0
            .keys()
            .filter_map(|k| match k {
                KeyRef::Ascii(k) => Some(k.as_str()),
                KeyRef::Binary(_) => None,
            })
            .collect()
    }
}

impl Injector for Carrier<&mut MetadataMap> {
    fn set(&mut self, key: &str, value: String) {
        // The propagator's keys and values are ASCII by construction; one that is not is left out.
        if let (Ok(key), Ok(value)) = (
            MetadataKey::from_bytes(key.as_bytes()),
            MetadataValue::try_from(value.as_str()),
        ) {
            self.0.insert(key, value);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TRACEPARENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    #[test]
    fn a_traceparent_in_metadata_is_the_parent_and_garbage_is_none() {
        let mut metadata = MetadataMap::new();
        assert_eq!(Parent::from_metadata(&metadata), None);
        metadata.insert("traceparent", TRACEPARENT.parse().expect("ascii"));
        let parent = Parent::from_metadata(&metadata).expect("a valid traceparent");
        assert_eq!(
            parent.0.trace_id().to_string(),
            "4bf92f3577b34da6a3ce929d0e0e4736"
        );
        metadata.insert("traceparent", "00-not-a-trace-01".parse().expect("ascii"));
        assert_eq!(Parent::from_metadata(&metadata), None);
    }

    #[test]
    fn without_a_tracing_layer_nothing_is_recorded_or_written() {
        // No subscriber with the OpenTelemetry layer: tracing is off.
        let span = crate::call_span!("HaltFeature");
        assert_eq!(Parent::of(&span), None);
        let mut metadata = MetadataMap::new();
        inject(&span, &mut metadata);
        assert!(metadata.is_empty());
        let mut incoming = MetadataMap::new();
        incoming.insert("traceparent", TRACEPARENT.parse().expect("ascii"));
        follow(&span, &incoming);
        outcome::<()>(&span, &Err(tonic::Status::internal("no")));
        assert!(!active());
    }
}
