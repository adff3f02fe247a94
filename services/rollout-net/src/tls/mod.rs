//! Mutual TLS: rustls server and client configuration from PEM files and the peer identity
//! here; files re-read on change on both sides, with a generation that reaches open connections,
//! in `reload.rs`; what makes a certificate or CRL unusable or stale in `check.rs`; the
//! connecting side (a tonic `Channel` that checks the server's identity, and closes connections
//! made with older files) in `connect.rs`. The accepting side (verified connections for tonic,
//! within the port's budget) is [`crate::accept`], re-exported here.
//!
//! We build rustls ourselves rather than use tonic's TLS options because we need CRLs,
//! reloading without a restart, a two-CA bundle during a rollover, refusals logged where an
//! operator sees them, URI SAN checks on the server certificate, and the peer identity derived
//! once per connection instead of once per request.

use std::{
    fmt, fs, io,
    path::{Path, PathBuf},
    sync::Arc,
};

use rustls::{
    RootCertStore, ServerConfig,
    crypto::CryptoProvider,
    pki_types::{CertificateDer, CertificateRevocationListDer, PrivateKeyDer, pem::PemObject},
};

mod check;
mod connect;
mod reload;

pub use check::not_after;
pub use connect::{channel, reloading_channel};
pub use reload::{ClientTrust, ReloadingServerConfig, TlsWarnings, every_reload_check};

pub use crate::accept::{
    Admission, AdmissionCounts, PeerInfo, PeerStream, RELOAD_CHECK_INTERVAL, incoming, incoming_for,
};

/// A certificate, TLS or file problem, naming the file and what to do.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: io::Error,
    },
    /// A file holds no usable PEM item of the kind wanted.
    #[error("{path} holds no {what} in PEM form")]
    Empty {
        /// The file.
        path: PathBuf,
        /// What was looked for.
        what: &'static str,
    },
    /// A PEM item could not be parsed.
    #[error("{path}: bad {what}: {detail}")]
    Pem {
        /// The file.
        path: PathBuf,
        /// What was being read.
        what: &'static str,
        /// The parser's words.
        detail: String,
    },
    /// rustls refused the configuration (a key that does not match its certificate, a bad CRL...).
    #[error("TLS configuration refused: {0}")]
    Config(String),
    /// This side's certificate is not one to present now: expired, not yet valid, or carrying
    /// another identity than the one the process started with.
    #[error("{path}: {why}")]
    Unusable {
        /// The certificate file.
        path: PathBuf,
        /// Why, in words.
        why: String,
    },
}

/// The PEM files one side of a mutual-TLS connection needs.
#[derive(Clone, PartialEq, Eq)]
pub struct TlsFiles {
    /// CA bundle the peer's certificate must chain to; may hold several CAs during a rollover.
    pub ca: PathBuf,
    /// This side's certificate chain, leaf first.
    pub cert: PathBuf,
    /// This side's private key (PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
    /// Certificate revocation lists to enforce (server side).
    pub crls: Vec<PathBuf>,
}

impl fmt::Debug for TlsFiles {
    // The key's path is not secret, but say plainly that the key itself is never printed.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TlsFiles")
            .field("ca", &self.ca)
            .field("cert", &self.cert)
            .field("key", &format_args!("{} (contents redacted)", self.key.display()))
            .field("crls", &self.crls)
            .finish()
    }
}

impl TlsFiles {
    /// The conventional files of a dev PKI directory: `ca.pem`, `NAME.pem`, `NAME-key.pem`.
    pub fn from_pki_dir(dir: &Path, name: &str) -> Self {
        TlsFiles {
            ca: dir.join("ca.pem"),
            cert: dir.join(format!("{name}.pem")),
            key: dir.join(format!("{name}-key.pem")),
            crls: Vec::new(),
        }
    }

    /// rustls refused this side's certificate and key together (most often: they do not match).
    fn pair_error(&self, e: rustls::Error) -> TlsError {
        TlsError::Config(format!(
            "{} with {}: {e}",
            self.cert.display(),
            self.key.display()
        ))
    }
}

