//! The one mapping from errors to `tonic::Status` (AIP-193): a canonical code, a short message a
//! person can act on, `google.rpc.ErrorInfo` with an UPPER_SNAKE_CASE reason and the dynamic
//! values as metadata, and `BadRequest` field violations for invalid input.
//!
//! **Architecture invariant:** `From<ApiError> for Status` is the only place a `Status` is
//! built. Handlers return `ApiError`; internal errors are logged here with their context and
//! answered generically.

use std::{collections::HashMap, fmt};

use tonic::{Code, Status};
use tonic_types::{ErrorDetails, FieldViolation, StatusExt};

/// The `ErrorInfo.domain` of every error these services return.
pub const ERROR_DOMAIN: &str = "gprollout.nhs.uk";

/// An error to answer a gRPC call with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    code: Code,
    reason: &'static str,
    message: String,
    metadata: Vec<(String, String)>,
    violations: Vec<(String, String)>,
}

impl ApiError {
    /// An error with a code, an ErrorInfo reason (UPPER_SNAKE_CASE) and a message.
    pub fn new(code: Code, reason: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            code,
            reason,
            message: message.into(),
            metadata: Vec::new(),
            violations: Vec::new(),
        }
    }

    /// INVALID_ARGUMENT for one field, with a `BadRequest` violation naming it.
    pub fn invalid_field(field: impl Into<String>, description: impl fmt::Display) -> Self {
        let field = field.into();
        let description = description.to_string();
        ApiError::new(
            Code::InvalidArgument,
            "INVALID_FIELD",
            format!("{field}: {description}"),
        )
        .with_metadata("field", field.clone())
        .with_violation(field, description)
    }

    /// NOT_FOUND for a resource, by its name.
    pub fn not_found(reason: &'static str, name: impl fmt::Display) -> Self {
        ApiError::new(Code::NotFound, reason, format!("{name} does not exist"))
            .with_metadata("name", name.to_string())
    }

    /// PERMISSION_DENIED.
    pub fn permission_denied(reason: &'static str, message: impl Into<String>) -> Self {
        ApiError::new(Code::PermissionDenied, reason, message)
    }

    /// FAILED_PRECONDITION: the request is valid but the system is not in a state to do it.
    pub fn failed_precondition(reason: &'static str, message: impl Into<String>) -> Self {
        ApiError::new(Code::FailedPrecondition, reason, message)
    }

    /// INTERNAL: logs `error` with `context` at ERROR and answers without the details, which
    /// may name files or SQL the caller has no business seeing.
    pub fn internal(context: &str, error: impl fmt::Display) -> Self {
        tracing::error!(%error, context, "internal error");
        ApiError::new(
            Code::Internal,
            "INTERNAL",
            format!("internal error while {context}; see the server log"),
        )
    }

    /// RESOURCE_EXHAUSTED: the request, or its answer, is over a limit; the message says how
    /// to ask for less.
    pub fn resource_exhausted(reason: &'static str, message: impl Into<String>) -> Self {
        ApiError::new(Code::ResourceExhausted, reason, message)
    }

    /// UNAVAILABLE: try again later.
    pub fn unavailable(reason: &'static str, message: impl Into<String>) -> Self {
        ApiError::new(Code::Unavailable, reason, message)
    }

    /// Adds an ErrorInfo metadata entry.
    pub fn with_metadata(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.metadata.push((key.into(), value.into()));
        self
    }

    /// Adds a `BadRequest` field violation.
    pub fn with_violation(mut self, field: impl Into<String>, description: impl Into<String>) -> Self {
        self.violations.push((field.into(), description.into()));
        self
    }

    /// The canonical code.
    pub fn code(&self) -> Code {
        self.code
    }

    /// The message, as a person reads it.
    pub fn message(&self) -> &str {
        &self.message
    }

    /// The ErrorInfo reason.
    pub fn reason(&self) -> &'static str {
        self.reason
    }
}

impl fmt::Display for ApiError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?} {}: {}", self.code, self.reason, self.message)
    }
}

impl std::error::Error for ApiError {}

impl From<ApiError> for Status {
    fn from(e: ApiError) -> Status {
        let mut details = ErrorDetails::with_error_info(
            e.reason,
            ERROR_DOMAIN,
            e.metadata.into_iter().collect::<HashMap<_, _>>(),
        );
        if !e.violations.is_empty() {
            details.set_bad_request(
                e.violations
                    .into_iter()
                    .map(|(field, description)| FieldViolation::new(field, description))
                    .collect::<Vec<_>>(),
            );
        }
        Status::with_error_details(e.code, e.message, details)
    }
}

/// Runs a mutating call and, if it is refused, hands the error's ErrorInfo reason and `draft`
/// (marked refused, with the error as its reason) to `record` before answering. Acceptances are recorded by the write itself, in
/// the same transaction as the change.
pub async fn audited<T, F>(
    draft: rollout_core::audit::AuditDraft,
    call: impl Future<Output = Result<T, ApiError>>,
    record: impl FnOnce(&'static str, rollout_core::audit::AuditDraft) -> F,
) -> Result<tonic::Response<T>, Status>
where
    F: Future<Output = ()>,
{
    match call.await {
        Ok(v) => Ok(tonic::Response::new(v)),
        Err(e) => {
            record(
                e.reason(),
                rollout_core::audit::AuditDraft {
                    outcome: rollout_core::audit::AuditOutcome::Refused,
                    reason: e.to_string(),
                    ..draft
                },
            )
            .await;
            Err(e.into())
        }
    }
}

impl From<rollout_core::IdError> for ApiError {
    /// An identifier error, naming the field by the kind of identifier. Handlers that know the
    /// exact request field use [`ApiError::invalid_field`] instead.
    fn from(e: rollout_core::IdError) -> Self {
        let field = match e.kind {
            rollout_core::IdKind::Practice => "practice",
            rollout_core::IdKind::Region => "region",
            rollout_core::IdKind::Icb => "icb",
            rollout_core::IdKind::SubIcb => "sub_icb",
            rollout_core::IdKind::Supplier => "supplier",
            rollout_core::IdKind::Feature => "feature",
            rollout_core::IdKind::Command => "command",
        };
        ApiError::invalid_field(field, e)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_carries_error_info_and_field_violations() {
        let err = rollout_core::OdsCode::parse("X1").expect_err("invalid");
        let status = Status::from(ApiError::invalid_field("name", err));
        assert_eq!(status.code(), Code::InvalidArgument);
        assert!(
            status
                .message()
                .starts_with("name: practice code \"X1\" is not valid")
        );
        let details = status.get_error_details();
        let info = details.error_info().expect("error info");
        assert_eq!(
            (info.reason.as_str(), info.domain.as_str()),
            ("INVALID_FIELD", ERROR_DOMAIN)
        );
        assert_eq!(info.metadata.get("field").map(String::as_str), Some("name"));
        let bad = details.bad_request().expect("bad request");
        assert_eq!(bad.field_violations[0].field, "name");
    }

    #[test]
    fn internal_errors_hide_their_details() {
        let status = Status::from(ApiError::internal(
            "reading the store",
            "disk I/O error at /var/lib/x",
        ));
        assert_eq!(status.code(), Code::Internal);
        assert!(!status.message().contains("/var/lib"));
    }
}
