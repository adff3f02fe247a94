//! How refused calls reach a service's audit log: the auth layer's refusals through a queue
//! (the request path never waits for the database), the handlers' refusals directly, both
//! through one [`Limiter`] that records a caller's first few refusals of a window one by one
//! and counts the rest into one summary event written when the window ends. At shutdown
//! [`AuditQueue::flush`] writes what is still queued and every count, before the store closes.

use std::{
    collections::BTreeMap,
    net::SocketAddr,
    pin::Pin,
    sync::{Arc, Mutex},
    time::SystemTime,
};

use rollout_core::audit::{AuditDraft, AuditOutcome};
use tokio::{
    sync::{mpsc, oneshot},
    task::JoinHandle,
    time::Instant,
};
use tracing::{error, warn};

use crate::{
    auth::{Denial, DenialObserver},
    refusals::{Admit, Limiter, Limits, counted},
};

/// Most refusals waiting to be recorded one by one; beyond it a refusal is counted for its
/// summary instead (a window admits at most [`Limits::singles`] of them, so this fills only
/// while the store is far slower than usual).
const CAPACITY: usize = 1_000;

/// What writes one audit event: the service's store. An error is the store's, in words.
pub type Writer =
    Arc<dyn Fn(AuditDraft) -> Pin<Box<dyn Future<Output = Result<(), String>> + Send>> + Send + Sync>;

/// The handle through which a service records refusals, shared by its handlers; its
/// [`Refusals::observer`] is the auth layer's.
#[derive(Clone)]
pub struct Refusals {
    limiter: Arc<Limiter>,
    queue: mpsc::Sender<AuditDraft>,
    write: Writer,
    by_reason: Arc<Mutex<BTreeMap<&'static str, u64>>>,
}

impl std::fmt::Debug for Refusals {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Refusals")
            .field("limiter", &self.limiter)
            .finish_non_exhaustive()
    }
}

/// Starts the writer of refusals (a background task: call inside a tokio runtime) with the
/// servers' limits; `write` appends one event to the audit log.
pub fn audit_refusals<F, Fut>(write: F) -> (Refusals, AuditQueue)
where
    F: Fn(AuditDraft) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<(), String>> + Send + 'static,
{
    audit_refusals_with(Limits::default(), write)
}

/// As [`audit_refusals`], with other limits.
pub fn audit_refusals_with<F, Fut>(limits: Limits, write: F) -> (Refusals, AuditQueue)
where
    F: Fn(AuditDraft) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<(), String>> + Send + 'static,
{
    let write: Writer = Arc::new(move |d| Box::pin(write(d)));
    let limiter = Arc::new(Limiter::new(limits));
    let (tx, rx) = mpsc::channel::<AuditDraft>(CAPACITY);
    let (close, closing) = oneshot::channel::<()>();
    let task = tokio::spawn(run(limiter.clone(), write.clone(), rx, closing));
    let refusals = Refusals {
        limiter: limiter.clone(),
        queue: tx.clone(),
        write,
        by_reason: Arc::default(),
    };
    let queue = AuditQueue {
        tx,
        close,
        task,
        limiter,
    };
    (refusals, queue)
}

impl Refusals {
    /// The auth layer's observer: each refusal logged and queued, or counted.
    pub fn observer(&self) -> Arc<dyn DenialObserver> {
        Arc::new(self.clone())
    }

    /// Records a handler's refusal (`draft` marked refused, `reason` its ErrorInfo reason):
    /// written before this returns if the limiter records it on its own (so it is in the log
    /// when the caller is answered), or counted for its caller's summary. Never fails: a write
    /// that fails is counted instead.
    pub async fn refused(&self, reason: &'static str, draft: AuditDraft) {
        self.count(reason);
        let now = SystemTime::now();
        match self.limiter.admit(&draft, now) {
            Admit::Record => match (self.write)(draft.clone()).await {
                Ok(()) => self.limiter.recorded(),
                Err(e) => {
                    error!(error = %e, "could not record a refused call in the audit log; counted for the window's summary");
                    self.limiter.failed(e);
                    self.limiter.fold(&draft, now);
                }
            },
            Admit::Counted { first } => {
                if first {
                    summarising(&draft, self.limiter.limits());
                }
            }
        }
    }

    /// Refused calls since start by ErrorInfo reason (a reason is a constant of the code, so
    /// the set is bounded), for the metrics.
    pub fn by_reason(&self) -> Vec<(&'static str, u64)> {
        match self.by_reason.lock() {
            Ok(m) => m.iter().map(|(r, n)| (*r, *n)).collect(),
            Err(_) => Vec::new(),
        }
    }

    fn count(&self, reason: &'static str) {
        if let Ok(mut m) = self.by_reason.lock() {
            *m.entry(reason).or_default() += 1;
        }
    }

    /// Writes to the audit log that failed since start, for the metrics.
    pub fn write_failures(&self) -> u64 {
        self.limiter.write_failures()
    }

    /// The counters, for the status APIs.
    pub fn status(&self) -> rollout_proto::v1::RefusalAudit {
        self.limiter.status()
    }
}

/// The log line of a caller whose refusals are now counted for a summary.
fn summarising(d: &AuditDraft, limits: &Limits) {
    warn!(
        identity = d.identity,
        peer = d.peer,
        method = d.action,
        "more than {} calls refused in {}: the rest of the window's are counted and recorded \
         as one summary event when it ends",
        limits.burst,
        humantime::format_duration(limits.window)
    );
}

