//! Per-method gRPC server metrics, recorded by a tower layer around the whole server: calls
//! handled by method and status code, the handling time of calls that are not server streams,
//! calls in flight and streams open. The method label comes from a table of the methods the
//! server's contracts declare, so a path no contract declares is counted as `unknown`: a
//! client cannot grow the label set.
//!
//! Label names follow the conventions of the gRPC ecosystem's Prometheus interceptors
//! (`grpc_service`, `grpc_method`, `grpc_type`, `grpc_code`, the code in words as in
//! `google.rpc.Code`).

use std::{
    collections::HashMap,
    pin::Pin,
    sync::{Arc, OnceLock},
    task::{Context, Poll},
    time::Instant,
};

use http_body::{Frame, SizeHint};
use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{counter::Counter, family::Family, gauge::Gauge, histogram::Histogram},
    registry::{Registry, Unit},
};
use prost::Message;
use tonic::{Code, body::Body};
use tower::{Layer, Service};

/// Upper bounds of the handling-time histogram, in seconds: 0.5 ms to 10 s.
const HANDLING_BUCKETS: [f64; 14] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// The gRPC status codes (`google.rpc.Code`), by number.
const CODES: usize = 17;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct MethodLabels {
    grpc_service: &'static str,
    grpc_method: &'static str,
    grpc_type: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct HandledLabels {
    grpc_service: &'static str,
    grpc_method: &'static str,
    grpc_type: &'static str,
    grpc_code: &'static str,
}

/// One method's series, made once at start (the handled counter of a code when first seen).
#[derive(Debug)]
struct Method {
    labels: MethodLabels,
    /// In flight now: calls, or for a server stream, streams open.
    in_flight: Gauge,
    /// The handling time; none for a server stream (counted open, not timed).
    handling: Option<Histogram>,
    handled: [OnceLock<Counter>; CODES],
}

#[derive(Debug)]
struct Shared {
    methods: Vec<Method>,
    by_path: HashMap<String, usize>,
    handled: Family<HandledLabels, Counter>,
}

/// The per-method metrics of one server; [`RpcMetrics::layer`] records them.
#[derive(Debug, Clone)]
pub struct RpcMetrics {
    shared: Arc<Shared>,
}

impl RpcMetrics {
    /// The metrics of the methods declared by the encoded `FileDescriptorSet`s in
    /// `descriptor_sets`, registered in `registry`. A set that does not decode is skipped (they
    /// are compiled in).
    pub fn new(registry: &mut Registry, descriptor_sets: &[&[u8]]) -> RpcMetrics {
        let in_flight = Family::<MethodLabels, Gauge>::default();
        let open_streams = Family::<MethodLabels, Gauge>::default();
        let handling = Family::<MethodLabels, Histogram>::new_with_constructor(
            (|| Histogram::new(HANDLING_BUCKETS)) as fn() -> Histogram,
        );
        let handled = Family::<HandledLabels, Counter>::default();
        let mut methods = Vec::new();
        let mut by_path = HashMap::new();
        let declared = descriptor_sets
            .iter()
            .filter_map(|bytes| prost_types::FileDescriptorSet::decode(*bytes).ok())
            .flat_map(|set| set.file)
            .flat_map(|file| {
                let package = file.package().to_owned();
                file.service.into_iter().map(move |s| (package.clone(), s))
            })
            .flat_map(|(package, service)| {
                let full = leak(if package.is_empty() {
                    service.name().to_owned()
                } else {
                    format!("{package}.{}", service.name())
                });
                service.method.into_iter().map(move |m| (full, m))
            });
        let unknown = std::iter::once((
            "unknown",
            prost_types::MethodDescriptorProto {
                name: Some("unknown".into()),
                ..Default::default()
            },
        ));
        for (service, m) in unknown.chain(declared) {
            let path = format!("/{service}/{}", m.name());
            if by_path.contains_key(&path) {
                continue;
            }
            let (client, server) = (m.client_streaming(), m.server_streaming());
            let labels = MethodLabels {
                grpc_service: service,
                grpc_method: leak(m.name().to_owned()),
                grpc_type: match (client, server) {
                    (false, false) => "unary",
                    (true, false) => "client_stream",
                    (false, true) => "server_stream",
                    (true, true) => "bidi_stream",
                },
            };
            let gauge = if server { &open_streams } else { &in_flight };
            by_path.insert(path, methods.len());
            methods.push(Method {
                in_flight: gauge.get_or_create_owned(&labels),
                handling: (!server).then(|| handling.get_or_create_owned(&labels)),
                labels,
                handled: Default::default(),
            });
        }
        registry.register(
            "grpc_server_handled",
            "gRPC calls completed, by method and status code (a call whose client went away \
             before its end counts as CANCELLED)",
            handled.clone(),
        );
        registry.register_with_unit(
            "grpc_server_handling",
            "Time from a call's request to its status, for methods that do not stream their \
             answers",
            Unit::Seconds,
            handling,
        );
        registry.register(
            "grpc_server_in_flight_calls",
            "Calls of methods that do not stream their answers, in progress now",
            in_flight,
        );
        registry.register(
            "grpc_server_open_streams",
            "Streams of server-streaming methods (watches, event streams) open now",
            open_streams,
        );
        RpcMetrics {
            shared: Arc::new(Shared {
                methods,
                by_path,
                handled,
            }),
        }
    }

    /// The layer that records calls (outermost, so that it sees every refusal).
    pub fn layer(&self) -> RpcMetricsLayer {
        RpcMetricsLayer {
            shared: self.shared.clone(),
        }
    }
}

/// Leaks a method or service name: the table is made once per process, of the names compiled
/// in, so the label values can be `&'static str`.
fn leak(s: String) -> &'static str {
    Box::leak(s.into_boxed_str())
}

