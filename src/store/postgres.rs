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
//! Concurrent requests are batched, so one round trip, one plan execution
//! and (for writes) one commit and WAL flush serve many: GETs waiting
//! together become one statement over the array of their names, PUTs and
//! DELETEs one statement in one transaction ([`Batcher`]). A request never waits for
//! company: it starts a batch at once unless [`READ_BATCHES`] /
//! [`WRITE_BATCHES`] batches are already running, and then joins the next
//! one, which starts as soon as one of them ends. So batches grow with the
//! load by themselves, and at low load every request is a batch of one, run
//! by the request itself with the single-row statement (no task, channel or
//! extra wake-up).
//!
//! The pool reconnects by itself: a connection broken by a server restart or
//! a Multi-AZ failover fails the queries in flight on it (503 to those
//! clients), is seen closed by the next call that picks it, and is replaced
//! by that call. The database timeout bounds a whole call, reconnection
//! included.

use super::migrations::{self, Migration, POSTGRES};
use super::{Name, PoolStatus, StoreError};
use crate::domain::{DateOfBirth, Username};
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::oneshot;
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
/// else meanwhile, so each write (a batch, or a write alone) takes a
/// connection of its own (`WRITE_DEPTH` 1), searched from the other end of
/// the pool: concurrent write batches commit on separate backends, and no
/// read waits behind a commit on its connection.
pub const READ_DEPTH: usize = 32;
pub const WRITE_DEPTH: usize = 1;

const SELECT_SQL: &str = "SELECT date_of_birth FROM users WHERE username = $1";
const UPSERT_SQL: &str = "INSERT INTO users (username, date_of_birth) VALUES ($1, $2)
     ON CONFLICT (username) DO UPDATE
     SET date_of_birth = EXCLUDED.date_of_birth, updated_at = now()";
const DELETE_SQL: &str = "DELETE FROM users WHERE username = $1";
/// A batch of reads: one primary-key probe per name (a subquery per input
/// row, so the plan cannot turn into a scan of the table whatever the
/// planner guesses of the array's size), answered with the name's position
/// in the array.
const SELECT_MANY_SQL: &str =
    "SELECT k.n, (SELECT date_of_birth FROM users WHERE username = k.username)
     FROM unnest($1::text[]) WITH ORDINALITY AS k(username, n)";
/// A batch of upserts alone (no DELETE in the batch, the usual case).
const UPSERT_MANY_SQL: &str = "INSERT INTO users (username, date_of_birth)
     SELECT * FROM unnest($1::text[], $2::date[])
     ON CONFLICT (username) DO UPDATE
     SET date_of_birth = EXCLUDED.date_of_birth, updated_at = now()";
/// A batch of writes, reduced to one final operation per user (see
/// [`plan_writes`]): one statement, so one transaction and one commit. The
/// CTEs see one snapshot and touch disjoint rows. `existed` says whether
/// the row was there before: a deleted row was; an upserted row was if it
/// was updated, not inserted (`xmax` is 0 only on a freshly inserted row).
const WRITE_MANY_SQL: &str = "WITH deleted AS (
         DELETE FROM users WHERE username = ANY($3::text[]) RETURNING username
     ), upserted AS (
         INSERT INTO users (username, date_of_birth)
         SELECT * FROM unnest($1::text[], $2::date[])
         ON CONFLICT (username) DO UPDATE
         SET date_of_birth = EXCLUDED.date_of_birth, updated_at = now()
         RETURNING username, xmax <> 0 AS existed
     )
     SELECT username, true FROM deleted
     UNION ALL SELECT username, existed FROM upserted";

