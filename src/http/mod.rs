//! HTTP: turns requests into domain values and domain results into
//! responses. One middleware (`observe`) wraps every route: ambiguous
//! framing, the body deadline, load shedding, the request deadline, panics,
//! security headers, metrics and the request log line. `conn` guards the
//! connections below it.

pub mod body;
pub mod conn;
pub mod error;
mod health;
mod hello;

use crate::metrics::Metrics;
use crate::store::StoreHandle;
use crate::trace::RequestTrace;
use axum::Router;
use axum::body::{Body, HttpBody};
use axum::extract::{MatchedPath, Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, Version, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get};
use body::MAX_BODY_BYTES;
use error::ApiError;
use futures_util::FutureExt;
use http_body_util::{BodyExt, LengthLimitError, Limited};
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};
use tokio::sync::Semaphore;

/// Largest request head (request line and headers), as `openapi.yaml`
/// documents: hyper refuses a longer one that arrives in pieces (its read
/// buffer fills up first), `observe` one that arrived in a single read.
pub const MAX_HEAD_BYTES: usize = 64 * 1024;

/// Today's date, injected so tests can pin any day. Production reads the UTC
/// calendar date.
pub type Clock = Arc<dyn Fn() -> time::Date + Send + Sync>;

pub fn utc_clock() -> Clock {
    Arc::new(|| time::OffsetDateTime::now_utc().date())
}

/// Everything a handler needs. Extractors clone the state for every
/// request, so it is one `Arc`: one reference count, not one per field
/// (the fields hold their values, not `Arc`s of their own).
pub type AppState = Arc<Shared>;

pub struct Shared {
    pub store: StoreHandle,
    pub clock: Clock,
    pub metrics: Metrics,
    pub draining: AtomicBool,
    pub limiter: Semaphore,
    pub request_timeout: Duration,
    pub body_timeout: Duration,
    pub db_timeout: Duration,
    pub release: Box<str>,
}

pub fn router(state: AppState) -> Router {
    Router::new()
        .route(
            "/hello/{username}",
            get(hello::get).put(hello::put).delete(hello::delete),
        )
        .route("/hello/", any(hello::empty_username))
        .route("/healthz", get(health::healthz))
        .route("/readyz", get(health::readyz))
        .fallback(not_found)
        .layer(middleware::from_fn_with_state(state.clone(), observe))
        .with_state(state)
}

/// The metrics listener's router: `/metrics` and nothing else.
pub fn metrics_router(state: AppState) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .with_state(state)
}

async fn metrics(State(st): State<AppState>) -> impl IntoResponse {
    // Readiness as the load balancer sees it, so rules need not re-derive it.
    let ready = health::check(&st).await.is_ok();
    st.metrics.ready.set(i64::from(ready));
    let text = st
        .metrics
        .render(&st.store, st.db_timeout.min(Duration::from_secs(1)))
        .await;
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        text,
    )
}

async fn not_found() -> ApiError {
    ApiError::RouteNotFound
}

/// The method as OpenTelemetry's `http.request.method` spells it: a known
/// method, or `_OTHER`, so a client cannot mint label values.
fn method_label(m: &Method) -> &'static str {
    match *m {
        Method::GET => "GET",
        Method::PUT => "PUT",
        Method::DELETE => "DELETE",
        Method::HEAD => "HEAD",
        Method::POST => "POST",
        Method::PATCH => "PATCH",
        Method::OPTIONS => "OPTIONS",
        _ => "_OTHER",
    }
}

/// The route template as a static label; anything unrouted is "unmatched",
/// so raw paths never become label values.
fn route_label(matched: Option<&MatchedPath>) -> &'static str {
    match matched.map(MatchedPath::as_str) {
        Some("/hello/{username}") | Some("/hello/") => "/hello/{username}",
        Some("/healthz") => "/healthz",
        Some("/readyz") => "/readyz",
        _ => "unmatched",
    }
}

