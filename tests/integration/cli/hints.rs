//! What `rolloutctl` says to do when a connection fails or a call is refused: the real cause
//! (a name the certificate does not carry, nothing listening, an unknown CA, an expired
//! certificate with its date in words), against the stand-in coordinator of `stub.rs` over real
//! mutual TLS; and the field violations of a scope the real coordinator refuses, with the flag
//! that allows it.

use rolloutctl::pki::{DevCa, Validity};
use time::Duration;
use tokio::io::AsyncWriteExt;

use super::{
    ctl,
    stub::{Stub, issue, not_after_in_words},
    text,
};
use crate::{
    stack::{Stack, feature_live},
    support::FEATURE,
};

/// Asserts a failed run (exit 1) whose hint says `says`.
#[track_caller]
fn hinted(out: &std::process::Output, says: &str) {
    let text = text(out);
    assert_eq!(out.status.code(), Some(1), "{text}");
    let hint = text.split("\nhint: ").nth(1).unwrap_or_default();
    assert!(hint.contains(says), "the hint does not say {says:?}:\n{text}");
    assert!(
        !hint.contains("is the coordinator running at"),
        "the generic hint instead of the cause:\n{text}"
    );
}

#[tokio::test]
async fn a_failed_connection_names_its_cause() {
    let stub = Stub::start(Validity::default(), vec![]).await;
    let port = stub.addr.port();

    // The development PKI's server certificates carry the name localhost, not 127.0.0.1.
    let by_address = format!("127.0.0.1:{port}");
    let out = stub.ctl(Some(&by_address), "ca.pem", "viewer", &["status"]).await;
    hinted(&out, "not valid for the name \"127.0.0.1\" you dialled");
    hinted(&out, &format!("use --coordinator localhost:{port}"));

    // Nothing listens.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let nothing = format!("localhost:{}", closed.local_addr().expect("addr").port());
    drop(closed);
    let out = stub.ctl(Some(&nothing), "ca.pem", "viewer", &["status"]).await;
    hinted(&out, &format!("nothing accepts connections at {nothing}"));

    // The coordinator's certificate is from a CA not in --ca.
    let other = DevCa::new("another CA").expect("ca");
    std::fs::write(stub.path("other-ca.pem"), other.cert_pem()).expect("write");
    let out = stub.ctl(None, "other-ca.pem", "viewer", &["status"]).await;
    hinted(
        &out,
        &format!(
            "was not issued by a CA in {}",
            stub.path("other-ca.pem").display()
        ),
    );

    // This client's certificate is from a CA the coordinator does not trust.
    issue(
        &other,
        stub.dir.path(),
        "stranger",
        "viewer",
        false,
        Validity::default(),
    );
    let out = stub.ctl(None, "ca.pem", "stranger", &["status"]).await;
    hinted(
        &out,
        &format!("your certificate {}", stub.path("stranger.pem").display()),
    );

    // A port that does not speak TLS (a plaintext health port, say).
    let plain = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let plain_at = format!("localhost:{}", plain.local_addr().expect("addr").port());
    let answering = tokio::spawn(async move {
        while let Ok((mut tcp, _)) = plain.accept().await {
            let _ = tcp.write_all(b"HTTP/1.1 400 Bad Request\r\n\r\n").await;
        }
    });
    let out = stub.ctl(Some(&plain_at), "ca.pem", "viewer", &["status"]).await;
    hinted(&out, "does not speak TLS");
    answering.abort();
    stub.stop().await;
}

#[tokio::test]
async fn an_expired_certificate_is_named_with_its_date_in_words() {
    let expired = Validity {
        from: Duration::days(-30),
        until: Duration::days(-2),
    };
    // The coordinator's.
    let stub = Stub::start(expired, vec![]).await;
    let server_pem = std::fs::read_to_string(stub.path("coordinator.pem")).expect("read");
    let out = stub.ctl(None, "ca.pem", "viewer", &["status"]).await;
    hinted(
        &out,
        &format!(
            "the coordinator's certificate expired on {}",
            not_after_in_words(&server_pem)
        ),
    );
    assert!(!text(&out).contains("(UNIX)"), "{}", text(&out));
    stub.stop().await;

    // This client's.
    let stub = Stub::start(Validity::default(), vec![]).await;
    let mine = issue(&stub.ca, stub.dir.path(), "lapsed", "viewer", false, expired);
    let out = stub.ctl(None, "ca.pem", "lapsed", &["status"]).await;
    hinted(
        &out,
        &format!(
            "the coordinator refused your certificate {}: it expired on {}",
            stub.path("lapsed.pem").display(),
            not_after_in_words(&mine)
        ),
    );
    stub.stop().await;
}

#[tokio::test]
async fn a_refused_scope_prints_its_field_violations_and_the_flag_that_allows_it() {
    let stack = Stack::start(None).await;
    feature_live(&stack).await;
    let halt =
        |scope: &str| ["halt", FEATURE, "--scope", scope, "--reason", "letter", "--yes"].map(str::to_owned);
    let run = |args: [String; 7]| {
        let stack = &stack;
        async move { ctl(stack, "alice", &args.each_ref().map(String::as_str)).await }
    };

    let out = run(halt("supplier:emiss")).await;
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        text(&out).contains("scope.supplier: \"emiss\" is not in the national estate; did you mean emis?"),
        "{}",
        text(&out)
    );

    let known = stack.practice_of("emis");
    let out = run(halt(&format!("practices:{known},Z12345"))).await;
    assert!(
        text(&out).contains("Z12345 is not in the national estate"),
        "{}",
        text(&out)
    );
    hinted(&out, "--allow-unknown-practices");
    let mut allowed = halt(&format!("practices:{known},Z12345")).to_vec();
    allowed.extend(["--allow-unknown-practices".into(), "--dry-run".into()]);
    let out = ctl(
        &stack,
        "alice",
        &allowed.iter().map(String::as_str).collect::<Vec<_>>(),
    )
    .await;
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains("unknown   1 not in the national estate: Z12345"),
        "the table names the unknown codes: {}",
        text(&out)
    );

    let closed = stack
        .estate
        .practices()
        .find(|p| p.status == rollout_core::PracticeStatus::Closed)
        .expect("a closed practice")
        .ods
        .to_string();
    let out = run(halt(&format!("practices:{closed}"))).await;
    hinted(&out, "--allow-empty-scope");
    stack.stop().await;
}