/// Batches running at once, per kind. More than one lets a batch's round
/// trip (and a write batch's WAL flush) overlap the next one's execution;
/// each extra one splits the waiting requests into smaller batches. One
/// read batch at a time was measured (bench/README.md, "Reading run
/// 20261207T164924Z"): batches about 50% larger at 32 connections and
/// 7-15% less database CPU per GET, but a worse p99 in two of three pairs.
pub const READ_BATCHES: usize = 2;
pub const WRITE_BATCHES: usize = 2;
/// The most requests in one batch: bounds one statement's arrays and how
/// long one batch holds its rows locked.
pub const MAX_BATCH: usize = 256;

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
    select_many: Statement,
    upsert_many: Statement,
    write_many: Statement,
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
        // Six statements, one round trip: the client pipelines them.
        let (select, upsert, delete, select_many, upsert_many, write_many) = tokio::try_join!(
            client.prepare(SELECT_SQL),
            client.prepare(UPSERT_SQL),
            client.prepare(DELETE_SQL),
            client.prepare(SELECT_MANY_SQL),
            client.prepare(UPSERT_MANY_SQL),
            client.prepare(WRITE_MANY_SQL),
        )?;
        Ok(Self {
            client,
            select,
            upsert,
            delete,
            select_many,
            upsert_many,
            write_many,
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
    reads: Batcher<Read>,
    writes: Batcher<Write>,
    stats: Stats,
}

#[derive(Default)]
struct Stats {
    read_batches: AtomicU64,
    reads: AtomicU64,
    write_batches: AtomicU64,
    writes: AtomicU64,
}

impl Stats {
    fn count_reads(&self, batch: usize) {
        self.read_batches.fetch_add(1, Ordering::Relaxed);
        self.reads.fetch_add(batch as u64, Ordering::Relaxed);
    }

    fn count_writes(&self, batch: usize) {
        self.write_batches.fetch_add(1, Ordering::Relaxed);
        self.writes.fetch_add(batch as u64, Ordering::Relaxed);
    }
}

/// Batches run since the store opened, per kind (a batch of one included).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchStats {
    pub read_batches: u64,
    pub write_batches: u64,
    /// Requests queued now for the next batch.
    pub reads_waiting: usize,
    pub writes_waiting: usize,
}

#[derive(Clone, Copy)]
enum Kind {
    Read,
    Write,
}

/// A batch of one run by its own request; handed off when it ends,
/// answered, failed or cancelled.
struct Lead<'a>(&'a PgStore, Kind);

impl Drop for Lead<'_> {
    fn drop(&mut self) {
        self.0.hand_off(self.1);
    }
}

/// A GET waiting for its batch.
struct Read {
    user: Name,
    reply: oneshot::Sender<Result<Option<time::Date>, StoreError>>,
}

/// A PUT (`dob` set) or DELETE waiting for its batch; the answer is
/// whether a row was there (what DELETE reports).
struct Write {
    user: Name,
    dob: Option<time::Date>,
    reply: oneshot::Sender<Result<bool, StoreError>>,
}

/// Requests waiting for a batch, and how many batches run.
struct Batcher<R> {
    state: Mutex<Waiting<R>>,
    max_running: usize,
}

struct Waiting<R> {
    queue: Vec<R>,
    /// A drained batch's vector, kept for the next batch's queue: no
    /// allocation per batch once the vectors have grown.
    spare: Vec<R>,
    running: usize,
}

