//! Command-line settings both servers share, for `#[command(flatten)]`.

use std::{path::PathBuf, time::Duration};

use crate::{
    budget::ConnectionBudget,
    telemetry::{Export, LogFormat},
    tls::TlsFiles,
};

/// The server's mutual-TLS files.
#[derive(Debug, Clone, clap::Args)]
pub struct TlsArgs {
    /// CA bundle (PEM) that client certificates must chain to; may hold two CAs during a rollover.
    #[arg(long, env = "ROLLOUT_TLS_CA", value_name = "PEM")]
    pub tls_ca: PathBuf,
    /// This server's certificate chain (PEM, leaf first). Reloaded when the file changes.
    #[arg(long, env = "ROLLOUT_TLS_CERT", value_name = "PEM")]
    pub tls_cert: PathBuf,
    /// This server's private key (PEM). Reloaded when the file changes.
    #[arg(long, env = "ROLLOUT_TLS_KEY", value_name = "PEM")]
    pub tls_key: PathBuf,
    /// Certificate revocation list (PEM) to enforce; repeat for several. Reloaded on change.
    /// Once given, every client CA needs one (an empty CRL will do).
    #[arg(long, env = "ROLLOUT_TLS_CRL", value_name = "PEM", value_delimiter = ',')]
    pub tls_crl: Vec<PathBuf>,
}

impl From<TlsArgs> for TlsFiles {
    fn from(a: TlsArgs) -> Self {
        TlsFiles {
            ca: a.tls_ca,
            cert: a.tls_cert,
            key: a.tls_key,
            crls: a.tls_crl,
        }
    }
}

/// The budgets of the mutual-TLS port (docs/RELIABILITY.md, "Budgets").
#[derive(Debug, Clone, clap::Args)]
pub struct ConnectionArgs {
    /// Most connections open at once on the mutual-TLS port. One more is closed at once, before
    /// its TLS handshake (its client sees UNAVAILABLE); refusals are counted and logged at WARN.
    /// Keep it below the process's open-file limit.
    #[arg(
        long,
        env = "ROLLOUT_MAX_CONNECTIONS",
        default_value_t = ConnectionBudget::DEFAULT.connections as u32,
        value_parser = clap::value_parser!(u32).range(1..),
        value_name = "N"
    )]
    pub max_connections: u32,
    /// Most TLS handshakes in progress at once. More wait for a turn, within the 10 s a
    /// handshake may take from accept.
    #[arg(
        long,
        env = "ROLLOUT_MAX_HANDSHAKES",
        default_value_t = ConnectionBudget::DEFAULT.handshakes as u32,
        value_parser = clap::value_parser!(u32).range(1..),
        value_name = "N"
    )]
    pub max_handshakes: u32,
    /// Most calls and streams open at once on one connection. One more is answered
    /// RESOURCE_EXHAUSTED (TOO_MANY_STREAMS_ON_CONNECTION): open another connection.
    #[arg(
        long,
        env = "ROLLOUT_MAX_STREAMS_PER_CONNECTION",
        default_value_t = ConnectionBudget::DEFAULT.streams_per_connection as u32,
        value_parser = clap::value_parser!(u32).range(1..),
        value_name = "N"
    )]
    pub max_streams_per_connection: u32,
}

impl From<ConnectionArgs> for ConnectionBudget {
    fn from(a: ConnectionArgs) -> Self {
        let n = |v: u32| usize::try_from(v).unwrap_or(usize::MAX);
        ConnectionBudget {
            connections: n(a.max_connections),
            handshakes: n(a.max_handshakes),
            streams_per_connection: n(a.max_streams_per_connection),
        }
    }
}

/// Logging settings.
#[derive(Debug, Clone, clap::Args)]
pub struct LogArgs {
    /// Log line format.
    #[arg(long, env = "ROLLOUT_LOG_FORMAT", value_enum, default_value = "plain")]
    pub log_format: LogFormat,
    /// Which events to log, in RUST_LOG syntax (for example `info,rollout_supplier=debug`).
    #[arg(long, env = "ROLLOUT_LOG", default_value = "info")]
    pub log_filter: String,
}

/// Trace export (docs/OBSERVABILITY.md, "Traces").
#[derive(Debug, Clone, clap::Args)]
pub struct TraceArgs {
    /// Send traces of the write paths (commands issued, dispatched, applied, committed and
    /// published) to this OpenTelemetry collector over OTLP/gRPC: `http://HOST:PORT`, usually an
    /// agent or sidecar on this host (port 4317). Unset, empty or `off` (the default), no span is
    /// exported. The
    /// standard OTEL_BSP_* variables tune the batching (OTEL_BSP_SCHEDULE_DELAY, in ms) and
    /// OTEL_EXPORTER_OTLP_TIMEOUT/HEADERS the calls; a collector that is down costs no call
    /// anything (its spans are dropped, told at WARN at most once a minute).
    #[arg(long, env = "ROLLOUT_OTLP_ENDPOINT", value_name = "URL")]
    pub otlp_endpoint: Option<String>,
}

impl TraceArgs {
    /// The export these settings ask for, as `service` (its `service.name`) with the resource
    /// `attributes`; `None` when tracing is off.
    pub fn export(&self, service: &'static str, attributes: Vec<(&'static str, String)>) -> Option<Export> {
        // Empty or `off` (as an environment file may leave it) is tracing off, like unset.
        let endpoint = self
            .otlp_endpoint
            .clone()
            .filter(|e| !e.trim().is_empty() && e.trim() != "off");
        endpoint.map(|endpoint| Export {
            endpoint,
            service,
            attributes,
        })
    }
}

/// How long the server has to stop.
#[derive(Debug, Clone, clap::Args)]
pub struct ShutdownArgs {
    /// On SIGTERM or SIGINT: how long to end streams, let calls in flight finish and write the
    /// queued audit events before exiting; whatever is still open then is closed. Keep it
    /// below the time the supervisor waits before SIGKILL (Kubernetes
    /// terminationGracePeriodSeconds, systemd TimeoutStopSec).
    #[arg(
        long,
        env = "ROLLOUT_SHUTDOWN_GRACE",
        default_value = "10s",
        value_name = "DURATION",
        value_parser = parse_grace
    )]
    pub shutdown_grace: Duration,
}

/// A grace period: a humantime duration (`10s`, `1500ms`, `1m`) above zero.
pub fn parse_grace(text: &str) -> Result<Duration, String> {
    match humantime::parse_duration(text) {
        Ok(d) if d.is_zero() => Err("give a duration above zero, for example 10s".into()),
        Ok(d) => Ok(d),
        Err(e) => Err(format!("{e}: give a duration such as 10s or 1500ms")),
    }
}
