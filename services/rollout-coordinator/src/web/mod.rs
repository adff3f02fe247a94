//! The operators' status page: a read-only web page on an HTTPS port of its own
//! (`--web-listen`), behind the same mutual TLS, CA and role policy as the gRPC port.
//!
//! The page is static (HTML, one script, one style sheet, compiled in: no CDN, no build
//! step) and reads JSON from `/api/...`, which the coordinator answers by calling its own gRPC
//! handlers as the caller, so the page shows nothing its reader could not read through the
//! gRPC API; each `/api` path needs the roles of the gRPC methods it calls (`/api/audit`, the
//! auditor's). `/events` is a server-sent event stream that says "changed" whenever the
//! coordinator's state changes (at most every 200 ms), so the page reads its view again
//! without a reload. A refused request is audited like a refused call.

mod api;
mod national;

use std::{net::SocketAddr, sync::Arc, time::Duration};

use axum::{
    Router,
    extract::{ConnectInfo, Request, State},
    http::{HeaderValue, StatusCode, header},
    middleware::{self, Next},
    response::{
        IntoResponse, Response,
        sse::{Event, KeepAlive, Sse},
    },
    routing::get,
};
use rollout_net::{
    ApiError, Caller,
    accept::PeerInfo,
    auth::{Access, AccessTable, AuthLayer},
    budget::IdentityBudget,
};
use tokio::sync::watch;

use crate::{coordinator::Core, service::Handlers};

/// The least time between two "changed" events on one stream: a burst of changes is one event.
const EVENT_SPACING: Duration = Duration::from_millis(200);
/// How often an idle event stream sends a comment, so that proxies keep it open.
const KEEP_ALIVE: Duration = Duration::from_secs(15);
/// Event streams one identity may hold open at once (browser tabs).
pub const EVENT_STREAMS_PER_IDENTITY: usize = 16;
/// The status page port's own budget: browsers never take the connections or handshakes that
/// operators' gRPC calls need.
pub const BUDGET: rollout_net::ConnectionBudget = rollout_net::ConnectionBudget {
    connections: 256,
    handshakes: 64,
    // Not used: the page's router has no stream layer (HTTP/2's own limit applies).
    ..rollout_net::ConnectionBudget::DEFAULT
};
/// Practice lookups in progress at once on the page (each asks the practice's supplier for
/// every feature's answer); one more is answered 429 `TOO_MANY_PRACTICE_LOOKUPS`.
pub const PRACTICE_LOOKUPS: usize = 16;

/// The status page's state: the handlers it calls as each caller, and the role checks.
#[derive(Debug)]
pub struct Web {
    handlers: Handlers,
    core: Arc<Core>,
    auth: AuthLayer,
    streams: IdentityBudget,
    shutdown: watch::Receiver<bool>,
    chain: api::ChainCheck,
    national: national::Cache,
    lookups: Arc<tokio::sync::Semaphore>,
}

impl Web {
    /// The page over `handlers` and `core`; requests are checked by `auth` (made with
    /// [`access_table`]); event streams end when `shutdown` turns true.
    pub fn new(
        handlers: Handlers,
        core: Arc<Core>,
        auth: AuthLayer,
        shutdown: watch::Receiver<bool>,
    ) -> Arc<Web> {
        Arc::new(Web {
            handlers,
            core,
            auth,
            streams: IdentityBudget::new(
                "status page event streams",
                "TOO_MANY_EVENT_STREAMS",
                "(fixed: close other tabs of the status page)",
                EVENT_STREAMS_PER_IDENTITY,
            ),
            shutdown,
            chain: api::ChainCheck::default(),
            national: national::Cache::default(),
            lookups: Arc::new(tokio::sync::Semaphore::new(PRACTICE_LOOKUPS)),
        })
    }
}

/// Who may read what on the status page: each `/api` path the roles of the gRPC methods it
/// calls (from `grpc`, the coordinator's table), the page and its events any reader's.
pub fn access_table(grpc: &AccessTable) -> AccessTable {
    let of = |method: &str| {
        grpc.lookup(&format!("/nhs.gprollout.v1.CoordinatorService/{method}"))
            .unwrap_or(Access::AnyOf(&[]))
    };
    // Not `AccessTable::new()`: the gRPC health and reflection services have no page here.
    AccessTable::default()
        .allow("/", of("ListSuppliers"))
        .allow("/api/audit", of("ListAuditEvents"))
}

