//! Shutdown that ends: what a server does between SIGTERM and its exit, within a grace period.
//!
//! tonic's graceful shutdown stops accepting connections, sends GOAWAY and then waits for every
//! open stream to finish, which a watch stream (or a `grpc.health.v1.Health/Watch`) never does
//! on its own. A [`Drain`] ends them: its [`DrainLayer`] wraps every response body and, once
//! the drain has begun, ends a stream that is waiting for its next message with UNAVAILABLE
//! `SHUTTING_DOWN` (a message already produced goes out first, and a unary answer is never
//! cut); the request side of a stream it ends ends too, so that a bidirectional stream's
//! handler (reflection's) lets go of it. A stream whose service ends it itself, telling the
//! client where to resume, is marked with [`ends_itself`] and left to do so. Calls in flight
//! finish; what is still open when the grace period runs out is closed with the process.

use std::{
    future::Future,
    pin::Pin,
    sync::{
        Arc, Mutex, OnceLock,
        atomic::{
            AtomicBool, AtomicUsize,
            Ordering::{Relaxed, SeqCst},
        },
    },
    task::{Context, Poll, Waker},
    time::Duration,
};

use http_body::{Frame, SizeHint};
use tokio::time::Instant;
use tokio_util::sync::{CancellationToken, WaitForCancellationFutureOwned};
use tonic::body::Body;
use tower::{Layer, Service};
use tracing::{info, warn};

use crate::ApiError;

/// The part of the grace period kept for writing the queued audit events and closing the
/// store: a fifth of it, at most this much.
const FLUSH_RESERVE: Duration = Duration::from_secs(1);

/// A server's shutdown: the grace period, the signal that begins it, and what it ended.
#[derive(Debug, Clone)]
pub struct Drain {
    shared: Arc<Shared>,
}

#[derive(Debug)]
struct Shared {
    grace: Duration,
    begun: CancellationToken,
    /// When the drain began; the grace period runs from here.
    began_at: OnceLock<Instant>,
    /// Calls and streams open now.
    open: AtomicUsize,
    /// Streams ended with UNAVAILABLE by this layer since the drain began.
    cut: AtomicUsize,
    /// Streams their service ended (marked with [`ends_itself`]) since the drain began.
    ended_by_service: AtomicUsize,
    /// Calls that finished since the drain began.
    drained: AtomicUsize,
}

/// What a drain did, for the log line that ends a server's life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Drained {
    /// Streams ended with UNAVAILABLE (by the drain or by their service).
    pub streams_ended: usize,
    /// Calls in flight at the signal (or arriving just after) that finished.
    pub calls_drained: usize,
    /// Calls and streams still open when the drain stopped waiting (closed with the process).
    pub left_open: usize,
}

impl Drain {
    /// A drain with this grace period: from the signal to the end of [`Drain::deadline`].
    pub fn new(grace: Duration) -> Drain {
        Drain {
            shared: Arc::new(Shared {
                grace,
                begun: CancellationToken::new(),
                began_at: OnceLock::new(),
                open: AtomicUsize::new(0),
                cut: AtomicUsize::new(0),
                ended_by_service: AtomicUsize::new(0),
                drained: AtomicUsize::new(0),
            }),
        }
    }

    /// The grace period.
    pub fn grace(&self) -> Duration {
        self.shared.grace
    }

    /// The layer every server of this process runs (innermost, around the router).
    pub fn layer(&self) -> DrainLayer {
        DrainLayer {
            shared: self.shared.clone(),
        }
    }

