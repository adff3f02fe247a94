//! Delivery leadership: the replica that holds the store's leadership lock (always the one
//! process on SQLite) runs one delivery task per supplier; the others serve the API only.

use std::{collections::BTreeMap, sync::Arc, time::Duration};

use rollout_core::SupplierId;
use rollout_store::coordinator::SqlCoordinatorStore;
use tokio::sync::watch;
use tracing::{error, info, warn};

use crate::{delivery, supervise};

/// Holds delivery leadership when it can, running one delivery task per supplier while it
/// does; gives it up (stopping delivery) if its lock connection is lost, and tries again.
pub(crate) async fn lead(
    store: SqlCoordinatorStore,
    core: Arc<crate::coordinator::Core>,
    channels: BTreeMap<SupplierId, tonic::transport::Channel>,
    heartbeat: Duration,
    mut stop: watch::Receiver<bool>,
) {
    // Stopped: told to, or the server is gone.
    let stopping = |stop: &watch::Receiver<bool>| *stop.borrow() || stop.has_changed().is_err();
    while !stopping(&stop) {
        let mut leadership = match store.try_lead().await {
            Ok(Some(l)) => l,
            Ok(None) => {
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                    _ = async { stop.wait_for(|s| *s).await.map(|_| ()) } => {}
                }
                continue;
            }
            Err(error) => {
                warn!(%error, "cannot try for delivery leadership");
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                    _ = async { stop.wait_for(|s| *s).await.map(|_| ()) } => {}
                }
                continue;
            }
        };
        // Deliver from what the store holds now, not from what this replica last saw.
        core.follow_store().await;
        info!("delivery leader: delivering to every supplier");
        core.leading.store(true, std::sync::atomic::Ordering::Relaxed);
        let (deliver_tx, deliver_rx) = watch::channel(false);
        // One task per supplier, each started again if it panics.
        let tasks: Vec<_> = channels
            .iter()
            .map(|(id, channel)| {
                let (core, id, channel, stop) =
                    (core.clone(), id.clone(), channel.clone(), deliver_rx.clone());
                tokio::spawn(async move {
                    let start =
                        || delivery::run(core.clone(), id.clone(), channel.clone(), heartbeat, stop.clone());
                    supervise::supervised(&core, &id, stop.clone(), start).await
                })
            })
            .collect();
        loop {
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_secs(2)) => {
                    if let Err(error) = leadership.check().await {
                        error!(%error, "delivery leadership lost; stopping delivery");
                        break;
                    }
                }
                _ = async { stop.wait_for(|s| *s).await.map(|_| ()) } => break,
            }
        }
        core.leading.store(false, std::sync::atomic::Ordering::Relaxed);
        let _ = deliver_tx.send(true);
        for task in tasks {
            if let Err(e) = task.await {
                warn!(error = %e, "delivery supervisor failed");
            }
        }
        drop(leadership);
    }
}