/// The page's routes, every one behind the role check.
pub fn router(web: Arc<Web>) -> Router {
    Router::new()
        .route("/", get(page))
        .route("/commands", get(page))
        .route("/practices", get(page))
        .route("/audit", get(page))
        .route("/static/app.js", get(script))
        .route("/static/style.css", get(style))
        .route("/favicon.ico", get(|| async { StatusCode::NO_CONTENT }))
        .route("/events", get(events))
        .route("/api/national", get(api::national))
        .route("/api/commands", get(api::commands))
        .route("/api/practices", get(api::practices))
        .route("/api/audit", get(api::audit))
        .fallback(not_found)
        .layer(middleware::from_fn_with_state(web.clone(), authorize))
        .layer(middleware::from_fn(same_origin))
        .layer(middleware::map_response(secure_headers))
        .with_state(web)
}

/// Checks the caller's certificate and roles for the path; the caller goes into the
/// request's extensions, or the refusal (audited) is the answer.
async fn authorize(
    State(web): State<Arc<Web>>,
    ConnectInfo(peer): ConnectInfo<PeerInfo>,
    mut req: Request,
    next: Next,
) -> Response {
    match web.auth.authorize(Some(&peer), audited_path(req.uri().path())) {
        Ok(caller) => {
            req.extensions_mut().insert(caller);
            next.run(req).await
        }
        Err(e) => refusal(&e),
    }
}

/// The paths the page serves, as a refusal is audited: any other is audited as `/*`, so that a
/// caller trying one path after another cannot write an audit event for each (a refused
/// caller's events are summarised per path in a flood).
const PATHS: [&str; 12] = [
    "/",
    "/commands",
    "/practices",
    "/audit",
    "/static/app.js",
    "/static/style.css",
    "/favicon.ico",
    "/events",
    "/api/national",
    "/api/commands",
    "/api/practices",
    "/api/audit",
];

/// `path` as the role check and the audit log see it (see [`PATHS`]).
fn audited_path(path: &str) -> &str {
    if PATHS.contains(&path) { path } else { "/*" }
}

/// An error as the page reads it (see [`failed`]).
pub(crate) fn refusal(e: &ApiError) -> Response {
    failed(&tonic::Status::from(e.clone()))
}

/// A gRPC status as the page reads it: the HTTP status of its code, and a JSON body with the
/// code, the ErrorInfo reason and the message.
pub(crate) fn failed(status: &tonic::Status) -> Response {
    use tonic_types::StatusExt;
    let reason = status
        .get_details_error_info()
        .map(|i| i.reason)
        .unwrap_or_default();
    let http = match status.code() {
        tonic::Code::InvalidArgument | tonic::Code::OutOfRange => StatusCode::BAD_REQUEST,
        tonic::Code::Unauthenticated => StatusCode::UNAUTHORIZED,
        tonic::Code::PermissionDenied => StatusCode::FORBIDDEN,
        tonic::Code::NotFound => StatusCode::NOT_FOUND,
        tonic::Code::ResourceExhausted => StatusCode::TOO_MANY_REQUESTS,
        tonic::Code::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
        tonic::Code::DeadlineExceeded => StatusCode::GATEWAY_TIMEOUT,
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    };
    let body = serde_json::json!({
        "code": format!("{:?}", status.code()),
        "reason": reason,
        "message": status.message(),
    });
    (http, axum::Json(body)).into_response()
}

/// Refuses a read of the page's data (`/api/...`, `/events`) that another site's page made (the
/// browser sends the client certificate with it all the same): by its `Sec-Fetch-Site` header,
/// which browsers set and pages cannot. A link from elsewhere to a view still opens it (the
/// view's own page then reads its data as same-origin); a request without the header (curl,
/// an older browser) is let through.
async fn same_origin(req: Request, next: Next) -> Response {
    let path = req.uri().path();
    let data = path.starts_with("/api/") || path == "/events";
    let site = req.headers().get("sec-fetch-site").and_then(|v| v.to_str().ok());
    match site {
        None | Some("same-origin" | "none") => next.run(req).await,
        Some(_) if !data => next.run(req).await,
        Some(other) => refusal(&ApiError::permission_denied(
            "CROSS_SITE_REQUEST",
            format!("the status page answers only its own pages, not a request from another site ({other})"),
        )),
    }
}

