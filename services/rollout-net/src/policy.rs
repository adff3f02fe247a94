//! The role policy: which identities hold which roles, and the person behind each, read from a
//! TOML file and re-read when the file changes ([`PolicyFile`]). A file that does not parse is
//! refused with the reason logged and the policy in force kept.

use std::{
    collections::{BTreeMap, BTreeSet},
    fmt,
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
    time::SystemTime,
};

use arc_swap::ArcSwap;
use serde::Deserialize;
use tracing::{info, warn};

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

    /// An identity's roles as a set and the person behind it, or `None` if the policy does not
    /// list it.
    pub fn grant(&self, identity: &str) -> Option<(RoleSet, Option<Arc<str>>)> {
        let g = self.identities.get(identity)?;
        Some((g.roles.iter().collect(), g.person.clone()))
    }
}

/// A role policy file and the policy read from it, re-read when the file changes. The
/// [`AuthLayer`](crate::auth::AuthLayer) reads the policy in force on every call, so a change
/// reaches connections already open at their next call.
pub struct PolicyFile {
    path: PathBuf,
    policy: Arc<ArcSwap<RolePolicy>>,
    stamp: Mutex<Option<(SystemTime, u64)>>,
}

impl fmt::Debug for PolicyFile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PolicyFile")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

fn stamp(path: &Path) -> Option<(SystemTime, u64)> {
    let m = std::fs::metadata(path).ok()?;
    Some((m.modified().ok()?, m.len()))
}

impl PolicyFile {
    /// Reads the file; fails if it cannot be used.
    pub fn load(path: &Path) -> Result<PolicyFile, PolicyError> {
        let stamp = stamp(path);
        let policy = RolePolicy::load(path)?;
        Ok(PolicyFile {
            path: path.to_owned(),
            policy: Arc::new(ArcSwap::from_pointee(policy)),
            stamp: Mutex::new(stamp),
        })
    }

    /// The policy in force, swapped on each reload that takes effect.
    pub fn policy(&self) -> Arc<ArcSwap<RolePolicy>> {
        self.policy.clone()
    }

    /// Re-reads the file if its modification time or size changed. A file that cannot be read
    /// or parsed is refused (logged at WARN with the reason) and the policy in force kept; the
    /// next change is tried again. Returns whether a new policy took effect.
    pub fn reload_if_changed(&self) -> bool {
        let now = stamp(&self.path);
        {
            let mut seen = self.stamp.lock().unwrap_or_else(|e| e.into_inner());
            if *seen == now {
                return false;
            }
            *seen = now;
        }
        match RolePolicy::load(&self.path) {
            Ok(policy) => {
                let identities = policy.identities.len();
                self.policy.store(Arc::new(policy));
                info!(path = %self.path.display(), identities, "role policy reloaded");
                true
            }
            Err(error) => {
                warn!(%error, "role policy reload refused; keeping the policy in force");
                false
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
