//! Budgets: how much of a server one peer may hold, so that no caller (a viewer's runaway
//! script, any certificate that chains to the CA) can take what an operator's halt needs.
//!
//! - [`ConnectionBudget`]: the mutual-TLS port's connections, concurrent TLS handshakes and
//!   calls per connection; what the acceptor admits is counted by [`Admission`]
//!   (`crate::accept`), and the calls of one connection by [`StreamBudgetLayer`], which answers
//!   one over the budget RESOURCE_EXHAUSTED `TOO_MANY_STREAMS_ON_CONNECTION`.
//! - [`IdentityBudget`]: how many of one method's calls or streams one identity may have open
//!   at once (WatchCommand, VerifyCommand, WatchPracticeFeatures); one more is answered
//!   RESOURCE_EXHAUSTED with the budget's reason.
//!
//! Every refusal is counted, and logged at WARN at most once every [`LOG_EVERY`] with the
//! count so far, so a flood of refusals is one line every few seconds, not a line per refusal.

use std::{
    collections::HashMap,
    pin::Pin,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering::Relaxed},
    },
    task::{Context, Poll},
    time::Duration,
};

use http_body::{Frame, SizeHint};
use tokio::{
    sync::{OwnedSemaphorePermit, Semaphore},
    time::Instant,
};
use tonic::body::Body;
use tower::{Layer, Service};
use tracing::warn;

use crate::{
    ApiError,
    tls::{Identity, PeerInfo},
};

/// The most often one kind of refusal is logged.
pub const LOG_EVERY: Duration = Duration::from_secs(10);

/// The budgets of a server's mutual-TLS port.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnectionBudget {
    /// Connections open at once, from accept to close (handshakes included). One more is closed
    /// at once, before any TLS: its client sees the connection closed (UNAVAILABLE).
    pub connections: usize,
    /// TLS handshakes in progress at once. More wait for a turn, within the time a handshake
    /// may take from accept ([`crate::accept::HANDSHAKE_TIMEOUT`]).
    pub handshakes: usize,
    /// Calls and streams open at once on one connection. One more is answered
    /// RESOURCE_EXHAUSTED `TOO_MANY_STREAMS_ON_CONNECTION`.
    pub streams_per_connection: usize,
}

impl ConnectionBudget {
    /// The defaults of both servers' flags.
    pub const DEFAULT: ConnectionBudget = ConnectionBudget {
        connections: 4_096,
        handshakes: 64,
        streams_per_connection: 1_000,
    };

    /// The HTTP/2 SETTINGS_MAX_CONCURRENT_STREAMS a connection advertises: twice the budget,
    /// so that a client opening more than the budget at once is answered
    /// `TOO_MANY_STREAMS_ON_CONNECTION` rather than left waiting on its side for a stream
    /// (tonic and grpc-go queue a call past the peer's limit until a stream frees, which a
    /// watch never does). Past this, h2 itself refuses the stream (REFUSED_STREAM).
    pub fn http2_max_concurrent_streams(&self) -> u32 {
        u32::try_from(self.streams_per_connection.saturating_mul(2)).unwrap_or(u32::MAX)
    }
}

impl Default for ConnectionBudget {
    fn default() -> Self {
        ConnectionBudget::DEFAULT
    }
}

/// A refusal counter that logs at WARN at most once every [`LOG_EVERY`], with the count.
#[derive(Debug)]
pub(crate) struct Refusals {
    count: AtomicU64,
    logged: Mutex<Option<Instant>>,
}

impl Refusals {
    pub(crate) fn new() -> Self {
        Refusals {
            count: AtomicU64::new(0),
            logged: Mutex::new(None),
        }
    }

    /// Counts one refusal; returns the count so far if this one should be logged.
    pub(crate) fn count(&self) -> Option<u64> {
        let total = self.count.fetch_add(1, Relaxed) + 1;
        let mut logged = self.logged.lock().unwrap_or_else(|e| e.into_inner());
        let due = logged.is_none_or(|at| at.elapsed() >= LOG_EVERY);
        if due {
            *logged = Some(Instant::now());
        }
        due.then_some(total)
    }

    /// Refusals so far.
    pub(crate) fn total(&self) -> u64 {
        self.count.load(Relaxed)
    }
}

