//! Embedded SQLite, tuned for durable writes at a high rate.
//!
//! Writes: one writer thread owns the only writing connection and applies
//! queued PUTs and DELETEs in shared transactions (group commit). A request
//! is answered only after the commit of the transaction holding its write has
//! returned, and with `synchronous=FULL` in WAL mode that commit has fsynced
//! the WAL: a 204 survives power loss. While one commit waits on the disk the
//! next requests queue up, so the batch size grows with the load by itself
//! and one fsync serves many writes instead of one.
//!
//! Reads: every runtime worker thread keeps its own read-only connection and
//! queries it inline. A primary-key lookup in a warm page cache takes a few
//! microseconds; handing it to `spawn_blocking` halved throughput in the prototype the design notes measured.
//!
//! Several processes may open one file (rolling deploys on one host): WAL
//! allows one writer and many readers, `busy_timeout` serialises writers, and
//! migrations take the write lock (`BEGIN IMMEDIATE`).

use super::migrations::{self, Migration, SQLITE};
use super::{Name, PoolStatus, StoreError, iso_date};
use crate::domain::{DateOfBirth, Username};
use futures_util::FutureExt;
use rusqlite::{Connection, ErrorCode, OpenFlags, OptionalExtension, params};
use std::cell::RefCell;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};

/// Writes that may wait for the writer; beyond it callers wait on `send`
/// until the timeout, so memory stays bounded under overload.
const QUEUE_DEPTH: usize = 4096;
/// Upper bound on one transaction, so one batch never holds the write lock long.
const MAX_BATCH: usize = 512;

/// `sqlite://data/x.db` (relative) or `sqlite:///abs/x.db` to a path.
pub fn path_from_url(url: &str) -> Option<PathBuf> {
    let rest = url
        .strip_prefix("sqlite://")
        .or_else(|| url.strip_prefix("sqlite:"))?;
    let rest = rest.split('?').next().unwrap_or(rest);
    (!rest.is_empty()).then(|| PathBuf::from(rest))
}

enum Op {
    Upsert {
        username: Name,
        dob: time::Date,
    },
    Delete {
        username: Name,
    },
    /// Answered by the writer: proves it is alive and not stuck.
    Ping,
    Shutdown,
}

struct Request {
    op: Op,
    reply: oneshot::Sender<Result<bool, StoreError>>,
}

struct Inner {
    /// Distinguishes stores in one process, for the per-thread readers.
    id: u64,
    path: PathBuf,
    queue: mpsc::Sender<Request>,
    writer: std::sync::Mutex<Option<std::thread::JoinHandle<()>>>,
    timeout: Duration,
    readers: AtomicUsize,
}

#[derive(Clone)]
pub struct SqliteStore(Arc<Inner>);

static NEXT_ID: AtomicU64 = AtomicU64::new(1);

thread_local! {
    static READERS: RefCell<Vec<(u64, Connection)>> = const { RefCell::new(Vec::new()) };
}

fn classify(err: rusqlite::Error) -> StoreError {
    let kind = match &err {
        rusqlite::Error::SqliteFailure(e, _) => match e.code {
            ErrorCode::DiskFull => StoreError::Full,
            ErrorCode::ReadOnly
            | ErrorCode::CannotOpen
            | ErrorCode::SystemIoFailure
            | ErrorCode::DatabaseBusy
            | ErrorCode::DatabaseLocked
            | ErrorCode::PermissionDenied
            | ErrorCode::FileLockingProtocolFailed => StoreError::Unavailable,
            _ => StoreError::Internal,
        },
        _ => StoreError::Internal,
    };
    kind(Arc::new(err))
}

fn configure(conn: &Connection, timeout: Duration) -> rusqlite::Result<()> {
    conn.busy_timeout(timeout)?;
    // FULL: the WAL is fsynced at every commit, so an acknowledged write
    // survives power loss, not only a process crash.
    conn.pragma_update(None, "synchronous", "FULL")?;
    conn.pragma_update(None, "foreign_keys", "ON")?;
    Ok(())
}

fn now_rfc3339() -> String {
    time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .expect("formatting the current time")
}