impl<R> Batcher<R> {
    fn new(max_running: usize) -> Self {
        Self {
            state: Mutex::new(Waiting {
                queue: Vec::new(),
                spare: Vec::new(),
                running: 0,
            }),
            max_running: max_running.max(1),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Waiting<R>> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// True if nothing waits and a runner is free: the caller then runs its
    /// own request as a batch of one and calls [`Self::finish_lead`].
    fn try_lead(&self) -> bool {
        let mut w = self.lock();
        let lead = w.queue.is_empty() && w.running < self.max_running;
        if lead {
            w.running += 1;
        }
        lead
    }

    /// Ends a batch of one: true if requests queued meanwhile, and the
    /// caller must start a runner for them (which takes over its place).
    fn finish_lead(&self) -> bool {
        let mut w = self.lock();
        let more = !w.queue.is_empty();
        if !more {
            w.running -= 1;
        }
        more
    }

    /// Queues a request; true if the caller must start a runner (fewer
    /// than `max_running` run), which then takes it at once.
    fn push(&self, request: R) -> bool {
        let mut w = self.lock();
        w.queue.push(request);
        let start = w.running < self.max_running;
        if start {
            w.running += 1;
        }
        start
    }

    /// The next batch for a runner: everything waiting, up to
    /// [`MAX_BATCH`] in arrival order; `None` when nothing waits, and the
    /// runner stops.
    fn next(&self) -> Option<Vec<R>> {
        let mut w = self.lock();
        if w.queue.is_empty() {
            w.running -= 1;
            return None;
        }
        if w.queue.len() <= MAX_BATCH {
            let spare = std::mem::take(&mut w.spare);
            Some(std::mem::replace(&mut w.queue, spare))
        } else {
            Some(w.queue.drain(..MAX_BATCH).collect())
        }
    }

    /// Gives back a batch's vector, emptied, for reuse.
    fn recycle(&self, mut batch: Vec<R>) {
        batch.clear();
        let mut w = self.lock();
        if batch.capacity() > w.spare.capacity() {
            w.spare = batch;
        }
    }
}

/// What a write answers once its batch has committed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Answer {
    /// Decided by an earlier write of the same user in the batch.
    Known(bool),
    /// Whether the row was there before the batch (the statement says).
    ExistedBefore,
}

/// A batch of writes as one statement's arrays: each user's writes applied
/// in arrival order leave only the last one's effect (an upsert of its date
/// or a delete), and each write's answer follows from the writes of that
/// user before it in the batch, or from the row as the batch found it.
#[derive(Debug, Default, PartialEq, Eq)]
struct WritePlan<'a> {
    upsert_names: Vec<&'a str>,
    upsert_dobs: Vec<time::Date>,
    deletes: Vec<&'a str>,
    answers: Vec<Answer>,
}