/// The layer of [`RpcMetrics`].
#[derive(Debug, Clone)]
pub struct RpcMetricsLayer {
    shared: Arc<Shared>,
}

impl<S> Layer<S> for RpcMetricsLayer {
    type Service = RpcMetricsService<S>;

    fn layer(&self, inner: S) -> RpcMetricsService<S> {
        RpcMetricsService {
            inner,
            shared: self.shared.clone(),
        }
    }
}

/// The service of [`RpcMetricsLayer`].
#[derive(Debug, Clone)]
pub struct RpcMetricsService<S> {
    inner: S,
    shared: Arc<Shared>,
}

type BoxFuture<T, E> = Pin<Box<dyn Future<Output = Result<T, E>> + Send>>;

impl<S> Service<http::Request<Body>> for RpcMetricsService<S>
where
    S: Service<http::Request<Body>, Response = http::Response<Body>>,
    S::Future: Send + 'static,
{
    type Response = http::Response<Body>;
    type Error = S::Error;
    type Future = BoxFuture<Self::Response, Self::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<Body>) -> Self::Future {
        let index = self.shared.by_path.get(req.uri().path()).copied().unwrap_or(0);
        let mut call = Call::new(self.shared.clone(), index);
        let response = self.inner.call(req);
        Box::pin(async move {
            let response = response.await?;
            // A trailers-only answer (an error before any message) has its status here.
            if let Some(code) = status(response.headers()) {
                call.end(code);
            }
            Ok(response.map(|inner| Body::new(MetricsBody { inner, call })))
        })
    }
}

/// One call counted in flight, from its request to its status; ended once.
#[derive(Debug)]
struct Call {
    shared: Arc<Shared>,
    index: usize,
    started: Instant,
    ended: bool,
}

impl Call {
    fn new(shared: Arc<Shared>, index: usize) -> Call {
        shared.methods[index].in_flight.inc();
        Call {
            shared,
            index,
            started: Instant::now(),
            ended: false,
        }
    }