/// The migration runner's view of SQLite: a `BEGIN IMMEDIATE` transaction
/// holds the write lock while it runs.
struct Ledger<'c>(rusqlite::Transaction<'c>);

impl migrations::Ledger for Ledger<'_> {
    type Error = rusqlite::Error;

    async fn current_version(&mut self) -> rusqlite::Result<i32> {
        self.0.execute_batch(
            "CREATE TABLE IF NOT EXISTS schema_migrations (
                 version INTEGER PRIMARY KEY,
                 description TEXT NOT NULL,
                 applied_at TEXT NOT NULL)",
        )?;
        self.0
            .query_row(migrations::CURRENT_VERSION_SQL, [], |r| r.get(0))
    }

    async fn apply(&mut self, m: &Migration) -> rusqlite::Result<()> {
        self.0.execute_batch(m.sql)?;
        self.0.execute(
            "INSERT INTO schema_migrations (version, description, applied_at) VALUES (?1, ?2, ?3)",
            params![m.version, m.description, now_rfc3339()],
        )?;
        Ok(())
    }
}

fn migrate(conn: &mut Connection) -> rusqlite::Result<()> {
    let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
    let mut ledger = Ledger(tx);
    // SQLite calls block and never yield, so the runner's future completes
    // on its first poll.
    migrations::run(&mut ledger, SQLITE, "sqlite")
        .now_or_never()
        .expect("SQLite migrations never wait")?;
    ledger.0.commit()
}

impl SqliteStore {
    pub fn open(path: &Path, timeout: Duration) -> anyhow::Result<Self> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)?;
        }
        let mut conn = Connection::open(path)?;
        let mode: String =
            conn.pragma_update_and_check(None, "journal_mode", "WAL", |r| r.get(0))?;
        anyhow::ensure!(
            mode.eq_ignore_ascii_case("wal"),
            "could not enable WAL (got {mode})"
        );
        configure(&conn, timeout)?;
        migrate(&mut conn)?;

        let (queue, rx) = mpsc::channel(QUEUE_DEPTH);
        let writer = std::thread::Builder::new()
            .name("sqlite-writer".into())
            .spawn(move || writer_loop(conn, rx))?;
        Ok(Self(Arc::new(Inner {
            id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
            path: path.to_owned(),
            queue,
            writer: std::sync::Mutex::new(Some(writer)),
            timeout,
            readers: AtomicUsize::new(0),
        })))
    }

    async fn write(&self, op: Op) -> Result<bool, StoreError> {
        let (reply, answer) = oneshot::channel();
        let inner = &self.0;
        let round_trip = async {
            inner
                .queue
                .send(Request { op, reply })
                .await
                .map_err(|_| StoreError::unavailable("the writer has stopped"))?;
            answer
                .await
                .map_err(|_| StoreError::unavailable("the writer has stopped"))?
        };
        tokio::time::timeout(inner.timeout, round_trip)
            .await
            .map_err(|_| StoreError::unavailable("write timed out"))?
    }

    pub async fn upsert(&self, user: &Username, dob: DateOfBirth) -> Result<(), StoreError> {
        let op = Op::Upsert {
            username: Name::new(user),
            dob: dob.date(),
        };
        self.write(op).await.map(|_| ())
    }

    pub async fn delete(&self, user: &Username) -> Result<bool, StoreError> {
        self.write(Op::Delete {
            username: Name::new(user),
        })
        .await
    }

    pub async fn ping(&self) -> Result<(), StoreError> {
        self.write(Op::Ping).await.map(|_| ())
    }

    /// Runs `f` on this thread's reader connection, opening it on first use.
    fn with_reader<R>(
        &self,
        f: impl FnOnce(&Connection) -> rusqlite::Result<R>,
    ) -> Result<R, StoreError> {
        READERS.with(|cell| {
            let mut readers = cell.borrow_mut();
            let idx = match readers.iter().position(|(id, _)| *id == self.0.id) {
                Some(i) => i,
                None => {
                    let conn = Connection::open_with_flags(
                        &self.0.path,
                        OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
                    )
                    .map_err(classify)?;
                    configure(&conn, self.0.timeout).map_err(classify)?;
                    conn.pragma_update(None, "query_only", "ON")
                        .map_err(classify)?;
                    self.0.readers.fetch_add(1, Ordering::Relaxed);
                    readers.push((self.0.id, conn));
                    readers.len() - 1
                }
            };
            f(&readers[idx].1).map_err(classify)
        })
    }

    pub fn get(&self, user: &Username) -> Result<Option<DateOfBirth>, StoreError> {
        // Parsed from SQLite's own buffer: no String per read.
        let found: Option<Option<DateOfBirth>> = self.with_reader(|conn| {
            conn.prepare_cached("SELECT date_of_birth FROM users WHERE username = ?1")?
                .query_row([user.as_str()], |r| {
                    Ok(r.get_ref(0)?
                        .as_str()
                        .ok()
                        .and_then(crate::domain::date_of_birth_from_storage))
                })
                .optional()
        })?;
        found
            .map(|d| d.ok_or_else(|| StoreError::internal("a stored date of birth does not parse")))
            .transpose()
    }

    pub fn pool_status(&self) -> PoolStatus {
        let readers = self.0.readers.load(Ordering::Relaxed);
        // Writes waiting in the queue: its capacity is what they do not use.
        let queued = self.0.queue.max_capacity() - self.0.queue.capacity();
        let busy = usize::from(queued > 0);
        PoolStatus {
            idle: readers + 1 - busy,
            in_use: busy,
            max: readers + 1,
        }
    }

    pub async fn close(&self) {
        let (reply, _answer) = oneshot::channel();
        let _ = self
            .0
            .queue
            .send(Request {
                op: Op::Shutdown,
                reply,
            })
            .await;
        let handle = self.0.writer.lock().expect("writer handle").take();
        if let Some(handle) = handle {
            let _ = tokio::task::spawn_blocking(move || handle.join()).await;
        }
    }
}

