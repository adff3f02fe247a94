//! Shutdown that ends: real `rollout-supplier`, `rollout-coordinator` and `rolloutctl dev up`
//! processes, each with streams held open (watch streams, health Watch on the mutual-TLS and
//! the plaintext port, a reflection stream) and refused calls queued for the audit log, are
//! sent SIGTERM or SIGINT. Each must exit within its grace period, every stream must end with
//! UNAVAILABLE `SHUTTING_DOWN` (not hang, not a reset), and the refusals must be in the audit
//! log afterwards. `supplier.rs`, `coordinator.rs` and `dev_up.rs` are the tests; this file is
//! their harness.

mod coordinator;
mod dev_up;
mod supplier;

use std::{net::SocketAddr, time::Duration};

use rollout_proto::v1 as pb;
use tokio::{sync::mpsc, task::JoinHandle};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Code, Status, Streaming, transport::Channel};
use tonic_health::pb::{HealthCheckRequest, HealthCheckResponse, health_client::HealthClient};
use tonic_reflection::pb::v1::{
    ServerReflectionRequest, ServerReflectionResponse, server_reflection_client::ServerReflectionClient,
    server_reflection_request::MessageRequest,
};

pub use crate::support::process::{Process, signal_and_wait};
use crate::support::{assert_refused, reason};

/// The grace period the tests give: short, to keep them fast.
pub const GRACE: Duration = Duration::from_secs(2);
/// What a process may take beyond its grace period to be gone (exit and reaping, on a busy
/// machine).
pub const MARGIN: Duration = Duration::from_secs(1);
/// How many refused calls each test makes just before the signal.
pub const REFUSALS: usize = 3;

/// What a stream says once the server is told to stop: the messages it still sends, then the
/// status it ends with. Read on a task of its own, started before the signal.
pub type Ending<T> = JoinHandle<(Vec<T>, Status)>;

/// Reads `stream` to its end on a task; fails if it ends without a status or is still open
/// `within` from now (the signal follows within milliseconds).
pub fn ending<T: Send + 'static>(
    mut stream: Streaming<T>,
    within: Duration,
    what: &'static str,
) -> Ending<T> {
    tokio::spawn(async move {
        let read = async {
            let mut messages = Vec::new();
            loop {
                match stream.message().await {
                    Ok(Some(m)) => messages.push(m),
                    Ok(None) => panic!("{what}: the stream ended without a status"),
                    Err(status) => return (messages, status),
                }
            }
        };
        tokio::time::timeout(within, read)
            .await
            .unwrap_or_else(|_| panic!("{what}: still open {within:?} after the test began to read it"))
    })
}

/// Awaits an [`Ending`] and checks that it ended with UNAVAILABLE `SHUTTING_DOWN` (so from the
/// server's shutdown, not a reset); returns the messages before the end and the status.
pub async fn ended_unavailable<T>(ending: Ending<T>, what: &str) -> (Vec<T>, Status) {
    let (messages, status) = ending.await.expect("the stream reader");
    assert_refused(&status, Code::Unavailable, "SHUTTING_DOWN", what);
    (messages, status)
}

/// A health Watch of the whole server on `channel`, its first answer (SERVING) read.
pub async fn health_watch(channel: Channel) -> Streaming<HealthCheckResponse> {
    let mut stream = HealthClient::new(channel)
        .watch(HealthCheckRequest::default())
        .await
        .expect("health watch")
        .into_inner();
    let first = stream.message().await.expect("health").expect("first status");
    assert_eq!(first.status, 1, "SERVING");
    stream
}

/// A plaintext channel to a health port.
pub fn plaintext(addr: SocketAddr) -> Channel {
    tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .expect("endpoint")
        .connect_lazy()
}

/// Checks a health Watch's end: NOT_SERVING, then UNAVAILABLE `SHUTTING_DOWN`.
pub async fn health_ended(ending: Ending<HealthCheckResponse>, what: &str) {
    let (messages, _) = ended_unavailable(ending, what).await;
    assert_eq!(
        messages.iter().map(|m| m.status).collect::<Vec<_>>(),
        [2],
        "{what}: NOT_SERVING before the end"
    );
}

/// A reflection (v1) stream, held open by the client: one request answered, the request side
/// kept open by the returned sender.
pub async fn reflection_stream(
    channel: Channel,
) -> (
    mpsc::Sender<ServerReflectionRequest>,
    Streaming<ServerReflectionResponse>,
) {
    let (tx, rx) = mpsc::channel(1);
    tx.send(ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    })
    .await
    .expect("queue the request");
    let mut stream = ServerReflectionClient::new(channel)
        .server_reflection_info(ReceiverStream::new(rx))
        .await
        .expect("reflection")
        .into_inner();
    stream
        .message()
        .await
        .expect("reflection")
        .expect("the list of services");
    (tx, stream)
}

/// Makes [`REFUSALS`] calls at once that the auth layer refuses (ROLE_REQUIRED): each goes
/// to the audit log through the queue that shutdown must flush.
pub async fn refused_calls<F, Fut>(call: F)
where
    F: Fn() -> Fut,
    Fut: Future<Output = Result<(), Status>> + Send + 'static,
{
    let calls: Vec<_> = (0..REFUSALS).map(|_| tokio::spawn(call())).collect();
    for call in calls {
        let status = call.await.expect("call task").expect_err("refused");
        assert_eq!(
            (status.code(), reason(&status).as_str()),
            (Code::PermissionDenied, "ROLE_REQUIRED"),
            "{status:?}"
        );
    }
}

/// The number in a log line before `what` (as in "3 streams ended").
pub fn count_before(line: &str, what: &str) -> usize {
    let end = line
        .find(what)
        .unwrap_or_else(|| panic!("no {what:?} in {line:?}"));
    line[..end]
        .trim_end()
        .rsplit(' ')
        .next()
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no count before {what:?} in {line:?}"))
}

/// The refused calls of `identity` to `method` that `events` record (one event each, or
/// counted in a summary).
pub fn refusals_of(events: &[rollout_core::audit::AuditEvent], identity: &str, method: &str) -> usize {
    events
        .iter()
        .filter(|e| {
            e.draft.outcome == rollout_core::audit::AuditOutcome::Refused
                && e.draft.identity == identity
                && e.draft.action == method
        })
        .map(|e| usize::try_from(e.draft.calls).unwrap_or(usize::MAX))
        .sum()
}

/// The resume version a WatchPracticeFeatures stream's end names.
pub fn resume_version(status: &Status) -> String {
    use tonic_types::StatusExt;
    status
        .get_error_details()
        .error_info()
        .and_then(|i| i.metadata.get("version").cloned())
        .unwrap_or_default()
}

/// A WatchPracticeFeatures stream of one practice, its snapshot read; and the version it has
/// seen in full.
pub async fn practice_watch(
    mut client: pb::toggle_service_client::ToggleServiceClient<Channel>,
    ods: &str,
) -> (Streaming<pb::WatchPracticeFeaturesResponse>, i64) {
    let mut stream = client
        .watch_practice_features(pb::WatchPracticeFeaturesRequest {
            feature: crate::support::feature_name(),
            practices: vec![ods.into()],
            start_version: 0,
        })
        .await
        .expect("watch")
        .into_inner();
    loop {
        let m = stream.message().await.expect("watch").expect("snapshot");
        if m.event_type() == pb::watch_practice_features_response::EventType::SnapshotComplete {
            return (stream, m.version);
        }
    }
}
