//! Storage behind one small interface, chosen by the database
//! `DATABASE_URL` names (parsed once, in `config`): SQLite (embedded, the
//! default) or PostgreSQL.
//!
//! An enum rather than a trait object: two backends, known at compile time,
//! and no boxing of futures on the hot path.

mod handle;
mod migrations;
pub mod postgres;
pub mod sqlite;

use crate::config::{Config, Database};
use crate::domain::{DateOfBirth, Username};
use anyhow::Context;
use std::sync::Arc;

pub use handle::StoreHandle;

/// The error beneath a [`StoreError`], shared: one failed SQLite batch
/// answers every write in it with the same cause.
pub type Cause = Arc<dyn std::error::Error + Send + Sync + 'static>;

/// Why a storage call failed, in the terms the API answers with. The
/// driver's error stays attached as the `source`, so the log line shows the
/// whole chain (see [`StoreError::chain`]) while the client sees none of it.
#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    /// The database cannot be reached or did not answer in time (503).
    #[error("database unavailable")]
    Unavailable(#[source] Cause),
    /// The disk is full (507): reads still work, writes wait for space.
    #[error("storage full")]
    Full(#[source] Cause),
    /// Anything else (500, never echoed to the client).
    #[error("database error")]
    Internal(#[source] Cause),
}

/// A cause that is only a sentence (a timeout, a stopped writer).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct Reason(&'static str);

impl StoreError {
    pub fn unavailable(reason: &'static str) -> Self {
        Self::Unavailable(Arc::new(Reason(reason)))
    }

    pub fn internal(reason: &'static str) -> Self {
        Self::Internal(Arc::new(Reason(reason)))
    }

    /// `database error: no such table: users: SQL logic error`: this error
    /// and every source beneath it, for the logs.
    pub fn chain(&self) -> String {
        let mut out = self.to_string();
        let mut next = std::error::Error::source(self);
        while let Some(e) = next {
            let text = e.to_string();
            // Drivers often repeat their inner error in their own message.
            if !out.ends_with(&text) {
                out.push_str(": ");
                out.push_str(&text);
            }
            next = e.source();
        }
        out
    }
}

/// Connection counts for the pool metrics.
#[derive(Debug, Clone, Copy, Default)]
pub struct PoolStatus {
    pub idle: usize,
    pub in_use: usize,
    pub max: usize,
}

#[derive(Clone)]
pub enum Store {
    Sqlite(sqlite::SqliteStore),
    Postgres(postgres::PgStore),
}

impl Store {
    /// Opens the database named by the configuration and applies migrations.
    pub async fn connect(config: &Config) -> anyhow::Result<Self> {
        match config.database_url.database() {
            Database::Sqlite(path) => {
                let store = sqlite::SqliteStore::open(path, config.db_timeout)
                    .with_context(|| format!("opening SQLite database {}", path.display()))?;
                Ok(Self::Sqlite(store))
            }
            Database::Postgres(pg) => {
                let ca = config.database_ca_file.as_deref();
                let store =
                    postgres::PgStore::connect(pg, ca, config.db_pool_size, config.db_timeout)
                        .await
                        .with_context(|| format!("connecting to {}", config.database_url))?;
                Ok(Self::Postgres(store))
            }
        }
    }

    pub fn backend(&self) -> &'static str {
        match self {
            Self::Sqlite(_) => "sqlite",
            Self::Postgres(_) => "postgres",
        }
    }

    pub async fn upsert(&self, user: &Username, dob: DateOfBirth) -> Result<(), StoreError> {
        match self {
            Self::Sqlite(s) => s.upsert(user, dob).await,
            Self::Postgres(s) => s.upsert(user, dob).await,
        }
    }

    pub async fn get(&self, user: &Username) -> Result<Option<DateOfBirth>, StoreError> {
        match self {
            Self::Sqlite(s) => s.get(user),
            Self::Postgres(s) => s.get(user).await,
        }
    }

    /// Whether a row was there to delete.
    pub async fn delete(&self, user: &Username) -> Result<bool, StoreError> {
        match self {
            Self::Sqlite(s) => s.delete(user).await,
            Self::Postgres(s) => s.delete(user).await,
        }
    }

    /// A round trip through the database, for readiness.
    pub async fn ping(&self) -> Result<(), StoreError> {
        match self {
            Self::Sqlite(s) => s.ping().await,
            Self::Postgres(s) => s.ping().await,
        }
    }

    pub fn pool_status(&self) -> PoolStatus {
        match self {
            Self::Sqlite(s) => s.pool_status(),
            Self::Postgres(s) => s.pool_status(),
        }
    }

    /// Whether an acknowledged erasure may still be readable in the live
    /// SQLite files (PostgreSQL: never tracked, see docs/security.md).
    pub fn erasure_pending(&self) -> bool {
        match self {
            Self::Sqlite(s) => s.erasure_pending(),
            Self::Postgres(_) => false,
        }
    }

    /// Stops background work (the SQLite writer) and closes connections.
    pub async fn close(&self) {
        match self {
            Self::Sqlite(s) => s.close().await,
            Self::Postgres(s) => s.close(),
        }
    }
}
