//! The one integration-test binary: real servers on 127.0.0.1 port 0, real mutual TLS with
//! certificates made at test time, real processes where the test is about processes.

mod audit;
mod budgets;
mod cancel;
mod cli;
mod compaction;
mod conflicts;
mod coordinator;
mod deploy;
mod devstack;
mod divergence;
mod faults;
mod four_eyes;
mod history;
mod hostile;
mod limits;
mod mtls;
mod not_delivered;
mod outcomes;
mod preview;
mod proxy;
mod register;
mod replicas;
mod request_ids;
mod resync;
mod scopes;
mod security;
mod shutdown;
mod stack;
mod store;
mod stuck_behind;
mod supplier;
mod support;
mod trust;
mod unanswered;
mod unapplied;
