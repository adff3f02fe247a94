//! The export of spans to an OpenTelemetry collector over OTLP/gRPC: a batch span processor on a
//! thread of its own (a call only ever queues its span, and a full queue drops it), over the
//! project's tonic, to a plaintext `http://` endpoint. The standard `OTEL_BSP_*` variables set
//! the batching, `OTEL_EXPORTER_OTLP_TIMEOUT` and `OTEL_EXPORTER_OTLP_HEADERS` the calls, and
//! `OTEL_RESOURCE_ATTRIBUTES` adds resource attributes (`service.name` is always the service's).

use std::{
    sync::Mutex,
    time::{Duration, Instant},
};

use opentelemetry::{Key, KeyValue, trace::TracerProvider as _};
use opentelemetry_otlp::WithExportConfig;
use opentelemetry_sdk::{
    Resource,
    error::OTelSdkResult,
    trace::{SdkTracer, SdkTracerProvider, SpanData, SpanExporter},
};
use tracing::{Subscriber, info, warn};
use tracing_opentelemetry::OpenTelemetryLayer;
use tracing_subscriber::registry::LookupSpan;

/// How often, at most, failed exports are told at WARN while they go on failing.
const TELL_EVERY: Duration = Duration::from_secs(60);

/// Where a server's spans go, and as what.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Export {
    /// The collector's OTLP/gRPC endpoint, `http://HOST:PORT` (see [`check_endpoint`]).
    pub endpoint: String,
    /// The resource's `service.name`: `gprollout-coordinator` or `gprollout-supplier`.
    pub service: &'static str,
    /// More resource attributes, such as the supplier's id (`gprollout.supplier`).
    pub attributes: Vec<(&'static str, String)>,
}

/// The span export of a running process. Shut it down once the server has stopped, within the
/// runtime: the spans still queued are sent first.
#[derive(Debug)]
pub struct Tracing {
    provider: SdkTracerProvider,
}

/// Checks an `--otlp-endpoint`: `http://HOST:PORT` (a path of `/` at most). An `https://`
/// endpoint is refused: the export has no TLS of its own, so send to a collector on the same
/// host or pod (an agent or a sidecar) that forwards over TLS. The error says what to give.
pub fn check_endpoint(endpoint: &str) -> Result<(), String> {
    let refuse = |why: &str| {
        Err(format!(
            "invalid --otlp-endpoint {endpoint:?}: {why}; give http://HOST:PORT, for example http://127.0.0.1:4317"
        ))
    };
    let uri: http::Uri = match endpoint.parse() {
        Ok(uri) => uri,
        Err(e) => return refuse(&e.to_string()),
    };
    match uri.scheme_str() {
        Some("http") => {}
        Some("https") => {
            return refuse(
                "the export has no TLS of its own (send to a collector on this host or pod, an agent or \
                 sidecar, that forwards over TLS)",
            );
        }
        _ => return refuse("the scheme must be http://"),
    }
    if uri.host().is_none_or(str::is_empty) {
        return refuse("no host");
    }
    if uri.port_u16().is_none() {
        return refuse("no port (an OTLP/gRPC collector listens on 4317 by default)");
    }
    if !matches!(uri.path(), "" | "/") || uri.query().is_some() {
        return refuse("a gRPC endpoint has no path");
    }
    Ok(())
}

/// Starts the export to `export.endpoint`. Needs a Tokio runtime entered. The connection is made
/// at the first export, and again whenever it is lost, so a collector that is down at start or
/// goes away costs the process nothing but the spans it could not take.
pub(super) fn start(export: &Export) -> Result<Tracing, String> {
    check_endpoint(&export.endpoint)?;
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_tonic()
        .with_endpoint(export.endpoint.clone())
        .build()
        .map_err(|e| format!("--otlp-endpoint {:?}: {e}", export.endpoint))?;
    let provider = SdkTracerProvider::builder()
        .with_batch_exporter(Told::new(exporter, export.endpoint.clone()))
        .with_resource(resource(export))
        .build();
    Ok(Tracing { provider })
}

/// The resource every span is of: `service.name`, `service.version` and `service.instance.id`
/// (a UUID made at start, unless `OTEL_RESOURCE_ATTRIBUTES` names one, say a pod's name), then
/// `export.attributes`.
fn resource(export: &Export) -> Resource {
    let instance = Key::from_static_str("service.instance.id");
    let named = Resource::builder().build().get(&instance);
    let instance = named.map_or_else(|| uuid::Uuid::new_v4().to_string(), |v| v.to_string());
    Resource::builder()
        .with_service_name(export.service)
        .with_attributes([
            KeyValue::new("service.version", env!("CARGO_PKG_VERSION")),
            KeyValue::new("service.instance.id", instance),
        ])
        .with_attributes(
            export
                .attributes
                .iter()
                .map(|(k, v)| KeyValue::new(*k, v.clone())),
        )
        .build()
}

