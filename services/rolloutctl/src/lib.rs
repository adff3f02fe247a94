//! `rolloutctl`, the GP Rollout Control operator CLI, as a library so that tests drive the same
//! code the binary runs.
//!
//! - [`ops`]: the operator commands against the coordinator (features, halt, resume, go-live,
//!   approve, cancel, commands, watch, status, verify, practice, audit).
//! - [`pki`]: the development PKI.

pub mod ops;
pub mod pki;
