//! Command-line settings both servers share, for `#[command(flatten)]`.

use std::path::PathBuf;

use crate::{telemetry::LogFormat, tls::TlsFiles};

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