impl Tracing {
    /// The `tracing` layer that turns spans into OpenTelemetry spans for this export. Context
    /// activation is on (a span's context is the current one while it is entered, which
    /// [`crate::trace::active`] reads); thread, location and target attributes are off.
    pub(super) fn layer<S>(&self) -> OpenTelemetryLayer<S, SdkTracer>
    where
        S: Subscriber + for<'a> LookupSpan<'a>,
    {
        tracing_opentelemetry::layer()
            .with_tracer(self.provider.tracer("gprollout"))
            .with_threads(false)
            .with_location(false)
            .with_target(false)
    }

    /// Sends the spans still queued and stops the export, waiting at most `within` (a collector
    /// that does not answer in time loses them; that is logged at WARN). Runs on a blocking
    /// thread, so the runtime goes on driving the export's connection meanwhile.
    pub async fn shutdown(self, within: Duration) {
        let provider = self.provider;
        let stopped = tokio::task::spawn_blocking(move || provider.shutdown_with_timeout(within)).await;
        match stopped {
            Ok(Ok(())) => {}
            Ok(Err(e)) => warn!(error = %e, "the spans still queued at exit may not all have been sent"),
            Err(e) => warn!(error = %e, "the span export did not stop cleanly"),
        }
    }
}

/// An exporter that tells of its failures in the log, never once per span nor per batch: the
/// first failure at WARN, then one WARN a minute at most while they go on (with how many batches
/// were lost since the last), and INFO when an export works again. The batch processor drops
/// what it cannot send; a call never waits for the collector.
#[derive(Debug)]
struct Told<E> {
    inner: E,
    endpoint: String,
    failing: Mutex<Failing>,
}

/// Failed exports not yet told, and when they were last told.
#[derive(Debug, Default)]
struct Failing {
    untold: u64,
    told: Option<Instant>,
}

impl<E> Told<E> {
    fn new(inner: E, endpoint: String) -> Told<E> {
        Told {
            inner,
            endpoint,
            failing: Mutex::default(),
        }
    }

    /// Counts the outcome of one export and logs what is due.
    fn note(&self, result: &OTelSdkResult) {
        let mut f = self.failing.lock().unwrap_or_else(|e| e.into_inner());
        match result {
            Ok(()) => {
                if f.told.take().is_some() {
                    let lost = std::mem::take(&mut f.untold);
                    info!(endpoint = %self.endpoint, lost_batches = lost, "span export to the collector works again");
                }
            }
            Err(error) => {
                f.untold += 1;
                if f.told.is_none_or(|at| at.elapsed() >= TELL_EVERY) {
                    warn!(endpoint = %self.endpoint, %error, lost_batches = f.untold, "spans not exported: the collector did not take them (told again at most once a minute while it goes on)");
                    f.untold = 0;
                    f.told = Some(Instant::now());
                }
            }
        }
    }
}

impl<E: SpanExporter> SpanExporter for Told<E> {
    async fn export(&self, batch: Vec<SpanData>) -> OTelSdkResult {
        let result = self.inner.export(batch).await;
        self.note(&result);
        result
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.inner.shutdown_with_timeout(timeout)
    }

    fn shutdown(&self) -> OTelSdkResult {
        self.inner.shutdown()
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.inner.force_flush()
    }

    fn set_resource(&mut self, resource: &Resource) {
        self.inner.set_resource(resource);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_endpoint_is_plaintext_host_and_port() {
        check_endpoint("http://127.0.0.1:4317").expect("plain");
        check_endpoint("http://otel-collector.observability:4317/").expect("a trailing slash");
        for (bad, says) in [
            ("127.0.0.1:4317", "scheme"),
            ("https://collector:4317", "no TLS"),
            ("grpc://collector:4317", "scheme"),
            ("http://collector", "no port"),
            ("http://collector:4317/v1/traces", "no path"),
            ("http://", "http://HOST:PORT"),
            ("not a url at all", "http://HOST:PORT"),
        ] {
            let error = check_endpoint(bad).expect_err(bad);
            assert!(error.contains(says), "{bad}: {error}");
            assert!(error.contains("--otlp-endpoint"), "{error}");
        }
    }

    #[test]
    fn the_resource_names_the_service_an_instance_and_the_attributes() {
        let resource = resource(&Export {
            endpoint: "http://127.0.0.1:4317".into(),
            service: "gprollout-supplier",
            attributes: vec![("gprollout.supplier", "emis".into())],
        });
        let get = |k: &'static str| resource.get(&Key::from_static_str(k)).map(|v| v.to_string());
        assert_eq!(get("service.name").as_deref(), Some("gprollout-supplier"));
        assert_eq!(get("gprollout.supplier").as_deref(), Some("emis"));
        assert!(get("service.instance.id").is_some_and(|id| !id.is_empty()));
    }
}
