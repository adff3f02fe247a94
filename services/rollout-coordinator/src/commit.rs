//! How a change is made: committed to the store (with its audit event and idempotency record),
//! then applied to the model and announced, under the model's lock from the moment the change
//! was computed to the announcement. The commit and the application run on a task of their own
//! ([`rollout_net::detached`]) that owns the lock: a caller that goes away while the change
//! commits (its deadline passed, it cancelled) cannot leave a command stored but missing from
//! the model, and so never sent to the suppliers; the change is made, or fails as a whole,
//! whatever the caller does.

use std::sync::Arc;

use rollout_core::audit::AuditDraft;
use rollout_net::ApiError;
use rollout_store::{RequestRecord, StoreError, coordinator::CoordinatorStore};
use tokio::sync::{OwnedMutexGuard, watch};
use tracing::Instrument;

use crate::{
    change::Change,
    coordinator::{Core, store_error},
    model::Model,
};

/// What a commit needs once its caller may be gone: the store and the signals a change sends
/// (cheap clones of the core's).
#[derive(Clone)]
pub(crate) struct Writer {
    store: Arc<dyn CoordinatorStore>,
    target: watch::Sender<u64>,
    changes: watch::Sender<u64>,
}

impl Core {
    /// The store and the signals, for a commit's task.
    pub(crate) fn writer(&self) -> Writer {
        Writer {
            store: Arc::clone(self.store()),
            target: self.target.clone(),
            changes: self.changes.clone(),
        }
    }

    /// Commits `change` with its idempotency record and audit event, then applies it to the
    /// model `m` (whose lock the caller computed it under, and which is given up only when the
    /// change is applied or has failed), wakes the delivery tasks if it dispatched a command,
    /// and tells the watchers. A failed commit changes nothing in the model; a conflict with
    /// another replica reloads it and answers ABORTED. Runs to its end on its own task even if
    /// the caller goes away; a panic in it answers INTERNAL. Within a traced call the store write
    /// is its `commit` span.
    pub(crate) async fn commit(
        &self,
        mut m: OwnedMutexGuard<Model>,
        change: Change,
        request: Option<RequestRecord>,
        audit: Option<AuditDraft>,
    ) -> Result<(), ApiError> {
        // API writes (audited) must not race another replica's; delivery records commute.
        let guarded = audit.is_some();
        let retired = m.retirements(&change);
        let mut write = change.write(&retired, request, audit);
        write.expected_version = guarded.then_some(m.store_version());
        let writer = self.writer();
        let commands = change.commands.len();
        rollout_net::detached::to_completion("committing a change", async move {
            // Within a traced call, the store write is a span of the call's trace.
            let span = if rollout_net::trace::active() {
                tracing::info_span!(target: rollout_net::trace::TARGET, "commit", gprollout.commands = commands)
            } else {
                tracing::Span::none()
            };
            if let Err(e) = writer.store.write(write).instrument(span).await {
                return Err(writer.failed(&mut m, e).await);
            }
            let before = m.last_sequence();
            m.committed(change, guarded);
            let after = m.last_sequence();
            if after > before {
                writer.target.send_replace(after);
            }
            writer.changes.send_modify(|n| *n += 1);
            Ok(())
        })
        .await
    }
}

impl Writer {
    /// The answer to a failed commit: on a conflict (another replica wrote first) the model is
    /// reloaded and the caller asked to retry; otherwise an internal error.
    async fn failed(&self, m: &mut Model, error: StoreError) -> ApiError {
        match error {
            StoreError::Conflict(message) => {
                if let Err(reload) = self.reload(m).await {
                    tracing::error!(error = %reload, "could not reload after a conflict");
                }
                ApiError::new(
                    tonic::Code::Aborted,
                    "CONCURRENT_CHANGE",
                    format!(
                        "another coordinator replica changed the state first ({message}); retry the call"
                    ),
                )
            }
            other => ApiError::internal("committing a change", other),
        }
    }

    /// Replaces the model with what the store holds, keeping the contact times this replica
    /// knows better (it may be the one talking to the suppliers).
    pub(crate) async fn reload(&self, m: &mut Model) -> Result<(), ApiError> {
        let stored = self
            .store
            .load()
            .await
            .map_err(store_error("reloading the state"))?;
        let mut fresh =
            Model::from_store(stored).map_err(|e| ApiError::internal("reloading the state", e))?;
        // What this replica knows better first, so that the rejections are judged against it.
        fresh.keep_contact(m);
        crate::rejections::file_all(self.store.as_ref(), &mut fresh)
            .await
            .map_err(|e| ApiError::internal("reloading the state", e))?;
        *m = fresh;
        self.target.send_replace(m.last_sequence());
        self.changes.send_modify(|n| *n += 1);
        Ok(())
    }
}
