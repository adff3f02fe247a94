//! An HTTPS port for browsers, on the same mutual-TLS acceptor as the gRPC port
//! ([`crate::accept::incoming_for`]: the connection and handshake budgets, handshake failures
//! counted and logged), serving an axum router over HTTP/2 or HTTP/1.1 as the browser
//! negotiates (ALPN, [`crate::tls::ReloadingServerConfig::load_https`]). Every request carries
//! its connection's [`PeerInfo`] as `ConnectInfo<PeerInfo>`, for the same identity and role
//! checks as a gRPC call ([`crate::auth::AuthLayer::authorize`]).

use std::{io, net::SocketAddr, sync::Arc};

use axum::{
    extract::connect_info::Connected,
    serve::{IncomingStream, Listener},
};
use tokio::net::TcpListener;
use tokio_stream::{StreamExt, wrappers::ReceiverStream};
use tracing::info;

use crate::{
    Admission,
    accept::{PeerInfo, PeerStream, incoming_for},
    tls::ReloadingServerConfig,
};

/// The verified mutual-TLS connections of a port, as axum accepts them.
#[derive(Debug)]
pub struct HttpsListener {
    incoming: ReceiverStream<Result<PeerStream, io::Error>>,
    addr: SocketAddr,
}

impl HttpsListener {
    /// Accepts on `listener` within `admission`'s budgets, with `tls`'s certificates and client
    /// verification.
    pub fn new(
        listener: TcpListener,
        tls: Arc<ReloadingServerConfig>,
        admission: &Admission,
    ) -> io::Result<HttpsListener> {
        let addr = listener.local_addr()?;
        Ok(HttpsListener {
            incoming: incoming_for(listener, tls, admission),
            addr,
        })
    }

    /// The address it listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
}

impl Listener for HttpsListener {
    type Io = PeerStream;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (PeerStream, SocketAddr) {
        loop {
            match self.incoming.next().await {
                Some(Ok(stream)) => {
                    let peer = stream.info().remote_addr;
                    return (stream, peer);
                }
                // Refused handshakes are logged and counted by the acceptor.
                Some(Err(_)) => {}
                // The acceptor stops only when this listener is dropped.
                None => std::future::pending().await,
            }
        }
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        Ok(self.addr)
    }
}

impl Connected<IncomingStream<'_, HttpsListener>> for PeerInfo {
    fn connect_info(stream: IncomingStream<'_, HttpsListener>) -> PeerInfo {
        stream.io().info().clone()
    }
}

/// Serves `router` on `listener` until `shutdown` resolves, then lets the requests in progress
/// finish (a server-sent event stream ends when its handler sees the shutdown).
pub async fn serve(
    listener: HttpsListener,
    router: axum::Router,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> io::Result<()> {
    info!(addr = %listener.addr, "status page listening (HTTPS, client certificates)");
    axum::serve(listener, router.into_make_service_with_connect_info::<PeerInfo>())
        .with_graceful_shutdown(shutdown)
        .await
}
