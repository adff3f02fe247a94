//! Certificate files re-read on change, on both sides of a connection.
//!
//! A reload is refused, and the files in force kept, when what it would present is unusable:
//! a certificate expired or not yet valid, one carrying another identity than the process
//! started with, a key that does not match it (for example the certificate replaced and the
//! key not yet), a file half-written. The refusal is logged at WARN with the reason; the next
//! change to any of the files is tried again, so replacing a certificate and its key as two
//! files logs one refusal between the two writes and then takes effect.
//!
//! Each reload that takes effect bumps a generation. A server checks an open connection's
//! client certificate again at its next call once the generation has moved (so a CRL or CA
//! bundle change reaches connections already open: `crate::auth`); a client closes the
//! connections it made with older files (`connect.rs`), so that its new certificate is the one
//! presented within one reload check ([`super::RELOAD_CHECK_INTERVAL`]).

use std::{
    fs,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::SystemTime,
};

use arc_swap::ArcSwap;
use rustls::{
    ClientConfig, RootCertStore, ServerConfig,
    client::WebPkiServerVerifier,
    pki_types::{CertificateDer, CertificateRevocationListDer, PrivateKeyDer, UnixTime},
    server::danger::ClientCertVerifier,
};
use tokio::sync::watch;
use tracing::{info, warn};

use super::{
    Identity, TlsError, TlsFiles, VERSIONS, certs, check, connect::ExpectIdentity, crls, key, provider,
    roots, server_trust,
};

/// Modification time and size of each file, to notice a change.
type Stamps = Vec<Option<(SystemTime, u64)>>;

fn stamps(files: &TlsFiles) -> Stamps {
    files
        .paths()
        .map(|p| {
            fs::metadata(p)
                .ok()
                .and_then(|m| Some((m.modified().ok()?, m.len())))
        })
        .collect()
}

/// Whether any file changed since `seen`; records the new stamps.
fn changed(files: &TlsFiles, seen: &Mutex<Stamps>) -> bool {
    let now = stamps(files);
    let mut seen = seen.lock().unwrap_or_else(|e| e.into_inner());
    if *seen == now {
        return false;
    }
    *seen = now;
    true
}

/// Logs each stale CRL of `files` at WARN and returns the warnings.
fn warn_stale_crls(files: &TlsFiles) -> Vec<String> {
    let warnings = check::stale_crls(&files.crls, SystemTime::now());
    for w in &warnings {
        warn!(warning = %w, "stale CRL");
    }
    warnings
}

/// What a server presents and enforces, as of one generation.
struct ServerTrust {
    config: Arc<ServerConfig>,
    verifier: Arc<dyn ClientCertVerifier>,
    warnings: Vec<String>,
}

/// A server TLS configuration that reloads itself when its files change on disk (see the module
/// documentation for what a reload refuses).
pub struct ReloadingServerConfig {
    files: TlsFiles,
    identity: Option<Identity>,
    current: ArcSwap<ServerTrust>,
    generation: AtomicU64,
    stamps: Mutex<Stamps>,
}

impl std::fmt::Debug for ReloadingServerConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReloadingServerConfig")
            .field("files", &self.files)
            .field("identity", &self.identity)
            .field("generation", &self.generation())
            .finish_non_exhaustive()
    }
}

impl ReloadingServerConfig {
    /// Loads the files; fails if they cannot be used. A certificate outside its validity period
    /// is served all the same at start (and logged at WARN): refusing to start would not give
    /// a better one.
    pub fn load(files: TlsFiles) -> Result<Arc<Self>, TlsError> {
        let (config, verifier) = server_trust(&files)?;
        if let Err(e) = check::usable(&files, None, SystemTime::now()) {
            warn!(error = %e, "the server certificate is not valid now; serving it until a usable one replaces it");
        }
        let stamps = Mutex::new(stamps(&files));
        Ok(Arc::new(ReloadingServerConfig {
            identity: check::identity_of(&files),
            current: ArcSwap::from_pointee(ServerTrust {
                config: Arc::new(config),
                verifier,
                warnings: warn_stale_crls(&files),
            }),
            files,
            generation: AtomicU64::new(1),
            stamps,
        }))
    }

    /// The configuration new connections get.
    pub fn current(&self) -> Arc<ServerConfig> {
        self.current.load().config.clone()
    }

