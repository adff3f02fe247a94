//! The accepting side of the mutual-TLS port: TCP connections admitted within the port's
//! [`ConnectionBudget`] (connections and concurrent handshakes, counted by [`Admission`]), TLS
//! handshakes completed concurrently within a deadline, and the verified connections handed to
//! tonic as [`PeerStream`]s whose [`PeerInfo`] carries the peer's identity and the
//! connection's share of the stream budget.

use std::{
    io,
    net::SocketAddr,
    pin::Pin,
    sync::{
        Arc,
        atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed},
    },
    task::{Context, Poll},
    time::{Duration, SystemTime},
};

use rustls::pki_types::CertificateDer;

use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    net::{TcpListener, TcpStream},
    sync::{OwnedSemaphorePermit, Semaphore, mpsc},
};
use tokio_rustls::TlsAcceptor;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::server::Connected;
use tracing::{debug, warn};

use crate::{
    budget::{ConnectionBudget, Refusals, StreamBudgetLayer, StreamSlots},
    tls::{Identity, ReloadingServerConfig},
};

/// How long a client has to complete the TLS handshake, counted from accept (a wait for a
/// handshake slot included).
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// How often the acceptor looks for changed certificate files.
pub const RELOAD_CHECK_INTERVAL: Duration = Duration::from_secs(5);

/// What a port admits, and its counts: the connection and handshake slots of its
/// [`ConnectionBudget`], the connections refused, the handshakes waiting for a turn, and the
/// calls refused by its [`StreamBudgetLayer`]. Shared by [`incoming_for`] and
/// [`crate::server::builder_for`].
#[derive(Debug, Clone)]
pub struct Admission {
    shared: Arc<Shared>,
}

#[derive(Debug)]
struct Shared {
    budget: ConnectionBudget,
    connections: Arc<Semaphore>,
    handshakes: Arc<Semaphore>,
    waiting: AtomicUsize,
    refused_connections: Refusals,
    queued_handshakes: Refusals,
    refused_streams: Arc<Refusals>,
    /// Refused handshakes, by [`HandshakeFailure`].
    handshake_failures: [AtomicU64; HandshakeFailure::ALL.len()],
}

/// Why a TLS handshake on the port failed, in a few kinds an operator acts on differently (a
/// label of `gprollout_tls_handshake_failures_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HandshakeFailure {
    /// The client presented no certificate.
    NoClientCertificate,
    /// The client's certificate has expired (or is not valid yet).
    CertificateExpired,
    /// The client's certificate is revoked by a CRL the server holds.
    CertificateRevoked,
    /// The client's certificate was not issued by a CA the server trusts.
    UnknownIssuer,
    /// Any other problem with the client's certificate.
    BadCertificate,
    /// Not completed within [`HANDSHAKE_TIMEOUT`].
    Timeout,
    /// Any other TLS error: not TLS at all, no common protocol version or cipher suite, an alert.
    Protocol,
    /// The connection failed or closed during the handshake.
    Io,
}

impl HandshakeFailure {
    /// Every kind, in the order of their counts.
    pub const ALL: [HandshakeFailure; 8] = [
        HandshakeFailure::NoClientCertificate,
        HandshakeFailure::CertificateExpired,
        HandshakeFailure::CertificateRevoked,
        HandshakeFailure::UnknownIssuer,
        HandshakeFailure::BadCertificate,
        HandshakeFailure::Timeout,
        HandshakeFailure::Protocol,
        HandshakeFailure::Io,
    ];

    /// The kind of a handshake's error.
    pub fn of(error: &io::Error) -> HandshakeFailure {
        use rustls::{CertificateError as C, Error as E};
        let Some(tls) = error.get_ref().and_then(|e| e.downcast_ref::<E>()) else {
            return HandshakeFailure::Io;
        };
        match tls {
            E::NoCertificatesPresented => HandshakeFailure::NoClientCertificate,
            E::InvalidCertificate(
                C::Expired | C::ExpiredContext { .. } | C::NotValidYet | C::NotValidYetContext { .. },
            ) => HandshakeFailure::CertificateExpired,
            E::InvalidCertificate(C::Revoked) => HandshakeFailure::CertificateRevoked,
            E::InvalidCertificate(C::UnknownIssuer) => HandshakeFailure::UnknownIssuer,
            E::InvalidCertificate(_) => HandshakeFailure::BadCertificate,
            _ => HandshakeFailure::Protocol,
        }
    }