fn read(path: &Path) -> Result<Vec<u8>, TlsError> {
    fs::read(path).map_err(|source| TlsError::Read {
        path: path.to_owned(),
        source,
    })
}

fn pem_items<T: PemObject>(path: &Path, what: &'static str) -> Result<Vec<T>, TlsError> {
    let bytes = read(path)?;
    let items = T::pem_slice_iter(&bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::Pem {
            path: path.to_owned(),
            what,
            detail: e.to_string(),
        })?;
    if items.is_empty() {
        return Err(TlsError::Empty {
            path: path.to_owned(),
            what,
        });
    }
    Ok(items)
}

fn certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    pem_items(path, "certificate")
}

fn key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    let bytes = read(path)?;
    PrivateKeyDer::from_pem_slice(&bytes).map_err(|e| TlsError::Pem {
        path: path.to_owned(),
        what: "private key",
        detail: e.to_string(),
    })
}

fn roots(path: &Path) -> Result<Arc<RootCertStore>, TlsError> {
    let mut store = RootCertStore::empty();
    for cert in certs(path)? {
        store.add(cert).map_err(|e| TlsError::Pem {
            path: path.to_owned(),
            what: "CA certificate",
            detail: e.to_string(),
        })?;
    }
    Ok(Arc::new(store))
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Installs ring as the process-wide rustls provider. Call once at the start of `main` and of
/// tests: any library that asks rustls for the default then agrees with ours. Harmless if
/// already installed.
pub fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

const VERSIONS: &[&rustls::SupportedProtocolVersion] = &[&rustls::version::TLS13, &rustls::version::TLS12];

/// A server configuration requiring a client certificate that chains to `files.ca` and is not
/// revoked by `files.crls`. TLS 1.2 and 1.3 only; ALPN h2.
pub fn server_config(files: &TlsFiles) -> Result<ServerConfig, TlsError> {
    reload::server_config(files)
}

/// Every CRL of `files`.
fn crls(files: &TlsFiles) -> Result<Vec<CertificateRevocationListDer<'static>>, TlsError> {
    Ok(files
        .crls
        .iter()
        .map(|p| pem_items::<CertificateRevocationListDer<'static>>(p, "CRL"))
        .collect::<Result<Vec<_>, _>>()?
        .into_iter()
        .flatten()
        .collect())
}

/// A client configuration presenting `files.cert` and trusting servers that chain to
/// `files.ca` (and, with `files.crls`, are not revoked by them). With `expected`, the server's
/// certificate must also carry that identity as a URI or DNS SAN (the coordinator's check of
/// each supplier).
pub fn client_config(files: &TlsFiles, expected: Option<Identity>) -> Result<rustls::ClientConfig, TlsError> {
    reload::client_config(files, expected)
}

/// A peer identity: the client certificate's first URI SAN, else its first DNS SAN.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Identity(Arc<str>);

impl Identity {
    /// An identity from configuration.
    pub fn new(s: &str) -> Self {
        Identity(Arc::from(s))
    }

    /// The identity as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Derives the identity of a DER certificate: its first URI SAN, else its first DNS SAN.
    pub fn of_certificate(der: &[u8]) -> Option<Identity> {
        let (uris, dns) = sans(der)?;
        uris.into_iter().chain(dns).next().map(|s| Identity::new(&s))
    }
}

impl fmt::Display for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Identity({})", self.0)
    }
}

/// The URI and DNS SANs of a DER certificate, or `None` if it does not parse.
fn sans(der: &[u8]) -> Option<(Vec<String>, Vec<String>)> {
    use x509_parser::{extensions::GeneralName, prelude::FromDer};
    let (_, cert) = x509_parser::certificate::X509Certificate::from_der(der).ok()?;
    let mut uris = Vec::new();
    let mut dns = Vec::new();
    if let Ok(Some(san)) = cert.subject_alternative_name() {
        for name in &san.value.general_names {
            match name {
                GeneralName::URI(u) => uris.push((*u).to_owned()),
                GeneralName::DNSName(d) => dns.push((*d).to_owned()),
                _ => {}
            }
        }
    }
    Some((uris, dns))
}
