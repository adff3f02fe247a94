//! Prometheus metrics of a server: what both services share (per-method gRPC figures, TLS
//! handshake failures, the port's admission counts, refused calls and their audit records,
//! build information), to which each service adds its own, served at `/metrics` on a plaintext
//! HTTP port of its own (`--metrics-listen`, loopback by default).
//!
//! Written by the Prometheus project's `prometheus-client` in the OpenMetrics text format
//! (<https://prometheus.io/docs/specs/om/open_metrics_spec/>), which Prometheus negotiates
//! and reads; every name starts `gprollout_`, counters end `_total`, durations are in seconds,
//! and no label takes a value from a request (no practice code, no identity).

pub mod rpc;

use std::{
    fmt,
    net::SocketAddr,
    pin::Pin,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering::Relaxed},
    },
};

use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, EncodeMetric},
    metrics::{counter::ConstCounter, gauge::ConstGauge, info::Info},
    registry::Registry,
};
use tokio::net::TcpListener;
use tracing::info;

pub use rpc::{RpcMetrics, RpcMetricsLayer};

use crate::{Admission, audit_queue::Refusals};

/// The content type of the OpenMetrics text format.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Work done before each scrape (see [`Metrics::before_scrape`]).
type Refresh = Box<dyn Fn() -> Pin<Box<dyn Future<Output = ()> + Send>> + Send + Sync>;

/// A server's metrics, built before it serves: [`Metrics::registry`] takes the service's own,
/// then [`Metrics::serve`] answers scrapes.
pub struct Metrics {
    registry: Registry,
    rpc: RpcMetrics,
    refresh: Vec<Refresh>,
}

impl fmt::Debug for Metrics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Metrics")
            .field("registry", &self.registry)
            .finish_non_exhaustive()
    }
}

impl Metrics {
    /// The shared metrics of `service` (`supplier` or `coordinator`, the `service` label of
    /// `gprollout_build_info`), with per-method figures for the methods declared in
    /// `descriptor_sets` (encoded `FileDescriptorSet`s) besides health and reflection.
    pub fn new(service: &'static str, descriptor_sets: &[&[u8]]) -> Metrics {
        let mut registry = Registry::with_prefix("gprollout");
        registry.register(
            "build",
            "The running binary: its version and service",
            Info::new(vec![("version", env!("CARGO_PKG_VERSION")), ("service", service)]),
        );
        let standard: [&[u8]; 3] = [
            tonic_health::pb::FILE_DESCRIPTOR_SET,
            tonic_reflection::pb::v1::FILE_DESCRIPTOR_SET,
            tonic_reflection::pb::v1alpha::FILE_DESCRIPTOR_SET,
        ];
        let sets: Vec<&[u8]> = descriptor_sets.iter().copied().chain(standard).collect();
        let rpc = RpcMetrics::new(&mut registry, &sets);
        Metrics {
            registry,
            rpc,
            refresh: Vec::new(),
        }
    }

    /// Runs `refresh` before each scrape is encoded: for figures read from state that only an
    /// `await` reaches (a model behind an async lock), set into the service's own gauges.
    pub fn before_scrape<F>(&mut self, refresh: impl Fn() -> F + Send + Sync + 'static)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        self.refresh.push(Box::new(move || Box::pin(refresh())));
    }

    /// The metrics now, after every [`Metrics::before_scrape`] refresh.
    pub async fn scrape(&self) -> String {
        for refresh in &self.refresh {
            refresh().await;
        }
        self.encode()
    }

    /// The per-method figures, whose [`RpcMetrics::layer`] the server wears outermost.
    pub fn rpc(&self) -> &RpcMetrics {
        &self.rpc
    }

    /// The registry, prefixed `gprollout_`, for the service's own metrics.
    pub fn registry(&mut self) -> &mut Registry {
        &mut self.registry
    }

    /// Reports `admission`'s counts and handshake failures at each scrape.
    pub fn observe_admission(&mut self, admission: &Admission) {
        self.registry
            .register_collector(Box::new(AdmissionCollector(admission.clone())));
    }

    /// Reports `refusals`' counts (refused calls by reason, their audit records) at each scrape.
    pub fn observe_refusals(&mut self, refusals: &Refusals) {
        self.registry
            .register_collector(Box::new(RefusalCollector(refusals.clone())));
    }