    /// The label value: the kind in snake case.
    pub fn as_str(self) -> &'static str {
        match self {
            HandshakeFailure::NoClientCertificate => "no_client_certificate",
            HandshakeFailure::CertificateExpired => "certificate_expired",
            HandshakeFailure::CertificateRevoked => "certificate_revoked",
            HandshakeFailure::UnknownIssuer => "unknown_issuer",
            HandshakeFailure::BadCertificate => "bad_certificate",
            HandshakeFailure::Timeout => "timeout",
            HandshakeFailure::Protocol => "protocol",
            HandshakeFailure::Io => "io",
        }
    }
}

/// An [`Admission`]'s counts at one moment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AdmissionCounts {
    /// Connections open (handshaking or verified).
    pub connections: usize,
    /// Handshakes in progress.
    pub handshaking: usize,
    /// Handshakes waiting for a slot.
    pub waiting: usize,
    /// Connections closed at accept since start, over the connection budget.
    pub refused_connections: u64,
    /// Handshakes that had to wait for a slot since start.
    pub queued_handshakes: u64,
    /// Calls refused since start, over the stream budget of their connection.
    pub refused_streams: u64,
}

impl Admission {
    /// An admission of `budget`.
    pub fn new(budget: ConnectionBudget) -> Admission {
        Admission {
            shared: Arc::new(Shared {
                budget,
                connections: Arc::new(Semaphore::new(budget.connections)),
                handshakes: Arc::new(Semaphore::new(budget.handshakes)),
                waiting: AtomicUsize::new(0),
                refused_connections: Refusals::new(),
                queued_handshakes: Refusals::new(),
                refused_streams: Arc::new(Refusals::new()),
                handshake_failures: Default::default(),
            }),
        }
    }

    /// The budget.
    pub fn budget(&self) -> ConnectionBudget {
        self.shared.budget
    }

    /// The counts now.
    pub fn counts(&self) -> AdmissionCounts {
        let s = &self.shared;
        AdmissionCounts {
            connections: s.budget.connections - s.connections.available_permits(),
            handshaking: s.budget.handshakes - s.handshakes.available_permits(),
            waiting: s.waiting.load(Relaxed),
            refused_connections: s.refused_connections.total(),
            queued_handshakes: s.queued_handshakes.total(),
            refused_streams: s.refused_streams.total(),
        }
    }

    /// Handshakes refused since start, by kind (in the order of [`HandshakeFailure::ALL`]).
    pub fn handshake_failures(&self) -> [(HandshakeFailure, u64); HandshakeFailure::ALL.len()] {
        HandshakeFailure::ALL.map(|k| (k, self.shared.handshake_failures[k as usize].load(Relaxed)))
    }

    fn handshake_failed(&self, kind: HandshakeFailure) {
        self.shared.handshake_failures[kind as usize].fetch_add(1, Relaxed);
    }

    /// The layer that holds each connection to the stream budget, counting into this admission.
    pub fn stream_layer(&self) -> StreamBudgetLayer {
        StreamBudgetLayer::new(self.shared.refused_streams.clone())
    }

    /// A connection slot, or `None` (counted and logged) when the budget is spent.
    fn connection(&self, peer: SocketAddr) -> Option<OwnedSemaphorePermit> {
        let s = &self.shared;
        let slot = s.connections.clone().try_acquire_owned().ok();
        if slot.is_none()
            && let Some(total) = s.refused_connections.count()
        {
            warn!(
                %peer,
                limit = s.budget.connections,
                refused_since_start = total,
                "connection refused: as many connections are open as this server accepts \
                 (--max-connections); closed before its TLS handshake"
            );
        }
        slot
    }

