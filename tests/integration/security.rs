//! The TLS and identity matrix against a real supplier: every way in that should be refused is
//! refused; certificate, CRL and CA bundle files replaced on disk take effect without a restart.

use std::{path::Path, time::Duration};

use rollout_net::tls::{self, TlsFiles};
use rollout_proto::v1::{
    self as pb, coordinator_service_client::CoordinatorServiceClient,
    toggle_service_client::ToggleServiceClient,
};
use rolloutctl::pki::{DevCa, IdentitySpec, Validity};
use tonic::Code;

use crate::support::{Running, assert_refused, practice_feature};

/// Writes `NAME.pem` and `NAME-key.pem` issued by `ca` into `dir`.
fn issue(ca: &DevCa, dir: &Path, name: &str, path: &str, server: bool, validity: Validity) -> u64 {
    let issued = ca
        .issue(&IdentitySpec::new(name, path, server), validity)
        .expect("issue");
    std::fs::write(dir.join(format!("{name}.pem")), issued.cert_pem).expect("write");
    std::fs::write(dir.join(format!("{name}-key.pem")), issued.key_pem).expect("write");
    issued.serial
}

/// Which service is under test.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Supplier,
    Coordinator,
}

/// A server of either kind.
enum Server {
    Supplier(Running<rollout_supplier::Error>),
    Coordinator(Running<rollout_coordinator::Error>),
}

impl Server {
    fn addr(&self) -> std::net::SocketAddr {
        match self {
            Server::Supplier(r) => r.addr,
            Server::Coordinator(r) => r.addr,
        }
    }

    async fn stop(self) {
        match self {
            Server::Supplier(r) => r.stop().await,
            Server::Coordinator(r) => r.stop().await,
        }
    }
}

struct World {
    dir: tempfile::TempDir,
    ca: DevCa,
    other_ca: DevCa,
    server: Server,
    revoked: u64,
}

impl World {
    fn path(&self, name: &str) -> std::path::PathBuf {
        self.dir.path().join(name)
    }

    /// One call as `name` (trusting the server's CA): a supplier's GetPracticeFeature (role
    /// backend), or the coordinator's ListAuditEvents (role auditor).
    async fn call(&self, name: &str) -> Result<(), tonic::Status> {
        let files = TlsFiles {
            ca: self.path("ca1.pem"),
            cert: self.path(&format!("{name}.pem")),
            key: self.path(&format!("{name}-key.pem")),
            crls: vec![],
        };
        let config = tls::client_config(&files, None).expect("client config");
        let channel =
            tls::channel(&format!("localhost:{}", self.server.addr().port()), config).expect("channel");
        match self.server {
            Server::Supplier(_) => ToggleServiceClient::new(channel)
                .get_practice_feature(pb::GetPracticeFeatureRequest {
                    name: practice_feature(crate::support::supplier::EMIS_A),
                    explain: true,
                })
                .await
                .map(|_| ()),
            Server::Coordinator(_) => CoordinatorServiceClient::new(channel)
                .list_audit_events(pb::ListAuditEventsRequest::default())
                .await
                .map(|_| ()),
        }
    }
}

