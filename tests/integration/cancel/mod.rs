//! Writes cut off at many moments, as a client's deadline or cancel cuts them off:
//! SetPracticeOptOut at a supplier and HaltFeature at the coordinator, each at 500 moments from
//! 50 µs to 25 ms in steps of 50 µs. Every even moment is a deadline the request carries
//! (grpc-timeout: the server drops the call then); every odd one, a call the client drops
//! after waiting that long. Each write has a request id of its own and is retried with it at
//! once. After each, what the service stores is exactly what it serves (and, at the
//! coordinator, what it reports and delivers), and the retry answers the committed outcome
//! without making a second one. One file per service.

mod coordinator;
mod supplier;

use std::{
    future::Future,
    time::{Duration, Instant, SystemTime},
};

use tonic::{Code, Request, Response, Status};

/// Moments each write is cut off at.
pub const MOMENTS: u32 = 500;

/// Moment `i`: 50 µs, 100 µs, ... 25 ms.
pub fn moment(i: u32) -> Duration {
    Duration::from_micros(50 * u64::from(i + 1))
}

/// A request id (UUID version 4) of its own for moment `i` of a test numbered `test`.
pub fn request_id(test: u32, i: u32) -> String {
    format!("{test:08x}-0000-4000-8000-{i:012x}")
}

/// `message` as a request, with `deadline` if given.
pub fn request<T>(message: T, deadline: Option<Duration>) -> Request<T> {
    let mut request = Request::new(message);
    if let Some(d) = deadline {
        request.set_timeout(d);
    }
    request
}

/// How a call cut off ended: answered before its moment, or cut off.
pub enum Ended<T> {
    Answered(T),
    Cut,
}

/// Makes the call `call` and cuts it off at moment `i`: an even moment by the deadline given
/// to `call`, an odd one by dropping the call after waiting (asleep for the whole
/// milliseconds, then yielding until the moment, so that moments under a millisecond stay
/// apart). Any refusal but the deadline's fails the test.
pub async fn cut_off<T, F>(i: u32, call: impl FnOnce(Option<Duration>) -> F) -> Ended<T>
where
    F: Future<Output = Result<Response<T>, Status>>,
{
    let at = moment(i);
    let ended = if i % 2 == 0 {
        call(Some(at)).await.map(Some)
    } else {
        let start = Instant::now();
        let call = call(None);
        let wait = async {
            tokio::time::sleep(Duration::from_millis(at.as_millis() as u64)).await;
            while start.elapsed() < at {
                tokio::task::yield_now().await;
            }
        };
        tokio::select! {
            biased;
            answer = call => answer.map(Some),
            () = wait => Ok(None),
        }
    };
    match ended {
        Ok(Some(answer)) => Ended::Answered(answer.into_inner()),
        Ok(None) => Ended::Cut,
        Err(s) if matches!(s.code(), Code::DeadlineExceeded | Code::Cancelled) => Ended::Cut,
        Err(s) => panic!("moment {i} ({at:?}): the call was refused, not cut off: {s:?}"),
    }
}

/// Where the cut-off moments landed.
#[derive(Debug, Default)]
pub struct Figures {
    /// Answered before the moment came.
    pub answered: u32,
    /// Cut off once its commit had begun: the write was made all the same (its record is older
    /// than the retry).
    pub cut_after_commit: u32,
    /// Cut off before its commit began: nothing was written, and the retry made the write.
    pub cut_before_commit: u32,
}

impl Figures {
    /// Counts how a call ended; `first_made_it` says whether the write is the first call's.
    pub fn count<T>(&mut self, first: &Ended<T>, first_made_it: bool) {
        match (first, first_made_it) {
            (Ended::Answered(_), _) => self.answered += 1,
            (Ended::Cut, true) => self.cut_after_commit += 1,
            (Ended::Cut, false) => self.cut_before_commit += 1,
        }
    }

    /// Prints the figures (shown with `--nocapture`, and kept in docs/RELIABILITY.md).
    pub fn report(&self, what: &str, took: Duration) {
        println!(
            "{what}: {MOMENTS} moments ({:?} .. {:?}) in {took:.1?}: {} answered before the moment, {} cut off after the commit began (the write made all the same), {} cut off before it (the retry made the write)",
            moment(0),
            moment(MOMENTS - 1),
            self.answered,
            self.cut_after_commit,
            self.cut_before_commit
        );
    }
}

/// Whether `time` (a protobuf timestamp the server set) is before `sent`.
pub fn before(time: Option<prost_types::Timestamp>, sent: SystemTime) -> bool {
    time.and_then(|t| SystemTime::try_from(t).ok())
        .is_some_and(|t| t < sent)
}