impl DenialObserver for Refusals {
    fn denied(&self, d: Denial) {
        self.count(d.reason);
        let draft = denial_draft(&d);
        let now = SystemTime::now();
        match self.limiter.admit(&draft, now) {
            Admit::Record => {
                warn!(
                    identity = draft.identity,
                    peer = draft.peer,
                    method = draft.action,
                    reason = d.reason,
                    "call refused"
                );
                match self.queue.try_send(draft) {
                    Ok(()) => {}
                    Err(mpsc::error::TrySendError::Full(draft)) => self.limiter.fold(&draft, now),
                    Err(mpsc::error::TrySendError::Closed(draft)) => error!(
                        method = draft.action,
                        "a call refused after the audit queue was flushed at shutdown was not \
                         recorded in the audit log"
                    ),
                }
            }
            Admit::Counted { first } => {
                if first {
                    summarising(&draft, self.limiter.limits());
                }
            }
        }
    }
}

/// The refused audit event of an auth-layer refusal.
fn denial_draft(d: &Denial) -> AuditDraft {
    AuditDraft {
        identity: d
            .identity
            .as_ref()
            .map(|i| i.to_string())
            .unwrap_or_else(|| "-".into()),
        action: rollout_core::audit::printable(&d.method, 200),
        outcome: AuditOutcome::Refused,
        reason: d.message.clone(),
        peer: d.peer.map(|p: SocketAddr| p.ip().to_string()).unwrap_or_default(),
        ..AuditDraft::default()
    }
}

/// The writer task: refusals queued one by one as they come, each window's summaries when it
/// ends; once closed, what is queued and every count left.
async fn run(
    limiter: Arc<Limiter>,
    write: Writer,
    mut rx: mpsc::Receiver<AuditDraft>,
    mut closing: oneshot::Receiver<()>,
) {
    let window = limiter.limits().window;
    let mut tick = tokio::time::interval_at(Instant::now() + window, window);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut closed = false;
    loop {
        tokio::select! {
            biased;
            // Closed (or the handle dropped): take no more, write what is queued.
            _ = &mut closing, if !closed => {
                rx.close();
                closed = true;
            }
            next = rx.recv() => match next {
                Some(draft) => single(&limiter, &write, draft).await,
                None => break,
            },
            _ = tick.tick() => summaries(&limiter, &write).await,
        }
    }
    summaries(&limiter, &write).await;
}

async fn single(limiter: &Limiter, write: &Writer, draft: AuditDraft) {
    match write(draft.clone()).await {
        Ok(()) => limiter.recorded(),
        Err(e) => {
            error!(error = %e, "could not record a refused call in the audit log; counted for the window's summary");
            limiter.failed(e);
            limiter.fold(&draft, SystemTime::now());
        }
    }
}

/// Ends the window and writes its summaries; one that fails is counted again for the next.
async fn summaries(limiter: &Limiter, write: &Writer) {
    for s in limiter.take() {
        let draft = s.draft(limiter.limits());
        let calls = draft.calls;
        match write(draft.clone()).await {
            Ok(()) => {
                limiter.summarised(calls);
                warn!(
                    identity = draft.identity,
                    peer = draft.peer,
                    method = draft.action,
                    calls,
                    "{} refused in the last {}, recorded as one summary event in the audit log",
                    counted(calls),
                    humantime::format_duration(limiter.limits().window)
                );
            }
            Err(e) => {
                error!(
                    error = %e,
                    calls,
                    "could not write a summary of {} refused to the audit log; kept and tried \
                     again when the next window ends",
                    counted(calls)
                );
                limiter.put_back(s, e);
            }
        }
    }
}

/// The handle of the writer of refusals, to flush it at shutdown.
#[derive(Debug)]
pub struct AuditQueue {
    /// Kept to count what is queued; the queue is closed by `close`, not by the senders.
    tx: mpsc::Sender<AuditDraft>,
    close: oneshot::Sender<()>,
    task: JoinHandle<()>,
    limiter: Arc<Limiter>,
}

/// What [`AuditQueue::flush`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AuditFlushed {
    /// Refused calls in the audit log, one by one or in summaries, since the server started.
    pub written: u64,
    /// Refused calls not in the audit log at the deadline: queued or counted, not written.
    pub lost: u64,
}

impl AuditQueue {
    /// Refusals waiting to be recorded one by one.
    pub fn queued(&self) -> usize {
        self.tx.max_capacity() - self.tx.capacity()
    }

    /// Takes no more refusals and writes every one still queued and every count, until
    /// `deadline`.
    pub async fn flush(self, deadline: Instant) -> AuditFlushed {
        let _ = self.close.send(());
        let abort = self.task.abort_handle();
        let done = tokio::time::timeout_at(deadline, self.task).await;
        let queued = self.tx.max_capacity() - self.tx.capacity();
        let lost = match done {
            Ok(Ok(())) => self.limiter.pending(),
            Ok(Err(_)) | Err(_) => {
                abort.abort();
                self.limiter.pending() + u64::try_from(queued).unwrap_or(u64::MAX)
            }
        };
        AuditFlushed {
            written: self.limiter.written(),
            lost,
        }
    }
}
