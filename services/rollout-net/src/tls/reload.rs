//! Certificate files re-read on change, on both sides of a connection.
//!
//! The files are two parts, judged apart. This side's **identity** (its certificate and key)
//! is refused, and the one in force kept, when it is unusable: a certificate expired or not
//! yet valid, one carrying another identity than the process started with, a key that does not
//! match it (for example the certificate replaced and the key not yet), a file half-written.
//! The **trust** files (the CA bundle and CRLs) are taken whenever they read, whatever the
//! identity's state: a revocation must not wait for a server's own certificate to be fixed. A
//! refusal is logged at WARN with the reason (once per reason), and a refused identity is tried
//! again at every check, so a certificate not valid yet is taken once it is, and replacing a
//! certificate and its key as two files takes effect once both are in place.
//!
//! Each reload that takes effect bumps a generation. A server checks an open connection's
//! client certificate again at its next call once the generation has moved (so a CRL or CA
//! bundle change reaches connections already open: `crate::auth`); a client closes the
//! connections it made with older files (`connect.rs`), so that its new certificate is the one
//! presented within one reload check ([`super::RELOAD_CHECK_INTERVAL`]). A CRL past its next
//! update is still enforced; it is reported ([`ReloadingServerConfig::warnings`]) from the
//! moment it goes stale, and logged at WARN then.

use std::{
    fs,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering},
    },
    time::SystemTime,
};

use arc_swap::ArcSwap;
use rustls::{
    ClientConfig, RootCertStore, ServerConfig,
    client::WebPkiServerVerifier,
    pki_types::{CertificateDer, CertificateRevocationListDer, PrivateKeyDer, UnixTime},
    server::{WebPkiClientVerifier, danger::ClientCertVerifier},
};
use tokio::sync::watch;
use tracing::{info, warn};

use super::{
    Identity, TlsError, TlsFiles, VERSIONS, certs, check, connect::ExpectIdentity, crls, key, provider, roots,
};

/// Modification time and size of each file, to notice a change: the identity's (certificate,
/// key), then the trust files' (CA bundle, CRLs).
type Stamps = (Vec<Option<(SystemTime, u64)>>, Vec<Option<(SystemTime, u64)>>);

fn stamps(files: &TlsFiles) -> Stamps {
    let of = |p: &std::path::Path| {
        fs::metadata(p)
            .ok()
            .and_then(|m| Some((m.modified().ok()?, m.len())))
    };
    (
        [&files.cert, &files.key].into_iter().map(|p| of(p)).collect(),
        std::iter::once(&files.ca)
            .chain(&files.crls)
            .map(|p| of(p))
            .collect(),
    )
}

/// This side's certificate chain and key.
#[derive(Clone)]
pub(super) struct Pair {
    chain: Vec<CertificateDer<'static>>,
    key: Arc<PrivateKeyDer<'static>>,
}

impl Pair {
    fn read(files: &TlsFiles) -> Result<Pair, TlsError> {
        Ok(Pair {
            chain: certs(&files.cert)?,
            key: Arc::new(key(&files.key)?),
        })
    }

    /// The leaf certificate (`certs` never yields an empty chain).
    fn leaf(&self) -> &CertificateDer<'static> {
        &self.chain[0]
    }

    /// Whether this pair is one to present now (see [`check::usable`]).
    fn usable(&self, files: &TlsFiles, identity: Option<&Identity>) -> Result<(), TlsError> {
        check::usable(&files.cert, self.leaf(), identity, SystemTime::now())
    }

    fn same(&self, other: &Pair) -> bool {
        self.chain == other.chain && self.key.secret_der() == other.key.secret_der()
    }
}

/// The CA bundle and CRLs, with each CRL's due time.
#[derive(Clone)]
pub(super) struct Trust {
    roots: Arc<RootCertStore>,
    crls: Vec<CertificateRevocationListDer<'static>>,
    dues: Vec<check::CrlDue>,
}

impl Trust {
    fn read(files: &TlsFiles) -> Result<Trust, TlsError> {
        Ok(Trust {
            roots: roots(&files.ca)?,
            crls: crls(files)?,
            dues: check::crl_dues(&files.crls),
        })
    }
}

