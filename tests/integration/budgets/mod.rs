//! Budgets (docs/RELIABILITY.md, "Budgets"): what one peer may hold of a server. A viewer's
//! 2,000 WatchCommand streams while alice halts (`watch_flood.rs`); VerifyCommand in flight
//! per identity (`verify.rs`); at a supplier, connections, streams per connection and
//! WatchPracticeFeatures per identity, and the acceptor's handshake turns (`connections.rs`).

mod connections;
mod verify;
mod watch_flood;

use std::time::Duration;

use tonic::Status;
use tonic_types::StatusExt;

use crate::support::{
    Running,
    supplier::{SupplierFiles, supplier_files},
};

/// An ErrorInfo metadata value of a status ("" if absent).
pub fn metadata(status: &Status, key: &str) -> String {
    status
        .get_error_details()
        .error_info()
        .and_then(|i| i.metadata.get(key).cloned())
        .unwrap_or_default()
}

/// The median and slowest of `times`, for the figures a test prints.
pub fn summary(times: &mut [Duration]) -> String {
    times.sort();
    match (times.get(times.len() / 2), times.last()) {
        (Some(median), Some(slowest)) => format!("median {median:?}, slowest {slowest:?}"),
        _ => "none".into(),
    }
}

/// The emis supplier, in a fresh directory with a fresh PKI, within `budgets`.
pub async fn emis_within(
    budgets: rollout_supplier::Budgets,
) -> (tempfile::TempDir, SupplierFiles, Running<rollout_supplier::Error>) {
    rollout_net::tls::install_crypto_provider();
    let tmp = tempfile::tempdir().expect("tempdir");
    let pki = tmp.path().join("pki");
    rolloutctl::pki::init(&pki, false).expect("pki");
    let files = supplier_files(tmp.path(), &pki, "emis");
    let config = rollout_supplier::Config {
        budgets,
        ..files.config(None)
    };
    let running = Running::start(|listener, health, stop| async move {
        rollout_supplier::serve(
            config,
            rollout_net::server::Listeners::new(listener, Some(health)),
            async {
                let _ = stop.await;
            },
        )
        .await
    })
    .await;
    (tmp, files, running)
}
