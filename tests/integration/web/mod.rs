//! The coordinator's status page over HTTPS with client certificates: each view's JSON read
//! by a viewer, the audit view an auditor's alone, the event stream telling of a halt, and a
//! client with a backend identity or none refused. `browser.rs` loads the page in a real
//! Chromium.

mod browser;
pub mod https;

use std::{net::SocketAddr, path::Path, sync::Arc, time::Duration};

use https::{Tls, connect, get};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};

use crate::stack::{Stack, feature_live, halt, national};

/// `GET path` as `who`, answered 200 with JSON.
async fn json(pki: &Path, who: &str, addr: SocketAddr, path: &str) -> serde_json::Value {
    let (status, body) = get(pki, who, addr, path).await;
    assert_eq!(status, 200, "{path}: {body}");
    serde_json::from_str(&body).unwrap_or_else(|e| panic!("{path}: {e}: {body}"))
}

/// The `changed` events of an open `/events` stream, one at a time.
struct Events(tokio::io::Lines<BufReader<Tls>>);

impl Events {
    async fn open(pki: &Path, who: &str, addr: SocketAddr) -> Events {
        Events::try_open(pki, who, addr)
            .await
            .unwrap_or_else(|status| panic!("{status}"))
    }

    /// The stream, or the status line it was refused with.
    async fn try_open(pki: &Path, who: &str, addr: SocketAddr) -> Result<Events, String> {
        let mut tls = connect(pki, who, addr).await.expect("connect");
        tls.write_all(b"GET /events HTTP/1.1\r\nHost: localhost\r\nAccept: text/event-stream\r\n\r\n")
            .await
            .expect("send");
        let mut lines = BufReader::new(tls).lines();
        let status = lines.next_line().await.expect("read").expect("a status line");
        if status.contains(" 200 ") {
            Ok(Events(lines))
        } else {
            Err(status)
        }
    }

