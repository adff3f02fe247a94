//! Storage for GP Rollout Control: one store trait per service, each with an SQLite backend
//! (the embedded default: a file, nothing to install) and a PostgreSQL backend (for more than
//! one replica), migrations, and one conformance suite run against both.
//!
//! **Architecture invariant:** this crate knows nothing of tonic. The serving state lives in
//! memory in each service and is rebuilt from the store at start.
//!
//! Not built yet: the supplier store arrives with the supplier service, the coordinator store
//! with the coordinator, and the PostgreSQL backends after both. Nothing here pretends to store
//! anything until then.
