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
//! microseconds; handing it to `spawn_blocking` halved GET throughput (to
//! measure: wrap the SQLite arm of `Store::get` in it and compare the
//! `sqlite` GET req/s of `bench/run.sh`).
//!
//! Several processes may open one file (rolling deploys on one host): WAL
//! allows one writer and many readers, `busy_timeout` serialises writers, and
//! migrations take the write lock (`BEGIN IMMEDIATE`).
//!
//! Erasure: a DELETE, or a PUT that changes a stored date, leaves no readable
//! copy of the old value in the live files once it is answered. The writer
//! runs with `secure_delete` (freed cells and pages are zeroed, so the new
//! page images carry no trace of the old row), and after committing a batch
//! that erased something it checkpoints with truncation: the new pages
//! overwrite the old ones in the database file and the WAL, whose older
//! frames still hold the old pages, is emptied. Only then are the erasing
//! requests answered (the others in the batch are answered at the commit).
//! A checkpoint that another connection's long read transaction blocks (a
//! backup's snapshot) is retried every second until it completes; meanwhile
//! `hello_birthday_erasure_pending` is 1.
//!
//! Files: the database holds personal data, so its directory and files are
//! created for the service's user only, whatever the umask, and a start on
//! files that others may read is refused ([`private_files`]).

use super::migrations::{self, Migration, SQLITE};
use super::{PoolStatus, StoreError};
use crate::domain::{DateOfBirth, Username};
use futures_util::FutureExt;
use rusqlite::{Connection, ErrorCode, OpenFlags, OptionalExtension, params};
use std::cell::RefCell;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, oneshot};

/// Writes that may wait for the writer; beyond it callers wait on `send`
/// until the timeout, so memory stays bounded under overload.
const QUEUE_DEPTH: usize = 4096;
/// Upper bound on one transaction, so one batch never holds the write lock long.
const MAX_BATCH: usize = 512;
/// How long the erasure checkpoint waits for readers and other writers. Our
/// own reads take microseconds; a backup's snapshot can take minutes, and
/// the writer must not stall every write behind it.
const ERASURE_BUSY: Duration = Duration::from_millis(100);
/// Retry interval of an erasure checkpoint that could not complete.
const ERASURE_RETRY: Duration = Duration::from_secs(1);

enum Op {
    Upsert {
        username: String,
        dob: String,
    },
    Delete {
        username: String,
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
    /// An acknowledged erasure may still be readable in the WAL.
    erasure_pending: Arc<AtomicBool>,
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

/// Makes the database's directory and files private to the service's user,
/// whatever the umask, and refuses files that other users can reach.
///
/// - A missing directory is created 0700; a missing database file 0600
///   before SQLite opens it, so the `-wal` and `-shm` files, which SQLite
///   creates with the database file's mode, are 0600 too.
/// - An existing database, `-wal`, `-shm` or `-journal` file with any
///   permission for group or others stops the start: the error names the
///   file, its mode and the fix.
/// - An existing directory that group or others may write stops it too:
///   they could replace the database or plant a `-wal` file for SQLite to
///   replay. One that others may only list or enter is reported with a
///   warning: the files' own mode keeps their contents private.
#[cfg(unix)]
pub fn private_files(path: &Path) -> anyhow::Result<()> {
    use anyhow::{Context, bail};
    use std::fs::{DirBuilder, OpenOptions, Permissions};
    use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};

    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    if !dir.exists() {
        DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .with_context(|| format!("creating {}", dir.display()))?;
        // Exactly 0700: a umask may only take bits away, including ours.
        std::fs::set_permissions(dir, Permissions::from_mode(0o700))?;
    }
    let mode = std::fs::metadata(dir)
        .with_context(|| format!("reading {}", dir.display()))?
        .permissions()
        .mode()
        & 0o7777;
    if mode & 0o022 != 0 {
        bail!(
            "the directory {} of the SQLite database can be written by other users (mode {mode:04o}): \
             they could replace or plant database files. Use a directory of the service's own \
             (chmod 700 {}) or let the service create one",
            dir.display(),
            dir.display()
        );
    }
    if mode & 0o005 != 0 {
        tracing::warn!(
            directory = %dir.display(),
            mode = format!("{mode:04o}"),
            "other users can list the SQLite database's directory (names and sizes, not contents); chmod 700 it to hide them"
        );
    }
    match OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
    {
        Ok(_) => std::fs::set_permissions(path, Permissions::from_mode(0o600))?,
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(e).with_context(|| format!("creating {}", path.display())),
    }
    for file in companion_files(path) {
        let Ok(meta) = std::fs::metadata(&file) else {
            continue;
        };
        let mode = meta.permissions().mode() & 0o7777;
        if mode & 0o077 != 0 {
            bail!(
                "{} can be read or written by other users (mode {mode:04o}) and holds personal data: \
                 make the database files private (chmod 600 {}*) and start again",
                file.display(),
                path.display()
            );
        }
    }
    Ok(())
}

#[cfg(not(unix))]
pub fn private_files(path: &Path) -> anyhow::Result<()> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)?;
    }
    Ok(())
}

