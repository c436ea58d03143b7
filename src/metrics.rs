//! Prometheus metrics, served on their own listener (never the public port).
//!
//! Names (docs/decisions.md, "Metric names"): the Prometheus form of an
//! OpenTelemetry semantic convention where one exists (HTTP server, database
//! client), `hello_birthday_` for the rest; units as suffixes.
//!
//! Requests are labelled by route template (`/hello/{username}`), never by the
//! raw path, so user data cannot reach a label and the series count stays
//! fixed. Every label value is a `&'static str` or an integer: recording a
//! request allocates nothing.

use crate::store::StoreHandle;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use std::fmt::Write;
use std::sync::OnceLock;
use std::time::Duration;

const LATENCY_BUCKETS: [f64; 13] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
];

/// OpenTelemetry's `http.server.request.duration` attributes, as
/// Prometheus spells them.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    pub http_request_method: &'static str,
    pub http_route: &'static str,
    pub http_response_status_code: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct MethodLabels {
    http_request_method: &'static str,
}

/// OpenTelemetry's `db.client.operation.duration` attributes.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OperationLabels {
    pub db_operation_name: &'static str,
    pub db_system_name: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindLabels {
    kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ListenerReasonLabels {
    listener: &'static str,
    reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ListenerLabels {
    listener: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ConnectionStateLabels {
    db_client_connection_state: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct BuildLabels {
    version: String,
    revision: String,
    release: String,
    backend: String,
}

fn latency_histogram() -> Histogram {
    Histogram::new(LATENCY_BUCKETS)
}

pub struct Metrics {
    registry: Registry,
    duration: Family<RequestLabels, Histogram, fn() -> Histogram>,
    active: Family<MethodLabels, Gauge>,
    pub shed: Counter,
    pub draining: Gauge,
    pub ready: Gauge,
    pub db_up: Gauge,
    db_system: &'static str,
    db_errors: Family<OperationLabels, Counter>,
    db_duration: Family<OperationLabels, Histogram, fn() -> Histogram>,
    pool: Family<ConnectionStateLabels, Gauge>,
    pool_max: Gauge,
    erasure_pending: Gauge,
    parse_errors: Family<KindLabels, Counter>,
    connections_closed: Family<ListenerReasonLabels, Counter>,
    accept_errors: Family<ListenerLabels, Counter>,
    hot: Hot,
}

/// Handles to the series nearly every request updates (a successful GET or
/// PUT of `/hello/{username}`), taken from their families on first use: a
/// family lookup hashes the labels under a lock, which a profile showed
/// on every request. The series appear in `/metrics` only once used, as
/// before.
#[derive(Default)]
struct Hot {
    get_ok: OnceLock<Histogram>,
    put_ok: OnceLock<Histogram>,
    active_get: OnceLock<Gauge>,
    active_put: OnceLock<Gauge>,
    db_get: OnceLock<Histogram>,
    db_upsert: OnceLock<Histogram>,
}

impl Hot {
    fn request(&self, l: &RequestLabels) -> Option<&OnceLock<Histogram>> {
        if l.http_route != HELLO_ROUTE {
            return None;
        }
        match (l.http_request_method, l.http_response_status_code) {
            ("GET", 200) => Some(&self.get_ok),
            ("PUT", 204) => Some(&self.put_ok),
            _ => None,
        }
    }

    fn active(&self, method: &str) -> Option<&OnceLock<Gauge>> {
        match method {
            "GET" => Some(&self.active_get),
            "PUT" => Some(&self.active_put),
            _ => None,
        }
    }

    fn db(&self, operation: &str) -> Option<&OnceLock<Histogram>> {
        match operation {
            "get" => Some(&self.db_get),
            "upsert" => Some(&self.db_upsert),
            _ => None,
        }
    }
}

const HELLO_ROUTE: &str = "/hello/{username}";

impl Metrics {
    pub fn new(release: &str, backend: &'static str) -> Self {
        let mut registry = Registry::default();
        // Its _count is the count of requests answered, by method, route and
        // status: the service keeps no separate requests counter.
        let duration = Family::<RequestLabels, Histogram, fn() -> Histogram>::new_with_constructor(
            latency_histogram,
        );
        registry.register(
            "http_server_request_duration_seconds",
            "Time from request received to response headers sent, by method, route and status",
            duration.clone(),
        );
        let active = Family::<MethodLabels, Gauge>::default();
        registry.register(
            "http_server_active_requests",
            "Requests being served",
            active.clone(),
        );
        let shed = Counter::default();
        registry.register(
            "hello_birthday_http_requests_shed",
            "Requests refused with 503 because the concurrency limit was reached",
            shed.clone(),
        );
        let build = Family::<BuildLabels, Gauge>::default();
        build
            .get_or_create(&BuildLabels {
                version: crate::build::VERSION.into(),
                revision: crate::build::REVISION.into(),
                release: release.into(),
                backend: backend.into(),
            })
            .set(1);
        registry.register(
            "hello_birthday_build_info",
            "Build and release of this process",
            build,
        );
        let draining = Gauge::default();
        registry.register(
            "hello_birthday_draining",
            "1 while the instance drains before shutdown",
            draining.clone(),
        );
        let ready = Gauge::default();
        registry.register(
            "hello_birthday_ready",
            "1 if /readyz answers 200: started (store connected once), not draining, own database answering",
            ready.clone(),
        );
        let db_up = Gauge::default();
        registry.register(
            "hello_birthday_db_up",
            "1 if the database answered the last ping",
            db_up.clone(),
        );
        let db_errors = Family::<OperationLabels, Counter>::default();
        registry.register(
            "hello_birthday_db_errors",
            "Failed database calls",
            db_errors.clone(),
        );
        let db_duration =
            Family::<OperationLabels, Histogram, fn() -> Histogram>::new_with_constructor(
                latency_histogram,
            );
        registry.register(
            "db_client_operation_duration_seconds",
            "Time of database calls, pool wait included",
            db_duration.clone(),
        );
        let pool = Family::<ConnectionStateLabels, Gauge>::default();
        registry.register(
            "db_client_connection_count",
            "Database connections by state (idle, used)",
            pool.clone(),
        );
        let pool_max = Gauge::default();
        registry.register(
            "db_client_connection_max",
            "Database pool capacity",
            pool_max.clone(),
        );
        let erasure_pending = Gauge::default();
        registry.register(
            "hello_birthday_erasure_pending",
            "1 while an acknowledged DELETE or date change may still be readable in the SQLite WAL (its checkpoint is blocked by another connection)",
            erasure_pending.clone(),
        );
        let parse_errors = Family::<KindLabels, Counter>::default();
        registry.register(
            "hello_birthday_http_parse_errors",
            "Requests refused by the HTTP parser before routing (hyper answers 400, 414 or 431 itself), by kind",
            parse_errors.clone(),
        );
        let connections_closed = Family::<ListenerReasonLabels, Counter>::default();
        registry.register(
            "hello_birthday_http_connections_closed",
            "Client connections closed or refused by the server, by listener (api, metrics) and reason (idle_timeout is normal keep-alive housekeeping)",
            connections_closed.clone(),
        );
        let accept_errors = Family::<ListenerLabels, Counter>::default();
        registry.register(
            "hello_birthday_http_accept_errors",
            "Failed accept calls by listener (EMFILE and friends); the connection waits in the kernel's queue",
            accept_errors.clone(),
        );
        Self {
            registry,
            duration,
            active,
            shed,
            draining,
            ready,
            db_up,
            db_system: db_system_name(backend),
            db_errors,
            db_duration,
            pool,
            pool_max,
            erasure_pending,
            parse_errors,
            connections_closed,
            accept_errors,
            hot: Hot::default(),
        }
    }

    pub fn parse_error(&self, kind: &'static str) {
        self.parse_errors.get_or_create(&KindLabels { kind }).inc();
    }

    pub fn connection_closed(&self, listener: &'static str, reason: &'static str) {
        self.connections_closed
            .get_or_create(&ListenerReasonLabels { listener, reason })
            .inc();
    }

    pub fn accept_error(&self, listener: &'static str) {
        self.accept_errors
            .get_or_create(&ListenerLabels { listener })
            .inc();
    }

    pub fn observe_request(
        &self,
        method: &'static str,
        route: &'static str,
        status: u16,
        d: Duration,
    ) {
        let labels = RequestLabels {
            http_request_method: method,
            http_route: route,
            http_response_status_code: status,
        };
        let seconds = d.as_secs_f64();
        match self.hot.request(&labels) {
            Some(h) => h
                .get_or_init(|| self.duration.get_or_create(&labels).clone())
                .observe(seconds),
            None => self.duration.get_or_create(&labels).observe(seconds),
        }
    }

    /// The `http_server_active_requests` series of `method`, to hold while
    /// a request is served.
    pub fn active_requests(&self, method: &'static str) -> Gauge {
        let labels = MethodLabels {
            http_request_method: method,
        };
        match self.hot.active(method) {
            Some(g) => g
                .get_or_init(|| self.active.get_or_create(&labels).clone())
                .clone(),
            None => self.active.get_or_create(&labels).clone(),
        }
    }

    pub fn observe_db(&self, operation: &'static str, d: Duration, ok: bool) {
        let labels = OperationLabels {
            db_operation_name: operation,
            db_system_name: self.db_system,
        };
        match self.hot.db(operation) {
            Some(h) => h
                .get_or_init(|| self.db_duration.get_or_create(&labels).clone())
                .observe(d.as_secs_f64()),
            None => self
                .db_duration
                .get_or_create(&labels)
                .observe(d.as_secs_f64()),
        }
        if !ok {
            self.db_errors.get_or_create(&labels).inc();
        }
    }

    /// Refreshes the scrape-time gauges and renders the OpenMetrics text.
    pub async fn render(&self, store: &StoreHandle, ping_timeout: Duration) -> String {
        let up = matches!(
            tokio::time::timeout(ping_timeout, store.ping()).await,
            Ok(Ok(()))
        );
        self.db_up.set(i64::from(up));
        let pool = store.pool_status();
        self.pool
            .get_or_create(&ConnectionStateLabels {
                db_client_connection_state: "idle",
            })
            .set(pool.idle as i64);
        self.pool
            .get_or_create(&ConnectionStateLabels {
                db_client_connection_state: "used",
            })
            .set(pool.in_use as i64);
        self.pool_max.set(pool.max as i64);
        self.erasure_pending.set(i64::from(store.erasure_pending()));

        let mut out = String::with_capacity(8192);
        prometheus_client::encoding::text::encode_registry(&mut out, &self.registry)
            .expect("writing to a String");
        write_process_metrics(&mut out);
        prometheus_client::encoding::text::encode_eof(&mut out).expect("writing to a String");
        out
    }
}

/// OpenTelemetry's `db.system.name` for a store backend.
pub fn db_system_name(backend: &'static str) -> &'static str {
    match backend {
        "postgres" => "postgresql",
        other => other,
    }
}

/// Process metrics under the usual names, read from /proc (Linux only;
/// elsewhere they are left out rather than faked).
fn write_process_metrics(out: &mut String) {
    let Some(p) = process_stats() else { return };
    let _ = write!(
        out,
        "# HELP process_cpu_seconds Total user and system CPU time spent in seconds.\n\
         # TYPE process_cpu_seconds counter\n\
         process_cpu_seconds_total {}\n\
         # HELP process_resident_memory_bytes Resident memory size in bytes.\n\
         # TYPE process_resident_memory_bytes gauge\n\
         process_resident_memory_bytes {}\n\
         # HELP process_start_time_seconds Start time of the process since the Unix epoch in seconds.\n\
         # TYPE process_start_time_seconds gauge\n\
         process_start_time_seconds {}\n\
         # HELP process_open_fds Number of open file descriptors.\n\
         # TYPE process_open_fds gauge\n\
         process_open_fds {}\n",
        p.cpu_seconds, p.rss_bytes, p.start_time_seconds, p.open_fds
    );
}

struct ProcessStats {
    cpu_seconds: f64,
    rss_bytes: u64,
    start_time_seconds: f64,
    open_fds: usize,
}

fn process_stats() -> Option<ProcessStats> {
    // /proc reports these in clock ticks and pages, whose sizes the system
    // says (100 and 4096 on x86_64, but 16 KiB or 64 KiB pages on some
    // aarch64 kernels).
    let ticks = rustix::param::clock_ticks_per_second() as f64;
    let page = rustix::param::page_size() as u64;
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // Fields after the parenthesised command name, which may hold spaces.
    let after = &stat[stat.rfind(')')? + 2..];
    let f: Vec<&str> = after.split_whitespace().collect();
    let utime: f64 = f.get(11)?.parse().ok()?;
    let stime: f64 = f.get(12)?.parse().ok()?;
    let start_ticks: f64 = f.get(19)?.parse().ok()?;
    let rss_pages: u64 = f.get(21)?.parse().ok()?;
    let boot_time: f64 = std::fs::read_to_string("/proc/stat")
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix("btime ")?.trim().parse().ok())?;
    let open_fds = std::fs::read_dir("/proc/self/fd")
        .map(|d| d.count())
        .unwrap_or(0);
    Some(ProcessStats {
        cpu_seconds: (utime + stime) / ticks,
        rss_bytes: rss_pages * page,
        start_time_seconds: boot_time + start_ticks / ticks,
        open_fds,
    })
}