/// A server whose CA bundle holds CA 1 only, with a CRL revoking one client certificate.
async fn world(kind: Kind) -> World {
    rollout_net::tls::install_crypto_provider();
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    let ca = DevCa::new("test CA 1").expect("ca");
    let other_ca = DevCa::new("test CA 2").expect("ca");
    std::fs::write(d.join("ca1.pem"), ca.cert_pem()).expect("write");
    std::fs::write(d.join("bundle.pem"), ca.cert_pem()).expect("write");
    std::fs::write(d.join("ca2.pem"), other_ca.cert_pem()).expect("write");
    let ok = Validity::default();
    issue(&ca, d, "server", "supplier/emis", true, ok);
    issue(&ca, d, "backend", "supplier/emis/backend", false, ok);
    issue(&ca, d, "admin", "supplier/emis/practice-admin", false, ok);
    issue(&ca, d, "stranger", "supplier/emis/stranger", false, ok);
    issue(&other_ca, d, "foreign", "supplier/emis/backend", false, ok);
    issue(
        &ca,
        d,
        "expired",
        "supplier/emis/backend",
        false,
        Validity {
            from: time::Duration::days(-10),
            until: time::Duration::days(-1),
        },
    );
    issue(
        &ca,
        d,
        "early",
        "supplier/emis/backend",
        false,
        Validity {
            from: time::Duration::days(1),
            until: time::Duration::days(10),
        },
    );
    let revoked = issue(&ca, d, "revoked", "supplier/emis/backend", false, ok);
    issue(&ca, d, "later", "supplier/emis/backend", false, ok);
    std::fs::write(d.join("crl.pem"), ca.crl(&[revoked]).expect("crl")).expect("write");
    // "backend" holds the role each server's call needs; "admin" holds a role that is not it.
    let (good, wrong) = match kind {
        Kind::Supplier => ("backend", "practice-admin"),
        Kind::Coordinator => ("auditor", "viewer"),
    };
    let policy = d.join("policy.toml");
    std::fs::write(
        &policy,
        format!(
            "[identities]\n\"spiffe://gprollout.test/supplier/emis/backend\" = [\"{good}\"]\n\
             \"spiffe://gprollout.test/supplier/emis/practice-admin\" = [\"{wrong}\"]\n"
        ),
    )
    .expect("policy");
    let tls = TlsFiles {
        ca: d.join("bundle.pem"),
        cert: d.join("server.pem"),
        key: d.join("server-key.pem"),
        crls: vec![d.join("crl.pem")],
    };
    let server = match kind {
        Kind::Supplier => {
            let config = rollout_supplier::Config {
                supplier: "emis".parse().expect("emis"),
                tls,
                policy,
                database_url: format!("sqlite://{}", d.join("emis.db").display()),
                estate: Some(crate::support::reference_files()),
                freeze_reason: None,
                shutdown_grace: Duration::from_secs(10),
                budgets: Default::default(),
            };
            Server::Supplier(
                Running::start(|listener, health, stop| async move {
                    rollout_supplier::serve(
                        config,
                        rollout_net::server::Listeners::new(listener, Some(health)),
                        async {
                            let _ = stop.await;
                        },
                    )
                    .await
                })
                .await,
            )
        }
        Kind::Coordinator => {
            let config = rollout_coordinator::Config {
                supplier_ca: tls.ca.clone(),
                supplier_crls: Vec::new(),
                tls,
                policy,
                suppliers: vec![],
                database_url: format!("sqlite://{}", d.join("coordinator.db").display()),
                estate: crate::support::reference_files(),
                heartbeat: Duration::from_millis(200),
                stale_after: Duration::from_secs(5),
                shutdown_grace: Duration::from_secs(10),
                budgets: Default::default(),
            };
            Server::Coordinator(
                Running::start(|listener, health, stop| async move {
                    rollout_coordinator::serve(
                        config,
                        rollout_net::server::Listeners::new(listener, Some(health)),
                        async {
                            let _ = stop.await;
                        },
                    )
                    .await
                })
                .await,
            )
        }
    };
    World {
        dir,
        ca,
        other_ca,
        server,
        revoked,
    }
}

/// Asserts the handshake was refused, naming the TLS alert.
#[track_caller]
fn assert_handshake_refused(result: Result<(), tonic::Status>, alert: &str, what: &str) {
    let status = result.expect_err(what);
    let text = format!("{status:?}");
    assert!(
        text.contains(alert),
        "{what}: expected the {alert} alert, got {text}"
    );
}

#[tokio::test]
async fn every_bad_certificate_and_identity_is_refused_by_a_supplier() {
    matrix(Kind::Supplier).await;
}

#[tokio::test]
async fn every_bad_certificate_and_identity_is_refused_by_the_coordinator() {
    matrix(Kind::Coordinator).await;
}

async fn matrix(kind: Kind) {
    let w = world(kind).await;
    // The baseline: a valid, listed identity with the right role passes.
    w.call("backend").await.expect("a valid certificate passes");

    assert_handshake_refused(
        w.call("foreign").await,
        "UnknownCA",
        "a certificate from an unknown CA",
    );
    assert_handshake_refused(
        w.call("expired").await,
        "CertificateExpired",
        "an expired certificate",
    );
    assert_handshake_refused(
        w.call("early").await,
        "Certificate",
        "a certificate not yet valid",
    );
    assert_handshake_refused(
        w.call("revoked").await,
        "CertificateRevoked",
        "a revoked certificate",
    );

    let unlisted = w.call("stranger").await.expect_err("unlisted");
    assert_refused(
        &unlisted,
        Code::PermissionDenied,
        "IDENTITY_NOT_ALLOWED",
        "a valid but unlisted identity",
    );
    let wrong_role = w.call("admin").await.expect_err("wrong role");
    assert_refused(
        &wrong_role,
        Code::PermissionDenied,
        "ROLE_REQUIRED",
        "a listed identity with the wrong role",
    );

    // No client certificate at all.
    let mut roots = rustls::RootCertStore::empty();
    let ca_der = x509_parser::pem::parse_x509_pem(w.ca.cert_pem().as_bytes())
        .expect("pem")
        .1
        .contents;
    roots
        .add(rustls::pki_types::CertificateDer::from(ca_der))
        .expect("root");
    let mut anonymous = rustls::ClientConfig::builder()
        .with_root_certificates(roots)
        .with_no_client_auth();
    anonymous.alpn_protocols = vec![b"h2".to_vec()];
    let channel = tls::channel(&format!("localhost:{}", w.server.addr().port()), anonymous).expect("channel");
    let status = tonic_health::pb::health_client::HealthClient::new(channel)
        .check(tonic_health::pb::HealthCheckRequest::default())
        .await
        .expect_err("no certificate");
    assert!(
        format!("{status:?}").contains("CertificateRequired"),
        "{status:?}"
    );

    // A client that offers only TLS 1.1 is refused by the server (the client side is told to
    // allow it, so the refusal is the server's); the same client offering TLS 1.2 gets in.
    let openssl = |version: &'static str| {
        let port = w.server.addr().port();
        let (cert, key) = (w.path("backend.pem"), w.path("backend-key.pem"));
        async move {
            let out = tokio::process::Command::new("openssl")
                .args(["s_client", version, "-cipher", "DEFAULT@SECLEVEL=0", "-connect"])
                .arg(format!("127.0.0.1:{port}"))
                .arg("-cert")
                .arg(cert)
                .arg("-key")
                .arg(key)
                .stdin(std::process::Stdio::null())
                .output()
                .await
                .expect("run openssl");
            let text = format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
            (out.status.success(), text)
        }
    };
    let (ok, text) = openssl("-tls1_1").await;
    assert!(
        !ok && text.contains("alert handshake failure"),
        "a TLS 1.1 handshake is refused by the server:\n{text}"
    );
    let (_, text) = openssl("-tls1_2").await;
    assert!(
        text.contains("TLSv1.2"),
        "the same client gets in with TLS 1.2:\n{text}"
    );
    w.server.stop().await;
}

