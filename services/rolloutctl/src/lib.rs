//! `rolloutctl`, the GP Rollout Control operator CLI, as a library so that tests drive the same
//! code the binary runs.
//!
//! - [`ops`]: the operator commands against the coordinator (features, halt, resume, go-live,
//!   approve, cancel, commands, watch, status, verify, practice, audit).
//! - [`dev`]: `rolloutctl dev up`, the local stack.
//! - [`pki`]: the development PKI.

pub mod dev;
pub mod ops;
pub mod pki;