/// What one side holds in force: its identity, its trust, and what was built of them.
struct Loaded<T> {
    pair: Pair,
    trust: Trust,
    built: T,
}

/// The bookkeeping of reloads shared by both sides: the files' stamps, whether the identity
/// was refused (so it is tried again at every check), the last refusal logged, and how many
/// stale CRLs were logged.
struct Reloader {
    files: TlsFiles,
    identity: Option<Identity>,
    stamps: Mutex<Stamps>,
    retry_identity: AtomicBool,
    last_refusal: Mutex<String>,
    stale_logged: AtomicUsize,
}

impl Reloader {
    /// The bookkeeping of `files`, whose identity in force at start is `pair`.
    fn new(files: TlsFiles, pair: &Pair) -> Reloader {
        if let Err(e) = pair.usable(&files, None) {
            warn!(error = %e, "this side's certificate is not valid now; presenting it until a usable one replaces it");
        }
        Reloader {
            identity: Identity::of_certificate(pair.leaf()),
            stamps: Mutex::new(stamps(&files)),
            files,
            retry_identity: AtomicBool::new(false),
            last_refusal: Mutex::new(String::new()),
            stale_logged: AtomicUsize::new(0),
        }
    }

    /// Logs a refusal at WARN unless it is the one logged last.
    fn refused(&self, error: &TlsError, what: &str) {
        let text = error.to_string();
        let mut last = self.last_refusal.lock().unwrap_or_else(|e| e.into_inner());
        if *last != text {
            warn!(%error, "{what} refused; keeping the one in force (retried at every check; a certificate and its key replaced as two files: this clears once both are in place)");
            *last = text;
        }
    }

    /// Logs each CRL that has gone stale since the last check, once.
    fn log_stale(&self, dues: &[check::CrlDue]) {
        let stale = check::stale_crls(dues, SystemTime::now());
        if stale.len() > self.stale_logged.swap(stale.len(), Ordering::AcqRel) {
            for w in &stale {
                warn!(warning = %w, "stale CRL");
            }
        }
    }

    /// The next thing to hold, if anything new takes effect: the identity read again if a file
    /// changed or it was refused before, the trust files if a file changed; each combination
    /// checked by `build` (rustls refuses a key that does not match). `None` when nothing new
    /// took effect.
    fn next<T>(
        &self,
        current: &Loaded<T>,
        build: impl Fn(&Pair, &Trust) -> Result<T, TlsError>,
    ) -> Option<Loaded<T>> {
        self.log_stale(&current.trust.dues);
        let (identity_changed, trust_changed) = {
            let now = stamps(&self.files);
            let mut seen = self.stamps.lock().unwrap_or_else(|e| e.into_inner());
            let changed = (seen.0 != now.0, seen.1 != now.1);
            *seen = now;
            changed
        };
        let retry = self.retry_identity.load(Ordering::Acquire);
        if !identity_changed && !trust_changed && !retry {
            return None;
        }
        let trust = match trust_changed.then(|| Trust::read(&self.files)) {
            Some(Ok(t)) => Some(t),
            Some(Err(e)) => {
                self.refused(&e, "the CA bundle or CRL reload");
                None
            }
            None => None,
        };
        let trust_in = trust.as_ref().unwrap_or(&current.trust);
        let pair = Pair::read(&self.files)
            .and_then(|p| p.usable(&self.files, self.identity.as_ref()).map(|()| p))
            .and_then(|p| build(&p, trust_in).map(|built| (p, built)));
        match pair {
            Ok((pair, built)) => {
                self.retry_identity.store(false, Ordering::Release);
                if trust.is_none() && pair.same(&current.pair) {
                    return None;
                }
                let trust = trust.unwrap_or_else(|| current.trust.clone());
                self.log_stale(&trust.dues);
                Some(Loaded { pair, trust, built })
            }
            Err(e) => {
                self.retry_identity.store(true, Ordering::Release);
                self.refused(&e, "the certificate and key reload");
                // The trust files still take effect, with the identity in force.
                let trust = trust?;
                match build(&current.pair, &trust) {
                    Ok(built) => {
                        self.log_stale(&trust.dues);
                        Some(Loaded {
                            pair: current.pair.clone(),
                            trust,
                            built,
                        })
                    }
                    Err(e) => {
                        self.refused(&e, "the CA bundle or CRL reload");
                        None
                    }
                }
            }
        }
    }
}

