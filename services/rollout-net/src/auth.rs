//! Identity and roles: a table of which roles may call which method, and one tower layer that
//! enforces it with the role policy (`crate::policy`) on every call, after checking that the
//! caller's certificate is still one the server accepts.
//!
//! **Architecture invariant:** authorisation happens here, once, before any handler runs. A
//! handler that needs the caller's identity reads the [`Caller`] this layer puts in the
//! request's extensions; it never looks at certificates itself.

use std::{
    fmt,
    future::Future,
    pin::Pin,
    sync::{Arc, atomic::Ordering},
    task::{Context, Poll},
};

use arc_swap::ArcSwap;
use tower::{Layer, Service};
use tracing::warn;

pub use crate::policy::{Grant, MAX_PERSON_CHARS, PolicyError, PolicyFile, Role, RolePolicy, RoleSet};
use crate::{
    error::ApiError,
    tls::{Identity, PeerInfo, ReloadingServerConfig},
};

/// Who may call a method.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Any peer with a verified client certificate, listed or not (health, reflection).
    AnyPeer,
    /// A listed identity holding at least one of these roles.
    AnyOf(&'static [Role]),
}

/// The access table: full method paths (`/pkg.Service/Method`) or service prefixes
/// (`/pkg.Service/`) to the access they need. The longest matching entry wins; a path with no
/// entry is refused.
#[derive(Debug, Clone, Default)]
pub struct AccessTable {
    entries: Vec<(&'static str, Access)>,
}

/// The gRPC health and reflection services, open to every verified peer.
pub const OPEN_SERVICES: [&str; 3] = [
    "/grpc.health.v1.Health/",
    "/grpc.reflection.v1.ServerReflection/",
    "/grpc.reflection.v1alpha.ServerReflection/",
];

impl AccessTable {
    /// A table with health and reflection open to every verified peer.
    pub fn new() -> Self {
        AccessTable {
            entries: OPEN_SERVICES.iter().map(|s| (*s, Access::AnyPeer)).collect(),
        }
    }

    /// Adds an entry for a method path or a service prefix.
    pub fn allow(mut self, path: &'static str, access: Access) -> Self {
        self.entries.push((path, access));
        self
    }

    /// The access a path needs, if any entry covers it.
    pub fn lookup(&self, path: &str) -> Option<Access> {
        self.entries
            .iter()
            .filter(|(p, _)| path == *p || (p.ends_with('/') && path.starts_with(p)))
            .max_by_key(|(p, _)| p.len())
            .map(|(_, a)| *a)
    }
}

/// The authenticated caller of a request, put in its extensions by the layer.
#[derive(Debug, Clone)]
pub struct Caller {
    /// The identity from the client certificate.
    pub identity: Identity,
    /// The roles the policy gives it (empty for an unlisted peer on an open service).
    pub roles: RoleSet,
    /// The person behind the identity, if the policy names one.
    pub person: Option<Arc<str>>,
}

impl Caller {
    /// The caller of a request that passed the layer.
    pub fn of<T>(req: &tonic::Request<T>) -> Result<&Caller, ApiError> {
        req.extensions().get::<Caller>().ok_or_else(|| {
            ApiError::internal(
                "reading the caller",
                "request reached a handler without passing the auth layer",
            )
        })
    }

    /// Whether the caller holds a role.
    pub fn has(&self, role: Role) -> bool {
        self.roles.contains(role)
    }

    /// The caller as an audit event names it: the identity, and the person behind it when the
    /// policy names one (`spiffe://.../alice (person 5551234)`).
    pub fn audited(&self) -> String {
        match &self.person {
            Some(p) => format!("{} (person {p})", self.identity),
            None => self.identity.to_string(),
        }
    }
}

/// A refused call, for the audit log.
#[derive(Debug, Clone)]
pub struct Denial {
    /// The caller's identity, if its certificate carried one.
    pub identity: Option<Identity>,
    /// The full method path.
    pub method: String,
    /// The ErrorInfo reason.
    pub reason: &'static str,
    /// The message given to the caller.
    pub message: String,
    /// The caller's network address, where known.
    pub peer: Option<std::net::SocketAddr>,
}

/// Something that records refused calls (the services' audit logs), and logs them: with an
/// observer the layer leaves logging to it (a flood's refusals are summarised, not logged one
/// by one).
pub trait DenialObserver: Send + Sync + 'static {
    /// Called for every refused call, on the request path: do not block.
    fn denied(&self, denial: Denial);
}

/// The layer that checks every call's identity and role.
#[derive(Clone)]
pub struct AuthLayer {
    shared: Arc<Shared>,
}

struct Shared {
    policy: Arc<ArcSwap<RolePolicy>>,
    table: AccessTable,
    observer: Option<Arc<dyn DenialObserver>>,
    trust: Option<Arc<ReloadingServerConfig>>,
}

