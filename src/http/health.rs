//! Liveness and readiness, on the public port so the load balancer can
//! check them.
//!
//! Readiness says what is wrong with *this* instance, never an outage that
//! every instance shares: the load balancer, the Auto Scaling group (ELB
//! health) and HAProxy act on it, and if it followed a shared PostgreSQL
//! server, a 60-120 s RDS failover would take every instance out of service
//! at once and get the whole fleet replaced. During such an outage API
//! requests answer a fast 503 + `Retry-After` and recover by themselves; the
//! deep check (the database answers) is the `hello_birthday_db_up` metric
//! and its alarm, for people. `hello_birthday_ready` exports this verdict as a gauge.

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

/// Readiness: `Ok` when this instance can do its job as far as it alone
/// decides, else why not. Not ready while it is
/// - starting: it has not yet connected to its database (and migrated)
///   since start-up. A release with a wrong URL, password or network path
///   never gets traffic; a replacement started during a database outage
///   keeps connecting and comes into service by itself when it returns;
/// - draining before shutdown;
/// - on SQLite, when that database, the instance's own file, does not answer.
///
/// A shared PostgreSQL server that goes away after start-up does not count
/// (see the module doc). A wedged runtime fails by not answering within the
/// checker's timeout.
pub async fn check(st: &AppState) -> Result<(), &'static str> {
    if st.draining.load(Ordering::Relaxed) {
        return Err("draining before shutdown");
    }
    if !st.store.connected() {
        return Err("starting: not yet connected to the database");
    }
    if st.store.is_local() {
        let timeout = READY_PING_TIMEOUT.min(st.db_timeout);
        if !matches!(
            tokio::time::timeout(timeout, st.store.ping()).await,
            Ok(Ok(()))
        ) {
            return Err("the instance's own database does not answer");
        }
    }
    Ok(())
}

pub async fn readyz(State(st): State<AppState>) -> Result<Json<Value>, ApiError> {
    check(&st).await.map_err(ApiError::NotReady)?;
    Ok(Json(json!({ "status": "ready" })))
}