    /// Reports the service's audit chain at each scrape: `head` reads the last event's
    /// sequence from the store, which is how many events the chain holds (sequences start at 1
    /// and have no gaps), as `gprollout_audit_events_appended_total`. A read that fails or
    /// takes over [`AUDIT_HEAD_TIMEOUT`] leaves the series out of that scrape, so that a store
    /// in trouble never stalls a scrape nor shows a stale count.
    pub fn observe_audit_chain<F>(&mut self, head: impl Fn() -> F + Send + Sync + 'static)
    where
        F: Future<Output = Option<u64>> + Send + 'static,
    {
        let last = Arc::new(AtomicU64::new(UNKNOWN));
        self.registry
            .register_collector(Box::new(AuditChainCollector(last.clone())));
        self.before_scrape(move || {
            let (read, last) = (head(), last.clone());
            async move {
                let head = tokio::time::timeout(AUDIT_HEAD_TIMEOUT, read)
                    .await
                    .ok()
                    .flatten();
                last.store(head.unwrap_or(UNKNOWN), Relaxed);
            }
        });
    }

    /// The metrics now, in the OpenMetrics text format.
    pub fn encode(&self) -> String {
        let mut text = String::new();
        // Writing to a String does not fail; a collector's error would leave a partial text.
        if let Err(e) = prometheus_client::encoding::text::encode(&mut text, &self.registry) {
            tracing::error!(error = %e, "metrics could not be encoded");
        }
        text
    }

    /// Answers `GET /metrics` on `listener` (HTTP/1.1, plaintext) until `shutdown` resolves.
    pub async fn serve(
        self: Arc<Self>,
        listener: TcpListener,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> std::io::Result<()> {
        use axum::{http::header, routing::get};
        let addr: Option<SocketAddr> = listener.local_addr().ok();
        info!(addr = ?addr, "metrics listening (GET /metrics)");
        let app = axum::Router::new().route(
            "/metrics",
            get(move || {
                let metrics = self.clone();
                async move { ([(header::CONTENT_TYPE, CONTENT_TYPE)], metrics.scrape().await) }
            }),
        );
        axum::serve(listener, app).with_graceful_shutdown(shutdown).await
    }
}

/// The longest a scrape waits for the audit chain's head ([`Metrics::observe_audit_chain`]).
pub const AUDIT_HEAD_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(1);

/// The audit chain's head not read at the last scrape.
const UNKNOWN: u64 = u64::MAX;

#[derive(Debug)]
struct AuditChainCollector(Arc<AtomicU64>);

impl Collector for AuditChainCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> fmt::Result {
        match self.0.load(Relaxed) {
            UNKNOWN => Ok(()),
            n => one(
                &mut encoder,
                "audit_events_appended",
                "Events in this service's audit chain: accepted changes and refused calls, by \
                 every replica of its store (the last event's sequence, read at each scrape)",
                &ConstCounter::new(n),
            ),
        }
    }
}

/// Writes one metric without labels.
fn one(encoder: &mut DescriptorEncoder, name: &str, help: &str, metric: &impl EncodeMetric) -> fmt::Result {
    metric.encode(encoder.encode_descriptor(name, help, None, metric.metric_type())?)
}

#[derive(Debug)]
struct AdmissionCollector(Admission);

impl Collector for AdmissionCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> fmt::Result {
        let c = self.0.counts();
        let gauge = |n: usize| ConstGauge::new(i64::try_from(n).unwrap_or(i64::MAX));
        one(
            &mut encoder,
            "tls_connections",
            "Connections open on the mutual-TLS port (handshaking or verified)",
            &gauge(c.connections),
        )?;
        one(
            &mut encoder,
            "tls_handshakes_in_progress",
            "TLS handshakes in progress or waiting for a turn",
            &gauge(c.handshaking + c.waiting),
        )?;
        one(
            &mut encoder,
            "tls_connections_refused",
            "Connections closed at accept because the port's connection budget \
             (--max-connections) was spent",
            &ConstCounter::new(c.refused_connections),
        )?;
        one(
            &mut encoder,
            "grpc_streams_refused",
            "Calls refused because their connection's stream budget was spent",
            &ConstCounter::new(c.refused_streams),
        )?;
        let mut family = encoder.encode_descriptor(
            "tls_handshake_failures",
            "TLS handshakes refused on the mutual-TLS port, by reason",
            None,
            prometheus_client::metrics::MetricType::Counter,
        )?;
        for (kind, n) in self.0.handshake_failures() {
            ConstCounter::new(n).encode(family.encode_family(&[("reason", kind.as_str())])?)?;
        }
        Ok(())
    }
}

#[derive(Debug)]
struct RefusalCollector(Refusals);

impl Collector for RefusalCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> fmt::Result {
        {
            let mut family = encoder.encode_descriptor(
                "refused_calls",
                "Calls refused and audited: by the role policy, and mutating calls refused by \
                 their service, by ErrorInfo reason",
                None,
                prometheus_client::metrics::MetricType::Counter,
            )?;
            for (reason, n) in self.0.by_reason() {
                ConstCounter::new(n).encode(family.encode_family(&[("reason", reason)])?)?;
            }
        }
        let s = self.0.status();
        let count = |n: i64| ConstCounter::new(u64::try_from(n).unwrap_or(0));
        one(
            &mut encoder,
            "audit_refusals_recorded",
            "Refused calls written to the audit log one event each",
            &count(s.recorded_calls),
        )?;
        one(
            &mut encoder,
            "audit_refusals_summarised",
            "Refused calls written to the audit log in summary events (a flood, or the refusal \
             queue full)",
            &count(s.summarised_calls),
        )?;
        one(
            &mut encoder,
            "audit_write_failures",
            "Writes of refused calls (one by one or in summaries) to the audit log that failed; \
             each is counted again for a later summary, and the store's error is logged",
            &ConstCounter::new(self.0.write_failures()),
        )?;
        one(
            &mut encoder,
            "audit_refusals_pending",
            "Refused calls counted and not in the audit log yet (the summary window not over, \
             or the store failing)",
            &ConstGauge::new(s.pending_calls),
        )?;
        Ok(())
    }
}
