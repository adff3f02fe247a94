//! The development PKI: a CA and the certificate of every identity a local stack needs, with
//! the file names and SPIFFE URI SANs of the local stack (README.md, "What runs").
//!
//! For development and tests only: production certificates come from the organisation's own
//! PKI. Keys are ECDSA P-256 in PKCS#8 PEM, written with mode 0600.

use std::{
    fs,
    io::Write,
    path::{Path, PathBuf},
};

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DistinguishedName, DnType, ExtendedKeyUsagePurpose,
    IsCa, KeyPair, KeyUsagePurpose, SanType,
};
use time::{Duration, OffsetDateTime};

/// The SPIFFE trust domain of the development PKI.
pub const TRUST_DOMAIN: &str = "gprollout.test";

/// The suppliers of the local stack.
pub const SUPPLIERS: [&str; 4] = ["emis", "tpp", "cegedim", "microtest"];

/// The people of the local stack: operators who are also approvers.
pub const OPERATORS: [&str; 2] = ["alice", "bob"];

/// A PKI problem, naming the file.
#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    /// The directory already holds files and `force` was not given.
    #[error("{0} already exists and is not empty; choose another directory or pass --force to overwrite it")]
    Exists(PathBuf),
    /// A file could not be written.
    #[error("cannot write {path}: {source}")]
    Write {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// Certificate generation failed.
    #[error("certificate generation failed: {0}")]
    Generate(#[from] rcgen::Error),
    /// A file of the PKI could not be read, or is not what it should be.
    #[error("cannot read {path}: {message}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        message: String,
    },
    /// The PKCS#12 file could not be made.
    #[error("cannot make the PKCS#12 file: {0}")]
    Pkcs12(String),
}

/// The password of the PKCS#12 files [`write_pkcs12`] writes for the local stack (they hold
/// development keys, which are no secret: browsers will not import a file without one).
pub const DEV_PKCS12_PASSWORD: &str = "gprollout-dev";

/// The identity [`init`] also exports as PKCS#12, for a browser to show the status page.
pub const BROWSER_IDENTITY: &str = "viewer";

/// One certificate to issue.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdentitySpec {
    /// File stem: `NAME.pem` and `NAME-key.pem`.
    pub name: String,
    /// The URI SAN (the identity).
    pub uri: String,
    /// Whether it is also a server certificate (DNS SAN `localhost`, server auth).
    pub server: bool,
}

impl IdentitySpec {
    /// An identity `spiffe://gprollout.test/PATH` with files `NAME.pem` and `NAME-key.pem`.
    pub fn new(name: impl Into<String>, path: &str, server: bool) -> Self {
        IdentitySpec {
            name: name.into(),
            uri: format!("spiffe://{TRUST_DOMAIN}/{path}"),
            server,
        }
    }
}

/// Every identity of the local stack.
pub fn local_stack_identities() -> Vec<IdentitySpec> {
    let mut ids = vec![IdentitySpec::new("coordinator", "coordinator", true)];
    for s in SUPPLIERS {
        ids.push(IdentitySpec::new(
            format!("supplier-{s}"),
            &format!("supplier/{s}"),
            true,
        ));
        ids.push(IdentitySpec::new(
            format!("backend-{s}"),
            &format!("supplier/{s}/backend"),
            false,
        ));
        ids.push(IdentitySpec::new(
            format!("practice-admin-{s}"),
            &format!("supplier/{s}/practice-admin"),
            false,
        ));
    }
    for o in OPERATORS {
        ids.push(IdentitySpec::new(o, &format!("operator/{o}"), false));
    }
    ids.push(IdentitySpec::new("auditor", "auditor", false));
    ids.push(IdentitySpec::new("viewer", "viewer", false));
    ids
}

/// A certificate and its key, in PEM.
#[derive(Debug, Clone)]
pub struct Issued {
    /// The certificate.
    pub cert_pem: String,
    /// The PKCS#8 private key.
    pub key_pem: String,
    /// Its serial number (for a CRL).
    pub serial: u64,
}