    fn end(&mut self, code: Code) {
        if std::mem::replace(&mut self.ended, true) {
            return;
        }
        let m = &self.shared.methods[self.index];
        m.in_flight.dec();
        if let Some(h) = &m.handling {
            h.observe(self.started.elapsed().as_secs_f64());
        }
        let n = (code as usize).min(CODES - 1);
        m.handled[n]
            .get_or_init(|| {
                self.shared.handled.get_or_create_owned(&HandledLabels {
                    grpc_service: m.labels.grpc_service,
                    grpc_method: m.labels.grpc_method,
                    grpc_type: m.labels.grpc_type,
                    grpc_code: code_name(code),
                })
            })
            .inc();
    }
}

impl Drop for Call {
    /// A response dropped before its status (the client went away, or the connection closed).
    fn drop(&mut self) {
        self.end(Code::Cancelled);
    }
}

/// The `grpc-status` in `headers`, if there is one.
fn status(headers: &http::HeaderMap) -> Option<Code> {
    let value = headers.get("grpc-status")?;
    Some(Code::from_bytes(value.as_bytes()))
}

/// The code's name as `google.rpc.Code` spells it.
fn code_name(code: Code) -> &'static str {
    match code {
        Code::Ok => "OK",
        Code::Cancelled => "CANCELLED",
        Code::Unknown => "UNKNOWN",
        Code::InvalidArgument => "INVALID_ARGUMENT",
        Code::DeadlineExceeded => "DEADLINE_EXCEEDED",
        Code::NotFound => "NOT_FOUND",
        Code::AlreadyExists => "ALREADY_EXISTS",
        Code::PermissionDenied => "PERMISSION_DENIED",
        Code::ResourceExhausted => "RESOURCE_EXHAUSTED",
        Code::FailedPrecondition => "FAILED_PRECONDITION",
        Code::Aborted => "ABORTED",
        Code::OutOfRange => "OUT_OF_RANGE",
        Code::Unimplemented => "UNIMPLEMENTED",
        Code::Internal => "INTERNAL",
        Code::Unavailable => "UNAVAILABLE",
        Code::DataLoss => "DATA_LOSS",
        Code::Unauthenticated => "UNAUTHENTICATED",
    }
}

/// A response body that ends its call's count at its trailers.
struct MetricsBody {
    inner: Body,
    call: Call,
}

impl http_body::Body for MetricsBody {
    type Data = <Body as http_body::Body>::Data;
    type Error = <Body as http_body::Body>::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let this = &mut *self;
        let frame = std::task::ready!(Pin::new(&mut this.inner).poll_frame(cx));
        match &frame {
            Some(Ok(f)) => {
                if let Some(code) = f.trailers_ref().and_then(status) {
                    this.call.end(code);
                }
            }
            Some(Err(_)) => this.call.end(Code::Internal),
            // Ended without trailers: nothing more will say how it went.
            None => this.call.end(Code::Unknown),
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_table_holds_every_declared_method_and_one_unknown() {
        let mut registry = Registry::default();
        let m = RpcMetrics::new(
            &mut registry,
            &[
                rollout_proto::FILE_DESCRIPTOR_SET,
                tonic_health::pb::FILE_DESCRIPTOR_SET,
            ],
        );
        let s = &m.shared;
        let get = &s.methods[s.by_path["/nhs.gprollout.v1.ToggleService/GetPracticeFeature"]];
        assert_eq!((get.labels.grpc_type, get.handling.is_some()), ("unary", true));
        let watch = &s.methods[s.by_path["/grpc.health.v1.Health/Watch"]];
        assert_eq!(watch.labels.grpc_type, "server_stream");
        assert!(
            s.by_path
                .contains_key("/flagd.evaluation.v2.Service/ResolveBoolean")
        );
        assert_eq!(s.methods[0].labels.grpc_method, "unknown");
        assert!(!s.by_path.contains_key("/no.Such/Method"));
    }
}