    /// The data of the next `changed` event, within 10 s.
    async fn next(&mut self) -> u64 {
        let read = async {
            let mut changed = false;
            loop {
                let line = self
                    .0
                    .next_line()
                    .await
                    .expect("read")
                    .expect("the stream is open");
                if line.starts_with("event: changed") || line.starts_with("event:changed") {
                    changed = true;
                } else if changed && let Some(data) = line.strip_prefix("data:") {
                    return data.trim().parse().expect("a change count");
                }
            }
        };
        tokio::time::timeout(Duration::from_secs(10), read)
            .await
            .expect("a changed event within 10 s")
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_viewer_reads_every_view_and_is_told_of_a_halt() {
    let stack = Stack::start(None).await;
    feature_live(&stack).await;
    let (pki, web) = (&stack.pki, stack.coordinator_web.expect("the status page"));

    let (status, page) = get(pki, "viewer", web, "/commands").await;
    assert_eq!(status, 200, "{page}");
    assert!(page.contains("<script src=\"/static/app.js\""), "{page}");
    let (status, script) = get(pki, "viewer", web, "/static/app.js").await;
    assert_eq!(status, 200);
    assert!(script.contains("EventSource"), "the page listens for changes");

    let national_view = json(pki, "viewer", web, "/api/national").await;
    let suppliers = national_view["suppliers"]["suppliers"]
        .as_array()
        .expect("suppliers");
    assert_eq!(suppliers.len(), 4, "{national_view}");
    let table = &national_view["tables"][0];
    assert_eq!(table["feature"], format!("features/{}", crate::support::FEATURE));
    let halted = |t: &serde_json::Value| -> u64 {
        t["rows"]
            .as_array()
            .expect("rows")
            .iter()
            .map(|r| r["halted"].as_u64().unwrap_or(0))
            .sum()
    };
    assert_eq!(halted(table), 0, "nothing halted yet: {table}");

    let mut events = Events::open(pki, "viewer", web).await;
    let first = events.next().await;
    let h = halt(&stack, national()).await;
    assert!(events.next().await > first, "the halt is told");
    let table = &json(pki, "viewer", web, "/api/national").await["tables"][0];
    let practices: u64 = table["rows"]
        .as_array()
        .expect("rows")
        .iter()
        .map(|r| r["practices"].as_u64().unwrap_or(0))
        .sum();
    assert!(
        practices > 0 && halted(table) == practices,
        "every active practice halted: {table}"
    );
    assert!(table["rows"][0]["halts"][0] == h.name, "{table}");

    let commands = json(pki, "viewer", web, "/api/commands").await;
    assert_eq!(
        commands["commands"]["commands"][0]["name"], h.name,
        "newest first: {commands}"
    );
    assert!(
        commands["pending"]["commands"].is_null(),
        "nothing waits for approval: {commands}"
    );
    let resume = stack
        .client("alice")
        .resume_feature(rollout_proto::v1::ResumeFeatureRequest {
            name: format!("features/{}", crate::support::FEATURE),
            halts: vec![h.name.clone()],
            reason: "ready again".into(),
            ..Default::default()
        })
        .await
        .expect("resume")
        .into_inner();
    let commands = json(pki, "viewer", web, "/api/commands").await;
    assert_eq!(
        commands["pending"]["commands"][0]["name"], resume.name,
        "listed apart: {commands}"
    );

    let code = stack.practice_of("emis");
    let found = json(
        pki,
        "viewer",
        web,
        &format!("/api/practices?q={}", code.to_ascii_lowercase()),
    )
    .await;
    assert_eq!(found["practice"]["ods"], code, "{found}");
    let answer = &found["answers"][0]["answer"];
    assert_eq!(answer["state"], "STATE_DISABLED", "{found}");
    assert!(
        answer["rules"]
            .as_array()
            .is_some_and(|r| r.iter().any(|r| r["deciding"] == true)),
        "the deciding rule is marked: {found}"
    );
    let (status, body) = get(pki, "viewer", web, "/api/practices?q=").await;
    assert_eq!(status, 400, "{body}");
    // Another site's page may not make the viewer's browser read it.
    let path = format!("/api/practices?q={code}");
    let (status, body) = https::get_with(pki, "viewer", web, &path, "Sec-Fetch-Site: cross-site\r\n").await;
    assert_eq!(status, 403, "{body}");
    assert!(body.contains("CROSS_SITE_REQUEST"), "{body}");
    let same = https::get_with(pki, "viewer", web, &path, "Sec-Fetch-Site: same-origin\r\n").await;
    assert_eq!(same.0, 200, "{}", same.1);
    // A link from elsewhere still opens a view.
    let linked = https::get_with(
        pki,
        "viewer",
        web,
        "/practices?q=x",
        "Sec-Fetch-Site: cross-site\r\n",
    )
    .await;
    assert_eq!(linked.0, 200, "{}", linked.1);

    // The audit log is the auditor's, as through the gRPC API.
    let (status, body) = get(pki, "viewer", web, "/api/audit").await;
    assert_eq!(status, 403, "{body}");
    assert!(body.contains("ROLE_REQUIRED"), "{body}");
    let audit = json(pki, "auditor", web, "/api/audit").await;
    assert!(audit["broken"].is_null(), "{audit}");
    assert_eq!(audit["verifiedThrough"], audit["head"], "{audit}");
    assert!(
        audit["events"].as_array().is_some_and(|e| !e.is_empty()),
        "{audit}"
    );
    // An identity's streams are bounded, and a stream its browser closed frees its place.
    let mut open = Vec::new();
    for _ in 1..rollout_coordinator::web::EVENT_STREAMS_PER_IDENTITY {
        open.push(Events::open(pki, "viewer", web).await);
    }
    let refused = Events::try_open(pki, "viewer", web).await.err();
    assert!(
        refused.as_deref().is_some_and(|s| s.contains(" 429 ")),
        "{refused:?}"
    );
    drop(open.pop());
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while let Err(status) = Events::try_open(pki, "viewer", web).await {
        assert!(
            std::time::Instant::now() < deadline,
            "a closed stream freed its place: {status}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    drop(events);
    stack.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_backend_identity_or_no_certificate_is_refused() {
    let stack = Stack::start(None).await;
    let (pki, web) = (&stack.pki, stack.coordinator_web.expect("the status page"));
    let (status, body) = get(pki, "backend-emis", web, "/").await;
    assert_eq!(status, 403, "{body}");
    assert!(body.contains("IDENTITY_NOT_ALLOWED"), "{body}");
    let (status, body) = get(pki, "backend-emis", web, "/api/national").await;
    assert_eq!(status, 403, "{body}");
    // Paths the page does not serve are audited as one, not one event a path.
    for n in 0..3 {
        let (status, _) = get(pki, "backend-emis", web, &format!("/no/such/page/{n}")).await;
        assert_eq!(status, 403);
    }

    // No certificate: the handshake is refused before any request.
    let mut roots = rustls::RootCertStore::empty();
    let ca = std::fs::read(pki.join("ca.pem")).expect("ca");
    for cert in <rustls::pki_types::CertificateDer as rustls::pki_types::pem::PemObject>::pem_slice_iter(&ca)
    {
        roots.add(cert.expect("pem")).expect("add");
    }
    let config = rustls::ClientConfig::builder()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let tcp = tokio::net::TcpStream::connect(web).await.expect("connect");
    let name = rustls::pki_types::ServerName::try_from("localhost").expect("name");
    let refused = async {
        let mut tls = tokio_rustls::TlsConnector::from(Arc::new(config))
            .connect(name, tcp)
            .await?;
        tls.write_all(b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n")
            .await?;
        let mut buf = [0u8; 64];
        let n = tls.read(&mut buf).await?;
        Ok::<usize, std::io::Error>(n)
    }
    .await;
    assert!(
        !matches!(refused, Ok(n) if n > 0),
        "a client without a certificate gets no answer: {refused:?}"
    );

    // The refusal is audited like a refused call (written by the refusal queue, soon after).
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let audit = crate::stack::audit_events(&stack).await;
        let refused = |action: &str| {
            audit.iter().any(|e| {
                e.identity.ends_with("supplier/emis/backend")
                    && e.action == action
                    && e.reason.contains("IDENTITY_NOT_ALLOWED")
            })
        };
        if refused("/") && refused("/*") {
            assert!(
                !audit.iter().any(|e| e.action.starts_with("/no/such")),
                "{audit:?}"
            );
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the refusal audited: {audit:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    stack.stop().await;
}
