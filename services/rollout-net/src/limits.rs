//! Message limits, by design rather than by tonic's defaults: one limit for every server and
//! client here ([`MAX_MESSAGE_BYTES`]), set on each generated server and client by
//! [`MessageLimits::with_message_limits`]; the answer to a request over it
//! ([`OverLimitLayer`]); and the byte budget every List page is filled to ([`Page`]).
//!
//! **Architecture invariant:** no message over [`MAX_MESSAGE_BYTES`] is sent or read, so a
//! gRPC client with default settings reads every answer it is sent. List pages are filled to
//! at most [`PAGE_BUDGET_BYTES`], and an answer that cannot be paged (BatchGetPracticeFeatures)
//! is refused with a reason before it would pass the limit.

use http::{HeaderName, Response};
use rollout_proto::flagd::evaluation::{v1 as flagd_v1, v2 as flagd_v2};
use rollout_proto::v1::{
    audit_service_client::AuditServiceClient,
    audit_service_server::{AuditService, AuditServiceServer},
    control_service_client::ControlServiceClient,
    control_service_server::{ControlService, ControlServiceServer},
    coordinator_service_client::CoordinatorServiceClient,
    coordinator_service_server::{CoordinatorService, CoordinatorServiceServer},
    practice_settings_service_server::{PracticeSettingsService, PracticeSettingsServiceServer},
    toggle_service_client::ToggleServiceClient,
    toggle_service_server::{ToggleService, ToggleServiceServer},
};
use tonic::{Status, body::Body, transport::Channel};
use tonic_health::pb::{
    health_client::HealthClient,
    health_server::{Health, HealthServer},
};
use tonic_reflection::server::{v1, v1alpha};
use tower::util::MapResponseLayer;

use crate::error::ApiError;

/// The largest message, in bytes, that any server or client here sends or accepts: 4 MiB.
///
/// It equals the default receive limit of every common gRPC client (grpc-go and so grpcurl,
/// grpc-java, grpcio, tonic), so a third-party client with default settings can always read
/// any answer. The largest legitimate requests, a command over a 10,000-practice list (about
/// 80 KB) and a 10,000-name BatchGetPracticeFeatures (about 530 KB), are far below it.
pub const MAX_MESSAGE_BYTES: usize = 4 * 1024 * 1024;

/// The most bytes, encoded, of one List page: 2 MiB, half of [`MAX_MESSAGE_BYTES`]. A page
/// stops before the item that would take it past this budget and the caller follows
/// `next_page_token`; the margin keeps a page far from the limit whatever its other fields.
pub const PAGE_BUDGET_BYTES: usize = 2 * 1024 * 1024;

/// Bytes of a page kept for the response's fields other than its items (the page token and
/// counts, each well under 1 KiB).
const PAGE_OTHER_FIELDS_BYTES: usize = 4 * 1024;

/// A generated gRPC server or client whose message limits can be set.
pub trait MessageLimits {
    /// Sets both the decoding (receive) and the encoding (send) limit to
    /// [`MAX_MESSAGE_BYTES`], instead of tonic's defaults (4 MiB to receive, no limit to send).
    fn with_message_limits(self) -> Self;
}

macro_rules! message_limits {
    ($($ty:ty $(where $t:ident: $bound:path)?),* $(,)?) => {$(
        impl$(<$t: $bound>)? MessageLimits for $ty {
            fn with_message_limits(self) -> Self {
                self.max_decoding_message_size(MAX_MESSAGE_BYTES)
                    .max_encoding_message_size(MAX_MESSAGE_BYTES)
            }
        }
    )*};
}

message_limits!(
    ToggleServiceServer<T> where T: ToggleService,
    PracticeSettingsServiceServer<T> where T: PracticeSettingsService,
    ControlServiceServer<T> where T: ControlService,
    AuditServiceServer<T> where T: AuditService,
    CoordinatorServiceServer<T> where T: CoordinatorService,
    flagd_v1::service_server::ServiceServer<T> where T: flagd_v1::service_server::Service,
    flagd_v2::service_server::ServiceServer<T> where T: flagd_v2::service_server::Service,
    HealthServer<T> where T: Health,
    v1::ServerReflectionServer<T> where T: v1::ServerReflection,
    v1alpha::ServerReflectionServer<T> where T: v1alpha::ServerReflection,
    ControlServiceClient<Channel>,
    AuditServiceClient<Channel>,
    ToggleServiceClient<Channel>,
    CoordinatorServiceClient<Channel>,
    flagd_v1::service_client::ServiceClient<Channel>,
    flagd_v2::service_client::ServiceClient<Channel>,
    HealthClient<Channel>,
);