    /// Resolves when the drain begins: the shutdown future for tonic's `serve_with_*_shutdown`.
    pub fn begun(&self) -> impl Future<Output = ()> + Send + 'static {
        self.shared.begun.clone().cancelled_owned()
    }

    /// Starts the grace period (and the counts of what ends in it).
    fn start(&self) {
        let _ = self.shared.began_at.set(Instant::now());
        info!(
            open = self.shared.open.load(Relaxed),
            grace = %humantime::format_duration(self.shared.grace),
            "shutting down: setting health NOT_SERVING, refusing new connections, ending streams \
             with UNAVAILABLE, letting calls in flight finish"
        );
    }

    /// Begins the drain: from now every stream waiting for its next message ends with
    /// UNAVAILABLE, and servers given [`Drain::begun`] stop accepting.
    pub fn begin(&self) {
        if self.shared.began_at.get().is_none() {
            self.start();
        }
        self.shared.begun.cancel();
    }

    /// When the process must be gone: the grace period after the drain began (or after now,
    /// if it has not).
    pub fn deadline(&self) -> Instant {
        *self.shared.began_at.get().unwrap_or(&Instant::now()) + self.shared.grace
    }

    /// Until when calls and streams may take: the deadline less the reserve for the audit
    /// queue and the store.
    pub fn calls_deadline(&self) -> Instant {
        self.deadline() - (self.shared.grace / 5).min(FLUSH_RESERVE)
    }

    /// Waits for `servers` (each shut down by [`Drain::begun`]) until `signal`; then runs
    /// `stopping` (health NOT_SERVING, the services' own streams told to end), begins the drain
    /// and waits for the servers to finish until [`Drain::calls_deadline`]. Past it, what is
    /// still open is left to close with the process. Returns the servers' outcome.
    pub async fn serve<E>(
        &self,
        servers: impl Future<Output = Result<(), E>>,
        signal: impl Future<Output = ()>,
        stopping: impl Future<Output = ()>,
    ) -> Result<(), E> {
        tokio::pin!(servers);
        tokio::select! {
            ended = &mut servers => return ended,
            () = signal => {}
        }
        self.start();
        stopping.await;
        self.begin();
        match tokio::time::timeout_at(self.calls_deadline(), servers).await {
            Ok(ended) => ended,
            Err(_) => {
                warn!(
                    open = self.shared.open.load(Relaxed),
                    grace = %humantime::format_duration(self.shared.grace),
                    "shutting down: the grace period is running out with calls, streams or \
                     connections (open counts calls and streams only) still open; closing them"
                );
                Ok(())
            }
        }
    }

    /// Awaits `task` until [`Drain::calls_deadline`]; aborts it (and says so) if it is not done.
    pub async fn join(&self, what: &str, task: tokio::task::JoinHandle<()>) {
        let abort = task.abort_handle();
        match tokio::time::timeout_at(self.calls_deadline(), task).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) if e.is_cancelled() => {}
            Ok(Err(e)) => warn!(error = %e, "{what} failed"),
            Err(_) => {
                abort.abort();
                warn!("shutting down: {what} did not stop within the grace period; stopped it");
            }
        }
    }

    /// What the drain did so far.
    pub fn drained(&self) -> Drained {
        let s = &self.shared;
        Drained {
            streams_ended: s.cut.load(Relaxed) + s.ended_by_service.load(Relaxed),
            calls_drained: s.drained.load(Relaxed),
            left_open: s.open.load(Relaxed),
        }
    }

    /// How long since the drain began.
    pub fn elapsed(&self) -> Duration {
        self.shared
            .began_at
            .get()
            .map_or(Duration::ZERO, Instant::elapsed)
    }
}

/// Marks a streaming response whose service ends it itself when the server shuts down (with
/// UNAVAILABLE and where to resume), so that the [`DrainLayer`] leaves it to.
pub fn ends_itself<T>(mut response: tonic::Response<T>) -> tonic::Response<T> {
    response.extensions_mut().insert(EndsItself);
    response
}

/// The response extension [`ends_itself`] sets.
#[derive(Debug, Clone, Copy)]
struct EndsItself;

/// UNAVAILABLE `SHUTTING_DOWN` for a stream the drain ends.
fn shutting_down() -> tonic::Status {
    ApiError::unavailable(
        "SHUTTING_DOWN",
        "the server is shutting down: this stream has ended; open it again (on another \
         replica, or here once the server is back)",
    )
    .into()
}

/// The [`Drain`]'s tower layer.
#[derive(Debug, Clone)]
pub struct DrainLayer {
    shared: Arc<Shared>,
}

impl<S> Layer<S> for DrainLayer {
    type Service = DrainService<S>;

    fn layer(&self, inner: S) -> DrainService<S> {
        DrainService {
            inner,
            shared: self.shared.clone(),
        }
    }
}

