//! The budgets of a supplier's mutual-TLS port (connections, calls and streams per
//! connection), its WatchPracticeFeatures per identity, and the acceptor's handshake turns.

use std::time::Duration;

use rollout_net::{Admission, ConnectionBudget};
use rollout_proto::v1::{self as pb, toggle_service_client::ToggleServiceClient};
use tokio::{io::AsyncReadExt, net::TcpStream, time::Instant};
use tonic::{Code, Status, Streaming, transport::Channel};

use super::{emis_within, metadata};
use crate::support::{assert_refused, channel_as, feature_name, practice_feature, supplier::EMIS_A};

const BACKEND: &str = "backend-emis";

fn budgets(connection: ConnectionBudget, watches_per_identity: usize) -> rollout_supplier::Budgets {
    rollout_supplier::Budgets {
        connection,
        watches_per_identity,
    }
}

/// A plain read on `channel`.
async fn read(channel: &Channel) -> Result<pb::PracticeFeature, Status> {
    ToggleServiceClient::new(channel.clone())
        .get_practice_feature(pb::GetPracticeFeatureRequest {
            name: practice_feature(EMIS_A),
            explain: false,
        })
        .await
        .map(tonic::Response::into_inner)
}

/// A WatchPracticeFeatures stream on `channel`, read up to the end of its snapshot.
async fn watch(channel: &Channel) -> Result<Streaming<pb::WatchPracticeFeaturesResponse>, Status> {
    let mut stream = ToggleServiceClient::new(channel.clone())
        .watch_practice_features(pb::WatchPracticeFeaturesRequest {
            feature: feature_name(),
            practices: vec![EMIS_A.into()],
            start_version: 0,
        })
        .await?
        .into_inner();
    loop {
        let message = stream.message().await?.expect("a snapshot");
        if message.event_type() == pb::watch_practice_features_response::EventType::SnapshotComplete {
            return Ok(stream);
        }
    }
}

