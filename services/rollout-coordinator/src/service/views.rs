//! WatchCommand: each watched command's view is computed once per change and shared by every
//! watcher of that command ([`CommandViews`]), and each watcher reads it through a stream that
//! holds one of its identity's watch slots.
//!
//! A feed per watched command (made by its first watcher, dropped with its last, or once the
//! command has nothing more to report) follows the coordinator's changes, reads the view (one
//! model lock, and the store for a command not pending), and publishes it in a
//! `tokio::sync::watch` as an `Arc` when it differs. Watchers hold no copy: a watcher's stream
//! clones the view only when tonic asks it for the next message to encode, and a slow watcher
//! skips to the latest view.

use std::{
    collections::HashMap,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering::Relaxed},
    },
};

use rollout_core::CommandId;
use rollout_net::{ApiError, Caller, IdentitySlot, wire};
use rollout_proto::v1 as pb;
use tokio::sync::watch;
use tonic::{Request, Response, Status};

use super::{Handlers, WatchStream};
use crate::coordinator::Core;

/// What every watcher of one command sees: its view as it last changed (and whether it has
/// nothing more to report), or the error that ended the feed.
#[derive(Debug, PartialEq)]
// One per watched command, behind an `Arc`: the size of a variant costs nothing per watcher.
#[allow(clippy::large_enum_variant)]
pub(crate) enum Published {
    /// The view, and whether it is complete.
    View(pb::Command, bool),
    /// Reading the view failed; every watcher ends with this error.
    Failed(ApiError),
}

type Feed = watch::Sender<Arc<Published>>;

/// The feeds of the commands being watched.
#[derive(Debug)]
pub(crate) struct CommandViews {
    core: Arc<Core>,
    feeds: Mutex<HashMap<CommandId, Feed>>,
    /// Views read since start (first views and feeds' views), for the tests.
    computed: AtomicU64,
}

/// Whether a watched command has nothing more to report: cancelled, or answered by every
/// supplier.
fn watch_complete(view: &pb::Command) -> bool {
    match view.state() {
        pb::command::State::Cancelled => true,
        pb::command::State::Dispatched => {
            !view.deliveries.is_empty()
                && view
                    .deliveries
                    .iter()
                    .all(|d| d.state() != pb::delivery::State::Pending)
        }
        _ => false,
    }
}

impl CommandViews {
    pub(crate) fn new(core: Arc<Core>) -> Arc<Self> {
        Arc::new(CommandViews {
            core,
            feeds: Mutex::new(HashMap::new()),
            computed: AtomicU64::new(0),
        })
    }

    fn feeds(&self) -> std::sync::MutexGuard<'_, HashMap<CommandId, Feed>> {
        self.feeds.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Views read since start.
    #[cfg(test)]
    pub(crate) fn computed(&self) -> u64 {
        self.computed.load(Relaxed)
    }

    /// Commands with a feed now.
    #[cfg(test)]
    pub(crate) fn watched(&self) -> usize {
        self.feeds().len()
    }

    /// The view of `id` as it stands and as it changes: the feed's, if the command is watched
    /// already; else its first view is read (a command that does not exist is refused here) and
    /// a feed started unless there is nothing more to report.
    pub(crate) async fn subscribe(
        self: &Arc<Self>,
        id: &CommandId,
    ) -> Result<watch::Receiver<Arc<Published>>, ApiError> {
        if let Some(feed) = self.feeds().get(id) {
            return Ok(feed.subscribe());
        }
        // Subscribed before the first view is read: a change between the two (every supplier
        // answering at once) is then seen, not missed until some later change.
        let changes = self.core.changes.subscribe();
        let first = self.core.command_view(id).await?;
        self.computed.fetch_add(1, Relaxed);
        let mut feeds = self.feeds();
        // Another first watcher may have started the feed meanwhile.
        if let Some(feed) = feeds.get(id) {
            return Ok(feed.subscribe());
        }
        let complete = watch_complete(&first);
        let (feed, views) = watch::channel(Arc::new(Published::View(first, complete)));
        if !complete {
            feeds.insert(id.clone(), feed.clone());
            tokio::spawn(self.clone().follow(id.clone(), feed, changes));
        }
        Ok(views)
    }