/// The layer every server here runs (see [`crate::server::builder`]): it answers a request over
/// [`MAX_MESSAGE_BYTES`] with RESOURCE_EXHAUSTED and ErrorInfo `MESSAGE_TOO_LARGE`.
pub type OverLimitLayer = MapResponseLayer<fn(Response<Body>) -> Response<Body>>;

/// The [`OverLimitLayer`].
pub fn over_limit_layer() -> OverLimitLayer {
    MapResponseLayer::new(explain_over_limit as fn(Response<Body>) -> Response<Body>)
}

const GRPC_STATUS: HeaderName = HeaderName::from_static("grpc-status");
const GRPC_STATUS_DETAILS: HeaderName = HeaderName::from_static("grpc-status-details-bin");

/// Rewrites tonic's answer to a request over the decoding limit.
///
/// tonic 0.14 (`codec/decode.rs`) reads the request's length prefix before any handler runs
/// and, over the limit, answers at once (a trailers-only response, so the status is in the
/// headers) OUT_OF_RANGE with no details. Nothing else here answers OUT_OF_RANGE in the
/// headers without details: every handler's error is an [`ApiError`], which carries ErrorInfo,
/// and tonic's other OUT_OF_RANGE (an answer over the encoding limit) ends a body, in the
/// trailers. Every other response is passed through after one header lookup.
fn explain_over_limit(response: Response<Body>) -> Response<Body> {
    let headers = response.headers();
    let out_of_range = headers.get(GRPC_STATUS).is_some_and(|v| v.as_bytes() == b"11");
    if !out_of_range || headers.contains_key(GRPC_STATUS_DETAILS) {
        return response;
    }
    Status::from(message_too_large()).into_http()
}

/// RESOURCE_EXHAUSTED `MESSAGE_TOO_LARGE`: the request is over [`MAX_MESSAGE_BYTES`].
fn message_too_large() -> ApiError {
    ApiError::resource_exhausted(
        "MESSAGE_TOO_LARGE",
        format!(
            "the request is larger than this server accepts ({MAX_MESSAGE_BYTES} bytes, 4 MiB); \
             send less in one call, for example fewer names, or a practice list split across commands"
        ),
    )
    .with_metadata("limit_bytes", MAX_MESSAGE_BYTES.to_string())
}

/// The encoded size of `item` as an element of a repeated message field (a key of at most two
/// bytes, for field numbers up to 2047, the length, the message).
pub fn element_len(item: &impl prost::Message) -> usize {
    let len = item.encoded_len();
    2 + prost::length_delimiter_len(len) + len
}

/// One page of a List answer, filled item by item: it takes at most `size` items, and stops
/// before the item that would take the whole response past [`PAGE_BUDGET_BYTES`]. The first
/// item is always taken, so every page makes progress.
#[derive(Debug)]
pub struct Page<T> {
    items: Vec<T>,
    size: usize,
    bytes: usize,
    full: bool,
}

impl<T: prost::Message> Page<T> {
    /// An empty page of at most `size` items.
    pub fn new(size: usize) -> Self {
        Page {
            items: Vec::new(),
            size,
            bytes: PAGE_OTHER_FIELDS_BYTES,
            full: false,
        }
    }

    /// Adds `item` if the page has room for it; `false` (the item dropped) once it is full,
    /// when the caller stops and the next page starts at this item.
    pub fn push(&mut self, item: T) -> bool {
        let len = element_len(&item);
        if !self.items.is_empty()
            && (self.full || self.items.len() >= self.size || self.bytes + len > PAGE_BUDGET_BYTES)
        {
            self.full = true;
            return false;
        }
        self.bytes += len;
        self.items.push(item);
        true
    }

    /// Adds items from `items` until the page is full (taking one item more from the iterator
    /// than it keeps).
    pub fn fill(mut self, items: impl IntoIterator<Item = T>) -> Self {
        for item in items {
            if !self.push(item) {
                break;
            }
        }
        self
    }