/// The calls and streams one connection may have open: its share of
/// [`ConnectionBudget::streams_per_connection`], carried in its [`PeerInfo`].
#[derive(Debug, Clone)]
pub struct StreamSlots {
    slots: Arc<Semaphore>,
    limit: usize,
}

impl StreamSlots {
    pub(crate) fn new(limit: usize) -> Self {
        StreamSlots {
            slots: Arc::new(Semaphore::new(limit)),
            limit,
        }
    }

    /// Calls and streams open on the connection now.
    pub fn open(&self) -> usize {
        self.limit - self.slots.available_permits()
    }
}

/// The layer that holds every connection to [`ConnectionBudget::streams_per_connection`] (see
/// [`crate::server::builder_for`]): a call takes one of its connection's slots until its
/// response ends (the last message of a stream, or the client going away).
#[derive(Debug, Clone)]
pub struct StreamBudgetLayer {
    refusals: Arc<Refusals>,
}

impl StreamBudgetLayer {
    pub(crate) fn new(refusals: Arc<Refusals>) -> Self {
        StreamBudgetLayer { refusals }
    }
}

impl<S> Layer<S> for StreamBudgetLayer {
    type Service = StreamBudget<S>;

    fn layer(&self, inner: S) -> StreamBudget<S> {
        StreamBudget {
            inner,
            refusals: self.refusals.clone(),
        }
    }
}

/// The service [`StreamBudgetLayer`] wraps.
#[derive(Debug, Clone)]
pub struct StreamBudget<S> {
    inner: S,
    refusals: Arc<Refusals>,
}

type BoxFuture<T, E> = Pin<Box<dyn Future<Output = Result<T, E>> + Send>>;

impl<S, B> Service<http::Request<B>> for StreamBudget<S>
where
    S: Service<http::Request<B>, Response = http::Response<Body>>,
    S::Future: Send + 'static,
{
    type Response = http::Response<Body>;
    type Error = S::Error;
    type Future = BoxFuture<Self::Response, Self::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        // A connection the acceptor did not make (none here but tests' plain servers) has no
        // budget of its own.
        let Some(peer) = req.extensions().get::<PeerInfo>() else {
            return Box::pin(self.inner.call(req));
        };
        let slots = &peer.streams;
        let Ok(slot) = slots.slots.clone().try_acquire_owned() else {
            let error = too_many_streams(slots.limit);
            if let Some(total) = self.refusals.count() {
                warn!(
                    peer = %peer.remote_addr,
                    identity = peer.identity.as_ref().map_or("-", Identity::as_str),
                    method = req.uri().path(),
                    limit = slots.limit,
                    refused_since_start = total,
                    "call refused: its connection has as many calls and streams open as one \
                     connection may (--max-streams-per-connection)"
                );
            }
            let response = tonic::Status::from(error).into_http();
            return Box::pin(async move { Ok(response) });
        };
        let response = self.inner.call(req);
        Box::pin(async move {
            let response = response.await?;
            Ok(response.map(|inner| Body::new(HoldingBody { inner, _slot: slot })))
        })
    }
}

/// RESOURCE_EXHAUSTED `TOO_MANY_STREAMS_ON_CONNECTION`.
fn too_many_streams(limit: usize) -> ApiError {
    ApiError::resource_exhausted(
        "TOO_MANY_STREAMS_ON_CONNECTION",
        format!(
            "this connection already has {limit} calls and streams open, the most one connection \
             may have here; close some, or make this call on another connection"
        ),
    )
    .with_metadata("limit", limit.to_string())
}

/// A response body holding a slot until it is dropped.
struct HoldingBody {
    inner: Body,
    _slot: OwnedSemaphorePermit,
}