/// The database file and the files SQLite keeps beside it.
fn companion_files(path: &Path) -> [PathBuf; 4] {
    let with = |suffix: &str| {
        let mut name = path.as_os_str().to_owned();
        name.push(suffix);
        PathBuf::from(name)
    };
    [
        path.to_owned(),
        with("-wal"),
        with("-shm"),
        with("-journal"),
    ]
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
        private_files(path)?;
        let mut conn = Connection::open(path)?;
        let mode: String =
            conn.pragma_update_and_check(None, "journal_mode", "WAL", |r| r.get(0))?;
        anyhow::ensure!(
            mode.eq_ignore_ascii_case("wal"),
            "could not enable WAL (got {mode})"
        );
        configure(&conn, timeout)?;
        // Zero what a DELETE or an UPDATE frees, in the pages this
        // connection writes (see the module notes on erasure).
        let secure: i64 =
            conn.pragma_update_and_check(None, "secure_delete", "ON", |r| r.get(0))?;
        anyhow::ensure!(secure == 1, "could not enable secure_delete");
        migrate(&mut conn)?;

        let (queue, rx) = mpsc::channel(QUEUE_DEPTH);
        let erasure_pending = Arc::new(AtomicBool::new(false));
        let writer = {
            // A crash between an erasing commit and its checkpoint leaves the
            // old page images in the WAL: the writer checkpoints first thing.
            let erasure = Erasure::new(erasure_pending.clone(), timeout);
            std::thread::Builder::new()
                .name("sqlite-writer".into())
                .spawn(move || writer_loop(conn, rx, erasure))?
        };
        Ok(Self(Arc::new(Inner {
            id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
            path: path.to_owned(),
            queue,
            writer: std::sync::Mutex::new(Some(writer)),
            timeout,
            readers: AtomicUsize::new(0),
            erasure_pending,
        })))
    }

    /// Whether an acknowledged erasure may still be readable in the WAL (its
    /// checkpoint is blocked by another connection's read transaction).
    pub fn erasure_pending(&self) -> bool {
        self.0.erasure_pending.load(Ordering::Relaxed)
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
            username: user.as_str().to_owned(),
            dob: dob.to_string(),
        };
        self.write(op).await.map(|_| ())
    }

    pub async fn delete(&self, user: &Username) -> Result<bool, StoreError> {
        self.write(Op::Delete {
            username: user.as_str().to_owned(),
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
        let raw: Option<String> = self.with_reader(|conn| {
            conn.prepare_cached("SELECT date_of_birth FROM users WHERE username = ?1")?
                .query_row([user.as_str()], |r| r.get(0))
                .optional()
        })?;
        raw.map(|s| {
            crate::domain::date_of_birth_from_storage(&s)
                .ok_or_else(|| StoreError::internal("a stored date of birth does not parse"))
        })
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

/// The WAL checkpoint that completes erasures: copies every frame into the
/// database file, then empties the WAL, whose older frames hold the pages
/// as they were before the erasing commit.
struct Erasure {
    pending: Arc<AtomicBool>,
    /// The connection's normal busy timeout, restored after a checkpoint.
    timeout: Duration,
    last_attempt: Option<Instant>,
    /// Whether the pending state has been reported (once per episode).
    reported: bool,
}

impl Erasure {
    fn new(pending: Arc<AtomicBool>, timeout: Duration) -> Self {
        pending.store(true, Ordering::Relaxed);
        Self {
            pending,
            timeout,
            last_attempt: None,
            reported: false,
        }
    }

    fn pending(&self) -> bool {
        self.pending.load(Ordering::Relaxed)
    }

    /// Whether a pending checkpoint is due for another attempt.
    fn due(&self) -> bool {
        self.pending()
            && self
                .last_attempt
                .is_none_or(|t| t.elapsed() >= ERASURE_RETRY)
    }

    /// `PRAGMA wal_checkpoint(TRUNCATE)`, waiting at most `ERASURE_BUSY`
    /// for other connections; on failure the erasure stays pending.
    fn checkpoint(&mut self, conn: &Connection) {
        self.pending.store(true, Ordering::Relaxed);
        self.last_attempt = Some(Instant::now());
        let run = || -> rusqlite::Result<bool> {
            conn.busy_timeout(ERASURE_BUSY)?;
            let busy = conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |r| {
                r.get::<_, i64>(0)
            });
            conn.busy_timeout(self.timeout)?;
            Ok(busy? == 0)
        };
        match run() {
            Ok(true) => {
                self.pending.store(false, Ordering::Relaxed);
                if std::mem::take(&mut self.reported) {
                    tracing::info!("the pending erasure checkpoint completed");
                }
            }
            Ok(false) if !self.reported => {
                self.reported = true;
                tracing::warn!(
                    "erased values may still be readable in the SQLite WAL: another connection holds a read transaction; retrying the checkpoint every second"
                );
            }
            Err(e) if !self.reported => {
                self.reported = true;
                tracing::warn!(error = %classify(e).chain(), "the erasure checkpoint failed; retrying every second");
            }
            Ok(false) | Err(_) => {}
        }
    }
}

fn writer_loop(mut conn: Connection, mut rx: mpsc::Receiver<Request>, mut erasure: Erasure) {
    let mut batch = Vec::with_capacity(MAX_BATCH);
    let mut erasing = Vec::new();
    erasure.checkpoint(&conn);
    loop {
        let Some(first) = next_request(&mut rx, &mut erasure, &conn) else {
            break;
        };
        batch.push(first);
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(r) => batch.push(r),
                Err(_) => break,
            }
        }
        let shutdown = batch.iter().any(|r| matches!(r.op, Op::Shutdown));
        let results = apply_batch(&mut conn, &batch);
        // Everything but the erasures is answered at the commit; erasures
        // once the checkpoint has removed the old values from the files.
        for (req, (result, erased)) in batch.drain(..).zip(results) {
            if erased {
                erasing.push((req, result));
            } else {
                let _ = req.reply.send(result);
            }
        }
        if !erasing.is_empty() || erasure.due() {
            erasure.checkpoint(&conn);
        }
        for (req, result) in erasing.drain(..) {
            let _ = req.reply.send(result);
        }
        if shutdown {
            break;
        }
    }
}