/// Retries `attempt` until it succeeds, for a slot the server gives back once it has seen a
/// client go (which it learns asynchronously); fails after 30 s with the last error.
async fn until_ok<T, F: Future<Output = Result<T, Status>>>(what: &str, mut attempt: impl FnMut() -> F) -> T {
    let end = Instant::now() + Duration::from_secs(30);
    loop {
        match attempt().await {
            Ok(value) => return value,
            Err(status) => assert!(Instant::now() < end, "{what}: {status:?}"),
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn a_connection_over_the_budget_is_closed_before_tls_and_its_slot_comes_back() {
    let connection = ConnectionBudget {
        connections: 3,
        ..ConnectionBudget::DEFAULT
    };
    let (_tmp, files, running) = emis_within(budgets(connection, 10)).await;
    let mut held: Vec<Channel> = (0..3)
        .map(|_| channel_as(&files.pki, BACKEND, running.addr))
        .collect();
    for channel in &held {
        read(channel).await.expect("within the budget");
    }
    let over = read(&channel_as(&files.pki, BACKEND, running.addr))
        .await
        .expect_err("a fourth connection");
    assert_eq!(over.code(), Code::Unavailable, "{over:?}");
    eprintln!("a connection over the budget: {over}");
    for channel in &held {
        read(channel)
            .await
            .expect("the connections within the budget are still served");
    }
    drop(held.pop());
    until_ok("a closed connection's slot comes back", || {
        let fresh = channel_as(&files.pki, BACKEND, running.addr);
        async move { read(&fresh).await }
    })
    .await;
    running.stop().await;
}

#[tokio::test]
async fn a_call_past_its_connections_stream_budget_is_refused_and_another_connection_serves_it() {
    let connection = ConnectionBudget {
        streams_per_connection: 5,
        ..ConnectionBudget::DEFAULT
    };
    let (_tmp, files, running) = emis_within(budgets(connection, 100)).await;
    let full = channel_as(&files.pki, BACKEND, running.addr);
    let mut streams = Vec::new();
    for _ in 0..5 {
        streams.push(watch(&full).await.expect("within the connection's budget"));
    }
    let refused = watch(&full).await.expect_err("a sixth stream on the connection");
    assert_refused(
        &refused,
        Code::ResourceExhausted,
        "TOO_MANY_STREAMS_ON_CONNECTION",
        "a sixth stream",
    );
    assert_eq!(metadata(&refused, "limit"), "5");
    // A unary call is an HTTP/2 stream too.
    let unary = read(&full).await.expect_err("a call on the full connection");
    assert_refused(
        &unary,
        Code::ResourceExhausted,
        "TOO_MANY_STREAMS_ON_CONNECTION",
        "a unary call",
    );
    let other = channel_as(&files.pki, BACKEND, running.addr);
    read(&other).await.expect("another connection has its own budget");
    watch(&other).await.expect("and may watch");
    drop(streams.pop());
    until_ok("a closed stream's slot comes back", || read(&full)).await;
    running.stop().await;
}

#[tokio::test]
async fn an_identity_past_its_watch_budget_is_refused_on_any_connection_and_others_are_not() {
    let (_tmp, files, running) = emis_within(budgets(ConnectionBudget::DEFAULT, 3)).await;
    let (a, b) = (
        channel_as(&files.pki, BACKEND, running.addr),
        channel_as(&files.pki, BACKEND, running.addr),
    );
    let mut streams = vec![
        watch(&a).await.expect("first"),
        watch(&b).await.expect("second"),
        watch(&a).await.expect("third"),
    ];
    let refused = watch(&b).await.expect_err("a fourth watch");
    assert_refused(
        &refused,
        Code::ResourceExhausted,
        "TOO_MANY_WATCH_STREAMS",
        "a fourth watch",
    );
    assert_eq!(metadata(&refused, "limit"), "3");
    assert_eq!(
        metadata(&refused, "identity"),
        "spiffe://gprollout.test/supplier/emis/backend"
    );
    read(&b).await.expect("reads are not watches");
    let coordinator = channel_as(&files.pki, "coordinator", running.addr);
    watch(&coordinator)
        .await
        .expect("another identity has its own budget");
    drop(streams.remove(0));
    until_ok("a closed watch's slot comes back", || watch(&b)).await;
    running.stop().await;
}

/// Retries `done` until it holds, for the acceptor's counts, which move as its tasks run.
async fn until(what: &str, admission: &Admission, done: impl Fn(rollout_net::AdmissionCounts) -> bool) {
    let end = Instant::now() + Duration::from_secs(30);
    while !done(admission.counts()) {
        assert!(Instant::now() < end, "{what}: {:?}", admission.counts());
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn handshakes_past_the_budget_wait_their_turn_and_connections_past_it_are_closed() {
    rollout_net::tls::install_crypto_provider();
    let tmp = tempfile::tempdir().expect("tempdir");
    let pki = tmp.path().join("pki");
    rolloutctl::pki::init(&pki, false).expect("pki");
    let tls =
        rollout_net::ReloadingServerConfig::load(rollout_net::TlsFiles::from_pki_dir(&pki, "supplier-emis"))
            .expect("tls");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let admission = Admission::new(ConnectionBudget {
        connections: 2,
        handshakes: 1,
        streams_per_connection: 10,
    });
    let (_reporter, health) = rollout_net::server::health();
    tokio::spawn(
        rollout_net::server::builder_for(&admission, None)
            .add_service(health)
            .serve_with_incoming(rollout_net::tls::incoming_for(listener, tls, &admission)),
    );
    // A peer that connects and says nothing holds the only handshake turn.
    let silent = TcpStream::connect(addr).await.expect("connect");
    until("the silent peer's handshake runs", &admission, |c| {
        c.handshaking == 1
    })
    .await;
    let check = tokio::spawn({
        let channel = channel_as(&pki, "viewer", addr);
        async move {
            tonic_health::pb::health_client::HealthClient::new(channel)
                .check(tonic_health::pb::HealthCheckRequest::default())
                .await
        }
    });
    until("the client's handshake waits", &admission, |c| c.waiting == 1).await;
    assert_eq!(admission.counts().connections, 2);
    // Two connections are the budget: a third is closed before any TLS.
    let mut third = TcpStream::connect(addr).await.expect("connect");
    let mut buf = [0u8; 16];
    let read = third.read(&mut buf).await;
    assert!(matches!(read, Ok(0) | Err(_)), "closed at once: {read:?}");
    assert_eq!(admission.counts().refused_connections, 1);
    // The silent peer goes: the waiting handshake has its turn, and the call is answered.
    drop(silent);
    let answer = tokio::time::timeout(Duration::from_secs(30), check)
        .await
        .expect("answered once its handshake had a turn")
        .expect("task")
        .expect("health check");
    assert_eq!(
        answer.into_inner().status(),
        tonic_health::pb::health_check_response::ServingStatus::Serving
    );
    let counts = admission.counts();
    assert_eq!((counts.queued_handshakes, counts.waiting), (1, 0), "{counts:?}");
}
