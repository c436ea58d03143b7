//! PostgreSQL (Amazon RDS in production) through a connection pool.
//!
//! The pool reconnects by itself: a connection broken by a server restart or
//! a Multi-AZ failover fails its query (503 to that client), is found closed
//! when it comes back to the pool, and is replaced by a new one on the next
//! checkout. Statements are prepared once per connection and reused.

use super::migrations::POSTGRES;
use super::{PoolStatus, StoreError};
use crate::domain::{DateOfBirth, Username};
use deadpool_postgres::{Manager, ManagerConfig, Pool, PoolError, RecyclingMethod, Runtime};
use std::future::Future;
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

#[derive(Clone)]
pub struct PgStore {
    pool: Pool,
    timeout: Duration,
}

fn classify_pg(err: &tokio_postgres::Error) -> StoreError {
    if let Some(db) = err.as_db_error() {
        let code = db.code();
        if *code == SqlState::DISK_FULL {
            return StoreError::Full(db.message().to_owned());
        }
        let class = &code.code()[..2];
        // 08 connection exception, 53 insufficient resources, 57 operator
        // intervention (shutdown, failover), 25006 read-only transaction (a
        // demoted primary during failover).
        if matches!(class, "08" | "53" | "57") || *code == SqlState::READ_ONLY_SQL_TRANSACTION {
            return StoreError::Unavailable(db.message().to_owned());
        }
        return StoreError::Internal(db.message().to_owned());
    }
    // No server error: the connection itself failed or was closed.
    StoreError::Unavailable(err.to_string())
}

fn classify_pool(err: PoolError) -> StoreError {
    match err {
        PoolError::Backend(e) => classify_pg(&e),
        other => StoreError::Unavailable(other.to_string()),
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
        tx.batch_execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations (
                 version INTEGER PRIMARY KEY,
                 description TEXT NOT NULL,
                 applied_at TIMESTAMPTZ NOT NULL DEFAULT now())",
        )
        .await?;
        let current: i32 = tx
            .query_one(
                "SELECT coalesce(max(version), 0) FROM schema_migrations",
                &[],
            )
            .await?
            .get(0);
        for m in POSTGRES.iter().filter(|m| m.version > current) {
            tx.batch_execute(m.sql).await?;
            tx.execute(
                "INSERT INTO schema_migrations (version, description) VALUES ($1, $2)",
                &[&m.version, &m.description],
            )
            .await?;
            tracing::info!(
                version = m.version,
                description = m.description,
                "applied migration"
            );
        }
        tx.commit().await?;
        Ok(())
    }

    /// Bounds a whole call, pool wait included, by the database timeout.
    async fn bounded<T>(
        &self,
        call: impl Future<Output = Result<T, StoreError>>,
    ) -> Result<T, StoreError> {
        tokio::time::timeout(self.timeout, call)
            .await
            .unwrap_or_else(|_| Err(StoreError::Unavailable("database call timed out".into())))
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
                .map_err(|e| classify_pg(&e))?;
            client
                .execute(&stmt, &[&user.as_str(), &dob.date()])
                .await
                .map_err(|e| classify_pg(&e))?;
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
                .map_err(|e| classify_pg(&e))?;
            let row = client
                .query_opt(&stmt, &[&user.as_str()])
                .await
                .map_err(|e| classify_pg(&e))?;
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
                .map_err(|e| classify_pg(&e))?;
            let n = client
                .execute(&stmt, &[&user.as_str()])
                .await
                .map_err(|e| classify_pg(&e))?;
            Ok(n > 0)
        })
        .await
    }

    pub async fn ping(&self) -> Result<(), StoreError> {
        self.bounded(async {
            let client = self.pool.get().await.map_err(classify_pool)?;
            client
                .simple_query("SELECT 1")
                .await
                .map_err(|e| classify_pg(&e))?;
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