/// The service the [`DrainLayer`] wraps around the router.
#[derive(Debug, Clone)]
pub struct DrainService<S> {
    inner: S,
    shared: Arc<Shared>,
}

type BoxFuture<T, E> = Pin<Box<dyn Future<Output = Result<T, E>> + Send>>;

impl<S> Service<http::Request<Body>> for DrainService<S>
where
    S: Service<http::Request<Body>, Response = http::Response<Body>>,
    S::Future: Send + 'static,
{
    type Response = http::Response<Body>;
    type Error = S::Error;
    type Future = BoxFuture<Self::Response, Self::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<Body>) -> Self::Future {
        let call = Arc::new(Call {
            shared: self.shared.clone(),
            cut: AtomicBool::new(false),
            request_waker: Mutex::new(None),
        });
        let open = Open::new(call.clone());
        let response = self
            .inner
            .call(req.map(|inner| Body::new(DrainRequest { inner, call })));
        Box::pin(async move {
            let response = response.await?;
            let ends_itself = response.extensions().get::<EndsItself>().is_some();
            Ok(response.map(|inner| {
                Body::new(DrainBody {
                    inner,
                    open,
                    ends_itself,
                    waiting: None,
                    ended: false,
                })
            }))
        })
    }
}

/// What a call's request and response bodies share.
#[derive(Debug)]
struct Call {
    shared: Arc<Shared>,
    /// The drain ended the response: the request stream ends too.
    cut: AtomicBool,
    /// The task waiting for the client's next request message, to wake when the call is cut.
    request_waker: Mutex<Option<Waker>>,
}

impl Call {
    fn cut(&self) {
        self.cut.store(true, SeqCst);
        let waker = self.request_waker.lock().map(|mut w| w.take());
        if let Ok(Some(waker)) = waker {
            waker.wake();
        }
    }
}

/// A request body that ends once its call has been cut: a bidirectional stream's handler
/// (reflection's) waits for the client's next message, and until it lets go of the request
/// the HTTP/2 stream, and so the connection, stays open.
struct DrainRequest {
    inner: Body,
    call: Arc<Call>,
}

impl http_body::Body for DrainRequest {
    type Data = <Body as http_body::Body>::Data;
    type Error = <Body as http_body::Body>::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let this = &mut *self;
        if this.call.cut.load(SeqCst) {
            return Poll::Ready(None);
        }
        if let Poll::Ready(frame) = Pin::new(&mut this.inner).poll_frame(cx) {
            return Poll::Ready(frame);
        }
        if let Ok(mut waker) = this.call.request_waker.lock() {
            *waker = Some(cx.waker().clone());
        }
        // Cut between the first look and the waker's registration: end now.
        if this.call.cut.load(SeqCst) {
            return Poll::Ready(None);
        }
        Poll::Pending
    }

    fn is_end_stream(&self) -> bool {
        self.call.cut.load(SeqCst) || self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// How a call's response ended, for the drain's counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum End {
    /// Its last frame went out.
    Finished,
    /// The drain ended it.
    Cut,
}

/// One call or stream counted open, from its request to the end of its response.
#[derive(Debug)]
struct Open {
    call: Arc<Call>,
    /// It waited for a message at least once: a stream, not a unary answer.
    stream: bool,
    ended: bool,
}

impl Open {
    fn new(call: Arc<Call>) -> Open {
        call.shared.open.fetch_add(1, Relaxed);
        Open {
            call,
            stream: false,
            ended: false,
        }
    }

    /// Counts the end of the call, once: when its last frame is handed to the connection, not
    /// when the body is dropped later.
    fn end(&mut self, how: End) {
        if std::mem::replace(&mut self.ended, true) {
            return;
        }
        let s = &self.call.shared;
        s.open.fetch_sub(1, Relaxed);
        if how == End::Cut {
            s.cut.fetch_add(1, Relaxed);
            self.call.cut();
        } else if s.began_at.get().is_some() {
            let counter = if self.stream {
                &s.ended_by_service
            } else {
                &s.drained
            };
            counter.fetch_add(1, Relaxed);
        }
    }
}

