//! `rolloutctl`, the GP Rollout Control operator CLI, as a library so that tests drive the same
//! code the binary runs.
//!
//! Today it holds the development PKI ([`pki`]); the operator commands (halt, resume, approve,
//! status, verify, audit) and the local stack arrive with the coordinator.

pub mod pki;
