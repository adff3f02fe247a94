//! What the GP Rollout Control servers and clients share on the network side: mutual-TLS
//! configuration with hot reload and the peer identity ([`tls`]), the accepting side within
//! the port's budgets ([`accept`]), the budgets of connections, streams and identities
//! ([`budget`]), the role policy re-read on change ([`policy`]) and the layer that enforces it
//! ([`auth`]), the writer of
//! refused calls to the audit log ([`audit_queue`]) and the limiter that summarises a flood of
//! them ([`refusals`]), the one mapping from errors to `tonic::Status` ([`error`]), the message
//! limits and the page byte budget ([`limits`]), health, reflection, HTTP/2 settings and the
//! shutdown signal ([`server`]), what happens between that signal and the exit ([`drain`]),
//! work that finishes whatever its caller does ([`detached`]), the Prometheus metrics both
//! services share and their endpoint ([`metrics`]), logging and trace export set-up
//! ([`telemetry`]), and the spans that are exported with the trace context carried between the
//! services ([`trace`]).

pub mod accept;
pub mod audit_queue;
pub mod auth;
pub mod budget;
pub mod cli;
pub mod detached;
pub mod drain;
pub mod error;
pub mod https;
pub mod limits;
pub mod metrics;
pub mod policy;
pub mod refusals;
pub mod server;
pub mod telemetry;
pub mod tls;
pub mod trace;
pub mod wire;

pub use accept::{Admission, AdmissionCounts};
pub use audit_queue::{AuditFlushed, AuditQueue, Refusals, audit_refusals, audit_refusals_with};
pub use auth::{Access, AccessTable, AuthLayer, Caller, Denial, DenialObserver};
pub use budget::{ConnectionBudget, IdentityBudget, IdentitySlot};
pub use drain::{Drain, Drained, ends_itself};
pub use error::{ApiError, ERROR_DOMAIN, audited};
pub use limits::{MAX_MESSAGE_BYTES, MessageLimits, PAGE_BUDGET_BYTES, Page};
pub use policy::{PolicyFile, Role, RolePolicy, RoleSet};
pub use tls::{Identity, PeerInfo, ReloadingServerConfig, TlsError, TlsFiles};
