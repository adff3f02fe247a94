//! Mutual TLS with certificates from the real `rolloutctl pki init`: the peer identity, the
//! role check, refusals, health and reflection.

use std::{
    net::SocketAddr,
    path::Path,
    pin::Pin,
    sync::{Arc, Mutex},
};

use arc_swap::ArcSwap;
use rollout_net::{
    Access, AccessTable, AuthLayer, Caller, Denial, DenialObserver, Role, RolePolicy,
    tls::{self, ReloadingServerConfig, TlsFiles},
};
use rollout_proto::v1::{
    self as pb,
    toggle_service_client::ToggleServiceClient,
    toggle_service_server::{ToggleService, ToggleServiceServer},
};
use tokio::{net::TcpListener, sync::oneshot};
use tonic::{Code, Request, Response, Status};
use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};
use tonic_types::StatusExt;

use crate::support::{channel_as, pki_init};

/// A ToggleService for this test only: it answers with the caller's identity, so the test can
/// see what the server derived from the client certificate.
struct WhoAmI;

#[tonic::async_trait]
impl ToggleService for WhoAmI {
    async fn get_practice_feature(
        &self,
        req: Request<pb::GetPracticeFeatureRequest>,
    ) -> Result<Response<pb::PracticeFeature>, Status> {
        let caller = Caller::of(&req)?;
        Ok(Response::new(pb::PracticeFeature {
            name: req.get_ref().name.clone(),
            explanation: caller.identity.to_string(),
            ..Default::default()
        }))
    }

    async fn batch_get_practice_features(
        &self,
        _: Request<pb::BatchGetPracticeFeaturesRequest>,
    ) -> Result<Response<pb::BatchGetPracticeFeaturesResponse>, Status> {
        Err(Status::unimplemented("test service"))
    }

    async fn list_practice_features(
        &self,
        _: Request<pb::ListPracticeFeaturesRequest>,
    ) -> Result<Response<pb::ListPracticeFeaturesResponse>, Status> {
        Err(Status::unimplemented("test service"))
    }

    type WatchPracticeFeaturesStream =
        Pin<Box<dyn tokio_stream::Stream<Item = Result<pb::WatchPracticeFeaturesResponse, Status>> + Send>>;

    async fn watch_practice_features(
        &self,
        _: Request<pb::WatchPracticeFeaturesRequest>,
    ) -> Result<Response<Self::WatchPracticeFeaturesStream>, Status> {
        Err(Status::unimplemented("test service"))
    }
}

/// Records refusals, as the services' audit logs will.
#[derive(Default)]
struct Recorder(Mutex<Vec<Denial>>);

impl DenialObserver for Recorder {
    fn denied(&self, denial: Denial) {
        self.0.lock().expect("lock").push(denial);
    }
}

struct Server {
    addr: SocketAddr,
    denials: Arc<Recorder>,
    stop: Option<oneshot::Sender<()>>,
    done: tokio::task::JoinHandle<Result<(), tonic::transport::Error>>,
}

static BACKEND: &[Role] = &[Role::Backend];

/// Serves WhoAmI, health and reflection over mTLS as `supplier-emis`, with a policy that lists
/// emis's backend (role backend) and practice admin (role practice-admin) and nobody else.
async fn start(pki: &Path) -> Server {
    let policy = RolePolicy::from_pairs([
        (
            "spiffe://gprollout.test/supplier/emis/backend",
            &[Role::Backend][..],
        ),
        (
            "spiffe://gprollout.test/supplier/emis/practice-admin",
            &[Role::PracticeAdmin][..],
        ),
    ]);
    let denials = Arc::new(Recorder::default());
    let auth = AuthLayer::new(
        Arc::new(ArcSwap::from_pointee(policy)),
        AccessTable::new().allow("/nhs.gprollout.v1.ToggleService/", Access::AnyOf(BACKEND)),
        Some(denials.clone() as Arc<dyn DenialObserver>),
    );
    let tls = ReloadingServerConfig::load(TlsFiles::from_pki_dir(pki, "supplier-emis")).expect("server tls");
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let (_reporter, health) = rollout_net::server::health();
    let (reflect_v1, reflect_v1alpha) =
        rollout_net::server::reflection(&["nhs.gprollout.v1.ToggleService"]).expect("reflection");
    let (stop, stopped) = oneshot::channel::<()>();
    let router = rollout_net::server::builder()
        .layer(auth)
        .add_service(health)
        .add_service(reflect_v1)
        .add_service(reflect_v1alpha)
        .add_service(ToggleServiceServer::new(WhoAmI));
    let done = tokio::spawn(
        router.serve_with_incoming_shutdown(tls::incoming(listener, tls), async {
            let _ = stopped.await;
        }),
    );
    Server {
        addr,
        denials,
        stop: Some(stop),
        done,
    }
}

fn get(name: &str) -> pb::GetPracticeFeatureRequest {
    pb::GetPracticeFeatureRequest {
        name: name.to_owned(),
        explain: true,
    }
}

const NAME: &str = "practices/A81001/features/prospective-record-access";

