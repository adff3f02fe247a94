//! HTTPS requests to the coordinator's status page with a client certificate of the test PKI,
//! over HTTP/1.1: what the status page tests and the system benchmark ask of it.

use std::{net::SocketAddr, path::Path, sync::Arc};

use rollout_net::tls::{self, TlsFiles};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

pub type Tls = tokio_rustls::client::TlsStream<tokio::net::TcpStream>;

/// An HTTP/1.1 connection to the page at `addr` as `who` (files `who.pem` in `pki`).
pub async fn connect(pki: &Path, who: &str, addr: SocketAddr) -> std::io::Result<Tls> {
    let mut config = tls::client_config(&TlsFiles::from_pki_dir(pki, who), None).expect("client config");
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    let tcp = tokio::net::TcpStream::connect(addr).await?;
    let name = rustls::pki_types::ServerName::try_from("localhost").expect("name");
    tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(name, tcp)
        .await
}

/// `GET path` as `who`: the status code and the body.
pub async fn get(pki: &Path, who: &str, addr: SocketAddr, path: &str) -> (u16, String) {
    get_with(pki, who, addr, path, "").await
}

/// [`get`] with `headers` (each line ending `\r\n`) added to the request.
pub async fn get_with(pki: &Path, who: &str, addr: SocketAddr, path: &str, headers: &str) -> (u16, String) {
    let mut tls = connect(pki, who, addr).await.expect("connect");
    tls.write_all(
        format!("GET {path} HTTP/1.1\r\nHost: localhost\r\n{headers}Connection: close\r\n\r\n").as_bytes(),
    )
    .await
    .expect("send");
    let mut raw = Vec::new();
    // A server may close without a TLS close_notify once it has answered.
    let _ = tls.read_to_end(&mut raw).await;
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").expect("an HTTP answer");
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .expect("a status");
    let chunked = head.to_ascii_lowercase().contains("transfer-encoding: chunked");
    (status, if chunked { dechunk(body) } else { body.to_owned() })
}

fn dechunk(mut body: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = body.split_once("\r\n") {
        let n = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
        if n == 0 {
            break;
        }
        out.push_str(&rest[..n]);
        body = &rest[n + 2..];
    }
    out
}
