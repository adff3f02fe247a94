//! Identity and roles: a policy mapping identities to roles, a table of which roles may call
//! which method, and one tower layer that enforces both on every call.
//!
//! **Architecture invariant:** authorisation happens here, once, before any handler runs. A
//! handler that needs the caller's identity reads the [`Caller`] this layer puts in the
//! request's extensions; it never looks at certificates itself.

use std::{
    collections::{BTreeMap, BTreeSet},
    fmt,
    future::Future,
    path::Path,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
};

use arc_swap::ArcSwap;
use serde::Deserialize;
use tower::{Layer, Service};
use tracing::warn;

use crate::{
    error::ApiError,
    tls::{Identity, PeerInfo},
};

/// A role a caller may hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Role {
    /// A supplier backend reading toggle state.
    Backend,
    /// A supplier's practice administrator recording opt-outs.
    PracticeAdmin,
    /// The coordinator, at a supplier.
    Coordinator,
    /// An NHS England operator issuing commands.
    Operator,
    /// An NHS England approver of resumes and go-lives.
    Approver,
    /// A reader of the audit log.
    Auditor,
    /// A read-only viewer.
    Viewer,
}

impl Role {
    /// The role's name as the policy file spells it.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Backend => "backend",
            Role::PracticeAdmin => "practice-admin",
            Role::Coordinator => "coordinator",
            Role::Operator => "operator",
            Role::Approver => "approver",
            Role::Auditor => "auditor",
            Role::Viewer => "viewer",
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A set of roles (a bit per role: copied, never allocated, on every call).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RoleSet(u8);

impl RoleSet {
    /// Whether the set holds `role`.
    pub fn contains(self, role: Role) -> bool {
        self.0 & (1 << role as u8) != 0
    }
}

impl<'a> FromIterator<&'a Role> for RoleSet {
    fn from_iter<I: IntoIterator<Item = &'a Role>>(roles: I) -> Self {
        RoleSet(roles.into_iter().fold(0, |bits, r| bits | 1 << *r as u8))
    }
}

/// Which identities hold which roles, and which person is behind an identity. Loaded from a
/// TOML file; an identity maps to its roles, or to a table of its roles and the person behind
/// it (for example an NHS Care Identity user ID), so that two certificates of one person count
/// as one person (four eyes are two people):
///
/// ```toml
/// [identities]
/// "spiffe://gprollout.test/operator/alice" = { roles = ["operator", "approver"], person = "5551234" }
/// "spiffe://gprollout.test/operator/alice-smartcard" = { roles = ["approver"], person = "5551234" }
/// "spiffe://gprollout.test/viewer" = ["viewer"]
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RolePolicy {
    identities: BTreeMap<String, Grant>,
}

/// The most characters a person's name in a policy may take.
pub const MAX_PERSON_CHARS: usize = 64;

/// What the policy gives one identity.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Grant {
    roles: BTreeSet<Role>,
    person: Option<Arc<str>>,
}

/// The table form of a [`Grant`].
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct GrantTable {
    roles: BTreeSet<Role>,
    person: Option<String>,
}

impl<'de> Deserialize<'de> for Grant {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visit;
        impl<'de> serde::de::Visitor<'de> for Visit {
            type Value = Grant;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a list of roles, or a table with `roles` and `person`")
            }

            fn visit_seq<A: serde::de::SeqAccess<'de>>(self, seq: A) -> Result<Grant, A::Error> {
                let roles = BTreeSet::deserialize(serde::de::value::SeqAccessDeserializer::new(seq))?;
                Ok(Grant { roles, person: None })
            }

            fn visit_map<A: serde::de::MapAccess<'de>>(self, map: A) -> Result<Grant, A::Error> {
                let t = GrantTable::deserialize(serde::de::value::MapAccessDeserializer::new(map))?;
                let person = t
                    .person
                    .map(|p| person(&p).map_err(serde::de::Error::custom))
                    .transpose()?;
                Ok(Grant {
                    roles: t.roles,
                    person,
                })
            }
        }
        d.deserialize_any(Visit)
    }
}

/// A person as a policy names them: 1 to [`MAX_PERSON_CHARS`] characters after trimming, no
/// control character.
fn person(p: &str) -> Result<Arc<str>, String> {
    let p = p.trim();
    if p.is_empty() || p.chars().count() > MAX_PERSON_CHARS || p.chars().any(char::is_control) {
        return Err(format!(
            "person {p:?} must be 1 to {MAX_PERSON_CHARS} characters with no control character"
        ));
    }
    Ok(p.into())
}

/// A role policy file that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    /// The file could not be read.
    #[error("cannot read role policy {path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// The file is not a valid policy.
    #[error("role policy {path} is not valid: {message}")]
    Parse {
        /// The file.
        path: String,
        /// What is wrong, with its position.
        message: String,
    },
}

impl RolePolicy {
    /// Parses a policy; `origin` names it in errors.
    pub fn from_toml(text: &str, origin: &str) -> Result<Self, PolicyError> {
        toml::from_str(text).map_err(|e| PolicyError::Parse {
            path: origin.to_owned(),
            message: e.to_string(),
        })
    }