async fn not_found() -> Response {
    refusal(&ApiError::new(
        tonic::Code::NotFound,
        "PAGE_NOT_FOUND",
        "the status page has no such page: its views are /, /commands, /practices and /audit",
    ))
}

/// Headers on every answer: the page runs only its own script and style sheet, in no frame,
/// and nothing is cached (every answer is live state).
async fn secure_headers(mut response: Response) -> Response {
    let h = response.headers_mut();
    let set = |h: &mut axum::http::HeaderMap, name, value: &'static str| {
        h.insert(name, HeaderValue::from_static(value));
    };
    set(
        h,
        header::CONTENT_SECURITY_POLICY,
        "default-src 'self'; frame-ancestors 'none'; form-action 'self'; base-uri 'none'",
    );
    set(h, header::X_CONTENT_TYPE_OPTIONS, "nosniff");
    set(h, header::REFERRER_POLICY, "no-referrer");
    set(h, header::CACHE_CONTROL, "no-store");
    response
}

async fn page() -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
        include_str!("assets/index.html"),
    )
}

async fn script() -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/javascript; charset=utf-8")],
        include_str!("assets/app.js"),
    )
}

async fn style() -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/css; charset=utf-8")],
        include_str!("assets/style.css"),
    )
}

/// `GET /events`: `event: changed` (data: the coordinator's change count) at once and after
/// each change, at most every [`EVENT_SPACING`]; ends when the server shuts down (the page
/// reconnects, to another replica or to this one once it is back).
async fn events(State(web): State<Arc<Web>>, req: Request) -> Response {
    let Some(caller) = req.extensions().get::<Caller>() else {
        return refusal(&ApiError::internal("reading the caller", "no caller"));
    };
    let slot = match web.streams.take(&caller.identity) {
        Ok(slot) => slot,
        Err(e) => return refusal(&e),
    };
    // The stream, and with it the identity's slot, is dropped as soon as the browser goes
    // away (a closed tab, a reload): no task of its own outlives the response.
    let first = Watch {
        changes: web.core.changes.subscribe(),
        shutdown: web.shutdown.clone(),
        sent: false,
        _slot: slot,
    };
    let stream = futures_util::stream::unfold(first, Watch::next);
    Sse::new(stream)
        .keep_alive(KeepAlive::new().interval(KEEP_ALIVE))
        .into_response()
}

/// One `/events` stream's state: the change count it follows and its identity's slot.
struct Watch {
    changes: watch::Receiver<u64>,
    shutdown: watch::Receiver<bool>,
    /// Whether the first event (the change count now) has gone.
    sent: bool,
    _slot: rollout_net::IdentitySlot,
}

impl Watch {
    /// The next `changed` event: at once for the first, then after the next change and at
    /// least [`EVENT_SPACING`] after the last; `None` (the end) when the server shuts down.
    async fn next(mut self) -> Option<(Result<Event, std::convert::Infallible>, Watch)> {
        if self.sent {
            tokio::time::sleep(EVENT_SPACING).await;
            tokio::select! {
                changed = self.changes.changed() => changed.ok()?,
                _ = self.shutdown.wait_for(|stop| *stop) => return None,
            }
        }
        self.sent = true;
        let version = *self.changes.borrow_and_update();
        let event = Event::default().event("changed").data(version.to_string());
        Some((Ok(event), self))
    }
}

/// Serves the page on `listener` until `shutdown` resolves.
pub async fn serve(
    listener: rollout_net::https::HttpsListener,
    web: Arc<Web>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    rollout_net::https::serve(listener, router(web), shutdown).await
}

/// The address a browser opens for a page listening on `addr`.
pub fn address(addr: SocketAddr) -> String {
    format!("https://{addr}/")
}
