//! The application: built once from a configuration and already-bound
//! listeners, then served until a shutdown future resolves. `main` and the
//! tests use exactly this, the tests on port 0.

use crate::config::Config;
use crate::fd_limit::{Caps, connection_caps};
use crate::http::conn::{self, ConnState, FirstRequestDeadline, MarkStarted, Silent};
use crate::http::{AppState, Clock, MAX_HEAD_BYTES, Shared, metrics_router, router, utc_clock};
use crate::metrics::Metrics;
use crate::notify::Notifier;
use crate::store::StoreHandle;
use crate::telemetry::RateLimit;
use anyhow::Context;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, mpsc, oneshot, watch};

pub struct Application {
    config: Config,
    state: AppState,
    listener: TcpListener,
    metrics_listener: TcpListener,
    caps: Caps,
}

impl Application {
    pub async fn build(config: Config) -> anyhow::Result<Self> {
        Self::build_with_clock(config, utc_clock()).await
    }

    /// As `build`, with "today" supplied by `clock` (tests pin dates with it).
    pub async fn build_with_clock(config: Config, clock: Clock) -> anyhow::Result<Self> {
        // Serves even while a shared database is away (see `StoreHandle`).
        let store = StoreHandle::connect(&config).await?;
        let listener = bind(config.bind_addr, config.port)
            .with_context(|| format!("binding {}:{}", config.bind_addr, config.port))?;
        let metrics_listener =
            bind(config.metrics_bind_addr, config.metrics_port).with_context(|| {
                format!(
                    "binding {}:{}",
                    config.metrics_bind_addr, config.metrics_port
                )
            })?;
        let metrics = Metrics::new(config.release(), store.backend());
        let state: AppState = Arc::new(Shared {
            store,
            clock,
            metrics,
            draining: AtomicBool::new(false),
            limiter: Semaphore::new(config.max_concurrent_requests.get()),
            request_timeout: config.request_timeout,
            body_timeout: config.body_timeout,
            db_timeout: config.db_timeout,
            release: config.release().into(),
        });
        let caps = connection_caps(&config);
        Ok(Self {
            config,
            state,
            listener,
            metrics_listener,
            caps,
        })
    }

    pub fn addr(&self) -> SocketAddr {
        self.listener
            .local_addr()
            .expect("a bound listener has an address")
    }

    pub fn metrics_addr(&self) -> SocketAddr {
        self.metrics_listener
            .local_addr()
            .expect("a bound listener has an address")
    }

