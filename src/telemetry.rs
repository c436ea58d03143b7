//! Logging, readable in a terminal or JSON for log shippers. Requests are
//! logged by policy (`REQUEST_LOG`): by default every error and every slow
//! request gets a line, and a summary line counts all of them every minute.
//!
//! Lines go to a shared buffer that a background thread writes to stdout
//! every 100 ms (or at once when 64 KiB accumulate). Waking a writer thread
//! for every line measured more than halving GET throughput; a timer costs
//! nothing measurable. The price: a crash loses at most the last 100 ms of
//! log lines, never data. The guard flushes on a clean exit.

use crate::config::{Config, LogFormat, RequestLog};
use std::fmt::Write as _;
use std::io::Write;
use std::sync::Mutex;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};
use std::time::{Duration, Instant};
use tracing_subscriber::EnvFilter;
use tracing_subscriber::fmt::MakeWriter;

const FLUSH_EVERY: Duration = Duration::from_millis(100);
const FLUSH_AT_BYTES: usize = 64 * 1024;

static BUFFER: Mutex<Vec<u8>> = Mutex::new(Vec::new());

/// Writes the buffered log lines now (also before an exit that skips
/// `LogGuard`).
pub fn flush() {
    let pending = {
        let mut buf = BUFFER.lock().unwrap_or_else(|e| e.into_inner());
        if buf.is_empty() {
            return;
        }
        std::mem::take(&mut *buf)
    };
    let mut out = std::io::stdout().lock();
    let _ = out.write_all(&pending);
    let _ = out.flush();
}

#[derive(Clone, Copy)]
struct Buffered;

impl Write for Buffered {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        let full = {
            let mut buf = BUFFER.lock().unwrap_or_else(|e| e.into_inner());
            buf.extend_from_slice(bytes);
            buf.len() >= FLUSH_AT_BYTES
        };
        if full {
            flush();
        }
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> MakeWriter<'a> for Buffered {
    type Writer = Buffered;
    fn make_writer(&'a self) -> Self::Writer {
        *self
    }
}

/// Request lines: 0 none (no logger, or the filter drops `http` at info),
/// 1 text, 2 JSON. Decided once at start-up, like the fields below.
static FORMAT: AtomicU8 = AtomicU8::new(0);
/// 0 off, 1 errors and slow requests only, 2 every request.
static MODE: AtomicU8 = AtomicU8::new(0);
static SLOW_US: AtomicU64 = AtomicU64::new(u64::MAX);
static SUMMARY: Summary = Summary::new();
/// Error lines a second in `errors` mode: an outage or a flood of bad
/// requests answers thousands of errors a second, and a log line for each
/// would cost what the logging policy exists to avoid.
const ERROR_LINES_PER_SECOND: u64 = 100;
static ERROR_LINES: RateLimit = RateLimit::new(ERROR_LINES_PER_SECOND);

/// Counts for the periodic summary line, by status class.
struct Summary {
    ok: AtomicU64,
    client_errors: AtomicU64,
    server_errors: AtomicU64,
    slow: AtomicU64,
    suppressed: AtomicU64,
}

impl Summary {
    const fn new() -> Self {
        Self {
            ok: AtomicU64::new(0),
            client_errors: AtomicU64::new(0),
            server_errors: AtomicU64::new(0),
            slow: AtomicU64::new(0),
            suppressed: AtomicU64::new(0),
        }
    }