/// The next request for the writer; while an erasure checkpoint is pending,
/// it is retried every `ERASURE_RETRY` in between. `None` once every sender
/// is gone.
fn next_request(
    rx: &mut mpsc::Receiver<Request>,
    erasure: &mut Erasure,
    conn: &Connection,
) -> Option<Request> {
    while erasure.pending() {
        match rx.try_recv() {
            Ok(r) => return Some(r),
            Err(mpsc::error::TryRecvError::Disconnected) => return None,
            Err(mpsc::error::TryRecvError::Empty) if erasure.due() => erasure.checkpoint(conn),
            // A rare, degraded state: polling costs nothing that matters.
            Err(mpsc::error::TryRecvError::Empty) => {
                std::thread::sleep(Duration::from_millis(10));
            }
        }
    }
    rx.blocking_recv()
}

/// Applies a batch in one transaction. Either every write in it is committed
/// (and each gets its own result) or none is, and all get the error. Each
/// result says whether the write erased a stored value: a DELETE that
/// removed a row, a PUT that changed a stored date.
fn apply_batch(conn: &mut Connection, batch: &[Request]) -> Vec<(Result<bool, StoreError>, bool)> {
    let has_writes = batch
        .iter()
        .any(|r| matches!(r.op, Op::Upsert { .. } | Op::Delete { .. }));
    if !has_writes {
        return batch.iter().map(|_| (Ok(true), false)).collect();
    }
    let now = now_rfc3339();
    let attempt = (|| -> rusqlite::Result<Vec<(bool, bool)>> {
        let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        let mut out = Vec::with_capacity(batch.len());
        {
            let mut current =
                tx.prepare_cached("SELECT date_of_birth FROM users WHERE username = ?1")?;
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
                        let old: Option<String> =
                            current.query_row([username], |r| r.get(0)).optional()?;
                        let changed = old.is_some_and(|old| old != *dob);
                        (upsert.execute(params![username, dob, now])? > 0, changed)
                    }
                    Op::Delete { username } => {
                        let deleted = delete.execute([username])? > 0;
                        (deleted, deleted)
                    }
                    Op::Ping | Op::Shutdown => (true, false),
                });
            }
        }
        tx.commit()?;
        Ok(out)
    })();
    match attempt {
        Ok(out) => out
            .into_iter()
            .map(|(ok, erased)| (Ok(ok), erased))
            .collect(),
        Err(e) => {
            let err = classify(e);
            tracing::warn!(error = %err.chain(), writes = batch.len(), "write batch failed and was rolled back");
            batch.iter().map(|_| (Err(err.clone()), false)).collect()
        }
    }
}