/// A server's configuration and the client verifier in it (kept to check again, after a
/// reload, the certificates of connections already open).
struct Server {
    config: Arc<ServerConfig>,
    verifier: Arc<dyn ClientCertVerifier>,
}

/// The application protocols a gRPC port offers (RFC 7301): HTTP/2 alone.
const GRPC_ALPN: &[&[u8]] = &[b"h2"];
/// The application protocols an HTTPS port for browsers offers: HTTP/2, then HTTP/1.1.
const HTTPS_ALPN: &[&[u8]] = &[b"h2", b"http/1.1"];

fn server(files: &TlsFiles, pair: &Pair, trust: &Trust, alpn: &[&[u8]]) -> Result<Server, TlsError> {
    let verifier = WebPkiClientVerifier::builder_with_provider(trust.roots.clone(), provider())
        .with_crls(trust.crls.iter().cloned())
        .build()
        .map_err(|e| TlsError::Config(e.to_string()))?;
    let mut config = ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(VERSIONS)
        .map_err(|e| TlsError::Config(e.to_string()))?
        .with_client_cert_verifier(verifier.clone())
        .with_single_cert(pair.chain.clone(), pair.key.clone_key())
        .map_err(|e| files.pair_error(e))?;
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Ok(Server {
        config: Arc::new(config),
        verifier,
    })
}

/// A server TLS configuration that reloads itself when its files change on disk (see the module
/// documentation for what a reload takes and refuses).
pub struct ReloadingServerConfig {
    reloader: Reloader,
    current: ArcSwap<Loaded<Server>>,
    generation: AtomicU64,
    alpn: &'static [&'static [u8]],
}

impl std::fmt::Debug for ReloadingServerConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReloadingServerConfig")
            .field("files", &self.reloader.files)
            .field("identity", &self.reloader.identity)
            .field("generation", &self.generation())
            .finish_non_exhaustive()
    }
}

impl ReloadingServerConfig {
    /// Loads the files; fails if they cannot be used. A certificate outside its validity period
    /// is served all the same at start (and logged at WARN): refusing to start would not give
    /// a better one.
    pub fn load(files: TlsFiles) -> Result<Arc<Self>, TlsError> {
        Self::load_for(files, GRPC_ALPN)
    }

    /// [`ReloadingServerConfig::load`] for an HTTPS port that browsers use: the same
    /// certificates and client verification, offering HTTP/1.1 besides HTTP/2.
    pub fn load_https(files: TlsFiles) -> Result<Arc<Self>, TlsError> {
        Self::load_for(files, HTTPS_ALPN)
    }

    fn load_for(files: TlsFiles, alpn: &'static [&'static [u8]]) -> Result<Arc<Self>, TlsError> {
        let (pair, trust) = (Pair::read(&files)?, Trust::read(&files)?);
        let built = server(&files, &pair, &trust, alpn)?;
        let reloader = Reloader::new(files, &pair);
        reloader.log_stale(&trust.dues);
        Ok(Arc::new(ReloadingServerConfig {
            reloader,
            current: ArcSwap::from_pointee(Loaded { pair, trust, built }),
            generation: AtomicU64::new(1),
            alpn,
        }))
    }

    /// The configuration new connections get.
    pub fn current(&self) -> Arc<ServerConfig> {
        self.current.load().built.config.clone()
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
            .built
            .verifier
            .verify_client_cert(leaf, intermediates, UnixTime::now())
            .map(drop)
    }

    /// What is wrong with the files in force that an operator should act on (a CRL past its
    /// next update, judged now), in words; empty when nothing is.
    pub fn warnings(&self) -> Vec<String> {
        check::stale_crls(&self.current.load().trust.dues, SystemTime::now())
    }

    /// Reloads what changed (and an identity refused before); returns whether something new
    /// took effect.
    pub fn reload_if_changed(&self) -> bool {
        let files = &self.reloader.files;
        let Some(next) = self
            .reloader
            .next(&self.current.load(), |p, t| server(files, p, t, self.alpn))
        else {
            return false;
        };
        self.current.store(Arc::new(next));
        let generation = self.generation.fetch_add(1, Ordering::AcqRel) + 1;
        info!(cert = %self.reloader.files.cert.display(), generation, "tls certificates reloaded");
        true
    }
}