static REQUEST_SEQ: AtomicU64 = AtomicU64::new(0);

/// The request id, the one the load balancer logged where there is one:
/// 1. the `Root` of an ALB's `X-Amzn-Trace-Id` (`1-5759e988-bd862e3fe1be46a994272793`),
///    the `trace_id` field of the ALB's access log;
/// 2. else the caller's `X-Request-Id` when well formed (1 to 128 of
///    `[A-Za-z0-9._-]`): HAProxy sets it to its `unique-id`, which its log
///    line carries, and clients may send their own;
/// 3. else a new one, `hb:<process nonce>-<counter>`. The `:` is outside the
///    accepted grammars, so a generated id can never be mistaken for a
///    client's and a client cannot pass its id off as one of ours.
fn request_id(headers: &HeaderMap) -> HeaderValue {
    if let Some(root) = headers
        .get("x-amzn-trace-id")
        .and_then(|v| amzn_trace_root(v.as_bytes()))
    {
        return HeaderValue::from_bytes(root).expect("checked to be hex and dashes");
    }
    if let Some(v) = headers.get("x-request-id") {
        let b = v.as_bytes();
        if (1..=128).contains(&b.len())
            && b.iter()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.'))
        {
            return v.clone();
        }
    }
    let n = REQUEST_SEQ.fetch_add(1, Ordering::Relaxed);
    // Written by hand: `format!` plus parsing the header back took about 1%
    // of a GET's CPU time in a profile.
    let mut buf = [0u8; 3 + 8 + 1 + 16];
    buf[..3].copy_from_slice(b"hb:");
    let nonce = crate::build::instance_nonce();
    for (i, b) in buf[3..11].iter_mut().enumerate() {
        *b = HEX[(nonce >> (28 - 4 * i) & 0xf) as usize];
    }
    buf[11] = b'-';
    let digits = (16 - n.leading_zeros() as usize / 4).max(1);
    for (i, b) in buf[12..12 + digits].iter_mut().enumerate() {
        *b = HEX[(n >> (4 * (digits - 1 - i)) & 0xf) as usize];
    }
    HeaderValue::from_bytes(&buf[..12 + digits]).expect("hex is a valid header value")
}

const HEX: &[u8; 16] = b"0123456789abcdef";

/// The `Root` field of an `X-Amzn-Trace-Id` header, if the header follows
/// the X-Ray grammar: `;`-separated `Key=Value` fields, one of them
/// `Root=1-<8 hex: epoch seconds>-<24 hex>`; others (`Parent`, `Sampled`,
/// `Self`, `Lineage`, custom ones) are allowed and ignored. Anything else
/// is not an ALB's and is ignored as a whole.
fn amzn_trace_root(header: &[u8]) -> Option<&[u8]> {
    if header.len() > 256 {
        return None;
    }
    let mut root = None;
    for field in header.split(|&c| c == b';') {
        let field = field.trim_ascii();
        let eq = field.iter().position(|&c| c == b'=')?;
        let (key, value) = (&field[..eq], &field[eq + 1..]);
        if key.is_empty() || !key.iter().all(u8::is_ascii_alphanumeric) {
            return None;
        }
        if key == b"Root" {
            let hex = |s: &[u8]| s.iter().all(u8::is_ascii_hexdigit);
            let ok = value.len() == 35
                && value.starts_with(b"1-")
                && value[10] == b'-'
                && hex(&value[2..10])
                && hex(&value[11..]);
            if !ok || root.is_some() {
                return None;
            }
            root = Some(value);
        }
    }
    root
}