    /// The page's items, and the token of the next page: `token(last item)` if an item was
    /// left out, else empty (the last page).
    pub fn finish(self, token: impl FnOnce(&T) -> String) -> (Vec<T>, String) {
        let next = match self.items.last() {
            Some(last) if self.full => token(last),
            _ => String::new(),
        };
        (self.items, next)
    }
}

#[cfg(test)]
mod tests {
    use prost::Message;
    use rollout_proto::v1 as pb;
    use tonic::Code;
    use tonic_types::StatusExt;

    use super::*;

    fn event(reason_bytes: usize) -> pb::AuditEvent {
        pb::AuditEvent {
            reason: "x".repeat(reason_bytes),
            ..Default::default()
        }
    }

    /// Fills pages from `items` as a handler would; returns each page's item count.
    fn pages(size: usize, items: &[pb::AuditEvent]) -> Vec<usize> {
        let mut counts = Vec::new();
        let mut rest = items;
        while !rest.is_empty() {
            let (taken, token) = Page::new(size)
                .fill(rest.iter().cloned())
                .finish(|_| "next".into());
            let response = pb::ListAuditEventsResponse {
                events: taken.clone(),
                next_page_token: token.clone(),
            };
            assert!(
                response.encoded_len() <= PAGE_BUDGET_BYTES,
                "a page of {} bytes",
                response.encoded_len()
            );
            rest = &rest[taken.len()..];
            assert_eq!(
                token.is_empty(),
                rest.is_empty(),
                "a token exactly when items remain"
            );
            counts.push(taken.len());
        }
        counts
    }

    #[test]
    fn pages_stop_at_the_count_or_the_byte_budget_and_always_take_one() {
        let small: Vec<_> = (0..10).map(|_| event(10)).collect();
        assert_eq!(pages(4, &small), [4, 4, 2]);
        assert_eq!(pages(10, &small), [10]);
        // 300 KB items: six fit in 2 MiB less the kept bytes, the seventh does not.
        let large: Vec<_> = (0..14).map(|_| event(300_000)).collect();
        assert_eq!(pages(100, &large), [6, 6, 2]);
        // An item bigger than the budget still makes progress, one a page.
        let huge: Vec<_> = (0..2).map(|_| event(PAGE_BUDGET_BYTES)).collect();
        let mut page = Page::new(100);
        assert!(page.push(huge[0].clone()));
        assert!(!page.push(huge[1].clone()));
        assert_eq!(page.finish(|_| "next".into()).1, "next");
    }

    #[test]
    fn element_len_is_what_a_repeated_field_adds() {
        for n in [0, 100, 20_000, 3_000_000] {
            let e = event(n);
            let one = pb::ListAuditEventsResponse {
                events: vec![e.clone()],
                ..Default::default()
            };
            let len = element_len(&e);
            assert!((len - 1..=len).contains(&one.encoded_len()), "{n}");
        }
    }

    fn with_status(status: &str, details: bool) -> Response<Body> {
        let mut r = Response::new(Body::empty());
        r.headers_mut()
            .insert(GRPC_STATUS, status.parse().expect("header"));
        if details {
            r.headers_mut()
                .insert(GRPC_STATUS_DETAILS, "CAE".parse().expect("header"));
        }
        r
    }

    #[test]
    fn only_a_bare_out_of_range_is_rewritten() {
        let rewritten = explain_over_limit(with_status("11", false));
        let status = Status::from_header_map(rewritten.headers()).expect("status");
        assert_eq!(status.code(), Code::ResourceExhausted);
        let info = status.get_error_details().error_info().cloned().expect("info");
        assert_eq!(info.reason, "MESSAGE_TOO_LARGE");
        assert_eq!(info.metadata["limit_bytes"], MAX_MESSAGE_BYTES.to_string());
        for (code, details) in [("11", true), ("0", false), ("3", false)] {
            let kept = explain_over_limit(with_status(code, details));
            assert_eq!(
                kept.headers().get(GRPC_STATUS).map(|v| v.as_bytes()),
                Some(code.as_bytes())
            );
        }
        let ok = explain_over_limit(Response::new(Body::empty()));
        assert!(ok.headers().get(GRPC_STATUS).is_none());
    }
}