impl Drop for Open {
    /// A response dropped before its end (the client went away) is no longer open.
    fn drop(&mut self) {
        if !std::mem::replace(&mut self.ended, true) {
            self.call.shared.open.fetch_sub(1, Relaxed);
        }
    }
}

/// A response body that a drain may end.
struct DrainBody {
    inner: Body,
    open: Open,
    ends_itself: bool,
    /// Created the first time the body waits: unary answers never do.
    waiting: Option<Pin<Box<WaitForCancellationFutureOwned>>>,
    ended: bool,
}

impl http_body::Body for DrainBody {
    type Data = <Body as http_body::Body>::Data;
    type Error = <Body as http_body::Body>::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let this = &mut *self;
        if this.ended {
            return Poll::Ready(None);
        }
        // What the stream has ready goes first: a NOT_SERVING, or a service's own last word.
        if let Poll::Ready(frame) = Pin::new(&mut this.inner).poll_frame(cx) {
            // A gRPC response ends with its trailers (or an error, or nothing more).
            let last = match &frame {
                Some(Ok(f)) => f.is_trailers(),
                Some(Err(_)) | None => true,
            };
            if last {
                this.ended = true;
                this.open.end(End::Finished);
            }
            return Poll::Ready(frame);
        }
        this.open.stream = true;
        if this.ends_itself {
            return Poll::Pending;
        }
        let shared = &this.open.call.shared;
        let waiting = this
            .waiting
            .get_or_insert_with(|| Box::pin(shared.begun.clone().cancelled_owned()));
        if waiting.as_mut().poll(cx).is_pending() {
            return Poll::Pending;
        }
        this.ended = true;
        this.open.end(End::Cut);
        let mut trailers = http::HeaderMap::new();
        if let Err(e) = shutting_down().add_header(&mut trailers) {
            return Poll::Ready(Some(Err(e)));
        }
        Poll::Ready(Some(Ok(Frame::trailers(trailers))))
    }

    fn is_end_stream(&self) -> bool {
        self.ended || self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        if self.ended {
            SizeHint::with_exact(0)
        } else {
            self.inner.size_hint()
        }
    }
}

impl Drain {
    /// Awaits `work` until [`Drain::deadline`]; says so if the grace period ran out first.
    pub async fn until_deadline(&self, what: &str, work: impl Future<Output = ()>) {
        if tokio::time::timeout_at(self.deadline(), work).await.is_err() {
            warn!("shutting down: {what} did not finish within the grace period");
        }
    }

    /// Logs how the server stopped, in one line: the streams ended, the calls drained, what was
    /// left open, the audit queue, and the time taken of the grace period. At WARN if anything
    /// was cut short.
    pub fn log_stopped(&self, server: &str, audit: crate::AuditFlushed) {
        let d = self.drained();
        let queue = if audit.lost > 0 {
            format!(
                "audit queue NOT flushed: {} not recorded",
                counted(usize::try_from(audit.lost).unwrap_or(usize::MAX), "refusal")
            )
        } else {
            format!(
                "audit queue flushed ({} recorded since start)",
                counted(usize::try_from(audit.written).unwrap_or(usize::MAX), "refusal")
            )
        };
        let took = Duration::from_millis(u64::try_from(self.elapsed().as_millis()).unwrap_or(u64::MAX));
        let line = format!(
            "{server} stopped: {} ended with UNAVAILABLE, {} drained, {} left open; {queue}; \
             in {} of the {} grace period",
            counted(d.streams_ended, "stream"),
            counted(d.calls_drained, "call"),
            d.left_open,
            humantime::format_duration(took),
            humantime::format_duration(self.grace()),
        );
        if d.left_open > 0 || audit.lost > 0 {
            warn!(
                streams_ended = d.streams_ended,
                calls_drained = d.calls_drained,
                left_open = d.left_open,
                audit_lost = audit.lost,
                "{line}"
            );
        } else {
            info!(
                streams_ended = d.streams_ended,
                calls_drained = d.calls_drained,
                audit_written = audit.written,
                "{line}"
            );
        }
    }
}

/// "1 stream", "3 streams".
fn counted(n: usize, what: &str) -> String {
    if n == 1 {
        format!("1 {what}")
    } else {
        format!("{n} {what}s")
    }
}
