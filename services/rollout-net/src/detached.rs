//! Work that finishes whatever its caller does.
//!
//! A handler's future is dropped when its client's deadline passes (tonic enforces
//! `grpc-timeout`) or the client cancels (hyper drops the call when the stream is reset). A
//! write dropped there, between its store transaction and the in-memory swap that serves it,
//! would be on disk (and answered to a retry of its request id) but not served or delivered.
//! [`to_completion`] runs such work on a task of its own that the caller awaits: if the caller
//! goes away, the task still finishes, so the write is done or failed as a whole. The task runs
//! in the caller's span, so its log lines and spans (a commit's, with tracing on) are the call's.

use std::future::Future;

use tracing::Instrument;

use crate::ApiError;

/// Runs `work` on its own task, in the current span, and answers what it answers. The task runs
/// to its end even if the returned future is dropped. A panic in `work` is an internal error (logged, with
/// `context`), never a call left hanging.
pub async fn to_completion<T, W>(context: &'static str, work: W) -> Result<T, ApiError>
where
    T: Send + 'static,
    W: Future<Output = Result<T, ApiError>> + Send + 'static,
{
    match tokio::spawn(work.in_current_span()).await {
        Ok(result) => result,
        // A panic, or the runtime shutting down under the task.
        Err(e) => Err(ApiError::internal(context, e)),
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use tokio::sync::{Notify, oneshot};
    use tonic::{Code, Status};

    use super::*;

    #[tokio::test]
    async fn work_finishes_after_its_caller_is_dropped() {
        let started = std::sync::Arc::new(Notify::new());
        let (release, released) = oneshot::channel::<()>();
        let (done, finished) = oneshot::channel();
        let go = started.clone();
        let call = to_completion("testing", async move {
            go.notify_one();
            let _ = released.await;
            let _ = done.send("finished");
            Ok(())
        });
        // The caller goes away while the work is in the middle.
        let caller = tokio::spawn(call);
        started.notified().await;
        caller.abort();
        assert!(caller.await.expect_err("aborted").is_cancelled());
        release.send(()).expect("the work is still running");
        let finished = tokio::time::timeout(Duration::from_secs(5), finished).await;
        assert_eq!(finished.expect("in time").expect("sent"), "finished");
    }

    #[tokio::test]
    async fn errors_come_back_as_they_are_and_a_panic_is_internal() {
        let refused = to_completion::<(), _>("testing", async {
            Err(ApiError::failed_precondition("NOT_NOW", "not now"))
        })
        .await
        .expect_err("refused");
        assert_eq!(refused, ApiError::failed_precondition("NOT_NOW", "not now"));
        let panicked = to_completion::<(), _>("testing", async { panic!("a bug") })
            .await
            .expect_err("panicked");
        assert_eq!(Status::from(panicked).code(), Code::Internal);
    }
}