    /// The generation of the files in force: 1 at load, one more for each reload that took
    /// effect. One atomic load: cheap enough for every call.
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// Checks a client's certificate chain (leaf first) against the CA bundle and CRLs in force
    /// now: rustls's error if it would not be accepted on a new connection.
    pub fn recheck(&self, chain: &[CertificateDer<'static>]) -> Result<(), rustls::Error> {
        let Some((leaf, intermediates)) = chain.split_first() else {
            return Err(rustls::Error::NoCertificatesPresented);
        };
        self.current
            .load()
            .verifier
            .verify_client_cert(leaf, intermediates, UnixTime::now())
            .map(drop)
    }

    /// What is wrong with the files in force that an operator should act on (a CRL past its
    /// next update), in words; empty when nothing is.
    pub fn warnings(&self) -> Vec<String> {
        self.current.load().warnings.clone()
    }

    /// Reloads if any file's modification time or size changed. Returns whether a new
    /// configuration took effect.
    pub fn reload_if_changed(&self) -> bool {
        if !changed(&self.files, &self.stamps) {
            return false;
        }
        let loaded = check::usable(&self.files, self.identity.as_ref(), SystemTime::now())
            .and_then(|()| server_trust(&self.files));
        match loaded {
            Ok((config, verifier)) => {
                self.current.store(Arc::new(ServerTrust {
                    config: Arc::new(config),
                    verifier,
                    warnings: warn_stale_crls(&self.files),
                }));
                let generation = self.generation.fetch_add(1, Ordering::AcqRel) + 1;
                info!(cert = %self.files.cert.display(), generation, "tls certificates reloaded");
                true
            }
            Err(error) => {
                warn!(%error, "tls reload refused; keeping the certificates in force (a certificate and its key replaced as two files: this clears once both are in place)");
                false
            }
        }
    }
}

/// What a client presents and trusts, read from its files.
pub(super) struct ClientMaterial {
    warnings: Vec<String>,
    roots: Arc<RootCertStore>,
    crls: Vec<CertificateRevocationListDer<'static>>,
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
}

impl ClientMaterial {
    /// Reads the files.
    pub(super) fn read(files: &TlsFiles) -> Result<ClientMaterial, TlsError> {
        Ok(ClientMaterial {
            warnings: check::stale_crls(&files.crls, SystemTime::now()),
            roots: roots(&files.ca)?,
            crls: crls(files)?,
            chain: certs(&files.cert)?,
            key: key(&files.key)?,
        })
    }

    /// A client configuration from this material; with `expected`, the server must carry that
    /// identity. Servers whose issuer has no CRL among `crls` are accepted (revocation status
    /// unknown): a CRL given is one to enforce, not a requirement that every CA publish one.
    pub(super) fn config(
        &self,
        files: &TlsFiles,
        expected: Option<Identity>,
    ) -> Result<ClientConfig, TlsError> {
        let mut webpki = WebPkiServerVerifier::builder_with_provider(self.roots.clone(), provider());
        if !self.crls.is_empty() {
            webpki = webpki
                .with_crls(self.crls.iter().cloned())
                .allow_unknown_revocation_status();
        }
        let webpki = webpki.build().map_err(|e| TlsError::Config(e.to_string()))?;
        let mut config = ClientConfig::builder_with_provider(provider())
            .with_protocol_versions(VERSIONS)
            .map_err(|e| TlsError::Config(e.to_string()))?
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(ExpectIdentity { webpki, expected }))
            .with_client_auth_cert(self.chain.clone(), self.key.clone_key())
            .map_err(|e| files.pair_error(e))?;
        config.alpn_protocols = vec![b"h2".to_vec()];
        Ok(config)
    }
}

/// A client's certificate, key, CA bundle and CRLs, re-read when they change: each new
/// connection is made with the files in force, and [`ClientTrust::generation`] tells the
/// connections made with older ones to close.
pub struct ClientTrust {
    files: TlsFiles,
    identity: Option<Identity>,
    current: ArcSwap<ClientMaterial>,
    generation: watch::Sender<u64>,
    stamps: Mutex<Stamps>,
}

impl std::fmt::Debug for ClientTrust {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientTrust")
            .field("files", &self.files)
            .field("identity", &self.identity)
            .field("generation", &*self.generation.borrow())
            .finish_non_exhaustive()
    }
}

impl ClientTrust {
    /// Reads the files; fails if they cannot be used (a key that does not match is refused
    /// here, not at the first connection).
    pub fn load(files: TlsFiles) -> Result<Arc<ClientTrust>, TlsError> {
        let material = ClientMaterial::read(&files)?;
        material.config(&files, None)?;
        if let Err(e) = check::usable(&files, None, SystemTime::now()) {
            warn!(error = %e, "the client certificate is not valid now; presenting it until a usable one replaces it");
        }
        warn_stale_crls(&files);
        Ok(Arc::new(ClientTrust {
            identity: check::identity_of(&files),
            stamps: Mutex::new(stamps(&files)),
            current: ArcSwap::from_pointee(material),
            generation: watch::Sender::new(1),
            files,
        }))
    }