    /// Serves until `shutdown` resolves, then drains and stops:
    /// 1. readiness turns 503 at once (the load balancer stops sending),
    /// 2. requests are still served for `drain` (in-flight balancer
    ///    decisions still arrive), answered with `Connection: close`,
    /// 3. the listeners close; in-flight requests get `shutdown_timeout`,
    ///    and those still running then are cut off (counted and logged as 499),
    /// 4. the store closes (the SQLite writer finishes its batch).
    pub async fn run_until(self, shutdown: impl Future<Output = ()>) -> anyhow::Result<()> {
        let Self {
            config,
            state,
            listener,
            metrics_listener,
            caps,
        } = self;
        tracing::info!(
            addr = %listener.local_addr()?,
            metrics_addr = %metrics_listener.local_addr()?,
            database = %config.database_url,
            backend = state.store.backend(),
            release = %state.release,
            version = crate::build::VERSION,
            revision = crate::build::REVISION,
            max_connections = caps.api,
            metrics_max_connections = caps.metrics,
            "listening"
        );

        let (stop_tx, stop_rx) = watch::channel(false);
        let (abort_tx, abort_rx) = watch::channel(false);
        let first_request = config.first_request_timeout;
        let (probe_tx, probe_rx) = mpsc::channel(1);
        let api = Listener {
            name: "api",
            listener,
            app: router(state.clone()),
            max_connections: caps.api,
            first_request,
            keep_alive: Some(config.keepalive),
            trim: true,
            probes: Some(probe_rx),
        };
        // One request per connection: a scraper reconnects at each scrape at
        // no cost that matters, and a connection is either silent (closed at
        // the first-request deadline, or for room at the cap) or busy with a
        // request; none can hold a slot by idling after one.
        let scrape = Listener {
            name: "metrics",
            listener: metrics_listener,
            app: metrics_router(state.clone()),
            max_connections: caps.metrics,
            first_request,
            keep_alive: None,
            trim: false,
            probes: None,
        };
        let serving = [api, scrape].map(|l| {
            tokio::spawn(accept_loop(
                l,
                state.clone(),
                stop_rx.clone(),
                abort_rx.clone(),
            ))
        });
        // systemd (Type=notify): ready once the accept loops run; the
        // watchdog is fed only while the service proves it works.
        let notifier = Notifier::from_env().map(Arc::new);
        let watchdog = notifier.as_ref().and_then(|n| {
            n.send("READY=1\nSTATUS=serving");
            let period = crate::notify::watchdog_period()?;
            tracing::info!(period_ms = period.as_millis() as u64, "systemd watchdog on");
            Some(tokio::spawn(watchdog(
                n.clone(),
                period,
                probe_tx,
                state.clone(),
            )))
        });

        shutdown.await;
        if let Some(w) = watchdog {
            w.abort();
        }
        if let Some(n) = &notifier {
            n.send("STOPPING=1\nSTATUS=draining");
        }
        tracing::info!(
            drain_seconds = config.drain.as_secs_f64(),
            "shutdown requested: draining"
        );
        state.draining.store(true, Ordering::Relaxed);
        state.metrics.draining.set(1);
        tokio::time::sleep(config.drain).await;

        let _ = stop_tx.send(true);
        let mut open = Vec::with_capacity(serving.len());
        for task in serving {
            open.push(task.await.context("an accept loop panicked")?);
        }
        let deadline = config.shutdown_timeout;
        let all_closed = futures_util::future::join_all(
            open.iter_mut()
                .map(|o| o.graceful.take().expect("set").shutdown()),
        );
        match tokio::time::timeout(deadline, all_closed).await {
            Ok(_) => tracing::info!("all connections closed"),
            Err(_) => {
                tracing::warn!(
                    timeout_seconds = config.shutdown_timeout.as_secs_f64(),
                    "connections still open at the shutdown deadline; closing them"
                );
                // Dropping a connection drops its requests, each of which is
                // counted and logged as 499 on the way out: wait (briefly)
                // until every connection task has ended.
                let _ = abort_tx.send(true);
                let ended = futures_util::future::join_all(open.iter().map(Open::ended));
                let _ = tokio::time::timeout(Duration::from_secs(1), ended).await;
            }
        }
        state.store.close().await;
        tracing::info!("stopped");
        Ok(())
    }
}

/// A listener and how its connections are served.
struct Listener {
    /// `api` or `metrics`: the `listener` label of the connection metrics.
    name: &'static str,
    listener: TcpListener,
    app: axum::Router,
    max_connections: usize,
    /// How long a new connection may take to send its first request's head.
    first_request: Duration,
    /// How long a connection may wait for its next request; `None`: one
    /// request per connection.
    keep_alive: Option<Duration>,
    /// Hand heap back after bursts of connections.
    trim: bool,
    /// The watchdog's probes (the API listener's loop answers them).
    probes: Option<mpsc::Receiver<oneshot::Sender<()>>>,
}

/// The connections a stopped accept loop leaves open.
struct Open {
    graceful: Option<GracefulShutdown>,
    connections: Arc<Semaphore>,
    max: usize,
}

impl Open {
    /// Resolves when every connection task has ended (freed its permit).
    async fn ended(&self) {
        let all = u32::try_from(self.max).unwrap_or(u32::MAX);
        let _ = self.connections.acquire_many(all).await;
    }
}

/// A listener with a deep accept queue: the default (128 on many kernels,
/// 1024 in tokio) overflows when hundreds of clients connect at once, and an
/// overflowed SYN is only retried after a second.
fn bind(ip: std::net::IpAddr, port: u16) -> std::io::Result<TcpListener> {
    let addr = SocketAddr::new(ip, port);
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(4096)
}

/// At most this many `accept failed` lines a second (each says how many it
/// left out): an exhausted file table fails every accept, about 20 a second.
static ACCEPT_LOG: RateLimit = RateLimit::new(1);

