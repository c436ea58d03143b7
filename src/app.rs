//! The application: built once from a configuration and already-bound
//! listeners, then served until a shutdown future resolves. `main` and the
//! tests use exactly this, the tests on port 0.

use crate::config::Config;
use crate::http::conn::{self, ConnState, FirstRequestDeadline, MarkStarted, Silent};
use crate::http::{AppState, Clock, Shared, metrics_router, router, utc_clock};
use crate::metrics::Metrics;
use crate::notify::Notifier;
use crate::startup::StoreHandle;
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
}

impl Application {
    pub async fn build(config: Config) -> anyhow::Result<Self> {
        Self::build_with_clock(config, utc_clock()).await
    }

    /// As `build`, with "today" supplied by `clock` (tests pin dates with it).
    pub async fn build_with_clock(config: Config, clock: Clock) -> anyhow::Result<Self> {
        // Serves even while a shared database is away (see `startup`).
        let store = StoreHandle::connect(&config).await?;
        let listener = bind(config.bind_addr, config.port)
            .with_context(|| format!("binding {}:{}", config.bind_addr, config.port))?;
        let metrics_listener = TcpListener::bind((config.bind_addr, config.metrics_port))
            .await
            .with_context(|| format!("binding {}:{}", config.bind_addr, config.metrics_port))?;
        let metrics = Arc::new(Metrics::new(config.release(), store.backend()));
        let state: AppState = Arc::new(Shared {
            store,
            clock,
            metrics,
            draining: Arc::new(AtomicBool::new(false)),
            limiter: Arc::new(Semaphore::new(config.max_concurrent_requests.max(1))),
            request_timeout: Duration::from_secs(config.request_timeout_seconds.max(1)),
            body_timeout: Duration::from_secs(config.body_timeout_seconds.max(1)),
            db_timeout: config.db_timeout(),
            release: config.release().into(),
        });
        Ok(Self {
            config,
            state,
            listener,
            metrics_listener,
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

    pub fn state(&self) -> &AppState {
        &self.state
    }

    /// Serves until `shutdown` resolves, then drains and stops:
    /// 1. readiness turns 503 at once (the load balancer stops sending),
    /// 2. requests are still served for `drain_seconds` (in-flight balancer
    ///    decisions still arrive), answered with `Connection: close`,
    /// 3. the listener closes; in-flight requests get `shutdown_timeout_seconds`,
    /// 4. the store closes (the SQLite writer finishes its batch).
    pub async fn run_until(self, shutdown: impl Future<Output = ()>) -> anyhow::Result<()> {
        let Self {
            config,
            state,
            listener,
            metrics_listener,
        } = self;
        tracing::info!(
            addr = %listener.local_addr()?,
            metrics_addr = %metrics_listener.local_addr()?,
            database = %config.database_url,
            backend = state.store.backend(),
            release = %state.release,
            version = crate::build::VERSION,
            revision = crate::build::REVISION,
            "listening"
        );

        let (stop_tx, stop_rx) = watch::channel(false);
        let metrics_server = {
            let mut stop = stop_rx.clone();
            let app = metrics_router(state.clone());
            tokio::spawn(async move {
                let _ = axum::serve(metrics_listener, app)
                    .with_graceful_shutdown(async move {
                        let _ = stop.wait_for(|s| *s).await;
                    })
                    .await;
            })
        };
        let graceful = GracefulShutdown::new();
        let (probe_tx, probe_rx) = mpsc::channel(1);
        let accept_loop = tokio::spawn(accept_loop(
            listener,
            state.clone(),
            config.clone(),
            graceful,
            stop_rx,
            probe_rx,
        ));
        // systemd (Type=notify): ready once the accept loop runs; the
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
            drain_seconds = config.drain_seconds,
            "shutdown requested: draining"
        );
        state.draining.store(true, Ordering::Relaxed);
        state.metrics.draining.set(1);
        tokio::time::sleep(Duration::from_secs(config.drain_seconds)).await;

        let _ = stop_tx.send(true);
        let graceful = accept_loop.await.context("the accept loop panicked")?;
        let deadline = Duration::from_secs(config.shutdown_timeout_seconds);
        match tokio::time::timeout(deadline, graceful.shutdown()).await {
            Ok(()) => tracing::info!("all connections closed"),
            Err(_) => tracing::warn!(
                timeout_seconds = config.shutdown_timeout_seconds,
                "connections still open at the shutdown deadline; closing them"
            ),
        }
        let _ = metrics_server.await;
        state.store.close().await;
        tracing::info!("stopped");
        Ok(())
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

/// Accepts connections until told to stop; returns the graceful-shutdown
/// tracker of the connections still open.
async fn accept_loop(
    listener: TcpListener,
    state: AppState,
    config: Config,
    graceful: GracefulShutdown,
    mut stop: watch::Receiver<bool>,
    mut probes: mpsc::Receiver<oneshot::Sender<()>>,
) -> GracefulShutdown {
    let metrics = state.metrics.clone();
    let app = router(state);
    let max_connections = config.max_connections.max(1);
    let connections = Arc::new(Semaphore::new(max_connections));
    let silent = Arc::new(Silent::default());
    let first_request = Duration::from_secs(config.first_request_timeout_seconds.max(1));
    let peak_open = Arc::new(AtomicUsize::new(0));
    let trimmer = tokio::spawn(trim_after_bursts(
        connections.clone(),
        max_connections,
        peak_open.clone(),
        silent.clone(),
    ));
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        // hyper's header-read timer also runs while a keep-alive connection
        // waits for its next request, so it doubles as the idle timeout and
        // must stay above the load balancer's (60 s). A new connection's
        // first request has its own, shorter deadline (`FirstRequestDeadline`).
        .header_read_timeout(Duration::from_secs(config.keepalive_seconds.max(1)))
        .keep_alive(true)
        .max_buf_size(64 * 1024)
        .max_headers(64);
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = stop.wait_for(|s| *s) => break,
            // The watchdog's probe: answered only while this loop is polled.
            Some(reply) = probes.recv() => {
                let _ = reply.send(());
                continue;
            }
        };
        let (stream, _peer) = match accepted {
            Ok(conn) => conn,
            Err(e) => {
                // EMFILE and friends: back off briefly instead of spinning.
                tracing::warn!(error = %e, "accept failed");
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
                        metrics.connection_closed("refused");
                        continue;
                    }
                }
            }
            Err(_) => {
                // Every connection is in use: closing at once costs the least.
                metrics.connection_closed("refused");
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
        let metrics = metrics.clone();
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
                }
            };
            conn::record(&metrics, conn::classify(&result, &conn_state));
            drop(permit);
        });
    }
    trimmer.abort();
    graceful
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
