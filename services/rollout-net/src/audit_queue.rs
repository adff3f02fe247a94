//! The queue through which the auth layer's refusals reach a service's audit log: the request
//! path never waits for the database, and at shutdown every refusal still queued is written
//! before the store closes ([`AuditQueue::flush`]).

use std::sync::{
    Arc,
    atomic::{AtomicUsize, Ordering::Relaxed},
};

use tokio::{
    sync::{mpsc, oneshot},
    task::JoinHandle,
    time::Instant,
};

use crate::auth::{Denial, DenialObserver};

/// Most refusals waiting to be written; beyond it a refusal is logged at ERROR, not recorded.
const CAPACITY: usize = 10_000;

/// An observer that records every refusal as a refused audit event through `record`, on a
/// background task, and the queue's handle, to flush it at shutdown. Must be called inside a
/// tokio runtime.
pub fn audit_denials<F, Fut>(record: F) -> (Arc<dyn DenialObserver>, AuditQueue)
where
    F: Fn(rollout_core::audit::AuditDraft) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    let (tx, mut rx) = mpsc::channel::<Denial>(CAPACITY);
    let (close, mut closing) = oneshot::channel::<()>();
    let written = Arc::new(AtomicUsize::new(0));
    let counter = written.clone();
    let task = tokio::spawn(async move {
        let mut closed = false;
        loop {
            let next = tokio::select! {
                biased;
                // Closed (or the handle dropped): take no more, write what is queued.
                _ = &mut closing, if !closed => {
                    rx.close();
                    closed = true;
                    continue;
                }
                next = rx.recv() => next,
            };
            let Some(d) = next else { return };
            record(rollout_core::audit::AuditDraft {
                identity: d.identity.map(|i| i.to_string()).unwrap_or_else(|| "-".into()),
                action: d.method,
                target: String::new(),
                outcome: rollout_core::audit::AuditOutcome::Refused,
                reason: d.message,
                request_id: String::new(),
            })
            .await;
            counter.fetch_add(1, Relaxed);
        }
    });
    let queue = AuditQueue {
        tx: tx.clone(),
        close,
        task,
        written,
    };
    (Arc::new(Enqueue(tx)), queue)
}

struct Enqueue(mpsc::Sender<Denial>);

impl DenialObserver for Enqueue {
    fn denied(&self, denial: Denial) {
        match self.0.try_send(denial) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Full(d)) => tracing::error!(
                method = d.method,
                "audit queue full: a refused call was not recorded in the audit log"
            ),
            Err(mpsc::error::TrySendError::Closed(d)) => tracing::error!(
                method = d.method,
                "a call refused after the audit queue was flushed at shutdown was not recorded \
                 in the audit log"
            ),
        }
    }
}

/// The handle of the queue of refusals waiting to be written.
#[derive(Debug)]
pub struct AuditQueue {
    /// Kept to count what is queued; the queue is closed by `close`, not by the senders.
    tx: mpsc::Sender<Denial>,
    close: oneshot::Sender<()>,
    task: JoinHandle<()>,
    written: Arc<AtomicUsize>,
}

/// What [`AuditQueue::flush`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AuditFlushed {
    /// Refusals written since the server started.
    pub written: usize,
    /// Refusals still queued at the deadline, not written.
    pub lost: usize,
}

impl AuditQueue {
    /// Refusals waiting to be written.
    pub fn queued(&self) -> usize {
        self.tx.max_capacity() - self.tx.capacity()
    }

    /// Takes no more refusals and writes every one still queued, until `deadline`.
    pub async fn flush(self, deadline: Instant) -> AuditFlushed {
        let _ = self.close.send(());
        let abort = self.task.abort_handle();
        let done = tokio::time::timeout_at(deadline, self.task).await;
        let lost = match done {
            Ok(Ok(())) => 0,
            Ok(Err(_)) | Err(_) => {
                abort.abort();
                self.tx.max_capacity() - self.tx.capacity()
            }
        };
        AuditFlushed {
            written: self.written.load(Relaxed),
            lost,
        }
    }
}