/// A client configuration presenting `pair` and trusting servers that chain to `trust`; with
/// `expected`, the server must carry that identity. Servers whose issuer has no CRL in `trust`
/// are accepted (revocation status unknown): a CRL given is one to enforce, not a requirement
/// that every CA publish one.
fn client(
    files: &TlsFiles,
    pair: &Pair,
    trust: &Trust,
    expected: Option<Identity>,
) -> Result<ClientConfig, TlsError> {
    let mut webpki = WebPkiServerVerifier::builder_with_provider(trust.roots.clone(), provider());
    if !trust.crls.is_empty() {
        webpki = webpki
            .with_crls(trust.crls.iter().cloned())
            .allow_unknown_revocation_status();
    }
    let webpki = webpki.build().map_err(|e| TlsError::Config(e.to_string()))?;
    let mut config = ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(VERSIONS)
        .map_err(|e| TlsError::Config(e.to_string()))?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(ExpectIdentity { webpki, expected }))
        .with_client_auth_cert(pair.chain.clone(), pair.key.clone_key())
        .map_err(|e| files.pair_error(e))?;
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(config)
}

/// A client's certificate, key, CA bundle and CRLs, re-read when they change: each new
/// connection is made with the files in force, and [`ClientTrust::generation`] tells the
/// connections made with older ones to close.
pub struct ClientTrust {
    reloader: Reloader,
    current: ArcSwap<Loaded<()>>,
    generation: watch::Sender<u64>,
}

impl std::fmt::Debug for ClientTrust {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientTrust")
            .field("files", &self.reloader.files)
            .field("identity", &self.reloader.identity)
            .field("generation", &*self.generation.borrow())
            .finish_non_exhaustive()
    }
}

impl ClientTrust {
    /// Reads the files; fails if they cannot be used (a key that does not match is refused
    /// here, not at the first connection).
    pub fn load(files: TlsFiles) -> Result<Arc<ClientTrust>, TlsError> {
        let (pair, trust) = (Pair::read(&files)?, Trust::read(&files)?);
        client(&files, &pair, &trust, None)?;
        let reloader = Reloader::new(files, &pair);
        reloader.log_stale(&trust.dues);
        Ok(Arc::new(ClientTrust {
            reloader,
            current: ArcSwap::from_pointee(Loaded {
                pair,
                trust,
                built: (),
            }),
            generation: watch::Sender::new(1),
        }))
    }

    /// A configuration for a new connection, from the files in force.
    pub fn config(&self, expected: Option<Identity>) -> Result<ClientConfig, TlsError> {
        let current = self.current.load();
        client(&self.reloader.files, &current.pair, &current.trust, expected)
    }

    /// What is wrong with the files in force that an operator should act on (a CRL past its
    /// next update, judged now), in words; empty when nothing is.
    pub fn warnings(&self) -> Vec<String> {
        check::stale_crls(&self.current.load().trust.dues, SystemTime::now())
    }

    /// The generation of the files in force, to watch for the next.
    pub fn generation(&self) -> watch::Receiver<u64> {
        self.generation.subscribe()
    }

