//! PostgreSQL (Amazon RDS in production) through a connection pool.
//!
//! The pool reconnects by itself: a connection broken by a server restart or
//! a Multi-AZ failover fails its query (503 to that client), is found closed
//! when it comes back to the pool, and is replaced by a new one on the next
//! checkout. Statements are prepared once per connection and reused.

use super::migrations::{self, Migration, POSTGRES};
use super::{PoolStatus, StoreError};
use crate::domain::{DateOfBirth, Username};
use deadpool_postgres::{Manager, ManagerConfig, Pool, PoolError, RecyclingMethod, Runtime};
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;
use tokio_postgres::error::SqlState;

/// Any constant shared by every instance: the advisory lock that serialises
/// migrations when several instances start at once.
const MIGRATION_LOCK: i64 = 0x6865_6c6c_6f62_6461; // "hellobda"

/// TLS as `sslmode` in the URL asks (`prefer` by default, `require` in
/// production, where RDS has `rds.force_ssl`). Certificates are verified
/// against the public roots plus the PEM bundle in `ca_file`: RDS server
/// certificates chain to Amazon's RDS CA, which is not a public root.
fn tls_connector(
    ca_file: Option<&std::path::Path>,
) -> anyhow::Result<tokio_postgres_rustls::MakeRustlsConnect> {
    use anyhow::Context;
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    if let Some(path) = ca_file {
        let certs = CertificateDer::pem_file_iter(path)
            .with_context(|| format!("reading DATABASE_CA_FILE {}", path.display()))?;
        for cert in certs {
            roots.add(cert.with_context(|| format!("parsing {}", path.display()))?)?;
        }
    }
    let config = rustls::ClientConfig::builder_with_provider(
        rustls::crypto::ring::default_provider().into(),
    )
    .with_safe_default_protocol_versions()?
    .with_root_certificates(roots)
    .with_no_client_auth();
    Ok(tokio_postgres_rustls::MakeRustlsConnect::new(config))
}

/// The migration runner's view of PostgreSQL: a transaction holding the
/// migration advisory lock.
struct Ledger<'c>(deadpool_postgres::Transaction<'c>);

impl migrations::Ledger for Ledger<'_> {
    type Error = tokio_postgres::Error;

    async fn current_version(&mut self) -> Result<i32, Self::Error> {
        self.0
            .batch_execute(
                "CREATE TABLE IF NOT EXISTS schema_migrations (
                     version INTEGER PRIMARY KEY,
                     description TEXT NOT NULL,
                     applied_at TIMESTAMPTZ NOT NULL DEFAULT now())",
            )
            .await?;
        Ok(self
            .0
            .query_one(migrations::CURRENT_VERSION_SQL, &[])
            .await?
            .get(0))
    }

    async fn apply(&mut self, m: &Migration) -> Result<(), Self::Error> {
        self.0.batch_execute(m.sql).await?;
        self.0
            .execute(
                "INSERT INTO schema_migrations (version, description) VALUES ($1, $2)",
                &[&m.version, &m.description],
            )
            .await?;
        Ok(())
    }
}

#[derive(Clone)]
pub struct PgStore {
    pool: Pool,
    timeout: Duration,
}

fn classify_pg(err: tokio_postgres::Error) -> StoreError {
    let kind = match err.as_db_error().map(|db| db.code()) {
        Some(code) if *code == SqlState::DISK_FULL => StoreError::Full,
        // 08 connection exception, 53 insufficient resources, 57 operator
        // intervention (shutdown, failover), 25006 read-only transaction (a
        // demoted primary during failover).
        Some(code)
            if matches!(&code.code()[..2], "08" | "53" | "57")
                || *code == SqlState::READ_ONLY_SQL_TRANSACTION =>
        {
            StoreError::Unavailable
        }
        Some(_) => StoreError::Internal,
        // No server error: the connection itself failed or was closed.
        None => StoreError::Unavailable,
    };
    kind(Arc::new(err))
}