    /// Waits for a handshake slot (counting and logging the wait, if there is one).
    async fn handshake_turn(&self, peer: SocketAddr) -> Option<OwnedSemaphorePermit> {
        let s = &self.shared;
        if let Ok(turn) = s.handshakes.clone().try_acquire_owned() {
            return Some(turn);
        }
        let waiting = Waiting::new(&s.waiting);
        if let Some(total) = s.queued_handshakes.count() {
            warn!(
                %peer,
                limit = s.budget.handshakes,
                waiting = waiting.now(),
                queued_since_start = total,
                "tls handshake waiting: as many handshakes are in progress as this server runs \
                 at once (--max-handshakes)"
            );
        }
        s.handshakes.clone().acquire_owned().await.ok()
    }
}

/// One handshake counted as waiting until dropped (its turn came, or its deadline passed).
struct Waiting<'a>(&'a AtomicUsize);

impl<'a> Waiting<'a> {
    fn new(count: &'a AtomicUsize) -> Self {
        count.fetch_add(1, Relaxed);
        Waiting(count)
    }

    fn now(&self) -> usize {
        self.0.load(Relaxed)
    }
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Relaxed);
    }
}

/// What the server knows of a connection's peer; tonic puts it in every request's extensions.
#[derive(Debug, Clone)]
pub struct PeerInfo {
    /// The peer's address.
    pub remote_addr: SocketAddr,
    /// The identity from its verified client certificate; `None` if the certificate has no
    /// URI or DNS SAN.
    pub identity: Option<Identity>,
    /// The connection's calls and streams, held to the stream budget by [`StreamBudgetLayer`].
    pub streams: StreamSlots,
    /// Its verified certificate chain, leaf first: checked again at its next call once the
    /// server's CA bundle or CRLs have changed (`crate::auth`).
    pub chain: Arc<[CertificateDer<'static>]>,
    /// When its leaf certificate expires; a call after it is refused.
    pub not_after: Option<SystemTime>,
    /// The generation of the server's files the chain was last verified against
    /// ([`ReloadingServerConfig::generation`]).
    pub verified: Arc<AtomicU64>,
}

/// A verified mutual-TLS connection, holding its connection slot until it closes.
///
/// Writes are consolidated: the first write after a flush yields to the runtime once, so that
/// the other calls and streams on the connection that are ready to answer queue their frames
/// first, and one TLS record and one `writev` carry them all. Without it every response woke
/// the connection's task at once (tokio runs a task just woken next) and went out in a write of
/// its own: 10,000 watch streams receiving a change took 10,000 writes. When nothing else is
/// ready the yield costs one trip through the scheduler.
#[derive(Debug)]
pub struct PeerStream {
    inner: tokio_rustls::server::TlsStream<TcpStream>,
    info: PeerInfo,
    /// Whether this flush cycle has yielded already.
    yielded: bool,
    _slot: OwnedSemaphorePermit,
}

impl PeerStream {
    /// What the server knows of the peer.
    pub fn info(&self) -> &PeerInfo {
        &self.info
    }

    /// Yields once per flush cycle (see the type's documentation).
    fn consolidate(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        if self.yielded {
            Poll::Ready(())
        } else {
            self.yielded = true;
            cx.waker().wake_by_ref();
            Poll::Pending
        }
    }
}

impl Connected for PeerStream {
    type ConnectInfo = PeerInfo;