/// Accepts connections until told to stop; returns the connections still
/// open. After `abort`, the remaining connections are dropped.
async fn accept_loop(
    serve: Listener,
    state: AppState,
    mut stop: watch::Receiver<bool>,
    abort: watch::Receiver<bool>,
) -> Open {
    let Listener {
        name,
        listener,
        app,
        max_connections,
        first_request,
        keep_alive,
        trim,
        mut probes,
    } = serve;
    let connections = Arc::new(Semaphore::new(max_connections));
    let silent = Arc::new(Silent::default());
    let peak_open = Arc::new(AtomicUsize::new(0));
    let graceful = GracefulShutdown::new();
    let trimmer = trim.then(|| {
        tokio::spawn(trim_after_bursts(
            connections.clone(),
            max_connections,
            peak_open.clone(),
            silent.clone(),
        ))
    });
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        // A client that half-closes after its request (shutdown(SHUT_WR))
        // is still answered: without this, hyper drops the request as soon
        // as it reads the EOF, while its write may already be applied.
        .half_close(true)
        .max_buf_size(MAX_HEAD_BYTES)
        .max_headers(64);
    match keep_alive {
        // hyper's header-read timer also runs while a keep-alive connection
        // waits for its next request, so it doubles as the idle timeout and
        // must stay above the load balancer's (60 s). A new connection's
        // first request has its own, shorter deadline (`FirstRequestDeadline`).
        Some(idle) => http.header_read_timeout(idle).keep_alive(true),
        None => http.header_read_timeout(first_request).keep_alive(false),
    };
    #[cfg(feature = "fault-wedge-accept")]
    let mut wedged: Option<oneshot::Sender<()>> = None;
    loop {
        #[cfg(feature = "fault-wedge-accept")]
        if let Some(reply) = wedged.take() {
            fault_wedge::hold().await;
            let _ = reply.send(());
        }
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = stop.wait_for(|s| *s) => break,
            // The watchdog's probe: answered only while this loop is polled.
            Some(reply) = async {
                match probes.as_mut() {
                    Some(p) => p.recv().await,
                    None => std::future::pending().await,
                }
            } => {
                #[cfg(feature = "fault-wedge-accept")]
                if fault_wedge::asked() {
                    wedged = Some(reply);
                    continue;
                }
                let _ = reply.send(());
                continue;
            }
        };
        let (stream, _peer) = match accepted {
            Ok(conn) => conn,
            Err(e) => {
                // EMFILE and friends: back off briefly instead of spinning.
                state.metrics.accept_error(name);
                if let Some(suppressed) = ACCEPT_LOG.allow() {
                    tracing::warn!(listener = name, error = %e, suppressed, "accept failed");
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let permit = match connections.clone().try_acquire_owned() {
            Ok(permit) => permit,
            // At the cap, a connection that never sent a request makes room
            // for the new one; its task ends at once and frees its permit.
            Err(_) if silent.evict_oldest() => {
                match tokio::time::timeout(
                    Duration::from_millis(100),
                    connections.clone().acquire_owned(),
                )
                .await
                {
                    Ok(Ok(permit)) => permit,
                    _ => {
                        state.metrics.connection_closed(name, "refused");
                        continue;
                    }
                }
            }
            Err(_) => {
                // Every connection is in use: closing at once costs the least.
                state.metrics.connection_closed(name, "refused");
                continue;
            }
        };
        let open = max_connections - connections.available_permits();
        peak_open.fetch_max(open, Ordering::Relaxed);
        let _ = stream.set_nodelay(true);
        let conn_state = ConnState::new();
        silent.push(&conn_state);
        let io = FirstRequestDeadline::new(stream, conn_state.clone(), first_request);
        let service = MarkStarted::new(TowerToHyperService::new(app.clone()), conn_state.clone());
        let conn = graceful.watch(http.serve_connection(TokioIo::new(io), service));
        let state = state.clone();
        let mut abort = abort.clone();
        tokio::spawn(async move {
            tokio::pin!(conn);
            let result = loop {
                tokio::select! {
                    result = &mut conn => break result,
                    // A request that arrived just as the connection was
                    // chosen is served; the accept loop then gives up.
                    () = conn_state.evicted() => if !conn_state.started() {
                        break Ok(());
                    },
                    // Past the shutdown deadline.
                    _ = abort.wait_for(|a| *a) => break Ok(()),
                }
            };
            conn::record(&state.metrics, name, conn::classify(&result, &conn_state));
            drop(permit);
        });
    }
    if let Some(trimmer) = trimmer {
        trimmer.abort();
    }
    Open {
        graceful: Some(graceful),
        connections,
        max: max_connections,
    }
}

/// Test builds only (`--features fault-wedge-accept`, never a release):
/// while the file `HELLO_FAULT_WEDGE_ACCEPT` names exists, the API accept
/// loop, on its next probe, is stuck in `hold` as a loop stuck on an await
/// would be: it neither accepts nor answers the watchdog's probe, while the
/// rest of the process (the metrics listener, the watchdog task) runs on.
#[cfg(feature = "fault-wedge-accept")]
mod fault_wedge {
    use std::time::Duration;

    fn file() -> Option<std::path::PathBuf> {
        std::env::var_os("HELLO_FAULT_WEDGE_ACCEPT").map(Into::into)
    }

    pub fn asked() -> bool {
        file().is_some_and(|f| f.exists())
    }

    pub async fn hold() {
        tracing::warn!("fault-wedge-accept: the API accept loop is wedged");
        while asked() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// Feeds the systemd watchdog while the accept loop answers its probe and,
/// on SQLite, the writer thread answers a ping, each check within half the
/// period (see `notify`). A check that fails or hangs skips that feed;
/// systemd restarts the unit once a whole period passes unfed.
async fn watchdog(
    notifier: Arc<Notifier>,
    period: Duration,
    probes: mpsc::Sender<oneshot::Sender<()>>,
    state: AppState,
) {
    let every = crate::notify::feed_interval(period);
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut healthy = true;
    loop {
        tick.tick().await;
        let check = async {
            let (reply, answer) = oneshot::channel();
            let ended = "the accept loop has ended";
            probes.send(reply).await.map_err(|_| ended)?;
            answer.await.map_err(|_| ended)?;
            if state.store.is_local() && state.store.connected() {
                state
                    .store
                    .ping()
                    .await
                    .map_err(|_| "the SQLite writer does not answer")?;
            }
            Ok::<(), &'static str>(())
        };
        let verdict = tokio::time::timeout(every, check)
            .await
            .unwrap_or(Err("a check did not answer in time"));
        match verdict {
            Ok(()) => {
                notifier.send("WATCHDOG=1");
                if !healthy {
                    tracing::info!("watchdog fed again");
                }
                healthy = true;
            }
            Err(why) => {
                if healthy {
                    tracing::warn!(
                        reason = why,
                        "watchdog not fed: systemd restarts the service if this lasts"
                    );
                }
                healthy = false;
            }
        }
    }
}

/// Connections that must have closed since the last check before memory is
/// handed back.
const BURST: usize = 128;

/// Hands freed heap back to the system once a burst of connections has gone.
/// glibc keeps freed memory in its per-thread arenas for reuse: after ten
/// bursts of 1,000 connections RSS stayed at the burst's level (42 MiB from
/// 15 MiB warm, debug build) until exit. `malloc_trim(0)` returns the free
/// pages of every arena (down to 18 MiB, `test_attacks.Memory`); it runs
/// only after a burst left, at most once a second, off the async workers.
/// Steady load, however high, never triggers it, so it costs the request
/// path nothing.
async fn trim_after_bursts(
    connections: Arc<Semaphore>,
    max: usize,
    peak_open: Arc<AtomicUsize>,
    silent: Arc<Silent>,
) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let open = max - connections.available_permits();
        let peak = peak_open.swap(open, Ordering::Relaxed);
        if peak >= open + BURST {
            silent.compact();
            let _ = tokio::task::spawn_blocking(trim_heap).await;
        }
    }
}

#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn trim_heap() {
    // SAFETY: malloc_trim only walks the allocator's own free lists; it is
    // thread-safe and takes no pointers from us.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// Other allocators (musl's, for one) return freed memory by themselves.
#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn trim_heap() {}