impl http_body::Body for HoldingBody {
    type Data = <Body as http_body::Body>::Data;
    type Error = <Body as http_body::Body>::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// How many calls or streams of one method one identity may have open at once.
///
/// A semaphore per identity, made when the identity first calls: identities are those of the
/// role policy (the auth layer refuses any other before a handler runs), so the map is bounded
/// by the policy.
#[derive(Debug)]
pub struct IdentityBudget {
    method: &'static str,
    reason: &'static str,
    flag: &'static str,
    limit: usize,
    slots: Mutex<HashMap<Identity, Arc<Semaphore>>>,
    refusals: Refusals,
}

/// One of an identity's slots: held for as long as the call or stream is open.
#[derive(Debug)]
pub struct IdentitySlot {
    _permit: OwnedSemaphorePermit,
}

impl IdentityBudget {
    /// At most `limit` open calls of `method` per identity; one more is refused with `reason`
    /// (UPPER_SNAKE_CASE), and the log names `flag`, the setting that raises it.
    pub fn new(method: &'static str, reason: &'static str, flag: &'static str, limit: usize) -> Self {
        IdentityBudget {
            method,
            reason,
            flag,
            limit,
            slots: Mutex::new(HashMap::new()),
            refusals: Refusals::new(),
        }
    }

    /// The budget.
    pub fn limit(&self) -> usize {
        self.limit
    }

    /// Refusals since start.
    pub fn refused(&self) -> u64 {
        self.refusals.total()
    }

    /// Takes one of `identity`'s slots, or refuses RESOURCE_EXHAUSTED with the budget's
    /// reason (metadata `identity`, `method`, `limit`) if it holds them all.
    pub fn take(&self, identity: &Identity) -> Result<IdentitySlot, ApiError> {
        let semaphore = {
            let mut slots = self.slots.lock().unwrap_or_else(|e| e.into_inner());
            slots
                .entry(identity.clone())
                .or_insert_with(|| Arc::new(Semaphore::new(self.limit)))
                .clone()
        };
        if let Ok(permit) = semaphore.try_acquire_owned() {
            return Ok(IdentitySlot { _permit: permit });
        }
        if let Some(total) = self.refusals.count() {
            warn!(
                %identity,
                method = self.method,
                limit = self.limit,
                refused_since_start = total,
                "call refused: the identity has as many open as it may ({})",
                self.flag
            );
        }
        Err(ApiError::resource_exhausted(
            self.reason,
            format!(
                "identity {identity} already has {} {} open, the most one identity may have \
                 here; close some before opening another",
                self.limit, self.method
            ),
        )
        .with_metadata("identity", identity.to_string())
        .with_metadata("method", self.method)
        .with_metadata("limit", self.limit.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use tonic::Code;
    use tonic_types::StatusExt;

    use super::*;

    #[test]
    fn an_identity_holds_at_most_its_budget_and_gets_slots_back() {
        let budget = IdentityBudget::new("WatchCommand streams", "TOO_MANY_WATCH_STREAMS", "--flag", 2);
        let (viewer, alice) = (
            Identity::new("spiffe://x/viewer"),
            Identity::new("spiffe://x/alice"),
        );
        let first = budget.take(&viewer).expect("first");
        let _second = budget.take(&viewer).expect("second");
        let refused = tonic::Status::from(budget.take(&viewer).expect_err("third"));
        assert_eq!(refused.code(), Code::ResourceExhausted);
        let info = refused.get_error_details().error_info().cloned().expect("info");
        assert_eq!(info.reason, "TOO_MANY_WATCH_STREAMS");
        assert_eq!(info.metadata["limit"], "2");
        assert_eq!(info.metadata["identity"], "spiffe://x/viewer");
        // Another identity has its own budget; a slot given back can be taken again.
        budget.take(&alice).expect("alice's own budget");
        drop(first);
        budget.take(&viewer).expect("a slot given back");
        assert_eq!(budget.refused(), 1);
    }

    #[test]
    fn refusals_are_all_counted_and_logged_once_a_period() {
        let refusals = Refusals::new();
        assert_eq!(refusals.count(), Some(1), "the first is logged");
        assert_eq!(refusals.count(), None);
        assert_eq!(refusals.count(), None);
        assert_eq!(refusals.total(), 3);
    }

    #[test]
    fn http2_advertises_twice_the_budget() {
        assert_eq!(ConnectionBudget::DEFAULT.http2_max_concurrent_streams(), 2_000);
        let huge = ConnectionBudget {
            streams_per_connection: usize::MAX,
            ..ConnectionBudget::DEFAULT
        };
        assert_eq!(huge.http2_max_concurrent_streams(), u32::MAX);
    }
}