    fn connect_info(&self) -> PeerInfo {
        self.info.clone()
    }
}

impl AsyncRead for PeerStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for PeerStream {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        std::task::ready!(self.consolidate(cx));
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let flushed = Pin::new(&mut self.inner).poll_flush(cx);
        if flushed.is_ready() {
            self.yielded = false;
        }
        flushed
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        std::task::ready!(self.consolidate(cx));
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    /// Reports no vectored writes, on purpose. h2 keeps a DATA payload larger than 256 bytes
    /// out of its write buffer when the transport takes vectored writes (1 KiB when it does
    /// not), and must flush before it can buffer the next frame. Under TLS the payload is
    /// copied into a record anyway, so the saving is nil and the cost is one more flush (a TLS
    /// record and a `writev`) per response: a 308-byte answer took 1.5 writes per call instead
    /// of the 0.8 a small echo takes (docs/PERFORMANCE.md).
    fn is_write_vectored(&self) -> bool {
        false
    }
}

/// [`incoming_for`] with the default [`ConnectionBudget`].
pub fn incoming(
    listener: TcpListener,
    tls: Arc<ReloadingServerConfig>,
) -> ReceiverStream<Result<PeerStream, io::Error>> {
    incoming_for(listener, tls, &Admission::new(ConnectionBudget::default()))
}

/// Accepts TCP connections on `listener` within `admission`'s budget (one over the connection
/// budget is closed at once), completes the TLS handshakes concurrently (at most the handshake
/// budget at once, each within [`HANDSHAKE_TIMEOUT`] of its accept), and yields the verified
/// connections for `Router::serve_with_incoming_shutdown`. Refused handshakes are logged at
/// WARN with the peer's address and rustls's reason. Stops when the stream is dropped.
pub fn incoming_for(
    listener: TcpListener,
    tls: Arc<ReloadingServerConfig>,
    admission: &Admission,
) -> ReceiverStream<Result<PeerStream, io::Error>> {
    let (tx, rx) = mpsc::channel(128);
    let admission = admission.clone();
    tokio::spawn(async move {
        let mut reload = tokio::time::interval(RELOAD_CHECK_INTERVAL);
        reload.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let (tcp, remote_addr) = tokio::select! {
                _ = tx.closed() => break,
                _ = reload.tick() => {
                    tls.reload_if_changed();
                    continue;
                }
                accepted = listener.accept() => match accepted {
                    Ok(pair) => pair,
                    Err(error) => {
                        // Out of file descriptors and the like: back off briefly rather than spin.
                        warn!(%error, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                },
            };
            let Some(slot) = admission.connection(remote_addr) else {
                continue;
            };
            let _ = tcp.set_nodelay(true);
            // The generation read before the configuration: a reload between the two makes the
            // connection's first call check its chain again, never skip a check.
            let generation = tls.generation();
            let acceptor = TlsAcceptor::from(tls.current());
            let (tx, admission) = (tx.clone(), admission.clone());
            tokio::spawn(async move {
                if let Some(stream) =
                    handshake(&admission, acceptor, generation, tcp, remote_addr, slot).await
                {
                    let _ = tx.send(Ok(stream)).await;
                }
            });
        }
    });
    ReceiverStream::new(rx)
}

/// Waits for a handshake turn and completes the handshake, within [`HANDSHAKE_TIMEOUT`]:
/// the verified connection, or `None` (logged).
async fn handshake(
    admission: &Admission,
    acceptor: TlsAcceptor,
    generation: u64,
    tcp: TcpStream,
    remote_addr: SocketAddr,
    slot: OwnedSemaphorePermit,
) -> Option<PeerStream> {
    let handshake = async {
        let _turn = admission.handshake_turn(remote_addr).await;
        acceptor.accept(tcp).await
    };
    match tokio::time::timeout(HANDSHAKE_TIMEOUT, handshake).await {
        Ok(Ok(stream)) => {
            let chain: Arc<[CertificateDer<'static>]> = stream
                .get_ref()
                .1
                .peer_certificates()
                .map(|chain| chain.iter().map(|c| c.clone().into_owned()).collect())
                .unwrap_or_default();
            let identity = chain.first().and_then(|leaf| Identity::of_certificate(leaf));
            debug!(peer = %remote_addr, identity = ?identity, "tls connection accepted");
            let info = PeerInfo {
                remote_addr,
                identity,
                streams: StreamSlots::new(admission.budget().streams_per_connection),
                not_after: chain.first().and_then(crate::tls::not_after),
                chain,
                verified: Arc::new(AtomicU64::new(generation)),
            };
            Some(PeerStream {
                inner: stream,
                info,
                yielded: false,
                _slot: slot,
            })
        }
        Ok(Err(error)) => {
            let kind = HandshakeFailure::of(&error);
            admission.handshake_failed(kind);
            warn!(peer = %remote_addr, %error, reason = kind.as_str(), "tls handshake refused");
            None
        }
        Err(_) => {
            admission.handshake_failed(HandshakeFailure::Timeout);
            warn!(peer = %remote_addr, "tls handshake timed out");
            None
        }
    }
}
