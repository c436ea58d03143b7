//! [`StoreHandle`]: the store as the running service sees it, connected, or
//! still connecting to a shared database that was away when the process
//! started.
//!
//! A replacement instance launched during a database outage must come into
//! service by itself once the database is back, without a human. So start-up
//! tries the database once; if a PostgreSQL server does not answer (or the
//! migrations cannot run yet), the service starts serving anyway, answers API
//! requests with 503 + `Retry-After` exactly as during an outage of a running
//! instance, and keeps connecting (and migrating) in the background with
//! capped exponential backoff. What cannot heal by waiting still stops the
//! process at once: a malformed or unknown URL (refused when the
//! configuration is read), an unreadable CA file, a SQLite file that cannot
//! be opened (that database is the instance's own), and a server that
//! answers but refuses us: an untrusted certificate, failed authentication,
//! a database that does not exist.

use super::{PoolStatus, Store, StoreError};
use crate::config::{Config, Database};
use crate::domain::{DateOfBirth, Username};
use anyhow::Context;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

/// First retry delay; doubles per failed attempt up to `RETRY_MAX`.
const RETRY_FIRST: Duration = Duration::from_millis(250);
/// The cap bounds how long after the database returns a replacement still
/// answers 503: at most this plus one connection attempt. Attempts are
/// cheap (one TCP connect per instance every few seconds).
const RETRY_MAX: Duration = Duration::from_secs(5);

/// The store, or the promise of one: API calls answer 503 until it connects.
#[derive(Clone)]
pub struct StoreHandle {
    inner: Arc<Inner>,
}

struct Inner {
    store: OnceLock<Store>,
    backend: &'static str,
    closed: AtomicBool,
    attempts: AtomicU32,
}

/// Why the store is not there, as API callers see it.
const CONNECTING: &str = "still connecting to the database";

impl StoreHandle {
    /// Opens the database; for PostgreSQL, a server that does not answer
    /// leaves the handle connecting in the background instead of failing.
    pub async fn connect(config: &Config) -> anyhow::Result<Self> {
        if let Database::Sqlite(_) = config.database_url.database() {
            // The instance's own file: nothing to wait for.
            let store = Store::connect(config).await?;
            return Ok(Self::ready(store));
        }
        // Permanent mistakes stop the process now, before any waiting (the
        // URL itself was checked when the configuration was read).
        if let Some(ca) = config.database_ca_file.as_deref() {
            std::fs::metadata(ca)
                .with_context(|| format!("reading DATABASE_CA_FILE {}", ca.display()))?;
        }
        match Store::connect(config).await {
            Ok(store) => Ok(Self::ready(store)),
            Err(e) if refused_by_a_live_server(&e) => Err(e),
            Err(e) => {
                tracing::warn!(
                    error = format!("{e:#}"),
                    "the database is not reachable at start-up: serving 503 until it is"
                );
                let handle = Self::empty("postgres");
                handle.inner.attempts.store(1, Ordering::Relaxed);
                tokio::spawn(retry(handle.clone(), config.clone()));
                Ok(handle)
            }
        }
    }

    fn ready(store: Store) -> Self {
        let h = Self::empty(store.backend());
        let _ = h.inner.store.set(store);
        h
    }

    fn empty(backend: &'static str) -> Self {
        Self {
            inner: Arc::new(Inner {
                store: OnceLock::new(),
                backend,
                closed: AtomicBool::new(false),
                attempts: AtomicU32::new(0),
            }),
        }
    }

    fn store(&self) -> Result<&Store, StoreError> {
        self.inner.store.get().ok_or_else(|| {
            StoreError::Unavailable(
                Box::<dyn std::error::Error + Send + Sync>::from(CONNECTING).into(),
            )
        })
    }

    pub fn backend(&self) -> &'static str {
        self.inner.backend
    }

    /// Whether the store has connected (and migrated) at least once.
    pub fn connected(&self) -> bool {
        self.inner.store.get().is_some()
    }

    /// The database is this instance's own (SQLite): its failure is this
    /// instance's failure, unlike a shared PostgreSQL server's.
    pub fn is_local(&self) -> bool {
        self.inner.backend == "sqlite"
    }

    pub async fn upsert(&self, user: &Username, dob: DateOfBirth) -> Result<(), StoreError> {
        self.store()?.upsert(user, dob).await
    }

    pub async fn get(&self, user: &Username) -> Result<Option<DateOfBirth>, StoreError> {
        self.store()?.get(user).await
    }

    pub async fn delete(&self, user: &Username) -> Result<bool, StoreError> {
        self.store()?.delete(user).await
    }

    pub async fn ping(&self) -> Result<(), StoreError> {
        self.store()?.ping().await
    }

    pub fn pool_status(&self) -> PoolStatus {
        self.store().map(Store::pool_status).unwrap_or_default()
    }

    pub fn erasure_pending(&self) -> bool {
        self.store().is_ok_and(Store::erasure_pending)
    }

    /// Stops connecting, and closes the store if it is there.
    pub async fn close(&self) {
        self.inner.closed.store(true, Ordering::SeqCst);
        if let Some(s) = self.inner.store.get() {
            s.close().await;
        }
    }
}

/// The server answered and said no: waiting will not change that, and
/// exiting lets systemd restart the process with a re-read configuration
/// (the env file is rewritten from the secret before every start).
fn refused_by_a_live_server(e: &anyhow::Error) -> bool {
    e.chain().any(|cause| {
        if let Some(db) = cause
            .downcast_ref::<tokio_postgres::Error>()
            .and_then(tokio_postgres::Error::as_db_error)
        {
            // 28: invalid authorization; 3D000: no such database.
            let code = db.code().code();
            return code.starts_with("28") || code == "3D000";
        }
        // rustls reports an untrusted or invalid server certificate inside
        // an io::Error; its message is the only stable handle.
        cause.to_string().to_lowercase().contains("certificate")
    })
}

async fn retry(handle: StoreHandle, config: Config) {
    let mut delay = RETRY_FIRST;
    loop {
        // Jitter (up to a quarter of the delay) so a fleet started together
        // does not reconnect in lockstep.
        let jitter = delay.mul_f64(f64::from(crate::build::instance_nonce() % 256) / 1024.0);
        tokio::time::sleep(delay + jitter).await;
        if handle.inner.closed.load(Ordering::SeqCst) {
            return;
        }
        let attempt = handle.inner.attempts.fetch_add(1, Ordering::Relaxed) + 1;
        match Store::connect(&config).await {
            Ok(store) => {
                tracing::info!(attempt, "connected to the database");
                let _ = handle.inner.store.set(store);
                if handle.inner.closed.load(Ordering::SeqCst) {
                    // Closed while this attempt was in flight.
                    if let Some(s) = handle.inner.store.get() {
                        s.close().await;
                    }
                }
                return;
            }
            Err(e) => {
                tracing::warn!(
                    attempt,
                    retry_in_ms = delay.as_millis() as u64,
                    error = format!("{e:#}"),
                    "the database is still not reachable"
                );
                delay = (delay * 2).min(RETRY_MAX);
            }
        }
    }
}