    /// A configuration for a new connection, from the files in force.
    pub fn config(&self, expected: Option<Identity>) -> Result<ClientConfig, TlsError> {
        self.current.load().config(&self.files, expected)
    }

    /// What is wrong with the files in force that an operator should act on (a CRL past its
    /// next update), in words; empty when nothing is.
    pub fn warnings(&self) -> Vec<String> {
        self.current.load().warnings.clone()
    }

    /// The generation of the files in force, to watch for the next.
    pub fn generation(&self) -> watch::Receiver<u64> {
        self.generation.subscribe()
    }

    /// Reloads if any file changed and the new files are usable (see the module
    /// documentation); returns whether they took effect.
    pub fn reload_if_changed(&self) -> bool {
        if !changed(&self.files, &self.stamps) {
            return false;
        }
        let loaded = check::usable(&self.files, self.identity.as_ref(), SystemTime::now())
            .and_then(|()| ClientMaterial::read(&self.files))
            .and_then(|m| m.config(&self.files, None).map(|_| m));
        match loaded {
            Ok(material) => {
                self.current.store(Arc::new(material));
                warn_stale_crls(&self.files);
                self.generation.send_modify(|g| *g += 1);
                info!(
                    cert = %self.files.cert.display(),
                    generation = *self.generation.borrow(),
                    "client tls certificates reloaded; connections made with the previous ones are being replaced"
                );
                true
            }
            Err(error) => {
                warn!(%error, "client tls reload refused; keeping the certificates in force (a certificate and its key replaced as two files: this clears once both are in place)");
                false
            }
        }
    }
}

