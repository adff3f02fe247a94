//! A supplier, emis, that holds verifications: its ToggleService says when
//! ListPracticeFeatures is called and answers an empty page only once released, or never if the
//! release never comes. Used to keep a VerifyCommand in flight at the coordinator.

use std::{net::SocketAddr, path::Path, pin::Pin};

use rollout_proto::v1::{
    self as pb,
    toggle_service_server::{ToggleService, ToggleServiceServer},
};
use tokio::sync::{mpsc, watch};
use tonic::{Request, Response, Status};

/// The held ToggleService.
pub struct HeldToggle {
    called: mpsc::Sender<()>,
    release: watch::Receiver<bool>,
}

impl HeldToggle {
    /// Tells `called` of every ListPracticeFeatures, and answers it once `release` turns true
    /// (keep its sender alive: a dropped one releases every call).
    pub fn new(called: mpsc::Sender<()>, release: watch::Receiver<bool>) -> Self {
        HeldToggle { called, release }
    }

    /// Serves it as supplier emis (its certificate from `pki`) over mutual TLS on a free
    /// loopback port; its address.
    pub async fn serve_as_emis(self, pki: &Path) -> SocketAddr {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let tls = rollout_net::ReloadingServerConfig::load(rollout_net::TlsFiles::from_pki_dir(
            pki,
            "supplier-emis",
        ))
        .expect("tls");
        tokio::spawn(
            rollout_net::server::builder()
                .add_service(ToggleServiceServer::new(self))
                .serve_with_incoming(rollout_net::tls::incoming(listener, tls)),
        );
        addr
    }
}

#[tonic::async_trait]
impl ToggleService for HeldToggle {
    async fn get_practice_feature(
        &self,
        _: Request<pb::GetPracticeFeatureRequest>,
    ) -> Result<Response<pb::PracticeFeature>, Status> {
        Err(Status::unimplemented("test service"))
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
        let _ = self.called.send(()).await;
        let _ = self.release.clone().wait_for(|r| *r).await;
        Ok(Response::new(pb::ListPracticeFeaturesResponse::default()))
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
