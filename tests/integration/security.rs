//! The TLS and identity matrix against a real supplier: every way in that should be refused is
//! refused; certificate, CRL and CA bundle files replaced on disk take effect without a restart.

use std::{path::Path, time::Duration};

use rollout_net::tls::{self, TlsFiles};
use rollout_proto::v1::{self as pb, toggle_service_client::ToggleServiceClient};
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

struct World {
    dir: tempfile::TempDir,
    ca: DevCa,
    other_ca: DevCa,
    server: Running<rollout_supplier::Error>,
    revoked: u64,
}

impl World {
    fn path(&self, name: &str) -> std::path::PathBuf {
        self.dir.path().join(name)
    }

    /// A client as `name`, trusting the server's CA.
    fn client(&self, name: &str) -> ToggleServiceClient<tonic::transport::Channel> {
        let files = TlsFiles {
            ca: self.path("ca1.pem"),
            cert: self.path(&format!("{name}.pem")),
            key: self.path(&format!("{name}-key.pem")),
            crls: vec![],
        };
        let config = tls::client_config(&files, None).expect("client config");
        ToggleServiceClient::new(
            tls::channel(&format!("localhost:{}", self.server.addr.port()), config).expect("channel"),
        )
    }
}

async fn get(
    c: &mut ToggleServiceClient<tonic::transport::Channel>,
) -> Result<pb::PracticeFeature, tonic::Status> {
    c.get_practice_feature(pb::GetPracticeFeatureRequest {
        name: practice_feature(crate::supplier::EMIS_A),
    })
    .await
    .map(|r| r.into_inner())
}

/// A supplier whose CA bundle holds CA 1 only, with a CRL revoking one backend certificate.
async fn world() -> World {
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
    let policy = d.join("policy.toml");
    std::fs::write(
        &policy,
        "[identities]\n\"spiffe://gprollout.test/supplier/emis/backend\" = [\"backend\"]\n\
         \"spiffe://gprollout.test/supplier/emis/practice-admin\" = [\"practice-admin\"]\n",
    )
    .expect("policy");
    let config = rollout_supplier::Config {
        supplier: "emis".parse().expect("emis"),
        tls: TlsFiles {
            ca: d.join("bundle.pem"),
            cert: d.join("server.pem"),
            key: d.join("server-key.pem"),
            crls: vec![d.join("crl.pem")],
        },
        policy,
        database_url: format!("sqlite://{}", d.join("emis.db").display()),
        estate: Some(crate::support::reference_files()),
        freeze_reason: None,
    };
    let server = Running::start(|listener, health, stop| async move {
        rollout_supplier::serve(config, listener, Some(health), async {
            let _ = stop.await;
        })
        .await
    })
    .await;
    World {
        dir,
        ca,
        other_ca,
        server,
        revoked,
    }
}

/// Asserts the handshake was refused, naming the TLS alert.
fn assert_handshake_refused(result: Result<pb::PracticeFeature, tonic::Status>, alert: &str, what: &str) {
    let status = result.expect_err(what);
    let text = format!("{status:?}");
    assert!(
        text.contains(alert),
        "{what}: expected the {alert} alert, got {text}"
    );
}

#[tokio::test]
async fn every_bad_certificate_and_identity_is_refused() {
    let w = world().await;
    // The baseline: a valid, listed backend passes.
    get(&mut w.client("backend"))
        .await
        .expect("a valid backend certificate passes");

    assert_handshake_refused(
        get(&mut w.client("foreign")).await,
        "UnknownCA",
        "a certificate from an unknown CA",
    );
    assert_handshake_refused(
        get(&mut w.client("expired")).await,
        "CertificateExpired",
        "an expired certificate",
    );
    assert_handshake_refused(
        get(&mut w.client("early")).await,
        "Certificate",
        "a certificate not yet valid",
    );
    assert_handshake_refused(
        get(&mut w.client("revoked")).await,
        "CertificateRevoked",
        "a revoked certificate",
    );

    let unlisted = get(&mut w.client("stranger")).await.expect_err("unlisted");
    assert_refused(
        &unlisted,
        Code::PermissionDenied,
        "IDENTITY_NOT_ALLOWED",
        "a valid but unlisted identity",
    );
    let wrong_role = get(&mut w.client("admin")).await.expect_err("wrong role");
    assert_refused(
        &wrong_role,
        Code::PermissionDenied,
        "ROLE_REQUIRED",
        "a listed identity with the wrong role",
    );

    // A client that offers only TLS 1.1 is refused by the server (the client side is told to
    // allow it, so the refusal is the server's); the same client offering TLS 1.2 gets in.
    let openssl = |version: &'static str| {
        let port = w.server.addr.port();
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
            (
                out.status.success(),
                format!(
                    "{}{}",
                    String::from_utf8_lossy(&out.stdout),
                    String::from_utf8_lossy(&out.stderr)
                ),
            )
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
    let _ = (&w.ca, &w.other_ca, w.revoked);
    w.server.stop().await;
}

/// Calls until `ok(result)` holds, within a deadline (the server re-reads files every 5 s).
async fn until(
    w: &World,
    who: &str,
    what: &str,
    ok: impl Fn(&Result<pb::PracticeFeature, tonic::Status>) -> bool,
) {
    let end = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let result = get(&mut w.client(who)).await;
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
    let w = world().await;
    get(&mut w.client("later")).await.expect("not revoked yet");
    get(&mut w.client("foreign"))
        .await
        .expect_err("CA 2 is not trusted yet");

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
    get(&mut w.client("backend"))
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
    let bytes = cert.raw_serial();
    bytes.iter().fold(0u64, |acc, b| (acc << 8) | u64::from(*b))
}