/// Framing that a proxy in front could read differently from us (RFC 9112
/// 3.2 and 6.1): no Host on HTTP/1.1, two Hosts, a Transfer-Encoding other
/// than `chunked` alone (hyper would apply `chunked` and ignore the rest),
/// and two Content-Types (the first would win here, the last elsewhere: the
/// same request 415 or accepted depending on the order). A client's
/// malformed request: 400, never 501.
fn ambiguous_framing(req: &Request) -> Option<&'static str> {
    let headers = req.headers();
    let mut hosts = headers.get_all(header::HOST).iter();
    match (hosts.next(), hosts.next()) {
        (_, Some(_)) => return Some("more than one Host header"),
        (None, _) if req.version() >= Version::HTTP_11 => {
            return Some("an HTTP/1.1 request needs a Host header");
        }
        _ => {}
    }
    if headers
        .get_all(header::CONTENT_TYPE)
        .iter()
        .nth(1)
        .is_some()
    {
        return Some("more than one Content-Type header");
    }
    let mut codings = headers.get_all(header::TRANSFER_ENCODING).iter();
    if let Some(first) = codings.next() {
        let chunked_only = first
            .as_bytes()
            .trim_ascii()
            .eq_ignore_ascii_case(b"chunked");
        if !chunked_only || codings.next().is_some() {
            return Some("the only Transfer-Encoding accepted is chunked, alone");
        }
    }
    None
}

/// Reads a request's body into memory within `deadline`, before the request
/// takes a concurrency slot: a client that is slow to send its body waits
/// on its own time, not on a slot a ready request needs, and gets 408 (a
/// client error) instead of the handler deadline's 503.
async fn buffer_body(req: Request, deadline: Duration) -> Result<Request, ApiError> {
    if req.body().is_end_stream() {
        return Ok(req);
    }
    // Refuse a declared oversize body before reading any of it.
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > MAX_BODY_BYTES as u64) {
        return Err(ApiError::PayloadTooLarge(MAX_BODY_BYTES));
    }
    let (parts, body) = req.into_parts();
    let read = Limited::new(body, MAX_BODY_BYTES).collect();
    match tokio::time::timeout(deadline, read).await {
        Ok(Ok(collected)) => Ok(Request::from_parts(parts, Body::from(collected.to_bytes()))),
        Ok(Err(e)) if e.is::<LengthLimitError>() => Err(ApiError::PayloadTooLarge(MAX_BODY_BYTES)),
        Ok(Err(_)) => Err(ApiError::BadBody(
            "the request body could not be read".into(),
        )),
        Err(_elapsed) => Err(ApiError::BodyTimeout),
    }
}

/// Counts a request in `http_server_active_requests` until it is answered,
/// on every path out of `observe`.
struct InFlight(prometheus_client::metrics::gauge::Gauge);