    /// A feed: the view read again after each change and published when it differs, until
    /// the command has nothing more to report, reading fails, or no one watches it.
    async fn follow(self: Arc<Self>, id: CommandId, feed: Feed, mut changes: watch::Receiver<u64>) {
        loop {
            tokio::select! {
                changed = changes.changed() => if changed.is_err() { break },
                () = feed.closed() => {
                    if self.unwatched(&id, &feed) {
                        return;
                    }
                    // A watcher joined as the last one left: nothing changed.
                    continue;
                }
            }
            let current = feed.borrow().clone();
            let next = self.next_view(&id, &current).await;
            let last = !matches!(next, Published::View(_, false));
            feed.send_if_modified(|published| {
                let changed = **published != next;
                if changed {
                    *published = Arc::new(next);
                }
                changed
            });
            if last {
                break;
            }
        }
        // Watchers still reading have the last view; a new one reads the command afresh.
        remove(&mut self.feeds(), &id, &feed);
    }

    /// Removes the feed if no one watches it, under the lock watchers subscribe under.
    fn unwatched(&self, id: &CommandId, feed: &Feed) -> bool {
        let mut feeds = self.feeds();
        let unwatched = feed.receiver_count() == 0;
        if unwatched {
            remove(&mut feeds, id, feed);
        }
        unwatched
    }

    /// The view after a change. Once dispatched, only the deliveries change: the command is
    /// not read again.
    async fn next_view(&self, id: &CommandId, current: &Published) -> Published {
        self.computed.fetch_add(1, Relaxed);
        let view = match current {
            Published::View(prev, _) if prev.state() == pb::command::State::Dispatched => {
                let sequence = u64::try_from(prev.sequence).unwrap_or(0);
                self.core
                    .deliveries_view(sequence)
                    .await
                    .map(|deliveries| pb::Command {
                        deliveries,
                        ..prev.clone()
                    })
            }
            _ => self.core.command_view(id).await,
        };
        match view {
            Ok(view) => {
                let complete = watch_complete(&view);
                Published::View(view, complete)
            }
            Err(e) => Published::Failed(e),
        }
    }
}

/// Removes `feed` from `feeds` (and no other feed of the same command).
fn remove(feeds: &mut HashMap<CommandId, Feed>, id: &CommandId, feed: &Feed) {
    if feeds.get(id).is_some_and(|f| f.same_channel(feed)) {
        feeds.remove(id);
    }
}

/// One watcher: its view of the feed, the server's shutdown, and its identity's slot.
struct Watcher {
    id: CommandId,
    views: watch::Receiver<Arc<Published>>,
    shutdown: watch::Receiver<bool>,
    first: bool,
    done: bool,
    _slot: IdentitySlot,
}

impl Watcher {
    /// The next message: the view as it stands first, then each change; the stream ends after
    /// a complete view or an error, and with UNAVAILABLE `SHUTTING_DOWN` at shutdown.
    async fn next(mut self) -> Option<(Result<pb::WatchCommandResponse, Status>, Watcher)> {
        if self.done {
            return None;
        }
        if !std::mem::take(&mut self.first) {
            let stopping = tokio::select! {
                changed = self.views.changed() => if changed.is_err() { return None } else { false },
                _ = self.shutdown.wait_for(|stop| *stop) => true,
            };
            // Shutting down (or the server is gone): say how to pick the watch up again.
            if stopping {
                self.done = true;
                return Some((Err(shutting_down(&self.id).into()), self));
            }
        }
        let published = self.views.borrow_and_update().clone();
        let message = match &*published {
            Published::View(command, complete) => {
                self.done = *complete;
                Ok(pb::WatchCommandResponse {
                    command: Some(command.clone()),
                    complete: *complete,
                })
            }
            Published::Failed(e) => {
                self.done = true;
                Err(e.clone().into())
            }
        };
        Some((message, self))
    }
}

pub(super) async fn watch_command(
    h: &Handlers,
    req: Request<pb::WatchCommandRequest>,
) -> Result<Response<WatchStream>, Status> {
    let id = wire::command_name("name", &req.get_ref().name)?;
    let slot = h.watches.take(&Caller::of(&req)?.identity)?;
    let views = h.views.subscribe(&id).await?;
    let watcher = Watcher {
        id,
        views,
        shutdown: h.shutdown.clone(),
        first: true,
        done: false,
        _slot: slot,
    };
    // It ends itself at shutdown, saying how to resume.
    Ok(rollout_net::ends_itself(Response::new(Box::pin(
        futures_util::stream::unfold(watcher, Watcher::next),
    ))))
}