    fn count(&self, status: u16, slow: bool) {
        let class = match status {
            500.. => &self.server_errors,
            400.. => &self.client_errors,
            _ => &self.ok,
        };
        class.fetch_add(1, Ordering::Relaxed);
        if slow {
            self.slow.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Writes the counts since the last call and starts again from zero.
    fn emit(&self, window: Duration) {
        let take = |c: &AtomicU64| c.swap(0, Ordering::Relaxed);
        let (ok, client, server) = (
            take(&self.ok),
            take(&self.client_errors),
            take(&self.server_errors),
        );
        tracing::info!(
            target: "http",
            window_s = window.as_secs(),
            requests = ok + client + server,
            ok,
            client_errors = client,
            server_errors = server,
            slow = take(&self.slow),
            lines_suppressed = take(&self.suppressed),
            "request summary"
        );
    }
}

/// Whether a request with this status and latency gets a line of its own
/// in `errors` mode: every client or server error and every slow answer.
/// Successes are counted (metrics, summary) but not written one by one: at
/// 100,000 requests a second a line each is 15 MB/s of log and about a
/// tenth of the CPU time of a GET, and the load balancer keeps its own
/// access log of every request.
pub fn worth_a_line(status: u16, latency_us: u64, slow_us: u64) -> bool {
    status >= 400 || latency_us >= slow_us
}

/// The request log line, in the same shape the tracing formatter gives
/// every other line, written without its per-field machinery: the generic
/// formatter took about 6% of a GET's CPU time in a profile.
pub fn request_line(
    request_id: &str,
    method: &str,
    route: &str,
    status: u16,
    latency_us: u64,
    trace_id: Option<opentelemetry::trace::TraceId>,
) {
    let slow_us = SLOW_US.load(Ordering::Relaxed);
    let slow = latency_us >= slow_us;
    SUMMARY.count(status, slow);
    let format = FORMAT.load(Ordering::Relaxed);
    let mut suppressed = 0;
    match MODE.load(Ordering::Relaxed) {
        _ if format == 0 => return,
        2 => {}
        1 if worth_a_line(status, latency_us, slow_us) => match ERROR_LINES.allow() {
            Some(n) => suppressed = n,
            None => {
                SUMMARY.suppressed.fetch_add(1, Ordering::Relaxed);
                return;
            }
        },
        _ => return,
    }
    let now = time::OffsetDateTime::now_utc();
    let (y, mo, d) = (now.year(), u8::from(now.month()), now.day());
    let (h, mi, s, us) = (now.hour(), now.minute(), now.second(), now.microsecond());
    let mut line = String::with_capacity(224);
    let level = if status >= 500 { "WARN" } else { "INFO" };
    // Request ids are checked to be [A-Za-z0-9._-], routes are static
    // templates and trace ids hex, so no value here needs escaping.
    let _ = if format == 2 {
        write!(
            line,
            r#"{{"timestamp":"{y:04}-{mo:02}-{d:02}T{h:02}:{mi:02}:{s:02}.{us:06}Z","level":"{level}","message":"request","request_id":"{request_id}","method":"{method}","route":"{route}","status":{status},"latency_us":{latency_us}"#
        )
        .and_then(|()| {
            if let Some(t) = trace_id {
                write!(line, r#","trace_id":"{t}""#)?;
            }
            if suppressed > 0 {
                write!(line, r#","lines_suppressed":{suppressed}"#)?;
            }
            writeln!(line, r#","target":"http"}}"#)
        })
    } else {
        write!(
            line,
            r#"{y:04}-{mo:02}-{d:02}T{h:02}:{mi:02}:{s:02}.{us:06}Z  {level:>5} http: request request_id="{request_id}" method="{method}" route="{route}" status={status} latency_us={latency_us}"#
        )
        .and_then(|()| {
            if let Some(t) = trace_id {
                write!(line, r#" trace_id="{t}""#)?;
            }
            if suppressed > 0 {
                write!(line, " lines_suppressed={suppressed}")?;
            }
            writeln!(line)
        })
    };
    let _ = Buffered.write_all(line.as_bytes());
}

/// A fixed one-second window, lock-free: good enough to bound log volume.
pub(crate) struct RateLimit {
    per_second: u64,
    window: AtomicU64,
    used: AtomicU64,
    suppressed: AtomicU64,
}

impl RateLimit {
    pub(crate) const fn new(per_second: u64) -> Self {
        Self {
            per_second,
            window: AtomicU64::new(0),
            used: AtomicU64::new(0),
            suppressed: AtomicU64::new(0),
        }
    }

    /// `Some(lines left out since the last one allowed)` if a line may be
    /// written now.
    pub(crate) fn allow(&self) -> Option<u64> {
        static EPOCH: OnceLock<Instant> = OnceLock::new();
        let now = EPOCH.get_or_init(Instant::now).elapsed().as_secs() + 1;
        if self.window.swap(now, Ordering::Relaxed) != now {
            self.used.store(0, Ordering::Relaxed);
        }
        if self.used.fetch_add(1, Ordering::Relaxed) < self.per_second {
            Some(self.suppressed.swap(0, Ordering::Relaxed))
        } else {
            self.suppressed.fetch_add(1, Ordering::Relaxed);
            None
        }
    }
}

/// When the current summary window started; `None` when summaries are off
/// (or logging is not initialised). The flush thread and `final_summary`
/// both emit under this lock, so no window is counted twice.
static SUMMARY_WINDOW: Mutex<Option<Instant>> = Mutex::new(None);

/// Emits the summary of the window so far if `every` has passed (or at
/// once with `Duration::ZERO`) and starts the next window.
fn summary_due(every: Duration) {
    let mut window = SUMMARY_WINDOW.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(started) = *window {
        if started.elapsed() >= every {
            SUMMARY.emit(started.elapsed());
            *window = Some(Instant::now());
        }
    }
}

/// Writes the `request summary` line of the last, partial window (at
/// shutdown: its requests would otherwise never be summarised) and every
/// buffered line.
pub fn final_summary() {
    summary_due(Duration::ZERO);
    *SUMMARY_WINDOW.lock().unwrap_or_else(|e| e.into_inner()) = None;
    flush();
}

/// Flushes buffered log lines when dropped (at the end of `main`).
pub struct LogGuard;

impl Drop for LogGuard {
    fn drop(&mut self) {
        flush();
    }
}

pub fn init(config: &Config) -> anyhow::Result<LogGuard> {
    let rust_log = std::env::var("RUST_LOG").ok();
    let (level, source) = config.log_filter(rust_log.as_deref());
    let filter = EnvFilter::try_new(&level)
        .map_err(|e| anyhow::anyhow!("{source} {level:?} is not a valid filter: {e}"))?;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(Buffered);
    let installed = match config.log_format {
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .try_init(),
        LogFormat::Text => builder.with_ansi(false).try_init(),
    };
    installed.map_err(|e| anyhow::anyhow!("installing the logger: {e}"))?;
    if tracing::enabled!(target: "http", tracing::Level::INFO) {
        let format = match config.log_format {
            LogFormat::Text => 1,
            LogFormat::Json => 2,
        };
        FORMAT.store(format, Ordering::Relaxed);
    }
    let mode = match config.request_log {
        RequestLog::Off => 0,
        RequestLog::Errors => 1,
        RequestLog::All => 2,
    };
    MODE.store(mode, Ordering::Relaxed);
    SLOW_US.store(
        u64::try_from(config.slow_request.as_micros()).unwrap_or(u64::MAX),
        Ordering::Relaxed,
    );
    if source == "RUST_LOG" && config.log_level.is_some() {
        tracing::info!(filter = %level, "RUST_LOG takes precedence over LOG_LEVEL");
    }
    let summary_every = config.log_summary_every;
    if !summary_every.is_zero() {
        *SUMMARY_WINDOW.lock().unwrap_or_else(|e| e.into_inner()) = Some(Instant::now());
    }
    std::thread::Builder::new()
        .name("log-flush".into())
        .spawn(move || {
            loop {
                std::thread::sleep(FLUSH_EVERY);
                summary_due(summary_every);
                flush();
            }
        })?;
    Ok(LogGuard)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_and_slow_requests_get_a_line_fast_successes_do_not() {
        let slow_us = 100_000;
        assert!(!worth_a_line(200, 99_999, slow_us));
        assert!(!worth_a_line(204, 0, slow_us));
        assert!(worth_a_line(200, 100_000, slow_us));
        assert!(worth_a_line(404, 10, slow_us));
        assert!(worth_a_line(400, 10, slow_us));
        assert!(worth_a_line(503, 10, slow_us));
    }

    #[test]
    fn rate_limit_allows_a_burst_then_counts_what_it_leaves_out() {
        let limit = RateLimit::new(3);
        let allowed: Vec<_> = (0..10).map(|_| limit.allow()).collect();
        // Lines within one second; the test is far shorter than a second
        // unless the window rolls over mid-way, which only allows more.
        assert!(allowed.iter().filter(|a| a.is_some()).count() >= 3);
        assert!(allowed.iter().filter(|a| a.is_some()).count() < 10);
        assert_eq!(allowed[0], Some(0));
    }
}