impl fmt::Debug for AuthLayer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AuthLayer")
            .field("table", &self.shared.table)
            .finish_non_exhaustive()
    }
}

impl AuthLayer {
    /// A layer enforcing `table` with the roles of `policy` (which may be swapped at run time).
    pub fn new(
        policy: Arc<ArcSwap<RolePolicy>>,
        table: AccessTable,
        observer: Option<Arc<dyn DenialObserver>>,
    ) -> Self {
        AuthLayer {
            shared: Arc::new(Shared {
                policy,
                table,
                observer,
                trust: None,
            }),
        }
    }

    /// The caller of a request to `path` from `peer`, by the same checks as a call through the
    /// layer (its certificate still trusted, its identity and the role `path` needs); a
    /// refusal is reported to the observer like a refused call, and returned.
    pub fn authorize(&self, peer: Option<&PeerInfo>, path: &str) -> Result<Caller, ApiError> {
        self.shared.authorize(peer, path)
    }

    /// Checks each call's client certificate again against `trust`'s CA bundle and CRLs once
    /// they have changed since the connection's handshake (or its last check): a certificate
    /// revoked, or whose CA was removed, is refused UNAUTHENTICATED at its connection's next
    /// call. Costs one atomic load per call while nothing changes.
    pub fn with_trust(self, trust: Arc<ReloadingServerConfig>) -> Self {
        let s = &self.shared;
        AuthLayer {
            shared: Arc::new(Shared {
                policy: s.policy.clone(),
                table: s.table.clone(),
                observer: s.observer.clone(),
                trust: Some(trust),
            }),
        }
    }
}

/// Set in [`PeerInfo::verified`] beside the generation at which the chain was refused (and the
/// index of the reason in [`NO_LONGER`] above it), so that a refused connection is not checked
/// again until the files change once more.
const REFUSED: u64 = 1 << 63;
/// Where the reason's index sits in [`PeerInfo::verified`].
const REASON_SHIFT: u32 = 60;
/// Why a certificate accepted at its handshake is refused now, as ErrorInfo reasons.
const NO_LONGER: [&str; 3] = [
    "CERTIFICATE_NO_LONGER_TRUSTED",
    "CERTIFICATE_REVOKED",
    "CERTIFICATE_EXPIRED",
];

/// The index in [`NO_LONGER`] of why rustls refused a certificate.
fn no_longer(e: &rustls::Error) -> u64 {
    use rustls::{CertificateError as C, Error as E};
    match e {
        E::InvalidCertificate(C::Revoked) => 1,
        E::InvalidCertificate(C::Expired | C::ExpiredContext { .. }) => 2,
        _ => 0,
    }
}

impl Shared {
    /// Whether the connection's certificate is still one this server accepts: not expired
    /// since the handshake, and (once the server's files have changed) still chaining to its
    /// CA bundle and not revoked by its CRLs.
    fn still_trusted(&self, peer: &PeerInfo) -> Result<(), ApiError> {
        let refuse =
            |reason, message: String| Err(ApiError::new(tonic::Code::Unauthenticated, reason, message));
        if let Some(until) = peer.not_after
            && std::time::SystemTime::now() > until
        {
            return refuse(
                "CERTIFICATE_EXPIRED",
                format!(
                    "the client certificate expired at {} while its connection was open; connect again with a current one",
                    humantime::format_rfc3339_seconds(until)
                ),
            );
        }
        let Some(trust) = &self.trust else {
            return Ok(());
        };
        let generation = trust.generation();
        let verified = peer.verified.load(Ordering::Acquire);
        if verified == generation {
            return Ok(());
        }
        let message = |e: &dyn fmt::Display| {
            format!(
                "the client certificate is no longer accepted by this server ({e}); its CA bundle or CRLs changed since the connection was made"
            )
        };
        let reason = |index: u64| NO_LONGER[usize::try_from(index).unwrap_or(0).min(NO_LONGER.len() - 1)];
        if verified & REFUSED != 0 && verified & ((1 << REASON_SHIFT) - 1) == generation {
            let index = (verified & !REFUSED) >> REASON_SHIFT;
            return refuse(
                reason(index),
                message(&"found at an earlier call on this connection"),
            );
        }
        match trust.recheck(&peer.chain) {
            Ok(()) => {
                peer.verified.store(generation, Ordering::Release);
                Ok(())
            }
            Err(e) => {
                let index = no_longer(&e);
                peer.verified
                    .store(generation | REFUSED | (index << REASON_SHIFT), Ordering::Release);
                refuse(reason(index), message(&e))
            }
        }
    }