/// UNAVAILABLE `SHUTTING_DOWN` for a WatchCommand stream: a new watch starts with the command
/// as it stands, so nothing is missed by watching it again.
fn shutting_down(id: &CommandId) -> ApiError {
    ApiError::unavailable(
        "SHUTTING_DOWN",
        format!(
            "the coordinator is shutting down; watch commands/{id} again (on another replica, or \
             here once it is back): its first message is the command as it stands"
        ),
    )
    .with_metadata("command", format!("commands/{id}"))
}

#[cfg(test)]
mod tests {
    use rollout_core::{Action, Scope};

    use super::*;
    use crate::tests::{EMIS, Harness, TPP};

    fn go_live() -> Action {
        Action::GoLive {
            scope: Scope::National,
            effective_at: None,
        }
    }

    /// Waits until `views` publishes a complete view; returns it.
    async fn complete(views: &mut watch::Receiver<Arc<Published>>) -> pb::Command {
        loop {
            if let Published::View(command, true) = &**views.borrow_and_update() {
                return command.clone();
            }
            views
                .changed()
                .await
                .expect("the feed publishes until the view is complete");
        }
    }

    #[tokio::test]
    async fn the_watchers_of_a_command_share_one_view_read_per_change() {
        let h = Harness::new().await;
        let feature = h.define("feature-a").await;
        let id = h.issue(&feature, go_live()).await;
        let views = CommandViews::new(h.core.clone());
        let mut watchers = Vec::new();
        for _ in 0..50 {
            watchers.push(views.subscribe(&id).await.expect("subscribe"));
        }
        assert_eq!(
            views.computed(),
            1,
            "the first watcher read the view; the others joined its feed"
        );
        assert_eq!(views.watched(), 1);
        let changes_before = *h.core.changes.borrow();
        h.approve(&id).await;
        h.deliver(EMIS, |_, _| false).await;
        h.deliver(TPP, |_, _| false).await;
        for w in &mut watchers {
            let view = complete(w).await;
            assert_eq!(view.deliveries.len(), 2, "{view:?}");
            assert!(
                view.deliveries
                    .iter()
                    .all(|d| d.state() == pb::delivery::State::Applied),
                "{view:?}"
            );
        }
        let changes = *h.core.changes.borrow() - changes_before;
        assert!(changes >= 3, "approval and two deliveries: {changes}");
        // One read per change at most, whatever the number of watchers (50 each before).
        assert!(
            views.computed() <= 1 + changes,
            "{} views read for {changes} changes",
            views.computed()
        );
        assert_eq!(views.watched(), 0, "a complete command's feed ends");
    }

    #[tokio::test]
    async fn a_feed_ends_with_its_last_watcher_and_the_next_one_starts_afresh() {
        let h = Harness::new().await;
        let feature = h.define("feature-a").await;
        let id = h.issue(&feature, go_live()).await;
        let views = CommandViews::new(h.core.clone());
        let (a, b) = (
            views.subscribe(&id).await.expect("a"),
            views.subscribe(&id).await.expect("b"),
        );
        drop(a);
        assert_eq!(views.watched(), 1, "b still watches");
        drop(b);
        // The feed sees its last watcher go at once, not at the next change.
        for _ in 0..1_000 {
            if views.watched() == 0 {
                break;
            }
            tokio::task::yield_now().await;
        }
        assert_eq!(views.watched(), 0);
        h.approve(&id).await;
        let mut c = views.subscribe(&id).await.expect("c");
        assert_eq!(views.watched(), 1);
        let first = c.borrow_and_update().clone();
        assert!(
            matches!(&*first, Published::View(v, false) if v.state() == pb::command::State::Dispatched),
            "a new watcher reads the command as it stands: {first:?}"
        );
        let unknown = CommandId::parse("no-such-command").expect("id");
        let refused = views.subscribe(&unknown).await.expect_err("unknown");
        assert_eq!(refused.reason(), "COMMAND_NOT_FOUND");
        assert_eq!(views.watched(), 1, "no feed for a command that does not exist");
    }
}