/// Serial numbers: distinct within a process, and unlikely to repeat across runs.
fn next_serial() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    // Positive as a DER integer: keep the top bit clear.
    ((now << 8) ^ COUNTER.fetch_add(1, Ordering::Relaxed)) & 0x7fff_ffff_ffff_ffff
}

/// A certificate authority that issues leaf certificates.
#[derive(Debug)]
pub struct DevCa {
    issuer: CertifiedIssuer<'static, KeyPair>,
    key_pem: String,
}

/// Validity window of a certificate, relative to now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Validity {
    /// Start, relative to now (negative: in the past).
    pub from: Duration,
    /// End, relative to now.
    pub until: Duration,
}

impl Default for Validity {
    /// From an hour ago (clock skew) for a year.
    fn default() -> Self {
        Validity {
            from: Duration::hours(-1),
            until: Duration::days(365),
        }
    }
}

impl DevCa {
    /// A new self-signed CA, valid for ten years.
    pub fn new(common_name: &str) -> Result<Self, PkiError> {
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, common_name);
        dn.push(DnType::OrganizationName, "GP Rollout Control (development)");
        params.distinguished_name = dn;
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let now = OffsetDateTime::now_utc();
        params.not_before = now - Duration::hours(1);
        params.not_after = now + Duration::days(3650);
        let key = KeyPair::generate()?;
        let key_pem = key.serialize_pem();
        Ok(DevCa {
            issuer: CertifiedIssuer::self_signed(params, key)?,
            key_pem,
        })
    }

    /// The CA certificate in PEM.
    pub fn cert_pem(&self) -> String {
        self.issuer.pem()
    }

    /// The CA's private key in PEM.
    pub fn key_pem(&self) -> &str {
        &self.key_pem
    }

    /// Issues a certificate for `spec`, valid over `validity`.
    pub fn issue(&self, spec: &IdentitySpec, validity: Validity) -> Result<Issued, PkiError> {
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, spec.name.as_str());
        params.distinguished_name = dn;
        params.subject_alt_names = vec![SanType::URI(spec.uri.as_str().try_into()?)];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        if spec.server {
            params
                .subject_alt_names
                .push(SanType::DnsName("localhost".try_into()?));
            params
                .extended_key_usages
                .push(ExtendedKeyUsagePurpose::ServerAuth);
        }
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.use_authority_key_identifier_extension = true;
        let now = OffsetDateTime::now_utc();
        params.not_before = now + validity.from;
        params.not_after = now + validity.until;
        let serial = next_serial();
        params.serial_number = Some(serial.into());
        let key = KeyPair::generate()?;
        let cert = params.signed_by(&key, &self.issuer)?;
        Ok(Issued {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            serial,
        })
    }

    /// A certificate revocation list revoking `serials`, valid for a day.
    pub fn crl(&self, serials: &[u64]) -> Result<String, PkiError> {
        self.crl_until(serials, Duration::days(1))
    }

    /// A certificate revocation list revoking `serials`, due to be replaced `next_update` from
    /// now (negative: one already past its next update, as a CRL nobody refreshed looks).
    pub fn crl_until(&self, serials: &[u64], next_update: Duration) -> Result<String, PkiError> {
        let now = OffsetDateTime::now_utc();
        let params = rcgen::CertificateRevocationListParams {
            this_update: now - Duration::days(2).max(-next_update + Duration::hours(1)),
            next_update: now + next_update,
            crl_number: next_serial().into(),
            issuing_distribution_point: None,
            revoked_certs: serials
                .iter()
                .map(|s| rcgen::RevokedCertParams {
                    serial_number: (*s).into(),
                    revocation_time: now - Duration::minutes(1),
                    reason_code: Some(rcgen::RevocationReason::KeyCompromise),
                    invalidity_date: None,
                })
                .collect(),
            key_identifier_method: rcgen::KeyIdMethod::Sha256,
        };
        Ok(params.signed_by(&self.issuer)?.pem()?)
    }
}