    /// [`Shared::check`], with a refusal reported to the observer (or logged at WARN).
    fn authorize(&self, peer: Option<&PeerInfo>, path: &str) -> Result<Caller, ApiError> {
        self.check(peer, path).map_err(|(identity, error)| {
            let peer = peer.map(|p| p.remote_addr);
            if let Some(observer) = &self.observer {
                observer.denied(Denial {
                    identity,
                    method: path.to_owned(),
                    reason: error.reason(),
                    message: error.to_string(),
                    peer,
                });
            } else {
                warn!(
                    identity = identity.as_ref().map(Identity::as_str).unwrap_or("-"),
                    peer = peer.map(|p| p.to_string()).as_deref().unwrap_or("-"),
                    method = path,
                    reason = error.reason(),
                    "call refused"
                );
            }
            error
        })
    }

    fn check(&self, peer: Option<&PeerInfo>, path: &str) -> Result<Caller, (Option<Identity>, ApiError)> {
        let identity = peer.and_then(|p| p.identity.clone());
        if let Some(peer) = peer
            && let Err(e) = self.still_trusted(peer)
        {
            return Err((identity, e.with_metadata("method", path.to_owned())));
        }
        let deny = |reason, message: String| {
            Err((
                identity.clone(),
                ApiError::permission_denied(reason, message).with_metadata("method", path.to_owned()),
            ))
        };
        let Some(id) = identity.clone() else {
            return deny(
                "NO_IDENTITY",
                "the client certificate carries no URI or DNS subject alternative name to identify the caller".into(),
            );
        };
        let Some(access) = self.table.lookup(path) else {
            return deny(
                "METHOD_NOT_ALLOWED",
                format!("no role may call {path} on this server"),
            );
        };
        let policy = self.policy.load();
        let (roles, person) = match policy.grant(id.as_str()) {
            Some((roles, person)) => (Some(roles), person),
            None => (None, None),
        };
        match (access, roles) {
            (Access::AnyPeer, roles) => Ok(Caller {
                identity: id,
                roles: roles.unwrap_or_default(),
                person,
            }),
            (Access::AnyOf(_), None) => deny(
                "IDENTITY_NOT_ALLOWED",
                format!("identity {id} is not in this server's role policy; ask its operators to add it"),
            )
            .map_err(|(i, e)| (i, e.with_metadata("identity", id.to_string()))),
            (Access::AnyOf(needed), Some(roles)) if needed.iter().any(|r| roles.contains(*r)) => Ok(Caller {
                identity: id,
                roles,
                person,
            }),
            (Access::AnyOf(needed), Some(_)) => {
                let needed = needed.iter().map(|r| r.as_str()).collect::<Vec<_>>().join(" or ");
                deny(
                    "ROLE_REQUIRED",
                    format!("{path} needs the role {needed}; identity {id} does not hold it"),
                )
                .map_err(|(i, e)| {
                    (
                        i,
                        e.with_metadata("identity", id.to_string())
                            .with_metadata("required_role", needed),
                    )
                })
            }
        }
    }
}

impl<S> Layer<S> for AuthLayer {
    type Service = Auth<S>;

    fn layer(&self, inner: S) -> Auth<S> {
        Auth {
            inner,
            shared: self.shared.clone(),
        }
    }
}

/// The service the [`AuthLayer`] wraps around the router.
#[derive(Clone)]
pub struct Auth<S> {
    inner: S,
    shared: Arc<Shared>,
}

impl<S> fmt::Debug for Auth<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Auth").finish_non_exhaustive()
    }
}

type BoxFuture<T, E> = Pin<Box<dyn Future<Output = Result<T, E>> + Send>>;

impl<S, B> Service<http::Request<B>> for Auth<S>
where
    S: Service<http::Request<B>, Response = http::Response<tonic::body::Body>> + Clone + Send + 'static,
    S::Future: Send + 'static,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = S::Error;
    type Future = BoxFuture<Self::Response, Self::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: http::Request<B>) -> Self::Future {
        let path = req.uri().path();
        match self.shared.authorize(req.extensions().get::<PeerInfo>(), path) {
            Ok(caller) => {
                req.extensions_mut().insert(caller);
                Box::pin(self.inner.call(req))
            }
            Err(error) => {
                let response = tonic::Status::from(error).into_http();
                Box::pin(async move { Ok(response) })
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn longest_entry_wins_and_unlisted_paths_are_refused() {
        static OPS: &[Role] = &[Role::Operator];
        static VIEW: &[Role] = &[Role::Viewer, Role::Operator];
        let table = AccessTable::new()
            .allow("/pkg.S/", Access::AnyOf(VIEW))
            .allow("/pkg.S/Halt", Access::AnyOf(OPS));
        assert_eq!(table.lookup("/pkg.S/Get"), Some(Access::AnyOf(VIEW)));
        assert_eq!(table.lookup("/pkg.S/Halt"), Some(Access::AnyOf(OPS)));
        assert_eq!(
            table.lookup("/grpc.health.v1.Health/Check"),
            Some(Access::AnyPeer)
        );
        assert_eq!(table.lookup("/pkg.Other/Get"), None);
        assert_eq!(table.lookup("/pkg.S"), None);
    }
}
