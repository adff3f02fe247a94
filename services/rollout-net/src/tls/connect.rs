//! The connecting side: a lazily connecting tonic `Channel` over mutual TLS that checks the
//! server's identity, and, made from a [`ClientTrust`], presents the files in force at each
//! connection and closes a connection once newer files have taken effect (the channel then
//! connects again at its next call, with the new certificate).

use std::{
    future::Future,
    io,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
    time::Duration,
};

use rustls::{
    ClientConfig, DigitallySignedStruct, SignatureScheme,
    client::{
        WebPkiServerVerifier,
        danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier},
    },
    pki_types::{CertificateDer, ServerName, UnixTime},
};
use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    net::TcpStream,
    sync::watch,
};
use tokio_rustls::TlsConnector;
use tonic::transport::{Channel, Endpoint};

use super::{ClientTrust, Identity, TlsError, sans};

/// Verifies the server's chain and name as webpki does, then its identity.
#[derive(Debug)]
pub(super) struct ExpectIdentity {
    pub(super) webpki: Arc<WebPkiServerVerifier>,
    pub(super) expected: Option<Identity>,
}

impl ServerCertVerifier for ExpectIdentity {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        self.webpki
            .verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)?;
        if let Some(expected) = &self.expected {
            let (uris, dns) = sans(end_entity).unwrap_or_default();
            if !uris.iter().chain(&dns).any(|s| s == expected.as_str()) {
                return Err(rustls::Error::General(format!(
                    "server certificate does not carry the expected identity {expected} (it has {})",
                    uris.iter().chain(&dns).cloned().collect::<Vec<_>>().join(", ")
                )));
            }
        }
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.webpki.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.webpki.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.webpki.supported_verify_schemes()
    }
}

/// The endpoint for `addr` (`host:port`) and the server name its certificate must carry.
fn endpoint(addr: &str) -> Result<(Endpoint, ServerName<'static>), TlsError> {
    let host = addr.rsplit_once(':').map_or(addr, |(h, _)| h);
    let host = host.trim_start_matches('[').trim_end_matches(']').to_owned();
    let server_name = ServerName::try_from(host)
        .map_err(|e| TlsError::Config(format!("{addr}: invalid server name: {e}")))?;
    let endpoint = Endpoint::from_shared(format!("http://{addr}"))
        .map_err(|e| TlsError::Config(format!("{addr}: invalid endpoint: {e}")))?
        .connect_timeout(Duration::from_secs(5))
        .http2_keep_alive_interval(Duration::from_secs(30))
        .keep_alive_timeout(Duration::from_secs(10))
        .keep_alive_while_idle(true);
    Ok((endpoint, server_name))
}

/// A lazily connecting gRPC channel to `addr` (`host:port`) over mutual TLS with a fixed
/// configuration. The server's certificate must be valid for the host name and, if `config`
/// was made with an expected identity, carry it.
pub fn channel(addr: &str, config: ClientConfig) -> Result<Channel, TlsError> {
    let (endpoint, server_name) = endpoint(addr)?;
    let connector = TlsConnector::from(Arc::new(config));
    let addr = addr.to_owned();
    Ok(
        endpoint.connect_with_connector_lazy(tower::service_fn(move |_: http::Uri| {
            let connector = connector.clone();
            let server_name = server_name.clone();
            let addr = addr.clone();
            async move {
                let tcp = TcpStream::connect(&addr).await?;
                tcp.set_nodelay(true)?;
                let tls = connector.connect(server_name, tcp).await?;
                Ok::<_, io::Error>(hyper_util::rt::TokioIo::new(tls))
            }
        })),
    )
}

/// A lazily connecting gRPC channel to `addr` over mutual TLS with `trust`'s files in force at
/// each connection; the server must carry `expected`. A connection is closed once newer files
/// take effect ([`ClientTrust::reload_if_changed`]): calls in flight on it fail UNAVAILABLE,
/// and the channel connects again, with the new files, at its next call.
pub fn reloading_channel(
    addr: &str,
    trust: Arc<ClientTrust>,
    expected: Identity,
) -> Result<Channel, TlsError> {
    let (endpoint, server_name) = endpoint(addr)?;
    let addr = addr.to_owned();
    Ok(
        endpoint.connect_with_connector_lazy(tower::service_fn(move |_: http::Uri| {
            let (trust, expected) = (trust.clone(), expected.clone());
            let server_name = server_name.clone();
            let addr = addr.clone();
            async move {
                let generation = trust.generation();
                let config = trust
                    .config(Some(expected))
                    .map_err(|e| io::Error::other(e.to_string()))?;
                let tcp = TcpStream::connect(&addr).await?;
                tcp.set_nodelay(true)?;
                let tls = TlsConnector::from(Arc::new(config))
                    .connect(server_name, tcp)
                    .await?;
                Ok::<_, io::Error>(hyper_util::rt::TokioIo::new(Expiring::new(tls, generation)))
            }
        })),
    )
}

/// A connection that fails every read and write once its files' generation has moved on, so
/// that the HTTP/2 connection on it closes and the channel makes a new one.
struct Expiring<T> {
    inner: T,
    superseded: Pin<Box<dyn Future<Output = ()> + Send>>,
    closed: bool,
}

impl<T> Expiring<T> {
    /// `generation` subscribed before the files of the connection were read: a reload since
    /// then (during the handshake, say) counts, and closes the connection at once.
    fn new(inner: T, mut generation: watch::Receiver<u64>) -> Self {
        let superseded = Box::pin(async move {
            // A dropped sender (the trust gone with its process) never supersedes.
            if generation.changed().await.is_err() {
                std::future::pending::<()>().await;
            }
        });
        Expiring {
            inner,
            superseded,
            closed: false,
        }
    }

    /// An error once superseded (and from then on).
    fn check(&mut self, cx: &mut Context<'_>) -> io::Result<()> {
        if !self.closed && self.superseded.as_mut().poll(cx).is_ready() {
            self.closed = true;
        }
        if self.closed {
            Err(io::Error::new(
                io::ErrorKind::ConnectionAborted,
                "the client certificates were reloaded: this connection was made with the previous ones",
            ))
        } else {
            Ok(())
        }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Expiring<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        self.check(cx)?;
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Expiring<T> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        self.check(cx)?;
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::AsyncReadExt;

    use super::*;

    #[tokio::test]
    async fn a_reload_during_the_handshake_still_closes_the_connection() {
        let (generation, _) = watch::channel(1u64);
        // Subscribed before the files were read; a reload lands before the connection is made.
        let seen = generation.subscribe();
        generation.send_modify(|g| *g += 1);
        let (client, _server) = tokio::io::duplex(64);
        let mut conn = Expiring::new(client, seen);
        let mut buf = [0u8; 8];
        let read = conn.read(&mut buf).await;
        assert_eq!(read.expect_err("closed").kind(), io::ErrorKind::ConnectionAborted);
    }

    #[tokio::test]
    async fn a_connection_stays_open_while_the_files_are_unchanged() {
        let (generation, _) = watch::channel(1u64);
        let (client, mut server) = tokio::io::duplex(64);
        let mut conn = Expiring::new(client, generation.subscribe());
        tokio::io::AsyncWriteExt::write_all(&mut server, b"ok")
            .await
            .expect("write");
        let mut buf = [0u8; 2];
        conn.read_exact(&mut buf).await.expect("read");
        assert_eq!(&buf, b"ok");
        generation.send_modify(|g| *g += 1);
        assert!(conn.read(&mut buf).await.is_err(), "closed once superseded");
    }
}