fn plan_writes<'a>(batch: &'a [Write]) -> WritePlan<'a> {
    // Per user: the final date (None: deleted) and whether the row exists
    // after the writes seen so far (None: as before the batch).
    let mut users: Vec<(&str, Option<time::Date>, Option<bool>)> = Vec::new();
    let mut answers = Vec::with_capacity(batch.len());
    for w in batch {
        let i = match users.iter().position(|(u, _, _)| *u == w.user.as_str()) {
            Some(i) => i,
            None => {
                users.push((w.user.as_str(), None, None));
                users.len() - 1
            }
        };
        let entry = &mut users[i];
        answers.push(match w.dob {
            Some(_) => Answer::Known(true),
            None => entry.2.map_or(Answer::ExistedBefore, Answer::Known),
        });
        entry.1 = w.dob;
        entry.2 = Some(w.dob.is_some());
    }
    let mut plan = WritePlan {
        answers,
        ..WritePlan::default()
    };
    for (user, dob, _) in users {
        match dob {
            Some(d) => {
                plan.upsert_names.push(user);
                plan.upsert_dobs.push(d);
            }
            None => plan.deletes.push(user),
        }
    }
    plan
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
                reads: Batcher::new(READ_BATCHES),
                writes: Batcher::new(WRITE_BATCHES),
                stats: Stats::default(),
            }),
        })
    }

    /// The slot for the next call: the first one with fewer than `depth`
    /// calls in flight, else the least busy. Reads search from the first
    /// slot, writes from the last.
    fn pick(&self, depth: usize) -> InFlight<'_> {
        let slots = &self.inner.slots;
        let mut best = &slots[0];
        let mut best_load = usize::MAX;
        let order: &mut dyn Iterator<Item = &Slot> = if depth == WRITE_DEPTH {
            &mut slots.iter().rev()
        } else {
            &mut slots.iter()
        };
        for slot in order {
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
        self.write(user, Some(dob.date())).await.map(|_| ())
    }

    pub async fn get(&self, user: &Username) -> Result<Option<DateOfBirth>, StoreError> {
        if self.inner.reads.try_lead() {
            // Nothing waits and a runner is free: this request is a batch
            // of one, run here (no task, no channel).
            let _lead = Lead(self, Kind::Read);
            let user = user.as_str();
            self.inner.stats.count_reads(1);
            let row = self
                .with_conn(READ_DEPTH, |c| async move {
                    c.client.query_opt(&c.select, &[&user]).await
                })
                .await?;
            return Ok(row.map(|r| DateOfBirth::from_stored(r.get::<_, time::Date>(0))));
        }
        let (reply, answer) = oneshot::channel();
        let read = Read {
            user: Name::new(user),
            reply,
        };
        if self.inner.reads.push(read) {
            tokio::spawn(self.clone().run_reads());
        }
        let found = self.wait(answer).await?;
        Ok(found.map(DateOfBirth::from_stored))
    }

    /// Whether a row was there to delete.
    pub async fn delete(&self, user: &Username) -> Result<bool, StoreError> {
        self.write(user, None).await
    }

    /// Queues a write (`Some` upserts that date, `None` deletes) and waits
    /// for the commit of the batch holding it.
    async fn write(&self, user: &Username, dob: Option<time::Date>) -> Result<bool, StoreError> {
        if self.inner.writes.try_lead() {
            let _lead = Lead(self, Kind::Write);
            self.inner.stats.count_writes(1);
            return self.write_alone(user.as_str(), dob).await;
        }
        let (reply, answer) = oneshot::channel();
        let write = Write {
            user: Name::new(user),
            dob,
            reply,
        };
        if self.inner.writes.push(write) {
            tokio::spawn(self.clone().run_writes());
        }
        self.wait(answer).await
    }

    /// One write as its own statement and transaction.
    async fn write_alone(&self, user: &str, dob: Option<time::Date>) -> Result<bool, StoreError> {
        match dob {
            Some(dob) => {
                self.with_conn(WRITE_DEPTH, |c| async move {
                    c.client.execute(&c.upsert, &[&user, &dob]).await
                })
                .await?;
                Ok(true)
            }
            None => {
                let n = self
                    .with_conn(WRITE_DEPTH, |c| async move {
                        c.client.execute(&c.delete, &[&user]).await
                    })
                    .await?;
                Ok(n > 0)
            }
        }
    }

    /// After a batch of one run by its own request: requests that queued
    /// meanwhile get a runner (spawned, so this request is answered now).
    fn hand_off(&self, kind: Kind) {
        let more = match kind {
            Kind::Read => self.inner.reads.finish_lead(),
            Kind::Write => self.inner.writes.finish_lead(),
        };
        if !more {
            return;
        }
        // Outside a runtime (it is going away) no runner can start: those
        // waiting fail at their deadline or with the runtime.
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            let store = self.clone();
            match kind {
                Kind::Read => drop(rt.spawn(store.run_reads())),
                Kind::Write => drop(rt.spawn(store.run_writes())),
            }
        }
    }

    /// A request's own deadline runs from when it was queued, whatever the
    /// batches ahead of it do.
    async fn wait<T>(
        &self,
        answer: oneshot::Receiver<Result<T, StoreError>>,
    ) -> Result<T, StoreError> {
        match tokio::time::timeout(self.inner.timeout, answer).await {
            Ok(Ok(result)) => result,
            Ok(Err(_)) => Err(StoreError::unavailable("database batch abandoned")),
            Err(_) => Err(StoreError::unavailable("database call timed out")),
        }
    }

    /// Runs read batches until none is waiting.
    async fn run_reads(self) {
        while let Some(mut batch) = self.inner.reads.next() {
            self.inner.stats.count_reads(batch.len());
            self.read_batch(&mut batch).await;
            self.inner.reads.recycle(batch);
        }
    }

    /// Answers every read in `batch`, leaving it empty.
    async fn read_batch(&self, batch: &mut Vec<Read>) {
        if batch.len() == 1 {
            let read = batch.pop().expect("one read");
            let user = read.user.as_str();
            let result = self
                .with_conn(READ_DEPTH, |c| async move {
                    c.client.query_opt(&c.select, &[&user]).await
                })
                .await
                .map(|row| row.map(|r| r.get::<_, time::Date>(0)));
            let _ = read.reply.send(result);
            return;
        }
        let names: Vec<&str> = batch.iter().map(|r| r.user.as_str()).collect();
        let names = &names;
        let result = self
            .with_conn(READ_DEPTH, |c| async move {
                c.client.query(&c.select_many, &[names]).await
            })
            .await;
        match result {
            Ok(rows) => {
                // One row per name, with its position (1-based) in the batch.
                let mut found: Vec<Option<time::Date>> = vec![None; batch.len()];
                for row in &rows {
                    let n: i64 = row.get(0);
                    if let Some(slot) = usize::try_from(n - 1).ok().and_then(|i| found.get_mut(i)) {
                        *slot = row.get(1);
                    }
                }
                for (read, dob) in batch.drain(..).zip(found) {
                    let _ = read.reply.send(Ok(dob));
                }
            }
            Err(err) => {
                for read in batch.drain(..) {
                    let _ = read.reply.send(Err(err.clone()));
                }
            }
        }
    }

    /// Runs write batches until none is waiting.
    async fn run_writes(self) {
        while let Some(mut batch) = self.inner.writes.next() {
            self.inner.stats.count_writes(batch.len());
            self.write_batch(&mut batch).await;
            self.inner.writes.recycle(batch);
        }
    }

    /// Answers every write in `batch`, leaving it empty.
    async fn write_batch(&self, batch: &mut Vec<Write>) {
        if batch.len() == 1 {
            return self.write_one_by_one(batch).await;
        }
        let (answers, result) = {
            let plan = plan_writes(batch);
            let (names, dobs, deletes) = (&plan.upsert_names, &plan.upsert_dobs, &plan.deletes);
            let result = if deletes.is_empty() {
                // Only upserts: every answer is known (true), no rows back.
                self.with_conn(WRITE_DEPTH, |c| async move {
                    c.client.execute(&c.upsert_many, &[names, dobs]).await
                })
                .await
                .map(|_| Vec::new())
            } else {
                self.with_conn(WRITE_DEPTH, |c| async move {
                    c.client.query(&c.write_many, &[names, dobs, deletes]).await
                })
                .await
            };
            (plan.answers, result)
        };
        match result {
            Ok(rows) => {
                let found: Vec<(&str, bool)> = rows.iter().map(|r| (r.get(0), r.get(1))).collect();
                let existed = |user: &str| found.iter().any(|&(u, e)| u == user && e);
                for (write, answer) in batch.drain(..).zip(answers) {
                    let value = match answer {
                        Answer::Known(v) => v,
                        Answer::ExistedBefore => existed(write.user.as_str()),
                    };
                    let _ = write.reply.send(Ok(value));
                }
            }
            // A data or constraint error may belong to one request: each
            // is tried alone, in arrival order, so only its own fails.
            Err(StoreError::Internal(cause)) => {
                tracing::warn!(error = %cause, writes = batch.len(), "write batch failed; retrying its writes one by one");
                self.write_one_by_one(batch).await;
            }
            // The database is away or full: every write in it would fail.
            Err(err) => {
                for write in batch.drain(..) {
                    let _ = write.reply.send(Err(err.clone()));
                }
            }
        }
    }

    /// Each write as its own statement and transaction, in order.
    async fn write_one_by_one(&self, batch: &mut Vec<Write>) {
        for write in batch.drain(..) {
            let result = self.write_alone(write.user.as_str(), write.dob).await;
            let _ = write.reply.send(result);
        }
    }

    /// Batches run and requests served since the store opened.
    pub fn batch_stats(&self) -> BatchStats {
        let s = &self.inner.stats;
        BatchStats {
            read_batches: s.read_batches.load(Ordering::Relaxed),
            write_batches: s.write_batches.load(Ordering::Relaxed),
            reads_waiting: self.inner.reads.lock().queue.len(),
            writes_waiting: self.inner.writes.lock().queue.len(),
        }
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
        let s = &self.inner.stats;
        tracing::info!(
            reads = s.reads.load(Ordering::Relaxed),
            read_batches = s.read_batches.load(Ordering::Relaxed),
            writes = s.writes.load(Ordering::Relaxed),
            write_batches = s.write_batches.load(Ordering::Relaxed),
            "PostgreSQL pool closing"
        );
        self.inner.closed.store(true, Ordering::Release);
        for slot in self.inner.slots.iter() {
            slot.set(None);
        }
    }
}
