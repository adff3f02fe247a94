//! A supplier's WatchSyncState stream, held open by its delivery task between syncs, so that a
//! supplier that went away (its stream ends or breaks: a restart, perhaps on an empty store) or
//! whose state moved without this task is synchronised at once rather than at the next
//! heartbeat. Heartbeats (GetSyncState) go on as before: the stream is only a prompt.

use std::{
    future,
    time::{Duration, Instant},
};

use rollout_proto::v1::{self as pb, control_service_client::ControlServiceClient};
use tonic::{Code, Streaming, transport::Channel};
use tracing::info;

use crate::{
    delivery::{Backoff, Known},
    failure::describe,
    register::RegisterLink,
};

/// A stream that lasted at least this long ended for a reason of the supplier's (it stopped),
/// so the delay before acting on the next end starts again from none.
const STABLE: Duration = Duration::from_secs(1);

/// The stream while it is open.
struct Open {
    stream: Streaming<pb::SyncState>,
    opened: Instant,
    /// No message read yet: the first is the supplier's state when the stream opened.
    first: bool,
}

/// What one delivery task knows of its supplier's stream.
pub(crate) struct StateWatch {
    open: Option<Open>,
    /// The supplier answered UNIMPLEMENTED: a version older than WatchSyncState.
    unsupported: bool,
    /// Spaces out reopening a stream that keeps failing or ending at once (a supplier that
    /// refuses it, a proxy that cuts idle streams), so that it never turns into a loop of syncs.
    backoff: Backoff,
}

impl StateWatch {
    pub(crate) fn new() -> Self {
        StateWatch {
            open: None,
            unsupported: false,
            backoff: Backoff::new(),
        }
    }

    /// The supplier could not be reached: drop the stream, and ask again whether it offers
    /// one (it may come back as another version).
    pub(crate) fn supplier_lost(&mut self) {
        self.open = None;
        self.unsupported = false;
    }

    /// Waits until the supplier needs a sync and says why: its stream ended or broke, could not
    /// be opened, or reported a state other than `known`, or news for the opt-out `register`
    /// (changes it has not read, practices held). Never returns while nothing changes, nor for
    /// a supplier without the method. Cancel-safe: delivery drops it at a heartbeat or a new
    /// command, and the stream stays open for the next wait.
    pub(crate) async fn changed(
        &mut self,
        client: &mut ControlServiceClient<Channel>,
        known: &Known,
        register: &RegisterLink,
    ) -> String {
        loop {
            if self.unsupported {
                return future::pending().await;
            }
            let Some(open) = &mut self.open else {
                match client.watch_sync_state(pb::WatchSyncStateRequest {}).await {
                    Ok(response) => {
                        self.open = Some(Open {
                            stream: response.into_inner(),
                            opened: Instant::now(),
                            first: true,
                        });
                    }
                    Err(status) if status.code() == Code::Unimplemented => {
                        // An older supplier: heartbeats alone find out that it restarted,
                        // as before WatchSyncState. Asked again after it is next unreachable.
                        info!(
                            "the supplier does not offer WatchSyncState (an older version): \
                             it is checked at each heartbeat only"
                        );
                        self.unsupported = true;
                    }
                    Err(status) => {
                        tokio::time::sleep(self.backoff.next()).await;
                        return format!("its state could not be watched ({})", describe(&status));
                    }
                }
                continue;
            };
            let ended = match open.stream.message().await {
                Ok(Some(state)) => {
                    let first = std::mem::replace(&mut open.first, false);
                    match moved(&state, known, first).or_else(|| register.news(&state)) {
                        Some(why) => return why,
                        None => continue,
                    }
                }
                Ok(None) => "its state watch ended".to_owned(),
                Err(status) => format!("its state watch ended ({})", describe(&status)),
            };
            let lasted = open.opened.elapsed();
            self.open = None;
            if lasted >= STABLE {
                self.backoff.reset();
            } else {
                tokio::time::sleep(self.backoff.next()).await;
            }
            return ended;
        }
    }
}

/// Why `state`, read from the stream, means the supplier needs a sync, if it does.
fn moved(state: &pb::SyncState, known: &Known, first: bool) -> Option<String> {
    match known {
        Known::Applied(known) => {
            let applied = u64::try_from(state.applied_sequence).unwrap_or(0);
            // Within one stream (one supplier process) the applied sequence never goes back, so
            // a later message below what delivery knows was sent while delivery was busy and is
            // already out of date; a store lost meanwhile comes with a restart, which ends the
            // stream. The first message is the state when the stream opened: any difference.
            let moved = if first {
                applied != *known
            } else {
                applied > *known
            };
            moved.then(|| format!("it reports applied sequence {applied}, delivery knew {known}"))
        }
        Known::Diverged {
            applied,
            history_hash,
        } => (state.applied_sequence != *applied || state.history_hash != *history_hash).then(|| {
            format!(
                "the diverged supplier's state moved (applied sequence {} to {})",
                applied, state.applied_sequence
            )
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state(applied: i64, hash: u8) -> pb::SyncState {
        pb::SyncState {
            applied_sequence: applied,
            history_hash: vec![hash; 32],
            ..Default::default()
        }
    }

    #[test]
    fn a_state_moved_only_when_it_is_news() {
        let known = Known::Applied(10);
        // The first message: any difference, including a supplier behind (a lost store).
        assert!(moved(&state(10, 1), &known, true).is_none());
        assert!(moved(&state(0, 0), &known, true).is_some());
        assert!(moved(&state(12, 1), &known, true).is_some());
        // Later messages: behind is a message from while delivery was busy; ahead is news.
        assert!(moved(&state(7, 1), &known, false).is_none());
        assert!(moved(&state(10, 1), &known, false).is_none());
        assert!(moved(&state(11, 1), &known, false).is_some());
        let diverged = Known::Diverged {
            applied: 20,
            history_hash: vec![3; 32],
        };
        assert!(moved(&state(20, 3), &diverged, false).is_none());
        assert!(moved(&state(20, 4), &diverged, true).is_some());
        assert!(moved(&state(21, 3), &diverged, false).is_some());
    }
}