fn write(path: &Path, contents: &str, secret: bool) -> Result<(), PkiError> {
    write_bytes(path, contents.as_bytes(), secret)
}

/// Writes a file only its owner may read.
fn write_secret_bytes(path: &Path, contents: &[u8]) -> Result<(), PkiError> {
    write_bytes(path, contents, true)
}

fn write_bytes(path: &Path, contents: &[u8], secret: bool) -> Result<(), PkiError> {
    let err = |source| PkiError::Write {
        path: path.to_owned(),
        source,
    };
    let mut options = fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    if secret {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    #[cfg(not(unix))]
    let _ = secret;
    options
        .open(path)
        .and_then(|mut f| f.write_all(contents))
        .map_err(err)
}

/// Writes `DIR/ca.pem`, `DIR/ca-key.pem` and `DIR/NAME.pem`, `DIR/NAME-key.pem` for every
/// identity of the local stack, and `DIR/viewer.p12` ([`write_pkcs12`], password
/// [`DEV_PKCS12_PASSWORD`]) for a browser. Refuses a directory that exists and is not empty
/// unless `force`. Returns the files written.
pub fn init(dir: &Path, force: bool) -> Result<Vec<PathBuf>, PkiError> {
    let occupied = fs::read_dir(dir).is_ok_and(|mut entries| entries.next().is_some());
    if occupied && !force {
        return Err(PkiError::Exists(dir.to_owned()));
    }
    fs::create_dir_all(dir).map_err(|source| PkiError::Write {
        path: dir.to_owned(),
        source,
    })?;
    let ca = DevCa::new("GP Rollout Control development CA")?;
    let mut written = Vec::new();
    let mut put = |name: String, contents: &str, secret: bool| {
        let path = dir.join(name);
        write(&path, contents, secret)?;
        written.push(path);
        Ok::<_, PkiError>(())
    };
    put("ca.pem".into(), &ca.cert_pem(), false)?;
    put("ca-key.pem".into(), ca.key_pem(), true)?;
    for spec in local_stack_identities() {
        let issued = ca.issue(&spec, Validity::default())?;
        put(format!("{}.pem", spec.name), &issued.cert_pem, false)?;
        put(format!("{}-key.pem", spec.name), &issued.key_pem, true)?;
    }
    written.push(write_pkcs12(dir, BROWSER_IDENTITY, DEV_PKCS12_PASSWORD)?);
    Ok(written)
}

/// Writes `NAME.p12` in `dir`: the identity `NAME.pem` and `NAME-key.pem` of the PKI in `dir`
/// with its CA `ca.pem`, as a PKCS#12 file (RFC 7292; PBES2 with AES-256-CBC and an
/// HMAC-SHA-256 MAC) under `password`, readable only by its owner, for importing into a
/// browser. Returns its path.
pub fn write_pkcs12(dir: &Path, name: &str, password: &str) -> Result<PathBuf, PkiError> {
    use rustls::pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject};
    let read = |file: &str| {
        let path = dir.join(file);
        let bytes = fs::read(&path).map_err(|e| PkiError::Read {
            path: path.clone(),
            message: e.to_string(),
        })?;
        Ok::<_, PkiError>((path, bytes))
    };
    let bad = |path: &Path, e: &dyn std::fmt::Display| PkiError::Read {
        path: path.to_owned(),
        message: e.to_string(),
    };
    let mut chain = Vec::new();
    for file in [format!("{name}.pem"), "ca.pem".to_owned()] {
        let (path, pem) = read(&file)?;
        let der = CertificateDer::from_pem_slice(&pem).map_err(|e| bad(&path, &e))?;
        chain.push(p12_keystore::Certificate::from_der(&der).map_err(|e| bad(&path, &e))?);
    }
    let (path, pem) = read(&format!("{name}-key.pem"))?;
    let key = PrivateKeyDer::from_pem_slice(&pem).map_err(|e| bad(&path, &e))?;
    let key = p12_keystore::PrivateKey::from_der(key.secret_der()).map_err(|e| bad(&path, &e))?;
    let mut store = p12_keystore::KeyStore::new();
    store.add_entry(
        name,
        p12_keystore::KeyStoreEntry::PrivateKeyChain(p12_keystore::PrivateKeyChain::new(name, key, chain)),
    );
    let bytes = store
        .writer(password)
        .write()
        .map_err(|e| PkiError::Pkcs12(e.to_string()))?;
    let path = dir.join(format!("{name}.p12"));
    write_secret_bytes(&path, &bytes)?;
    Ok(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_every_identity_and_refuses_to_overwrite() {
        let dir = tempfile::tempdir().expect("tempdir");
        let pki = dir.path().join("pki");
        let files = init(&pki, false).expect("first init");
        // CA pair plus a pair for each of 1 + 4*3 + 2 + 2 identities, and the viewer's PKCS#12.
        assert_eq!(files.len(), 2 + 2 * 17 + 1);
        for name in [
            "ca.pem",
            "coordinator.pem",
            "supplier-tpp-key.pem",
            "practice-admin-microtest.pem",
            "viewer.pem",
        ] {
            assert!(pki.join(name).is_file(), "{name}");
        }
        let before = fs::read(pki.join("alice.pem")).expect("read");
        assert!(matches!(init(&pki, false), Err(PkiError::Exists(_))));
        assert_eq!(
            fs::read(pki.join("alice.pem")).expect("read"),
            before,
            "nothing was overwritten"
        );
        init(&pki, true).expect("forced init");
        assert_ne!(fs::read(pki.join("alice.pem")).expect("read"), before);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = fs::metadata(pki.join("alice-key.pem"))
                .expect("meta")
                .permissions()
                .mode();
            assert_eq!(mode & 0o077, 0, "keys are private to their owner");
        }
    }

    #[test]
    fn the_viewer_is_exported_as_pkcs12_with_its_key_and_chain() {
        let dir = tempfile::tempdir().expect("tempdir");
        init(dir.path(), false).expect("init");
        let bytes = fs::read(dir.path().join("viewer.p12")).expect("the PKCS#12 file");
        let wrong =
            p12_keystore::KeyStore::from_pkcs12(&bytes, "wrong", p12_keystore::Pkcs12ImportPolicy::Relaxed);
        assert!(wrong.is_err(), "another password does not open it");
        let store = p12_keystore::KeyStore::from_pkcs12(
            &bytes,
            DEV_PKCS12_PASSWORD,
            p12_keystore::Pkcs12ImportPolicy::Relaxed,
        )
        .expect("it opens with the dev password");
        let (_, chain) = store.private_key_chain().expect("a key and its chain");
        let pem = fs::read(dir.path().join("viewer.pem")).expect("viewer.pem");
        let leaf = x509_parser::pem::parse_x509_pem(&pem).expect("pem").1.contents;
        assert_eq!(chain.certs().len(), 2, "the viewer's certificate and the CA");
        assert_eq!(chain.certs()[0].as_der(), leaf.as_slice());
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = fs::metadata(dir.path().join("viewer.p12"))
                .expect("meta")
                .permissions()
                .mode();
            assert_eq!(mode & 0o077, 0, "the key inside is private to its owner");
        }
    }

    #[test]
    fn certificates_carry_the_conventional_sans() {
        let ca = DevCa::new("test CA").expect("ca");
        let spec = IdentitySpec::new("supplier-emis", "supplier/emis", true);
        let issued = ca.issue(&spec, Validity::default()).expect("issue");
        let der = x509_parser::pem::parse_x509_pem(issued.cert_pem.as_bytes())
            .expect("pem")
            .1
            .contents;
        let (_, cert) = x509_parser::parse_x509_certificate(&der).expect("x509");
        let san = cert.subject_alternative_name().expect("ext").expect("san").value;
        let names: Vec<String> = san.general_names.iter().map(|n| n.to_string()).collect();
        assert_eq!(
            names,
            ["URI(spiffe://gprollout.test/supplier/emis)", "DNSName(localhost)"]
        );
    }
}