/// Calls until `ok(result)` holds, within a deadline (the server re-reads files every 5 s).
async fn until(w: &World, who: &str, what: &str, ok: impl Fn(&Result<(), tonic::Status>) -> bool) {
    let end = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let result = w.call(who).await;
        if ok(&result) {
            return;
        }
        assert!(
            tokio::time::Instant::now() < end,
            "{what} did not take effect within 30 s: {result:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test]
async fn crl_and_ca_bundle_changes_take_effect_without_a_restart() {
    let w = world(Kind::Supplier).await;
    w.call("later").await.expect("not revoked yet");
    w.call("foreign").await.expect_err("CA 2 is not trusted yet");

    // Revoke a second certificate: the new CRL replaces the file on disk.
    let later = std::fs::read_to_string(w.path("later.pem")).expect("read");
    let serial = x509_serial(&later);
    std::fs::write(w.path("crl.pem"), w.ca.crl(&[w.revoked, serial]).expect("crl")).expect("write");
    until(&w, "later", "the new CRL", |r| {
        r.as_ref()
            .is_err_and(|s| format!("{s:?}").contains("CertificateRevoked"))
    })
    .await;

    // A CA rollover: the bundle holds both CAs, and both are accepted. With CRLs enforced,
    // each CA brings its own CRL (here an empty one for the new CA).
    let crls = format!(
        "{}{}",
        w.ca.crl(&[w.revoked, serial]).expect("crl"),
        w.other_ca.crl(&[]).expect("crl")
    );
    std::fs::write(w.path("crl.pem"), crls).expect("write");
    let both = format!("{}{}", w.ca.cert_pem(), w.other_ca.cert_pem());
    std::fs::write(w.path("bundle.pem"), both).expect("write");
    until(&w, "foreign", "the two-CA bundle", Result::is_ok).await;
    w.call("backend")
        .await
        .expect("the old CA is still accepted during the rollover");
    w.server.stop().await;
}

fn x509_serial(pem: &str) -> u64 {
    let der = x509_parser::pem::parse_x509_pem(pem.as_bytes())
        .expect("pem")
        .1
        .contents;
    let (_, cert) = x509_parser::parse_x509_certificate(&der).expect("x509");
    cert.raw_serial()
        .iter()
        .fold(0u64, |acc, b| (acc << 8) | u64::from(*b))
}

#[tokio::test]
async fn the_coordinator_refuses_a_supplier_with_an_unexpected_identity() {
    let mut stack = crate::stack::Stack::suppliers(None).await;
    let mut config = stack.coordinator_config();
    // The coordinator is told to expect tpp's identity at emis's address.
    for s in &mut config.suppliers {
        if s.id.as_str() == "emis" {
            s.identity = "spiffe://gprollout.test/supplier/tpp".into();
        }
    }
    let running = Running::start(|listener, health, stop| async move {
        rollout_coordinator::serve(
            config,
            rollout_net::server::Listeners::new(listener, Some(health)),
            async {
                let _ = stop.await;
            },
        )
        .await
    })
    .await;
    stack.coordinator_addr = running.addr;
    let mut viewer = stack.client("viewer");
    let end = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let emis = viewer
            .get_supplier(pb::GetSupplierRequest {
                name: "suppliers/emis".into(),
            })
            .await
            .expect("get")
            .into_inner();
        if emis
            .last_error
            .contains("expected identity spiffe://gprollout.test/supplier/tpp")
        {
            assert_ne!(emis.state(), pb::supplier::State::Synced);
            break;
        }
        assert!(
            tokio::time::Instant::now() < end,
            "the identity mismatch is not reported: {emis:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // The others, whose certificates match, are reached (each by its own delivery task, which
    // may come a moment after emis's).
    loop {
        let tpp = viewer
            .get_supplier(pb::GetSupplierRequest {
                name: "suppliers/tpp".into(),
            })
            .await
            .expect("get")
            .into_inner();
        if tpp.last_contact_time.is_some() {
            break;
        }
        assert!(tokio::time::Instant::now() < end, "tpp is not reached: {tpp:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    running.stop().await;
    stack.stop().await;
}