/// Calls `check` every [`super::RELOAD_CHECK_INTERVAL`] until `stop` turns true: the loop that
/// re-reads files which are not the accepting side's own (the role policy, a client's
/// certificates).
pub async fn every_reload_check(mut stop: watch::Receiver<bool>, mut check: impl FnMut() + Send) {
    let mut tick = tokio::time::interval(super::RELOAD_CHECK_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.wait_for(|s| *s) => return,
            _ = tick.tick() => check(),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use rcgen::{
        BasicConstraints, CertificateParams, CertificateRevocationListParams, CertifiedIssuer, IsCa,
        KeyIdMethod, KeyPair, KeyUsagePurpose, SanType,
    };
    use time::{Duration, OffsetDateTime};

    use super::*;

    struct Ca(CertifiedIssuer<'static, KeyPair>);

    impl Ca {
        fn new() -> Ca {
            let mut params = CertificateParams::default();
            params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
            params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
            Ca(CertifiedIssuer::self_signed(params, KeyPair::generate().expect("key")).expect("ca"))
        }

        /// A server certificate for `uri`, valid from `from` to `until` (relative to now), and
        /// its key, in PEM.
        fn issue(&self, uri: &str, from: Duration, until: Duration) -> (String, String) {
            let mut params = CertificateParams::default();
            params.subject_alt_names = vec![
                SanType::URI(uri.try_into().expect("uri")),
                SanType::DnsName("localhost".try_into().expect("dns")),
            ];
            let now = OffsetDateTime::now_utc();
            params.not_before = now + from;
            params.not_after = now + until;
            let key = KeyPair::generate().expect("key");
            let cert = params.signed_by(&key, &self.0).expect("cert");
            (cert.pem(), key.serialize_pem())
        }

        fn crl(&self, next_update: Duration) -> String {
            let now = OffsetDateTime::now_utc();
            CertificateRevocationListParams {
                this_update: now - Duration::days(2),
                next_update: now + next_update,
                crl_number: 1u64.into(),
                issuing_distribution_point: None,
                revoked_certs: Vec::new(),
                key_identifier_method: KeyIdMethod::Sha256,
            }
            .signed_by(&self.0)
            .expect("crl")
            .pem()
            .expect("pem")
        }
    }

    const EMIS: &str = "spiffe://gprollout.test/supplier/emis";

    fn write(dir: &Path, (cert, key): &(String, String)) {
        // Each write is a new size or time: the stamps see it.
        std::fs::write(dir.join("server.pem"), cert).expect("write");
        std::fs::write(dir.join("server-key.pem"), key).expect("write");
    }

    fn files(dir: &Path, ca: &Ca) -> TlsFiles {
        std::fs::write(dir.join("ca.pem"), ca.0.pem()).expect("write");
        TlsFiles {
            ca: dir.join("ca.pem"),
            cert: dir.join("server.pem"),
            key: dir.join("server-key.pem"),
            crls: Vec::new(),
        }
    }

    #[test]
    fn a_reload_refuses_an_unusable_certificate_and_keeps_the_one_in_force() {
        crate::tls::install_crypto_provider();
        let dir = tempfile::tempdir().expect("tempdir");
        let ca = Ca::new();
        let year = (Duration::hours(-1), Duration::days(365));
        write(dir.path(), &ca.issue(EMIS, year.0, year.1));
        let server = ReloadingServerConfig::load(files(dir.path(), &ca)).expect("load");
        assert_eq!(server.generation(), 1);
        let expired = ca.issue(EMIS, Duration::days(-10), Duration::days(-1));
        let early = ca.issue(EMIS, Duration::days(1), Duration::days(10));
        let other = ca.issue("spiffe://gprollout.test/supplier/tpp", year.0, year.1);
        for (what, pair) in [
            ("expired", expired),
            ("not yet valid", early),
            ("another supplier's", other),
        ] {
            write(dir.path(), &pair);
            assert!(!server.reload_if_changed(), "{what} certificate taken");
            assert_eq!(server.generation(), 1, "{what}");
        }
        // The certificate replaced before its key: refused until the key follows.
        let next = ca.issue(EMIS, year.0, year.1);
        std::fs::write(dir.path().join("server.pem"), &next.0).expect("write");
        assert!(!server.reload_if_changed(), "a key that does not match");
        std::fs::write(dir.path().join("server-key.pem"), &next.1).expect("write");
        assert!(server.reload_if_changed(), "both in place");
        assert_eq!(server.generation(), 2);
        assert!(!server.reload_if_changed(), "nothing changed since");
    }

    #[test]
    fn a_crl_past_its_next_update_is_kept_and_warned_about() {
        crate::tls::install_crypto_provider();
        let dir = tempfile::tempdir().expect("tempdir");
        let ca = Ca::new();
        write(
            dir.path(),
            &ca.issue(EMIS, Duration::hours(-1), Duration::days(365)),
        );
        let mut files = files(dir.path(), &ca);
        std::fs::write(dir.path().join("crl.pem"), ca.crl(Duration::days(1))).expect("write");
        files.crls = vec![dir.path().join("crl.pem")];
        let server = ReloadingServerConfig::load(files).expect("load");
        assert!(server.warnings().is_empty(), "{:?}", server.warnings());
        std::fs::write(dir.path().join("crl.pem"), ca.crl(Duration::days(-1))).expect("write");
        assert!(server.reload_if_changed(), "a stale CRL is still enforced");
        let warnings = server.warnings();
        assert_eq!(warnings.len(), 1, "{warnings:?}");
        assert!(warnings[0].contains("still enforced"), "{}", warnings[0]);
    }

    #[test]
    fn a_client_reload_bumps_the_generation_its_connections_watch() {
        crate::tls::install_crypto_provider();
        let dir = tempfile::tempdir().expect("tempdir");
        let ca = Ca::new();
        let coordinator = "spiffe://gprollout.test/coordinator";
        write(
            dir.path(),
            &ca.issue(coordinator, Duration::hours(-1), Duration::days(365)),
        );
        let trust = ClientTrust::load(files(dir.path(), &ca)).expect("load");
        let watching = trust.generation();
        write(
            dir.path(),
            &ca.issue(coordinator, Duration::days(-10), Duration::days(-1)),
        );
        assert!(!trust.reload_if_changed(), "an expired certificate");
        assert!(!watching.has_changed().expect("sender"), "nothing to replace");
        write(
            dir.path(),
            &ca.issue(coordinator, Duration::hours(-1), Duration::days(30)),
        );
        assert!(trust.reload_if_changed());
        assert!(watching.has_changed().expect("sender"), "connections told to go");
    }
}

/// The TLS warnings of one server process, for its status answers: its own files' and, for the
/// coordinator, those it checks suppliers with. At most [`TlsWarnings::MAX`], each at most
/// [`TlsWarnings::MAX_CHARS`] characters.
#[derive(Debug, Clone, Default)]
pub struct TlsWarnings {
    server: Option<Arc<ReloadingServerConfig>>,
    client: Option<Arc<ClientTrust>>,
}

impl TlsWarnings {
    /// Most warnings reported.
    pub const MAX: usize = 20;
    /// Most characters of one warning.
    pub const MAX_CHARS: usize = 500;

    /// The warnings of `server`, and of `client` if given.
    pub fn new(server: Arc<ReloadingServerConfig>, client: Option<Arc<ClientTrust>>) -> Self {
        TlsWarnings {
            server: Some(server),
            client,
        }
    }

    /// The warnings now, bounded.
    pub fn list(&self) -> Vec<String> {
        self.server
            .iter()
            .flat_map(|s| s.warnings())
            .chain(self.client.iter().flat_map(|c| c.warnings()))
            .take(Self::MAX)
            .map(|w| w.chars().take(Self::MAX_CHARS).collect())
            .collect()
    }
}