fn classify_pool(err: PoolError) -> StoreError {
    match err {
        PoolError::Backend(e) => classify_pg(e),
        other => StoreError::Unavailable(Arc::new(other)),
    }
}

impl PgStore {
    pub async fn connect(
        url: &str,
        ca_file: Option<&std::path::Path>,
        size: usize,
        timeout: Duration,
    ) -> anyhow::Result<Self> {
        let pg_config: tokio_postgres::Config = url.parse()?;
        let manager = Manager::from_config(
            pg_config,
            tls_connector(ca_file)?,
            ManagerConfig {
                recycling_method: RecyclingMethod::Fast,
            },
        );
        let pool = Pool::builder(manager)
            .max_size(size.max(1))
            .runtime(Runtime::Tokio1)
            .wait_timeout(Some(timeout))
            .create_timeout(Some(timeout))
            .recycle_timeout(Some(timeout))
            .build()?;
        let store = Self { pool, timeout };
        store.migrate().await?;
        Ok(store)
    }

    async fn migrate(&self) -> anyhow::Result<()> {
        let mut client = self.pool.get().await?;
        let tx = client.transaction().await?;
        tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])
            .await?;
        let mut ledger = Ledger(tx);
        migrations::run(&mut ledger, POSTGRES, "postgres").await?;
        ledger.0.commit().await?;
        Ok(())
    }

    /// Bounds a whole call, pool wait included, by the database timeout.
    async fn bounded<T>(
        &self,
        call: impl Future<Output = Result<T, StoreError>>,
    ) -> Result<T, StoreError> {
        tokio::time::timeout(self.timeout, call)
            .await
            .unwrap_or_else(|_| Err(StoreError::unavailable("database call timed out")))
    }

    pub async fn upsert(&self, user: &Username, dob: DateOfBirth) -> Result<(), StoreError> {
        self.bounded(async {
            let client = self.pool.get().await.map_err(classify_pool)?;
            let stmt = client
                .prepare_cached(
                    "INSERT INTO users (username, date_of_birth) VALUES ($1, $2)
                     ON CONFLICT (username) DO UPDATE
                     SET date_of_birth = EXCLUDED.date_of_birth, updated_at = now()",
                )
                .await
                .map_err(classify_pg)?;
            client
                .execute(&stmt, &[&user.as_str(), &dob.date()])
                .await
                .map_err(classify_pg)?;
            Ok(())
        })
        .await
    }

    pub async fn get(&self, user: &Username) -> Result<Option<DateOfBirth>, StoreError> {
        self.bounded(async {
            let client = self.pool.get().await.map_err(classify_pool)?;
            let stmt = client
                .prepare_cached("SELECT date_of_birth FROM users WHERE username = $1")
                .await
                .map_err(classify_pg)?;
            let row = client
                .query_opt(&stmt, &[&user.as_str()])
                .await
                .map_err(classify_pg)?;
            Ok(row.map(|r| DateOfBirth::from_stored(r.get::<_, time::Date>(0))))
        })
        .await
    }

    pub async fn delete(&self, user: &Username) -> Result<bool, StoreError> {
        self.bounded(async {
            let client = self.pool.get().await.map_err(classify_pool)?;
            let stmt = client
                .prepare_cached("DELETE FROM users WHERE username = $1")
                .await
                .map_err(classify_pg)?;
            let n = client
                .execute(&stmt, &[&user.as_str()])
                .await
                .map_err(classify_pg)?;
            Ok(n > 0)
        })
        .await
    }

    pub async fn ping(&self) -> Result<(), StoreError> {
        self.bounded(async {
            let client = self.pool.get().await.map_err(classify_pool)?;
            client.simple_query("SELECT 1").await.map_err(classify_pg)?;
            Ok(())
        })
        .await
    }

    pub fn pool_status(&self) -> PoolStatus {
        let s = self.pool.status();
        PoolStatus {
            idle: s.available,
            in_use: s.size - s.available,
            max: s.max_size,
        }
    }

    pub fn close(&self) {
        self.pool.close();
    }
}