#[tokio::test]
async fn identity_and_role_are_checked_on_every_call() {
    tls::install_crypto_provider();
    let tmp = tempfile::tempdir().expect("tempdir");
    let pki = pki_init(tmp.path());
    let mut server = start(&pki).await;

    // A permitted identity passes, and the server saw the URI SAN of its certificate.
    let mut backend = ToggleServiceClient::new(channel_as(&pki, "backend-emis", server.addr));
    let answer = backend
        .get_practice_feature(get(NAME))
        .await
        .expect("backend may read");
    assert_eq!(
        answer.get_ref().explanation,
        "spiffe://gprollout.test/supplier/emis/backend"
    );

    // A listed identity with the wrong role is refused, with ErrorInfo saying which role.
    let mut admin = ToggleServiceClient::new(channel_as(&pki, "practice-admin-emis", server.addr));
    let status = admin
        .get_practice_feature(get(NAME))
        .await
        .expect_err("wrong role");
    assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");
    let info = status
        .get_error_details()
        .error_info()
        .cloned()
        .expect("error info");
    assert_eq!(info.reason, "ROLE_REQUIRED");
    assert_eq!(
        info.metadata.get("required_role").map(String::as_str),
        Some("backend")
    );

    // An identity from the same CA that the policy does not list is refused.
    let mut alice = ToggleServiceClient::new(channel_as(&pki, "alice", server.addr));
    let status = alice.get_practice_feature(get(NAME)).await.expect_err("unlisted");
    assert_eq!(status.code(), Code::PermissionDenied);
    let info = status
        .get_error_details()
        .error_info()
        .cloned()
        .expect("error info");
    assert_eq!(info.reason, "IDENTITY_NOT_ALLOWED");
    assert_eq!(
        info.metadata.get("identity").map(String::as_str),
        Some("spiffe://gprollout.test/operator/alice")
    );

    // Both refusals reached the observer (the audit log), with the identity and method.
    let denials = server.denials.0.lock().expect("lock").clone();
    let seen: Vec<(String, &str)> = denials
        .iter()
        .map(|d| {
            (
                d.identity.as_ref().map(ToString::to_string).unwrap_or_default(),
                d.reason,
            )
        })
        .collect();
    assert_eq!(
        seen,
        [
            (
                "spiffe://gprollout.test/supplier/emis/practice-admin".to_owned(),
                "ROLE_REQUIRED"
            ),
            (
                "spiffe://gprollout.test/operator/alice".to_owned(),
                "IDENTITY_NOT_ALLOWED"
            ),
        ]
    );
    assert!(
        denials
            .iter()
            .all(|d| d.method == "/nhs.gprollout.v1.ToggleService/GetPracticeFeature")
    );

    // Health is open to any verified peer, listed or not.
    let mut health = HealthClient::new(channel_as(&pki, "alice", server.addr));
    let serving = health
        .check(HealthCheckRequest {
            service: String::new(),
        })
        .await
        .expect("health");
    assert_eq!(serving.get_ref().status, 1, "SERVING");

    server.stop.take().map(|s| s.send(()));
    server.done.await.expect("join").expect("clean shutdown");
}

#[tokio::test]
async fn a_client_without_a_certificate_cannot_connect() {
    tls::install_crypto_provider();
    let tmp = tempfile::tempdir().expect("tempdir");
    let pki = pki_init(tmp.path());
    let server = start(&pki).await;

    // Trusts the server's CA but presents no certificate of its own.
    let channel = crate::support::channel_without_certificate(&pki, server.addr);
    let status = ToggleServiceClient::new(channel)
        .get_practice_feature(get(NAME))
        .await
        .expect_err("no certificate");
    // With TLS 1.3 the client learns of the refusal from the server's alert on first read.
    assert!(
        format!("{status:?}").contains("CertificateRequired"),
        "the server refused the handshake for want of a certificate: {status:?}"
    );
    assert!(
        server.denials.0.lock().expect("lock").is_empty(),
        "no call got as far as the role check"
    );
}

#[tokio::test]
async fn the_client_checks_the_server_identity() {
    tls::install_crypto_provider();
    let tmp = tempfile::tempdir().expect("tempdir");
    let pki = pki_init(tmp.path());
    let server = start(&pki).await;
    let files = TlsFiles::from_pki_dir(&pki, "coordinator");
    let addr = format!("localhost:{}", server.addr.port());

    // The server is supplier-emis: expecting tpp's identity fails the handshake...
    let expect_tpp = tls::client_config(
        &files,
        Some(rollout_net::Identity::new("spiffe://gprollout.test/supplier/tpp")),
    )
    .expect("config");
    let mut client = HealthClient::new(tls::channel(&addr, expect_tpp).expect("channel"));
    let status = client
        .check(HealthCheckRequest::default())
        .await
        .expect_err("wrong server");
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");

    // ...and expecting emis's succeeds.
    let expect_emis = tls::client_config(
        &files,
        Some(rollout_net::Identity::new(
            "spiffe://gprollout.test/supplier/emis",
        )),
    )
    .expect("config");
    let mut client = HealthClient::new(tls::channel(&addr, expect_emis).expect("channel"));
    client
        .check(HealthCheckRequest::default())
        .await
        .expect("right server");
}
