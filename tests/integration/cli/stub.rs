//! A stand-in coordinator for what a real one cannot be made to do on demand: present an
//! expired certificate, or refuse with reasons whose server side is not built here. It serves
//! CoordinatorService over real mutual TLS (the project's own acceptor) with certificates
//! minted at test time, and answers each method with the refusal it was given
//! (UNIMPLEMENTED for the others).

use std::{
    collections::HashMap,
    convert::Infallible,
    net::SocketAddr,
    path::PathBuf,
    sync::Arc,
    task::{Context, Poll},
};

use rollout_net::tls::{self, ReloadingServerConfig, TlsFiles};
use rolloutctl::pki::{DevCa, IdentitySpec, Validity};
use tokio::{net::TcpListener, sync::oneshot, task::JoinHandle};
use tonic::{
    Status,
    body::Body,
    codegen::{Service, http},
    server::NamedService,
};

/// The refusals, by method name (`HaltFeature`).
#[derive(Clone)]
struct Refusals(Arc<HashMap<&'static str, Status>>);

impl Service<http::Request<Body>> for Refusals {
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = std::future::Ready<Result<Self::Response, Infallible>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<Body>) -> Self::Future {
        let method = request.uri().path().rsplit('/').next().unwrap_or_default();
        let status = self
            .0
            .get(method)
            .cloned()
            .unwrap_or_else(|| Status::unimplemented(format!("{method} is not in this stub")));
        std::future::ready(Ok(status.into_http()))
    }
}

impl NamedService for Refusals {
    const NAME: &'static str = "nhs.gprollout.v1.CoordinatorService";
}

/// The stand-in, running, with its CA and files.
pub struct Stub {
    /// Where it listens (127.0.0.1).
    pub addr: SocketAddr,
    /// The CA that issued its certificate, to issue clients' certificates.
    pub ca: DevCa,
    /// Where the certificates are.
    pub dir: tempfile::TempDir,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<()>,
}

impl Stub {
    /// Starts one with a server certificate valid over `server` (DNS SAN `localhost`, as the
    /// development PKI issues them) that answers each method in `refusals` with its status.
    pub async fn start(server: Validity, refusals: Vec<(&'static str, Status)>) -> Stub {
        rollout_net::tls::install_crypto_provider();
        let dir = tempfile::tempdir().expect("tempdir");
        let ca = DevCa::new("stand-in CA").expect("ca");
        std::fs::write(dir.path().join("ca.pem"), ca.cert_pem()).expect("write");
        let stub_files = |dir: &std::path::Path| TlsFiles {
            crls: vec![],
            ..TlsFiles::from_pki_dir(dir, "coordinator")
        };
        issue(&ca, dir.path(), "coordinator", "coordinator", true, server);
        issue(&ca, dir.path(), "viewer", "viewer", false, Validity::default());
        let config = ReloadingServerConfig::load(stub_files(dir.path())).expect("server config");
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let (stop, stopped) = oneshot::channel::<()>();
        let service = Refusals(Arc::new(refusals.into_iter().collect()));
        let task = tokio::spawn(async move {
            tonic::transport::Server::builder()
                .add_service(service)
                .serve_with_incoming_shutdown(tls::incoming(listener, config), async {
                    let _ = stopped.await;
                })
                .await
                .expect("the stand-in serves");
        });
        Stub {
            addr,
            ca,
            dir,
            stop: Some(stop),
            task,
        }
    }

    /// A file of the stand-in's directory.
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Runs `rolloutctl` at `coordinator` (`localhost:PORT` when `None`) with the CA bundle
    /// `ca` and the client certificate `NAME.pem` of the stand-in's directory.
    pub async fn ctl(
        &self,
        coordinator: Option<&str>,
        ca: &str,
        name: &str,
        args: &[&str],
    ) -> std::process::Output {
        let at = coordinator.map_or_else(|| format!("localhost:{}", self.addr.port()), str::to_owned);
        tokio::process::Command::new(crate::support::binary("rolloutctl"))
            .args(["--coordinator", &at, "--ca"])
            .arg(self.path(ca))
            .arg("--cert")
            .arg(self.path(&format!("{name}.pem")))
            .arg("--key")
            .arg(self.path(&format!("{name}-key.pem")))
            .args(args)
            .env_remove("ROLLOUT_AS")
            .env_remove("ROLLOUT_OUTPUT")
            .output()
            .await
            .expect("run rolloutctl")
    }

    /// Stops it.
    pub async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        let _ = self.task.await;
    }
}

/// Writes `NAME.pem` and `NAME-key.pem`, issued by `ca` for `spiffe://gprollout.test/PATH`
/// over `validity`, into `dir`; returns the certificate's PEM.
pub fn issue(
    ca: &DevCa,
    dir: &std::path::Path,
    name: &str,
    path: &str,
    server: bool,
    validity: Validity,
) -> String {
    let issued = ca
        .issue(&IdentitySpec::new(name, path, server), validity)
        .expect("issue");
    std::fs::write(dir.join(format!("{name}.pem")), &issued.cert_pem).expect("write");
    std::fs::write(dir.join(format!("{name}-key.pem")), issued.key_pem).expect("write");
    issued.cert_pem
}

/// A certificate's last valid minute as the CLI should say it: `2026-11-30 12:00 UTC`.
pub fn not_after_in_words(cert_pem: &str) -> String {
    let (_, pem) = x509_parser::pem::parse_x509_pem(cert_pem.as_bytes()).expect("pem");
    let cert = pem.parse_x509().expect("x509");
    let t = cert.validity().not_after.to_datetime();
    format!(
        "{:04}-{:02}-{:02} {:02}:{:02} UTC",
        t.year(),
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute()
    )
}
