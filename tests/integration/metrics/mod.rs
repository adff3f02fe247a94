//! The Prometheus metrics of both services, scraped from their plaintext `/metrics` ports:
//! per-method gRPC figures, refusals and TLS handshake failures counted by reason, each
//! service's own figures, and a real Prometheus server scraping them with the shipped rules.

mod coordinator;
mod prometheus;
mod rpc;

use std::{
    net::SocketAddr,
    time::{Duration, Instant},
};

use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// `GET /metrics` at `addr` over plain HTTP, as Prometheus scrapes it: the content type and
/// the body.
pub async fn scrape(addr: SocketAddr) -> (String, String) {
    get(addr, "/metrics").await.expect("connect to /metrics")
}

/// `GET path` at `addr` over HTTP/1.0 (so that no server chunks its answer): the content type
/// and the body of a 200 answer; `None` if nothing listens there.
pub async fn get(addr: SocketAddr, path: &str) -> Option<(String, String)> {
    let mut tcp = tokio::net::TcpStream::connect(addr).await.ok()?;
    tcp.write_all(format!("GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n").as_bytes())
        .await
        .expect("send the request");
    let mut response = String::new();
    tcp.read_to_string(&mut response).await.expect("read the answer");
    let (head, body) = response.split_once("\r\n\r\n").expect("an HTTP answer");
    assert_eq!(head.split(' ').nth(1), Some("200"), "{head}\n{body}");
    let content_type = head
        .lines()
        .find_map(|l| {
            let (name, value) = l.split_once(':')?;
            name.eq_ignore_ascii_case("content-type")
                .then(|| value.trim().to_owned())
        })
        .expect("a content type");
    Some((content_type, body.to_owned()))
}

/// The value of the sample `name` whose labels include every one of `labels`, if there is one.
pub fn sample(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .find(|l| {
            let (series, _) = l.rsplit_once(' ').unwrap_or((l, ""));
            let bare = series.split('{').next().unwrap_or(series);
            bare == name
                && labels
                    .iter()
                    .all(|(k, v)| series.contains(&format!("{k}=\"{v}\"")))
        })
        .and_then(|l| l.rsplit_once(' ')?.1.parse().ok())
}

/// Scrapes until `ok` holds of the text, for at most 30 s: a stream's end reaches the server
/// when the client's reset does, and control goes stale once its TTL has passed.
pub async fn scrape_until(addr: std::net::SocketAddr, what: &str, ok: impl Fn(&str) -> bool) -> String {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (_, text) = scrape(addr).await;
        if ok(&text) {
            return text;
        }
        assert!(Instant::now() < deadline, "{what} within 30 s:\n{text}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