fn writer_loop(mut conn: Connection, mut rx: mpsc::Receiver<Request>) {
    let mut batch = Vec::with_capacity(MAX_BATCH);
    while let Some(first) = rx.blocking_recv() {
        batch.push(first);
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(r) => batch.push(r),
                Err(_) => break,
            }
        }
        let shutdown = batch.iter().any(|r| matches!(r.op, Op::Shutdown));
        let results = apply_batch(&mut conn, &batch);
        for (req, result) in batch.drain(..).zip(results) {
            let _ = req.reply.send(result);
        }
        if shutdown {
            break;
        }
    }
}

/// Applies a batch in one transaction. Either every write in it is committed
/// (and each gets its own result) or none is, and all get the error.
fn apply_batch(conn: &mut Connection, batch: &[Request]) -> Vec<Result<bool, StoreError>> {
    let has_writes = batch
        .iter()
        .any(|r| matches!(r.op, Op::Upsert { .. } | Op::Delete { .. }));
    if !has_writes {
        return batch.iter().map(|_| Ok(true)).collect();
    }
    let now = now_rfc3339();
    let attempt = (|| -> rusqlite::Result<Vec<bool>> {
        let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        let mut out = Vec::with_capacity(batch.len());
        {
            let mut upsert = tx.prepare_cached(
                "INSERT INTO users (username, date_of_birth, created_at, updated_at)
                 VALUES (?1, ?2, ?3, ?3)
                 ON CONFLICT (username) DO UPDATE
                 SET date_of_birth = excluded.date_of_birth, updated_at = excluded.updated_at",
            )?;
            let mut delete = tx.prepare_cached("DELETE FROM users WHERE username = ?1")?;
            for req in batch {
                out.push(match &req.op {
                    Op::Upsert { username, dob } => {
                        let mut buf = [0; 10];
                        let dob = iso_date(*dob, &mut buf);
                        upsert.execute(params![username.as_str(), dob, now])? > 0
                    }
                    Op::Delete { username } => delete.execute([username.as_str()])? > 0,
                    Op::Ping | Op::Shutdown => true,
                });
            }
        }
        tx.commit()?;
        Ok(out)
    })();
    match attempt {
        Ok(out) => out.into_iter().map(Ok).collect(),
        Err(e) => {
            let err = classify(e);
            tracing::warn!(error = %err.chain(), writes = batch.len(), "write batch failed and was rolled back");
            batch.iter().map(|_| Err(err.clone())).collect()
        }
    }
}
