//! What every server here has in common: the HTTP/2 settings, the message limits, the stream
//! budget of a connection, health and
//! reflection on the mTLS port, health alone on a plaintext loopback port for probes, and
//! the shutdown signal (what follows it is [`crate::drain`]).

use std::{fmt::Display, future::Future, net::SocketAddr, process::ExitCode, time::Duration};

use tokio::net::TcpListener;
use tokio_stream::wrappers::TcpListenerStream;
use tonic::transport::Server;
use tonic_health::server::{HealthReporter, health_reporter};
use tower::{
    layer::util::{Identity, Stack},
    util::Either,
};

use crate::{
    accept::Admission,
    budget::{ConnectionBudget, StreamBudgetLayer},
    drain::Drain,
    limits::{MessageLimits, OverLimitLayer, over_limit_layer},
    metrics::{Metrics, RpcMetrics, RpcMetricsLayer},
};

/// The `Server` builder of [`builder_for`]: its layers, outermost first, are the metrics (when
/// on), the message limit and the stream budget.
pub type Builder = Server<
    Stack<StreamBudgetLayer, Stack<OverLimitLayer, Stack<Either<RpcMetricsLayer, Identity>, Identity>>>,
>;

/// The ports a server binary serves: the mutual-TLS port, the plaintext health and metrics
/// ports when they are on, and the coordinator's status page when it is on.
#[derive(Debug)]
pub struct Listeners {
    /// The mutual-TLS gRPC port.
    pub grpc: TcpListener,
    /// The plaintext health port (`--health-listen`).
    pub health: Option<TcpListener>,
    /// The plaintext metrics port (`--metrics-listen`).
    pub metrics: Option<TcpListener>,
    /// The HTTPS port of the coordinator's status page (`--web-listen`).
    pub web: Option<TcpListener>,
}

impl Listeners {
    /// The mutual-TLS port and the health port, with metrics off.
    pub fn new(grpc: TcpListener, health: Option<TcpListener>) -> Listeners {
        Listeners {
            grpc,
            health,
            metrics: None,
            web: None,
        }
    }

    /// With metrics served on `metrics`.
    pub fn with_metrics(self, metrics: TcpListener) -> Listeners {
        Listeners {
            metrics: Some(metrics),
            ..self
        }
    }

    /// With the status page served on `web`.
    pub fn with_web(self, web: TcpListener) -> Listeners {
        Listeners {
            web: Some(web),
            ..self
        }
    }
}

/// Serves the plaintext ports, each if it is on, until `drain` begins: health (see
/// [`serve_plaintext_health`]) and `/metrics` (see [`Metrics::serve`]). A failure of either is
/// logged and ends only that port: the mutual-TLS port goes on serving.
pub async fn serve_plaintext(
    health_listener: Option<TcpListener>,
    health: tonic_health::pb::health_server::HealthServer<impl tonic_health::pb::health_server::Health>,
    metrics: Option<(TcpListener, Metrics)>,
    drain: &Drain,
) {
    let health = async {
        if let Some(l) = health_listener
            && let Err(e) = serve_plaintext_health(l, health, drain).await
        {
            tracing::warn!(error = %e, "plaintext health server failed");
        }
    };
    let metrics = async {
        if let Some((l, m)) = metrics
            && let Err(e) = std::sync::Arc::new(m).serve(l, drain.begun()).await
        {
            tracing::warn!(error = %e, "metrics server failed");
        }
    };
    tokio::join!(health, metrics);
}

/// The error of setting up reflection.
pub use tonic_reflection::server::Error as ReflectionError;

/// [`builder_for`] with the default [`ConnectionBudget`] (for servers whose connections are
/// not made by [`crate::accept::incoming_for`] with an admission of their own).
pub fn builder() -> Builder {
    builder_for(&Admission::new(ConnectionBudget::default()), None)
}

/// A `Server` builder with the HTTP/2 settings every server here uses: as many streams per
/// connection as `admission`'s budget allows and as many again (see
/// [`ConnectionBudget::http2_max_concurrent_streams`]), a 16 MiB connection window (thousands
/// of streams opened at once otherwise trip h2's small-DATA-frame flood guard), and keepalives
/// that drop dead peers; with the [`OverLimitLayer`], which answers a request over the message
/// limit RESOURCE_EXHAUSTED (the services' own limits are set on each with
/// [`with_message_limits`](MessageLimits::with_message_limits)), and the
/// [`StreamBudgetLayer`], which holds each connection to its stream budget; outside them
/// `metrics`' layer, if given, so that it counts their refusals too.
pub fn builder_for(admission: &Admission, metrics: Option<&RpcMetrics>) -> Builder {
    Server::builder()
        .layer(tower::util::option_layer(metrics.map(RpcMetrics::layer)))
        .max_concurrent_streams(admission.budget().http2_max_concurrent_streams())
        .initial_connection_window_size(16 * 1024 * 1024)
        .initial_stream_window_size(1024 * 1024)
        .http2_keepalive_interval(Some(Duration::from_secs(30)))
        .http2_keepalive_timeout(Some(Duration::from_secs(10)))
        .tcp_nodelay(true)
        .layer(over_limit_layer())
        .layer(admission.stream_layer())
}

