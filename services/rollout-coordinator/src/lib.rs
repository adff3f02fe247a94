//! The coordinator service (`rollout-coordinator`), run by NHS England: halt, resume and go-live
//! commands with approvals, a global sequence, one delivery task per supplier over mutual TLS,
//! sync status, verification and audit.
//!
//! Not built yet: this crate holds no service code until the coordinator issue, and ships no
//! binary until it does. The contract it will serve is `CoordinatorService` in `rollout-proto`.
