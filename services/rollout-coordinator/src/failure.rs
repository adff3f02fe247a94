//! Why a delivery pass failed: the words the delivery task logs and the supplier view shows,
//! and the bounded cause `gprollout_coordinator_delivery_failures_total` counts it under.

use std::fmt;

use tonic::Code;

/// What kind of failure ended a delivery pass at a supplier (the `cause` label).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum Cause {
    /// The supplier could not be reached: refused or reset connection, failed handshake, a
    /// server shutting down (gRPC UNAVAILABLE).
    Unreachable,
    /// A call to the supplier ran out of its deadline (DEADLINE_EXCEEDED).
    Timeout,
    /// The supplier was not at the sequence the coordinator thought (FAILED_PRECONDITION); it
    /// is asked its state again at once.
    OutOfStep,
    /// The supplier refused the coordinator's identity (UNAUTHENTICATED, PERMISSION_DENIED):
    /// certificates or role policy.
    Refused,
    /// A call failed with any other gRPC code (the code is in the log and the supplier view).
    Error,
    /// The supplier answered something that cannot be true (it shows FAULTY).
    SupplierFault,
    /// The coordinator could not read or record its own state (its store).
    CoordinatorStore,
    /// The supplier lost its store and its own opt-outs, owed back from the national register,
    /// could not be restored: nothing else is sent until they are.
    Register,
}

impl Cause {
    /// The `cause` label value.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Cause::Unreachable => "unreachable",
            Cause::Timeout => "timeout",
            Cause::OutOfStep => "out_of_step",
            Cause::Refused => "refused",
            Cause::Error => "error",
            Cause::SupplierFault => "supplier_fault",
            Cause::CoordinatorStore => "coordinator_store",
            Cause::Register => "register",
        }
    }

    /// The cause of a failed call with this code.
    fn of_code(code: Code) -> Cause {
        match code {
            Code::Unavailable => Cause::Unreachable,
            Code::DeadlineExceeded => Cause::Timeout,
            Code::FailedPrecondition => Cause::OutOfStep,
            Code::Unauthenticated | Code::PermissionDenied => Cause::Refused,
            _ => Cause::Error,
        }
    }
}

/// A failed delivery pass: its cause and what happened, in words.
#[derive(Debug, Clone)]
pub(crate) struct Failure {
    /// The kind of failure.
    pub(crate) cause: Cause,
    message: String,
}

impl Failure {
    /// A failure of `cause`, in `message`'s words.
    pub(crate) fn new(cause: Cause, message: impl Into<String>) -> Failure {
        Failure {
            cause,
            message: message.into(),
        }
    }

    /// A call to the supplier that failed with `status`, described with its chain of causes
    /// (a refused handshake says why, not just "transport error").
    pub(crate) fn call(status: &tonic::Status) -> Failure {
        Failure::new(Cause::of_code(status.code()), describe(status))
    }

    /// The coordinator's own store failed.
    pub(crate) fn store(error: impl fmt::Display) -> Failure {
        Failure::new(Cause::CoordinatorStore, error.to_string())
    }

    /// The same failure, its words prefixed with `context`.
    pub(crate) fn context(self, context: &str) -> Failure {
        Failure::new(self.cause, format!("{context}: {}", self.message))
    }
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

/// The status with its chain of causes.
pub(crate) fn describe(status: &tonic::Status) -> String {
    let mut text = format!("{:?}: {}", status.code(), status.message());
    let mut source = std::error::Error::source(status);
    while let Some(e) = source {
        text.push_str(": ");
        text.push_str(&e.to_string());
        source = e.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_call_is_counted_by_what_its_code_means_for_delivery() {
        let cause = |code| Failure::call(&tonic::Status::new(code, "x")).cause;
        assert_eq!(cause(Code::Unavailable), Cause::Unreachable);
        assert_eq!(cause(Code::DeadlineExceeded), Cause::Timeout);
        assert_eq!(cause(Code::FailedPrecondition), Cause::OutOfStep);
        assert_eq!(cause(Code::PermissionDenied), Cause::Refused);
        assert_eq!(cause(Code::Internal), Cause::Error);
        let f = Failure::call(&tonic::Status::unavailable("connection refused")).context("ApplyCommand");
        assert_eq!(f.to_string(), "ApplyCommand: Unavailable: connection refused");
        assert_eq!(f.cause, Cause::Unreachable);
    }
}
