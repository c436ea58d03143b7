//! PostgreSQL (Amazon RDS in production) through a small pool of shared,
//! pipelined connections.
//!
//! Each connection is a `tokio_postgres::Client` used by many calls at once:
//! the client queues their queries and its connection task writes all that
//! are waiting in one system call and reads their answers in one, so a busy
//! connection costs the service and the server fewer system calls and
//! wake-ups per query than one call per checked-out connection. A call takes
//! the first connection with fewer calls in flight than its kind allows
//! ([`READ_DEPTH`], [`WRITE_DEPTH`]), so load gathers on as few connections
//! as it needs; when every connection is that busy it takes the least busy.
//! Statements are prepared when the connection is opened, so a call looks
//! nothing up.
//!
//! The pool reconnects by itself: a connection broken by a server restart or
//! a Multi-AZ failover fails the queries in flight on it (503 to those
//! clients), is seen closed by the next call that picks it, and is replaced
//! by that call. The database timeout bounds a whole call, reconnection
//! included.

use super::migrations::{self, Migration, POSTGRES};
use super::{PoolStatus, StoreError};
use crate::domain::{DateOfBirth, Username};
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio_postgres::error::SqlState;
use tokio_postgres::{Client, Statement};
use tokio_postgres_rustls::MakeRustlsConnect;

/// Any constant shared by every instance: the advisory lock that serialises
/// migrations when several instances start at once.
const MIGRATION_LOCK: i64 = 0x6865_6c6c_6f62_6461; // "hellobda"

/// Calls in flight on one connection before the next call goes to another.
/// Deeper pipelines batch more queries per system call; shallower ones let
/// more backends work in parallel and limit how many calls one slow query
/// holds up behind it. Reads take a connection until it has
/// `READ_DEPTH` calls in flight: on one core, 32 concurrent GETs cost the
/// service about 10% less CPU each on one connection than spread over four.
/// A write's commit waits for its WAL flush and the backend answers nothing
/// else meanwhile, so writes spread wider (`WRITE_DEPTH`) to let several
/// backends commit together; all of them on one connection cut PUT
/// throughput by more than half.
pub const READ_DEPTH: usize = 32;
pub const WRITE_DEPTH: usize = 4;

const SELECT_SQL: &str = "SELECT date_of_birth FROM users WHERE username = $1";
const UPSERT_SQL: &str = "INSERT INTO users (username, date_of_birth) VALUES ($1, $2)
     ON CONFLICT (username) DO UPDATE
     SET date_of_birth = EXCLUDED.date_of_birth, updated_at = now()";
const DELETE_SQL: &str = "DELETE FROM users WHERE username = $1";

/// TLS as `sslmode` in the URL asks (`prefer` by default, `require` in
/// production, where RDS has `rds.force_ssl`). Certificates are verified
/// against the public roots plus the PEM bundle in `ca_file`: RDS server
/// certificates chain to Amazon's RDS CA, which is not a public root.
fn tls_connector(ca_file: Option<&std::path::Path>) -> anyhow::Result<MakeRustlsConnect> {
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
    Ok(MakeRustlsConnect::new(config))
}

/// The migration runner's view of PostgreSQL: a transaction holding the
/// migration advisory lock.
struct Ledger<'c>(tokio_postgres::Transaction<'c>);

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

/// An open connection and its statements, prepared once when it opened.
struct Conn {
    client: Client,
    select: Statement,
    upsert: Statement,
    delete: Statement,
}

impl Conn {
    /// Opens a connection and runs its connection task; `migrate` first
    /// brings the schema up to date, since the statements need the table.
    async fn open(
        config: &tokio_postgres::Config,
        tls: &MakeRustlsConnect,
        migrate: bool,
    ) -> Result<Self, tokio_postgres::Error> {
        let (mut client, connection) = config.connect(tls.clone()).await?;
        tokio::spawn(async move {
            // The error reaches the calls in flight, which report it.
            if let Err(err) = connection.await {
                tracing::debug!(error = %err, "PostgreSQL connection closed");
            }
        });
        if migrate {
            migrate_with(&mut client).await?;
        }
        // Three statements, one round trip: the client pipelines them.
        let (select, upsert, delete) = tokio::try_join!(
            client.prepare(SELECT_SQL),
            client.prepare(UPSERT_SQL),
            client.prepare(DELETE_SQL),
        )?;
        Ok(Self {
            client,
            select,
            upsert,
            delete,
        })
    }
}

async fn migrate_with(client: &mut Client) -> Result<(), tokio_postgres::Error> {
    let tx = client.transaction().await?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])
        .await?;
    let mut ledger = Ledger(tx);
    migrations::run(&mut ledger, POSTGRES, "postgres").await?;
    ledger.0.commit().await
}

/// One place in the pool: a connection (absent until first needed or after
/// the pool closed) and how many calls use it now.
#[derive(Default)]
struct Slot {
    conn: Mutex<Option<Arc<Conn>>>,
    /// One reconnection at a time; the calls behind it use its result.
    opening: tokio::sync::Mutex<()>,
    in_flight: AtomicUsize,
}

impl Slot {
    fn current(&self) -> Option<Arc<Conn>> {
        self.conn.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    fn set(&self, conn: Option<Arc<Conn>>) {
        *self.conn.lock().unwrap_or_else(|e| e.into_inner()) = conn;
    }
}

/// Counts a call on its slot for as long as it lives, cancelled or not.
struct InFlight<'a>(&'a Slot);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

