//! Notifications of writes made through other replicas of a supplier store (PostgreSQL).

use crate::{Backend, StoreError};

/// The PostgreSQL channel on which a supplier store announces each new version.
pub const CHANGE_CHANNEL: &str = "gprollout_supplier";

/// Notifications of changes made through any replica (PostgreSQL only).
#[derive(Debug)]
pub struct ChangeFeed(sqlx::postgres::PgListener);

impl ChangeFeed {
    /// Listens on `channel` on PostgreSQL; `None` on SQLite.
    pub(crate) async fn listen(
        backend: Backend,
        url: &str,
        channel: &str,
    ) -> Result<Option<ChangeFeed>, StoreError> {
        if backend != Backend::Postgres {
            return Ok(None);
        }
        let mut listener = sqlx::postgres::PgListener::connect(url).await?;
        listener.listen(channel).await?;
        Ok(Some(ChangeFeed(listener)))
    }

    /// Waits for the next change notification.
    pub async fn next(&mut self) -> Result<(), StoreError> {
        self.0.recv().await?;
        Ok(())
    }

    /// Runs `follow` after every notification, and every 2 s in case one was missed, until
    /// `stop` turns true (or its sender is gone). Spawn it.
    pub async fn follow<F, Fut>(mut self, mut stop: tokio::sync::watch::Receiver<bool>, follow: F)
    where
        F: Fn() -> Fut,
        Fut: std::future::Future<Output = ()>,
    {
        loop {
            tokio::select! {
                received = self.next() => if let Err(error) = received {
                    tracing::warn!(%error, "change notifications interrupted; polling until they resume");
                    tokio::time::sleep(std::time::Duration::from_secs(1)).await;
                },
                _ = tokio::time::sleep(std::time::Duration::from_secs(2)) => {}
                _ = async { stop.wait_for(|s| *s).await.map(|_| ()) } => return,
            }
            follow().await;
        }
    }
}