    /// Reads and parses a policy file.
    pub fn load(path: &Path) -> Result<Self, PolicyError> {
        let text = std::fs::read_to_string(path).map_err(|source| PolicyError::Read {
            path: path.display().to_string(),
            source,
        })?;
        Self::from_toml(&text, &path.display().to_string())
    }

    /// A policy from (identity, roles) pairs.
    pub fn from_pairs<'a>(pairs: impl IntoIterator<Item = (&'a str, &'a [Role])>) -> Self {
        RolePolicy {
            identities: pairs
                .into_iter()
                .map(|(id, roles)| {
                    let grant = Grant {
                        roles: roles.iter().copied().collect(),
                        person: None,
                    };
                    (id.to_owned(), grant)
                })
                .collect(),
        }
    }

    /// The roles an identity holds, or `None` if the policy does not list it.
    pub fn roles(&self, identity: &str) -> Option<&BTreeSet<Role>> {
        self.identities.get(identity).map(|g| &g.roles)
    }

    /// The person behind an identity, if the policy names one.
    pub fn person(&self, identity: &str) -> Option<&str> {
        self.identities.get(identity)?.person.as_deref()
    }
}

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
            }),
        }
    }
}

impl Shared {
    fn check(&self, peer: Option<&PeerInfo>, path: &str) -> Result<Caller, (Option<Identity>, ApiError)> {
        let identity = peer.and_then(|p| p.identity.clone());
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
        let grant = policy.identities.get(id.as_str());
        let roles = grant.map(|g| g.roles.iter().collect::<RoleSet>());
        let person = grant.and_then(|g| g.person.clone());
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
        match self.shared.check(req.extensions().get::<PeerInfo>(), path) {
            Ok(caller) => {
                req.extensions_mut().insert(caller);
                Box::pin(self.inner.call(req))
            }
            Err((identity, error)) => {
                let peer = req.extensions().get::<PeerInfo>().map(|p| p.remote_addr);
                if let Some(observer) = &self.shared.observer {
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

    #[test]
    fn role_sets_hold_exactly_their_roles() {
        let all = [
            Role::Backend,
            Role::PracticeAdmin,
            Role::Coordinator,
            Role::Operator,
            Role::Approver,
            Role::Auditor,
            Role::Viewer,
        ];
        for (i, held) in all.iter().enumerate() {
            let set: RoleSet = all[..=i].iter().collect();
            assert!(set.contains(*held));
            assert!(all[i + 1..].iter().all(|r| !set.contains(*r)), "{set:?}");
        }
        assert!(all.iter().all(|r| !RoleSet::default().contains(*r)));
    }

    #[test]
    fn policy_files_parse_and_refuse_unknown_roles() {
        let ok = RolePolicy::from_toml(
            "[identities]\n\"spiffe://x/operator/alice\" = [\"operator\", \"approver\"]\n",
            "policy.toml",
        )
        .expect("valid");
        assert!(
            ok.roles("spiffe://x/operator/alice")
                .is_some_and(|r| r.contains(&Role::Approver))
        );
        let err = RolePolicy::from_toml("[identities]\n\"a\" = [\"admin\"]\n", "policy.toml")
            .expect_err("bad role");
        assert!(err.to_string().contains("policy.toml"), "{err}");
    }

    #[test]
    fn a_policy_may_name_the_person_behind_each_identity() {
        let policy = RolePolicy::from_toml(
            r#"
            [identities]
            "spiffe://x/operator/alice" = { roles = ["operator"], person = " 5551234 " }
            "spiffe://x/operator/alice-card" = { roles = ["approver"], person = "5551234" }
            "spiffe://x/viewer" = ["viewer"]

            [identities."spiffe://x/operator/bob"]
            roles = ["operator", "approver"]
            person = "5559876"
            "#,
            "policy.toml",
        )
        .expect("valid");
        assert_eq!(policy.person("spiffe://x/operator/alice"), Some("5551234"));
        assert_eq!(policy.person("spiffe://x/operator/alice-card"), Some("5551234"));
        assert_eq!(policy.person("spiffe://x/operator/bob"), Some("5559876"));
        assert_eq!(policy.person("spiffe://x/viewer"), None);
        assert!(
            policy
                .roles("spiffe://x/operator/alice-card")
                .is_some_and(|r| r.contains(&Role::Approver) && !r.contains(&Role::Operator))
        );
        for (bad, words) in [
            (r#""a" = { roles = ["operator"], person = "" }"#, "person"),
            (r#""a" = { roles = ["operator"], person = "x\u0007" }"#, "control"),
            (r#""a" = { roles = ["operator"], persona = "p" }"#, "persona"),
            (r#""a" = { person = "p" }"#, "roles"),
            (r#""a" = { roles = ["admin"], person = "p" }"#, "admin"),
            (r#""a" = "operator""#, "a list of roles, or a table"),
        ] {
            let err = RolePolicy::from_toml(&format!("[identities]\n{bad}\n"), "policy.toml").expect_err(bad);
            assert!(err.to_string().contains(words), "{bad}: {err}");
        }
    }
}
