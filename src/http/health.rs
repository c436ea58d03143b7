//! Liveness and readiness, on the public port so the load balancer can
//! check them.

use super::AppState;
use super::error::ApiError;
use axum::Json;
use axum::extract::State;
use serde_json::{Value, json};
use std::sync::atomic::Ordering;
use std::time::Duration;

/// Readiness must answer well within the load balancer's health-check timeout.
const READY_PING_TIMEOUT: Duration = Duration::from_secs(1);

/// Liveness: the process answers. No I/O, so a slow database never gets a
/// healthy process restarted.
pub async fn healthz(State(st): State<AppState>) -> Json<Value> {
    Json(json!({
        "status": "ok",
        "version": crate::build::VERSION,
        "revision": crate::build::REVISION,
        "release": &*st.release,
    }))
}

/// Readiness: not draining, and the database answers within a short timeout.
pub async fn readyz(State(st): State<AppState>) -> Result<Json<Value>, ApiError> {
    if st.draining.load(Ordering::Relaxed) {
        return Err(ApiError::NotReady("draining before shutdown"));
    }
    let timeout = READY_PING_TIMEOUT.min(st.db_timeout);
    match tokio::time::timeout(timeout, st.store.ping()).await {
        Ok(Ok(())) => Ok(Json(json!({ "status": "ready" }))),
        _ => Err(ApiError::NotReady("the database does not answer")),
    }
}
