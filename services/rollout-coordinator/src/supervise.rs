//! Supervision of the delivery tasks. A task that panics (a bug, perhaps one a supplier's
//! answer found) would otherwise leave its supplier without delivery until the coordinator
//! restarts, while every other supplier goes on: it is started again, after a backoff that
//! grows while it keeps panicking, and the panic is logged at ERROR and shown as the
//! supplier's last error.

use std::{
    future::Future,
    time::{Duration, Instant},
};

use rollout_core::SupplierId;
use tokio::sync::watch;
use tracing::{error, info};

use crate::{coordinator::Core, delivery::Backoff};

/// A task that ran this long before panicking had recovered: its backoff starts again.
const HEALTHY: Duration = Duration::from_secs(60);

/// Runs the task `start` makes until it ends of itself (told to stop), starting it again after
/// each panic, with backoff, until `stop` turns true. Returns how many times it panicked.
pub(crate) async fn supervised<F, T>(
    core: &Core,
    supplier: &SupplierId,
    mut stop: watch::Receiver<bool>,
    mut start: F,
) -> u32
where
    F: FnMut() -> T,
    T: Future<Output = ()> + Send + 'static,
{
    let mut backoff = Backoff::new();
    let mut panics = 0;
    loop {
        let began = Instant::now();
        let panic = match tokio::spawn(start()).await {
            Ok(()) => return panics,
            Err(e) if e.is_panic() => message(e.into_panic()),
            Err(_) => return panics,
        };
        panics += 1;
        if began.elapsed() >= HEALTHY {
            backoff.reset();
        }
        let delay = backoff.next();
        error!(supplier = %supplier, panic, restart_in = ?delay, panics, "the delivery task panicked; starting it again");
        core.record_error(
            supplier,
            &format!("delivery task panicked ({panic}); started again"),
        )
        .await;
        tokio::select! {
            _ = tokio::time::sleep(delay) => info!(supplier = %supplier, "delivery task started again"),
            _ = stop.wait_for(|s| *s) => return panics,
        }
    }
}

/// What a panic said.
fn message(payload: Box<dyn std::any::Any + Send>) -> String {
    payload
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a panic without a message".to_owned())
}

#[cfg(test)]
mod tests {
    use std::sync::{
        Arc,
        atomic::{AtomicU32, Ordering},
    };

    use super::*;

    #[tokio::test]
    async fn a_panicking_task_is_started_again_until_it_ends() {
        let (_dir, core) = crate::tests::empty_core().await;
        let supplier = SupplierId::parse("emis").expect("supplier");
        let (_stop, stopped) = watch::channel(false);
        let starts = Arc::new(AtomicU32::new(0));
        let counted = starts.clone();
        let panics = supervised(&core, &supplier, stopped, move || {
            let n = counted.fetch_add(1, Ordering::SeqCst);
            async move {
                assert!(n >= 3, "a bug in delivery, start {n}");
            }
        })
        .await;
        assert_eq!((panics, starts.load(Ordering::SeqCst)), (3, 4));
        let error = core
            .read(|m| m.supplier(&supplier).map(|s| s.pb.last_error.clone()))
            .await
            .unwrap_or_default();
        assert!(
            error.contains("delivery task panicked (a bug in delivery, start 2)"),
            "{error}"
        );
    }

    #[tokio::test]
    async fn a_task_that_keeps_panicking_is_not_started_again_once_told_to_stop() {
        let (_dir, core) = crate::tests::empty_core().await;
        let supplier = SupplierId::parse("emis").expect("supplier");
        let (_stop, stopped) = watch::channel(true);
        let panics = supervised(&core, &supplier, stopped, || async { panic!("always") }).await;
        assert_eq!(panics, 1);
    }
}