/// The gRPC health service (shared by the mTLS and plaintext ports) and its reporter.
pub fn health() -> (
    HealthReporter,
    tonic_health::pb::health_server::HealthServer<impl tonic_health::pb::health_server::Health>,
) {
    let (reporter, server) = health_reporter();
    (reporter, server.with_message_limits())
}

/// Reflection v1 and v1alpha over the project's contracts, health and reflection itself, so
/// `grpcurl list` and `describe` (which speak v1alpha) work with no proto files. `services`
/// names the project services this server serves (for example
/// `nhs.gprollout.v1.ToggleService`); only they, health and reflection are advertised.
pub fn reflection(
    services: &[&str],
) -> Result<
    (
        tonic_reflection::server::v1::ServerReflectionServer<
            impl tonic_reflection::server::v1::ServerReflection,
        >,
        tonic_reflection::server::v1alpha::ServerReflectionServer<
            impl tonic_reflection::server::v1alpha::ServerReflection,
        >,
    ),
    tonic_reflection::server::Error,
> {
    let builder = || {
        let standard = [
            "grpc.health.v1.Health",
            "grpc.reflection.v1.ServerReflection",
            "grpc.reflection.v1alpha.ServerReflection",
        ];
        standard.iter().chain(services).fold(
            tonic_reflection::server::Builder::configure()
                .register_encoded_file_descriptor_set(rollout_proto::FILE_DESCRIPTOR_SET)
                .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
                .register_encoded_file_descriptor_set(tonic_reflection::pb::v1::FILE_DESCRIPTOR_SET)
                .register_encoded_file_descriptor_set(tonic_reflection::pb::v1alpha::FILE_DESCRIPTOR_SET),
            |b, name| b.with_service_name(*name),
        )
    };
    Ok((
        builder().build_v1()?.with_message_limits(),
        builder().build_v1alpha()?.with_message_limits(),
    ))
}

/// Serves health alone, in plaintext, on `listener` (bound to loopback by default) for probes
/// that present no client certificate, until `drain` begins (whose layer ends its Watch
/// streams); with reflection of health alone, so that `grpcurl -plaintext HOST:PORT list` and
/// `describe` work there too.
pub async fn serve_plaintext_health(
    listener: TcpListener,
    health: tonic_health::pb::health_server::HealthServer<impl tonic_health::pb::health_server::Health>,
    drain: &Drain,
) -> Result<(), tonic::transport::Error> {
    let (v1, v1alpha) = health_reflection();
    Server::builder()
        .layer(drain.layer())
        .layer(over_limit_layer())
        .add_service(health)
        .add_optional_service(v1)
        .add_optional_service(v1alpha)
        .serve_with_incoming_shutdown(TcpListenerStream::new(listener), drain.begun())
        .await
}

/// Reflection v1 and v1alpha advertising `grpc.health.v1.Health` and nothing else (the
/// error-detail types resolve by name, so grpcurl prints an ErrorInfo), for the plaintext
/// health port. Built from descriptor sets compiled in, so it cannot fail in
/// practice; if it did, health is served without reflection and the failure is logged.
fn health_reflection() -> (
    Option<
        tonic_reflection::server::v1::ServerReflectionServer<
            impl tonic_reflection::server::v1::ServerReflection,
        >,
    >,
    Option<
        tonic_reflection::server::v1alpha::ServerReflectionServer<
            impl tonic_reflection::server::v1alpha::ServerReflection,
        >,
    >,
) {
    let builder = || {
        tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
            // For the google.rpc error details (ErrorInfo of an oversize request, of a Watch
            // ended at shutdown): resolvable by name, though only health is listed.
            .register_encoded_file_descriptor_set(rollout_proto::FILE_DESCRIPTOR_SET)
            .include_reflection_service(false)
            .with_service_name("grpc.health.v1.Health")
    };
    let warned = |e: tonic_reflection::server::Error| {
        tracing::warn!(error = %e, "no reflection on the plaintext health port");
    };
    (
        builder().build_v1().map_err(warned).ok(),
        builder().build_v1alpha().map_err(warned).ok(),
    )
}

/// Sets every service of `services`, and the server as a whole (the empty name), NOT_SERVING:
/// health Watch streams receive it before they end.
pub async fn set_not_serving(reporter: &HealthReporter, services: &[&str]) {
    for name in std::iter::once(&"").chain(services) {
        reporter
            .set_service_status(name, tonic_health::ServingStatus::NotServing)
            .await;
    }
}

