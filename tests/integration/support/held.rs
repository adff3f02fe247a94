//! A supplier, emis, that holds verifications: its ToggleService says when
//! ListPracticeFeatures is called and answers an empty page only once released, or never if the
//! release never comes; its ControlService is a real emis supplier's, forwarded, so that it
//! applies what the coordinator sends (the coordinator asks only a supplier that has applied a
//! halt to verify it). Used to keep a VerifyCommand in flight at the coordinator.

use std::{net::SocketAddr, path::Path, pin::Pin};

use rollout_proto::v1::{
    self as pb,
    control_service_client::ControlServiceClient,
    control_service_server::{ControlService, ControlServiceServer},
    toggle_service_server::{ToggleService, ToggleServiceServer},
};
use tokio::sync::{mpsc, watch};
use tonic::{Request, Response, Status, transport::Channel};

use super::{Running, channel_as, supplier::supplier_files};

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
    /// loopback port, its ControlService forwarded to a real emis supplier started with files
    /// in `dir`; the address, and the real supplier (stop it at the end).
    pub async fn serve_as_emis(
        self,
        dir: &Path,
        pki: &Path,
    ) -> (SocketAddr, Running<rollout_supplier::Error>) {
        let files = supplier_files(dir, pki, "emis");
        let real = files.start(None).await;
        let control = Forwarded(ControlServiceClient::new(channel_as(
            pki,
            "coordinator",
            real.addr,
        )));
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
                .add_service(ControlServiceServer::new(control))
                .serve_with_incoming(rollout_net::tls::incoming(listener, tls)),
        );
        (addr, real)
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

/// A real supplier's ControlService, called as the coordinator.
struct Forwarded(ControlServiceClient<Channel>);

#[tonic::async_trait]
impl ControlService for Forwarded {
    async fn apply_command(
        &self,
        req: Request<pb::ApplyCommandRequest>,
    ) -> Result<Response<pb::ApplyCommandResponse>, Status> {
        self.0.clone().apply_command(req.into_inner()).await
    }

    async fn get_sync_state(
        &self,
        req: Request<pb::GetSyncStateRequest>,
    ) -> Result<Response<pb::SyncState>, Status> {
        self.0.clone().get_sync_state(req.into_inner()).await
    }

    type WatchSyncStateStream = tonic::Streaming<pb::SyncState>;

    async fn watch_sync_state(
        &self,
        req: Request<pb::WatchSyncStateRequest>,
    ) -> Result<Response<Self::WatchSyncStateStream>, Status> {
        self.0.clone().watch_sync_state(req.into_inner()).await
    }

    async fn replace_rules(
        &self,
        _: Request<tonic::Streaming<pb::ReplaceRulesRequest>>,
    ) -> Result<Response<pb::ReplaceRulesResponse>, Status> {
        Err(Status::unimplemented("test service"))
    }

    async fn list_applied_commands(
        &self,
        req: Request<pb::ListAppliedCommandsRequest>,
    ) -> Result<Response<pb::ListAppliedCommandsResponse>, Status> {
        self.0.clone().list_applied_commands(req.into_inner()).await
    }

    async fn list_opt_out_changes(
        &self,
        req: Request<pb::ListOptOutChangesRequest>,
    ) -> Result<Response<pb::ListOptOutChangesResponse>, Status> {
        self.0.clone().list_opt_out_changes(req.into_inner()).await
    }

    async fn import_opt_outs(
        &self,
        req: Request<pb::ImportOptOutsRequest>,
    ) -> Result<Response<pb::ImportOptOutsResponse>, Status> {
        self.0.clone().import_opt_outs(req.into_inner()).await
    }
}