impl InFlight {
    fn new(gauge: prometheus_client::metrics::gauge::Gauge) -> Self {
        gauge.inc();
        Self(gauge)
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// The size of a request head as it came on the wire (request line, header
/// lines, the blank line), give or take the spaces around header values.
fn head_bytes(req: &Request) -> usize {
    let uri = req.uri();
    let target = uri.scheme_str().map_or(0, |s| s.len() + 3)
        + uri.authority().map_or(0, |a| a.as_str().len())
        + uri.path_and_query().map_or(1, |p| p.as_str().len());
    let line = req.method().as_str().len() + 1 + target + " HTTP/1.1\r\n".len();
    let headers: usize = req
        .headers()
        .iter()
        .map(|(name, value)| name.as_str().len() + ": ".len() + value.len() + 2)
        .sum();
    line + headers + 2
}

/// hyper's own answer to a head over its buffer, given to a head over
/// `MAX_HEAD_BYTES` that arrived whole: the same bare 431 and close, the
/// same count, whatever the segmentation.
fn head_too_large(st: &AppState) -> Response {
    st.metrics.parse_error("head_too_large");
    let mut resp = Response::new(Body::empty());
    *resp.status_mut() = StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE;
    resp.headers_mut()
        .insert(header::CONNECTION, HeaderValue::from_static("close"));
    resp
}

async fn observe(State(st): State<AppState>, req: Request, next: Next) -> Response {
    if head_bytes(&req) > MAX_HEAD_BYTES {
        return head_too_large(&st);
    }
    let method = method_label(req.method());
    let route = route_label(req.extensions().get::<MatchedPath>());
    let id = request_id(req.headers());
    let trace = RequestTrace::start(req.headers(), method, route);
    let pending = Pending {
        st,
        method,
        route,
        id: Some(id),
        trace: Some(trace),
        started: Instant::now(),
    };
    let st = pending.st.clone();

    if let Some(why) = ambiguous_framing(&req) {
        return pending.finish(ApiError::AmbiguousRequest(why).into_response());
    }
    // In flight from here: a request waiting for its body is being served,
    // though it holds no slot.
    let _in_flight = InFlight::new(st.metrics.active_requests(method));
    let req = match buffer_body(req, st.body_timeout).await {
        Ok(req) => req,
        Err(e) => return pending.finish(e.into_response()),
    };

    // Health checks are never shed: under overload the instance is busy, not
    // dead, and failing its checks would only move the load elsewhere at once.
    let sheddable = !matches!(route, "/healthz" | "/readyz");
    let permit = if sheddable {
        match st.limiter.try_acquire() {
            Ok(p) => Some(p),
            Err(_) => {
                st.metrics.shed.inc();
                return pending.finish(ApiError::Overloaded.into_response());
            }
        }
    } else {
        None
    };

    let outcome = tokio::time::timeout(
        st.request_timeout,
        AssertUnwindSafe(match &pending.trace {
            Some(trace) => trace.scope(next.run(req)),
            None => unreachable!("the trace is taken only when the request is counted"),
        })
        .catch_unwind(),
    )
    .await;
    drop(permit);

    let resp = match outcome {
        Ok(Ok(resp)) => resp,
        Ok(Err(_panic)) => {
            tracing::error!(method, route, "request handler panicked");
            ApiError::Internal.into_response()
        }
        Err(_elapsed) => ApiError::Timeout.into_response(),
    };
    pending.finish(resp)
}

/// nginx's status for a request whose answer never went out because the
/// connection went first: "client closed request".
const CLIENT_CLOSED_REQUEST: u16 = 499;

/// A request from the moment it reaches `observe` until it is counted.
/// Every way out counts it once in `http_server_request_duration_seconds`
/// and gives it to the request log: `finish` with the answer's status, or,
/// when hyper drops the request unanswered (the connection reset under it,
/// or cut off at the shutdown deadline), `Drop` with 499. Its write may have
/// been applied all the same: the 499 line is its trace.
struct Pending {
    st: AppState,
    method: &'static str,
    route: &'static str,
    /// Taken by `finish`; still here when dropped unanswered.
    id: Option<HeaderValue>,
    /// Taken when the request is counted, which ends its span.
    trace: Option<RequestTrace>,
    started: Instant,
}

impl Pending {
    fn record(&mut self, status: u16, id: &HeaderValue) {
        let elapsed = self.started.elapsed();
        let trace = self.trace.take();
        self.st
            .metrics
            .observe_request(self.method, self.route, status, elapsed);
        crate::telemetry::request_line(
            id.to_str().unwrap_or(""),
            self.method,
            self.route,
            status,
            elapsed.as_micros() as u64,
            trace.as_ref().and_then(RequestTrace::trace_id),
        );
        if let Some(trace) = trace {
            trace.finish(status);
        }
    }

    fn finish(mut self, resp: Response) -> Response {
        let mut resp = problem_for_bare_405(resp);
        let status = resp.status().as_u16();
        let h = resp.headers_mut();
        // A JSON API: never sniff, never cache (answers depend on the day).
        h.insert(
            header::X_CONTENT_TYPE_OPTIONS,
            HeaderValue::from_static("nosniff"),
        );
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        if self.st.draining.load(Ordering::Relaxed) {
            // Tell keep-alive clients (the load balancer) to reconnect elsewhere.
            h.insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
        let id = self.id.take().expect("finished once");
        self.record(status, &id);
        resp.headers_mut().insert("x-request-id", id);
        resp
    }
}

impl Drop for Pending {
    fn drop(&mut self) {
        if let Some(id) = self.id.take() {
            self.record(CLIENT_CLOSED_REQUEST, &id);
        }
    }
}

/// axum answers a method a route lacks with a bare 405 and an `Allow`
/// header; give it the problem body every other error has.
fn problem_for_bare_405(resp: Response) -> Response {
    if resp.status() != StatusCode::METHOD_NOT_ALLOWED
        || resp.headers().contains_key(header::CONTENT_TYPE)
    {
        return resp;
    }
    let allow = resp.headers().get(header::ALLOW).cloned();
    let mut problem = ApiError::MethodNotAllowed.into_response();
    if let Some(allow) = allow {
        problem.headers_mut().insert(header::ALLOW, allow);
    }
    problem
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_request_ids_are_the_nonce_and_a_hex_counter() {
        let nonce = crate::build::instance_nonce();
        let first = request_id(&HeaderMap::new());
        let second = request_id(&HeaderMap::new());
        for id in [&first, &second] {
            let text = id.to_str().unwrap();
            let (prefix, counter) = text.split_once('-').unwrap();
            assert_eq!(prefix, format!("hb:{nonce:08x}"));
            assert!(u64::from_str_radix(counter, 16).is_ok(), "{text}");
            assert!(counter == "0" || !counter.starts_with('0'), "{text}");
        }
        assert_ne!(first, second);
    }

    fn id_for(headers: &[(&str, &str)]) -> String {
        let mut map = HeaderMap::new();
        for (k, v) in headers {
            map.insert(
                axum::http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                v.parse().unwrap(),
            );
        }
        request_id(&map).to_str().unwrap().to_owned()
    }

    #[test]
    fn an_albs_trace_root_is_the_request_id_then_x_request_id_then_ours() {
        let root = "1-5759e988-bd862e3fe1be46a994272793";
        for amzn in [
            format!("Root={root}"),
            format!("Root={root};Sampled=1"),
            format!(
                "Self=1-67891234-12456789abcdef012345678;Root={root};Parent=53995c3f42cd8ad8;Sampled=1"
            ),
            format!("Root={root}; CustomKey=value"),
        ] {
            assert_eq!(id_for(&[("x-amzn-trace-id", &amzn)]), root, "{amzn}");
            assert_eq!(
                id_for(&[("x-amzn-trace-id", &amzn), ("x-request-id", "client-1")]),
                root
            );
        }
        for bad in [
            "Root=1-5759e988-bd862e3fe1be46a99427279",  // 23 hex digits
            "Root=2-5759e988-bd862e3fe1be46a994272793", // version 2
            "Root=1-5759e98g-bd862e3fe1be46a994272793", // not hex
            "Sampled=1",                                // no Root
            "Root=1-5759e988-bd862e3fe1be46a994272793;Root=1-5759e988-bd862e3fe1be46a994272794",
            "Root=1-5759e988-bd862e3fe1be46a994272793;garbage",
            "Root=1-5759e988-bd862e3fe1be46a994272793;K\"=v",
        ] {
            assert_eq!(
                id_for(&[("x-amzn-trace-id", bad), ("x-request-id", "client-1")]),
                "client-1",
                "{bad}"
            );
            assert!(
                id_for(&[("x-amzn-trace-id", bad)]).starts_with("hb:"),
                "{bad}"
            );
        }
        assert_eq!(
            id_for(&[("x-request-id", "7F000001C3A5-7F0000011388-64E3C2A1")]),
            "7F000001C3A5-7F0000011388-64E3C2A1"
        );
        assert!(id_for(&[("x-request-id", "a b")]).starts_with("hb:"));
    }
}