/// Resolves on SIGINT (Ctrl-C) or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => tracing::info!("interrupt received; shutting down"),
        _ = term => tracing::info!("terminate received; shutting down"),
    }
}

/// How long a server waits, once stopped, for the spans still queued to reach the collector
/// (with `--otlp-endpoint`): beyond `--shutdown-grace`, and only when tracing is on.
pub const SPANS_AT_EXIT: Duration = Duration::from_secs(1);

/// What a server binary's `main` hands [`run_binary`]: its name, its logging and trace export,
/// and the addresses of its ports (`off` turns the health or metrics port off).
#[derive(Debug)]
pub struct Binary<'a> {
    /// The binary's name, before each error it prints.
    pub name: &'a str,
    /// Log format and filter.
    pub log: &'a crate::cli::LogArgs,
    /// Where the spans go, if tracing is on.
    pub trace: Option<crate::telemetry::Export>,
    /// The mutual-TLS gRPC port.
    pub listen: SocketAddr,
    /// The plaintext health port, or `off`.
    pub health: &'a str,
    /// The plaintext metrics port, or `off`.
    pub metrics: &'a str,
    /// The coordinator's status page (HTTPS), or `off`.
    pub web: &'a str,
}

/// The body of a server binary's `main`, after it has parsed its arguments: sets up the runtime,
/// logging (and the trace export, with the runtime entered) and the crypto provider, binds the
/// gRPC port, the plaintext health and metrics ports and the status page that are on, runs `serve` until SIGINT
/// or SIGTERM (passed to it as the shutdown future), sends the spans still queued (within
/// [`SPANS_AT_EXIT`]), and turns the outcome into an exit status with a one-line error (1 for
/// any failure, a setting refused at start included).
pub fn run_binary<F, Fut, E>(binary: Binary<'_>, serve: F) -> ExitCode
where
    F: FnOnce(Listeners, std::pin::Pin<Box<dyn Future<Output = ()> + Send>>) -> Fut,
    Fut: Future<Output = Result<(), E>>,
    E: Display,
{
    let name = binary.name;
    let fail = |message: String| {
        eprintln!("{name}: {message}");
        ExitCode::FAILURE
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => return fail(format!("cannot start the runtime: {e}")),
    };
    let tracing = {
        // The exporter's connection is made on the runtime.
        let _entered = runtime.enter();
        let log = binary.log;
        match crate::telemetry::init(log.log_format, &log.log_filter, binary.trace.as_ref()) {
            Ok(tracing) => tracing,
            Err(e) => return fail(e),
        }
    };
    if let Some(export) = &binary.trace {
        tracing::info!(endpoint = %export.endpoint, service = export.service, "exporting traces over OTLP/gRPC");
    }
    crate::tls::install_crypto_provider();
    let code = runtime.block_on(async {
        let outcome = bind_and_serve(&binary, serve).await;
        if let Some(tracing) = tracing {
            tracing.shutdown(SPANS_AT_EXIT).await;
        }
        outcome.map_or_else(fail, |()| ExitCode::SUCCESS)
    });
    // `serve` has kept to its grace period: what is left (a connection the grace period ran
    // out on, a name lookup in a blocking thread) ends with the process, not waited for.
    runtime.shutdown_background();
    code
}

/// Binds the ports of `binary` and runs `serve` on them until SIGINT or SIGTERM; the error is
/// the one line a failure prints.
async fn bind_and_serve<F, Fut, E>(binary: &Binary<'_>, serve: F) -> Result<(), String>
where
    F: FnOnce(Listeners, std::pin::Pin<Box<dyn Future<Output = ()> + Send>>) -> Fut,
    Fut: Future<Output = Result<(), E>>,
    E: Display,
{
    let listen = binary.listen;
    let listener = TcpListener::bind(listen)
        .await
        .map_err(|e| format!("cannot listen on {listen}: {e}"))?;
    let mut others = [None, None, None];
    let ports = [
        (binary.health, "health"),
        (binary.metrics, "metrics"),
        (binary.web, "status page"),
    ];
    for ((addr, what), slot) in ports.into_iter().zip(&mut others) {
        if addr != "off" {
            let bound = TcpListener::bind(addr).await;
            *slot = Some(bound.map_err(|e| format!("cannot listen on {addr} ({what}): {e}"))?);
        }
    }
    let [health, metrics, web] = others;
    let listeners = Listeners {
        grpc: listener,
        health,
        metrics,
        web,
    };
    serve(listeners, Box::pin(shutdown_signal()))
        .await
        .map_err(|e| e.to_string())
}