    /// Reloads what changed (and an identity refused before); returns whether something new
    /// took effect, and then tells the connections made with the previous files to close.
    pub fn reload_if_changed(&self) -> bool {
        let Some(next) = self.reloader.next(&self.current.load(), |p, t| {
            client(&self.reloader.files, p, t, None).map(drop)
        }) else {
            return false;
        };
        self.current.store(Arc::new(next));
        self.generation.send_modify(|g| *g += 1);
        info!(
            cert = %self.reloader.files.cert.display(),
            generation = *self.generation.borrow(),
            "client tls certificates reloaded; connections made with the previous ones are being replaced"
        );
        true
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

/// A client configuration of `files`, as [`ClientTrust`] builds it; see [`client`].
pub(super) fn client_config(files: &TlsFiles, expected: Option<Identity>) -> Result<ClientConfig, TlsError> {
    client(files, &Pair::read(files)?, &Trust::read(files)?, expected)
}

/// A server configuration of `files`, as [`ReloadingServerConfig`] builds it.
pub(super) fn server_config(files: &TlsFiles) -> Result<ServerConfig, TlsError> {
    let built = server(files, &Pair::read(files)?, &Trust::read(files)?, GRPC_ALPN)?;
    Ok((*built.config).clone())
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

        fn revoking(&self, serial: u64) -> String {
            self.crl_of(Duration::days(1), vec![serial])
        }

        fn crl(&self, next_update: Duration) -> String {
            self.crl_of(next_update, Vec::new())
        }

        fn crl_of(&self, next_update: Duration, serials: Vec<u64>) -> String {
            let now = OffsetDateTime::now_utc();
            CertificateRevocationListParams {
                this_update: now - Duration::days(2),
                next_update: now + next_update,
                crl_number: 1u64.into(),
                issuing_distribution_point: None,
                revoked_certs: serials
                    .into_iter()
                    .map(|s| rcgen::RevokedCertParams {
                        serial_number: s.into(),
                        revocation_time: now - Duration::minutes(1),
                        reason_code: None,
                        invalidity_date: None,
                    })
                    .collect(),
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

    /// A server of a new CA with a good certificate and a CRL due `next_update` from now.
    fn with_crl(next_update: Duration) -> (tempfile::TempDir, Ca, Arc<ReloadingServerConfig>) {
        crate::tls::install_crypto_provider();
        let dir = tempfile::tempdir().expect("tempdir");
        let ca = Ca::new();
        write(
            dir.path(),
            &ca.issue(EMIS, Duration::hours(-1), Duration::days(365)),
        );
        let mut files = files(dir.path(), &ca);
        std::fs::write(dir.path().join("crl.pem"), ca.crl(next_update)).expect("write");
        files.crls = vec![dir.path().join("crl.pem")];
        let server = ReloadingServerConfig::load(files).expect("load");
        (dir, ca, server)
    }

    /// A client certificate of `ca` for `uri` (no DNS name) and its DER chain.
    fn client_chain(ca: &Ca, uri: &str) -> (Vec<CertificateDer<'static>>, u64) {
        let serial = 4242;
        let mut params = CertificateParams::default();
        params.subject_alt_names = vec![SanType::URI(uri.try_into().expect("uri"))];
        params.serial_number = Some(serial.into());
        let key = KeyPair::generate().expect("key");
        let cert = params.signed_by(&key, &ca.0).expect("cert");
        (vec![cert.der().clone()], serial)
    }

    #[test]
    fn a_revocation_takes_effect_while_the_servers_own_certificate_is_refused() {
        let (dir, ca, server) = with_crl(Duration::days(1));
        let (alice, serial) = client_chain(&ca, "spiffe://gprollout.test/operator/alice");
        server.recheck(&alice).expect("not revoked yet");
        // The server's own certificate replaced by an expired one: refused.
        write(
            dir.path(),
            &ca.issue(EMIS, Duration::days(-10), Duration::days(-1)),
        );
        assert!(!server.reload_if_changed());
        // A CRL revoking alice still takes effect, with the certificate in force.
        std::fs::write(dir.path().join("crl.pem"), ca.revoking(serial)).expect("write");
        assert!(server.reload_if_changed(), "the trust files are taken");
        assert!(server.recheck(&alice).is_err(), "alice revoked");
    }

    #[test]
    fn a_certificate_not_valid_yet_is_taken_once_it_is_and_a_crl_going_stale_is_reported() {
        let (dir, ca, server) = with_crl(Duration::seconds(2));
        assert!(server.warnings().is_empty());
        write(
            dir.path(),
            &ca.issue(EMIS, Duration::seconds(2), Duration::days(365)),
        );
        assert!(!server.reload_if_changed(), "not valid yet");
        // Time passes (the scenario itself): nothing is written in between.
        std::thread::sleep(std::time::Duration::from_millis(2_500));
        assert!(server.reload_if_changed(), "valid now: taken at the next check");
        assert_eq!(server.generation(), 2);
        assert_eq!(server.warnings().len(), 1, "the CRL went stale while running");
    }

    #[test]
    fn a_crl_past_its_next_update_is_kept_and_warned_about() {
        let (dir, ca, server) = with_crl(Duration::days(1));
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
