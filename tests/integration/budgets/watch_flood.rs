//! 2,000 WatchCommand streams from one viewer on a go-live awaiting approval, while alice
//! halts: every halt is applied by every supplier, the streams over the viewer's budget are
//! refused, and the ones within it follow the go-live to its end.

use std::time::Instant;

use rollout_proto::v1 as pb;
use tokio::sync::mpsc;
use tonic::{Code, Status, transport::Channel};

use super::{metadata, summary};
use crate::{
    stack::{SUPPLIERS, Stack, delivered_as, feature_live, halt, national},
    support::{assert_refused, channel_as, feature_name},
};

/// Streams the viewer opens, over [`CONNECTIONS`] connections.
const STREAMS: usize = 2_000;
const CONNECTIONS: usize = 4;
/// The viewer's WatchCommand budget here: as many live watchers of one command as refused ones.
const BUDGET: usize = 1_000;
/// Halts alice issues while the streams are open.
const HALTS: usize = 20;

/// One viewer stream: `opened` learns whether it was refused or got its first message; then it
/// reads to the end and returns every message.
async fn watch(
    channel: Channel,
    name: String,
    opened: mpsc::Sender<Result<(), Status>>,
) -> Vec<pb::WatchCommandResponse> {
    let mut client = pb::coordinator_service_client::CoordinatorServiceClient::new(channel);
    let mut stream = match client.watch_command(pb::WatchCommandRequest { name }).await {
        Ok(response) => response.into_inner(),
        Err(status) => {
            let _ = opened.send(Err(status)).await;
            return Vec::new();
        }
    };
    let first = stream
        .message()
        .await
        .expect("first message")
        .expect("a first message");
    let _ = opened.send(Ok(())).await;
    let mut messages = vec![first];
    while let Some(message) = stream.message().await.expect("the stream runs to its end") {
        messages.push(message);
    }
    messages
}

/// Opens the viewer's streams on `name`; returns their tasks and how each opened.
async fn open_streams(
    stack: &Stack,
    name: &str,
) -> (
    Vec<tokio::task::JoinHandle<Vec<pb::WatchCommandResponse>>>,
    Vec<Result<(), Status>>,
) {
    let connections: Vec<Channel> = (0..CONNECTIONS)
        .map(|_| channel_as(&stack.pki, "viewer", stack.coordinator_addr))
        .collect();
    let (opened_tx, mut opened_rx) = mpsc::channel(STREAMS);
    let tasks = (0..STREAMS)
        .map(|i| {
            tokio::spawn(watch(
                connections[i % CONNECTIONS].clone(),
                name.to_owned(),
                opened_tx.clone(),
            ))
        })
        .collect();
    let mut opened = Vec::with_capacity(STREAMS);
    for _ in 0..STREAMS {
        opened.push(opened_rx.recv().await.expect("each stream says how it opened"));
    }
    (tasks, opened)
}

/// Issues [`HALTS`] national halts as alice, each followed until every supplier applied it;
/// returns how long each took.
async fn halts_applied(stack: &Stack) -> Vec<std::time::Duration> {
    let mut took = Vec::with_capacity(HALTS);
    for _ in 0..HALTS {
        let issued = Instant::now();
        let h = halt(stack, national()).await;
        let done = delivered_as(stack, "alice", &h.name).await;
        took.push(issued.elapsed());
        assert_eq!(done.deliveries.len(), SUPPLIERS.len(), "{done:?}");
        assert!(
            done.deliveries
                .iter()
                .all(|d| d.state() == pb::delivery::State::Applied),
            "every supplier applied {}: {done:?}",
            h.name
        );
    }
    took
}

/// A stream's messages: the go-live as it stood first, the complete command, applied by
/// every supplier, last.
#[track_caller]
fn followed_to_the_end(messages: &[pb::WatchCommandResponse]) {
    assert_eq!(
        messages[0].command.as_ref().map(|c| c.state()),
        Some(pb::command::State::PendingApproval),
        "the first message is the go-live as it stood"
    );
    let last = &messages[messages.len() - 1];
    let command = last.command.as_ref().expect("command");
    assert!(last.complete, "a stream ends with the complete command: {last:?}");
    assert_eq!(command.state(), pb::command::State::Dispatched);
    assert!(
        command
            .deliveries
            .iter()
            .all(|d| d.state() == pb::delivery::State::Applied),
        "{command:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_viewer_with_2000_watch_streams_neither_delays_halts_nor_passes_its_budget() {
    let mut stack = Stack::suppliers(None).await;
    stack.coordinator_budgets.watches_per_identity = BUDGET;
    stack.start_coordinator().await;
    feature_live(&stack).await;
    let go_live = stack
        .client("alice")
        .schedule_go_live(pb::ScheduleGoLiveRequest {
            name: feature_name(),
            scope: Some(national()),
            reason: "a go-live awaiting approval, watched by a viewer".into(),
            ..Default::default()
        })
        .await
        .expect("go-live")
        .into_inner();

    let started = Instant::now();
    let (tasks, opened) = open_streams(&stack, &go_live.name).await;
    let opening = started.elapsed();
    let (open, refused): (Vec<_>, Vec<_>) = opened.into_iter().partition(Result::is_ok);

    // alice halts while the viewer's streams are open; each halt is applied everywhere.
    let mut took = halts_applied(&stack).await;
    eprintln!(
        "{STREAMS} streams opened in {opening:?} ({} open, {} refused); {HALTS} halts applied by \
         every supplier: {}",
        open.len(),
        refused.len(),
        summary(&mut took)
    );

    // The streams within the budget follow the go-live to its end once bob approves it.
    stack
        .client("bob")
        .approve_command(pb::ApproveCommandRequest {
            name: go_live.name.clone(),
            comment: "approved".into(),
            request_id: String::new(),
        })
        .await
        .expect("approve");
    let mut followed = 0;
    for task in tasks {
        let messages = task.await.expect("stream task");
        if !messages.is_empty() {
            followed_to_the_end(&messages);
            followed += 1;
        }
    }

    assert_eq!(open.len(), BUDGET, "streams within the viewer's budget");
    assert_eq!(
        followed, BUDGET,
        "every open stream received the go-live's updates"
    );
    assert_eq!(refused.len(), STREAMS - BUDGET);
    for status in refused.iter().filter_map(|r| r.as_ref().err()) {
        assert_refused(
            status,
            Code::ResourceExhausted,
            "TOO_MANY_WATCH_STREAMS",
            "over the budget",
        );
        assert_eq!(metadata(status, "limit"), BUDGET.to_string());
        assert_eq!(metadata(status, "identity"), "spiffe://gprollout.test/viewer");
    }
    // Every stream has ended, and with it its slot: the viewer may watch again.
    let again = stack
        .client("viewer")
        .watch_command(pb::WatchCommandRequest {
            name: go_live.name.clone(),
        })
        .await
        .expect("the viewer's slots are back")
        .into_inner()
        .message()
        .await
        .expect("message")
        .expect("a first message");
    assert!(again.complete, "{again:?}");
    stack.stop().await;
}