struct Inner {
    config: tokio_postgres::Config,
    tls: MakeRustlsConnect,
    slots: Box<[Slot]>,
    timeout: Duration,
    closed: AtomicBool,
}

#[derive(Clone)]
pub struct PgStore {
    inner: Arc<Inner>,
}

impl PgStore {
    /// `size` connections at most.
    pub async fn connect(
        config: &tokio_postgres::Config,
        ca_file: Option<&std::path::Path>,
        size: std::num::NonZeroUsize,
        timeout: Duration,
    ) -> anyhow::Result<Self> {
        let config = config.clone();
        let tls = tls_connector(ca_file)?;
        // The migrating connection becomes the pool's first one.
        let first = tokio::time::timeout(timeout, Conn::open(&config, &tls, true))
            .await
            .map_err(|_| anyhow::anyhow!("connecting to PostgreSQL timed out"))??;
        let slots: Box<[Slot]> = (0..size.get()).map(|_| Slot::default()).collect();
        slots[0].set(Some(Arc::new(first)));
        Ok(Self {
            inner: Arc::new(Inner {
                config,
                tls,
                slots,
                timeout,
                closed: AtomicBool::new(false),
            }),
        })
    }

    /// The slot for the next call: the first one with fewer than `depth`
    /// calls in flight, else the least busy.
    fn pick(&self, depth: usize) -> InFlight<'_> {
        let slots = &self.inner.slots;
        let mut best = &slots[0];
        let mut best_load = usize::MAX;
        for slot in slots.iter() {
            let load = slot.in_flight.load(Ordering::Relaxed);
            if load < depth {
                best = slot;
                break;
            }
            if load < best_load {
                best = slot;
                best_load = load;
            }
        }
        best.in_flight.fetch_add(1, Ordering::Relaxed);
        InFlight(best)
    }

    /// An open connection of `slot`, opening a new one if it has none or
    /// its last one closed.
    async fn conn(&self, slot: &Slot) -> Result<Arc<Conn>, StoreError> {
        if let Some(conn) = slot.current().filter(|c| !c.client.is_closed()) {
            return Ok(conn);
        }
        let _opening = slot.opening.lock().await;
        if self.inner.closed.load(Ordering::Acquire) {
            return Err(StoreError::unavailable("database pool closed"));
        }
        // Another call may have replaced it while this one waited.
        if let Some(conn) = slot.current().filter(|c| !c.client.is_closed()) {
            return Ok(conn);
        }
        slot.set(None);
        let conn = Arc::new(
            Conn::open(&self.inner.config, &self.inner.tls, false)
                .await
                .map_err(classify_pg)?,
        );
        // Closed while connecting: keep nothing open behind close().
        if self.inner.closed.load(Ordering::Acquire) {
            return Err(StoreError::unavailable("database pool closed"));
        }
        slot.set(Some(conn.clone()));
        Ok(conn)
    }

    /// Runs `call` on a connection, the whole of it (reconnection included)
    /// bounded by the database timeout.
    async fn with_conn<T, F, Fut>(&self, depth: usize, call: F) -> Result<T, StoreError>
    where
        F: FnOnce(Arc<Conn>) -> Fut,
        Fut: Future<Output = Result<T, tokio_postgres::Error>>,
    {
        let slot = self.pick(depth);
        let work = async {
            let conn = self.conn(slot.0).await?;
            call(conn).await.map_err(classify_pg)
        };
        tokio::time::timeout(self.inner.timeout, work)
            .await
            .unwrap_or_else(|_| Err(StoreError::unavailable("database call timed out")))
    }

    pub async fn upsert(&self, user: &Username, dob: DateOfBirth) -> Result<(), StoreError> {
        self.with_conn(WRITE_DEPTH, |c| async move {
            c.client
                .execute(&c.upsert, &[&user.as_str(), &dob.date()])
                .await
        })
        .await?;
        Ok(())
    }

    pub async fn get(&self, user: &Username) -> Result<Option<DateOfBirth>, StoreError> {
        let row = self
            .with_conn(READ_DEPTH, |c| async move {
                c.client.query_opt(&c.select, &[&user.as_str()]).await
            })
            .await?;
        Ok(row.map(|r| DateOfBirth::from_stored(r.get::<_, time::Date>(0))))
    }

    pub async fn delete(&self, user: &Username) -> Result<bool, StoreError> {
        let n = self
            .with_conn(WRITE_DEPTH, |c| async move {
                c.client.execute(&c.delete, &[&user.as_str()]).await
            })
            .await?;
        Ok(n > 0)
    }

    pub async fn ping(&self) -> Result<(), StoreError> {
        self.with_conn(READ_DEPTH, |c| async move {
            c.client.simple_query("SELECT 1").await
        })
        .await?;
        Ok(())
    }

    /// Open connections, busy (`in_use`: a call in flight) or idle, and the
    /// most the pool opens.
    pub fn pool_status(&self) -> PoolStatus {
        let mut status = PoolStatus {
            max: self.inner.slots.len(),
            ..PoolStatus::default()
        };
        for slot in self.inner.slots.iter() {
            if slot.current().is_some_and(|c| !c.client.is_closed()) {
                if slot.in_flight.load(Ordering::Relaxed) > 0 {
                    status.in_use += 1;
                } else {
                    status.idle += 1;
                }
            }
        }
        status
    }

    /// Closes every connection (each ends once its calls in flight are
    /// answered); later calls fail as unavailable.
    pub fn close(&self) {
        self.inner.closed.store(true, Ordering::Release);
        for slot in self.inner.slots.iter() {
            slot.set(None);
        }
    }
}
