//! HTTP: turns requests into domain values and domain results into
//! responses. One middleware (`observe`) wraps every route: load shedding,
//! the request deadline, panics, security headers, metrics and the request
//! log line.

pub mod body;
pub mod error;
mod health;
mod hello;

use crate::metrics::Metrics;
use crate::startup::StoreHandle;
use axum::Router;
use axum::extract::{MatchedPath, Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get};
use error::ApiError;
use futures_util::FutureExt;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};
use tokio::sync::Semaphore;

/// Today's date, injected so tests can pin any day. Production reads the UTC
/// calendar date.
pub type Clock = Arc<dyn Fn() -> time::Date + Send + Sync>;

pub fn utc_clock() -> Clock {
    Arc::new(|| time::OffsetDateTime::now_utc().date())
}

/// Everything a handler needs. Extractors clone the state for every
/// request, so it is one `Arc`: one reference count, not one per field.
pub type AppState = Arc<Shared>;

pub struct Shared {
    pub store: StoreHandle,
    pub clock: Clock,
    pub metrics: Arc<Metrics>,
    pub draining: Arc<AtomicBool>,
    pub limiter: Arc<Semaphore>,
    pub request_timeout: Duration,
    pub db_timeout: Duration,
    pub release: Arc<str>,
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

fn method_label(m: &Method) -> &'static str {
    match *m {
        Method::GET => "GET",
        Method::PUT => "PUT",
        Method::DELETE => "DELETE",
        Method::HEAD => "HEAD",
        Method::POST => "POST",
        Method::PATCH => "PATCH",
        Method::OPTIONS => "OPTIONS",
        _ => "OTHER",
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

/// The caller's `X-Request-Id` when it is sane, else a new one.
fn request_id(headers: &HeaderMap) -> HeaderValue {
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
    HeaderValue::from_str(&format!("{:08x}-{n:x}", crate::build::instance_nonce()))
        .expect("hex is a valid header value")
}

async fn observe(State(st): State<AppState>, req: Request, next: Next) -> Response {
    let started = Instant::now();
    let method = method_label(req.method());
    let route = route_label(req.extensions().get::<MatchedPath>());
    let id = request_id(req.headers());

    // Health checks are never shed: under overload the instance is busy, not
    // dead, and failing its checks would only move the load elsewhere at once.
    let sheddable = !matches!(route, "/healthz" | "/readyz");
    let permit = if sheddable {
        match st.limiter.try_acquire() {
            Ok(p) => Some(p),
            Err(_) => {
                st.metrics.shed.inc();
                let resp = ApiError::Overloaded.into_response();
                return finish(&st, resp, method, route, id, started);
            }
        }
    } else {
        None
    };

    st.metrics.in_flight.inc();
    let outcome = tokio::time::timeout(
        st.request_timeout,
        AssertUnwindSafe(next.run(req)).catch_unwind(),
    )
    .await;
    st.metrics.in_flight.dec();
    drop(permit);

    let resp = match outcome {
        Ok(Ok(resp)) => resp,
        Ok(Err(_panic)) => {
            tracing::error!(method, route, "request handler panicked");
            ApiError::Internal.into_response()
        }
        Err(_elapsed) => ApiError::Timeout.into_response(),
    };
    finish(&st, resp, method, route, id, started)
}

fn finish(
    st: &AppState,
    resp: Response,
    method: &'static str,
    route: &'static str,
    id: HeaderValue,
    started: Instant,
) -> Response {
    let mut resp = problem_for_bare_405(resp);
    let status = resp.status().as_u16();
    let h = resp.headers_mut();
    // A JSON API: never sniff, never cache (answers depend on the day).
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    if st.draining.load(Ordering::Relaxed) {
        // Tell keep-alive clients (the load balancer) to reconnect elsewhere.
        h.insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    let elapsed = started.elapsed();
    st.metrics.observe_request(method, route, status, elapsed);
    crate::telemetry::request_line(
        id.to_str().unwrap_or(""),
        method,
        route,
        status,
        elapsed.as_micros() as u64,
    );
    h.insert("x-request-id", id);
    resp
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
