//! Connection-level defences, below the router: a deadline for a new
//! connection's first request, closing connections that never sent one when
//! the connection cap is reached, and counting what hyper's parser refuses.
//!
//! hyper 1.x has a single `header_read_timeout`, which also runs while a
//! keep-alive connection waits for its next request, so it has to stay above
//! the load balancer's 60 s idle timeout. A new connection gets a deadline of
//! its own (`FIRST_REQUEST_TIMEOUT_SECONDS`) from the IO wrapper below; after
//! its first request only hyper's timer applies.

use crate::metrics::Metrics;
use crate::telemetry::RateLimit;
use std::collections::VecDeque;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::Notify;
use tokio::time::Sleep;

/// What the accept loop and the connection's task share about one connection.
#[derive(Default)]
pub struct ConnState {
    /// A request head has been parsed: the connection is in use.
    started: AtomicBool,
    /// The first-request deadline passed before any request arrived.
    timed_out: AtomicBool,
    /// Chosen for closing by the accept loop at the connection cap.
    evicted: AtomicBool,
    evict: Notify,
}

impl ConnState {
    pub fn new() -> Arc<Self> {
        Arc::default()
    }

    pub fn started(&self) -> bool {
        self.started.load(Ordering::Relaxed)
    }

    fn mark_started(&self) {
        // Read first: a store on every request would bounce the cache line.
        if !self.started() {
            self.started.store(true, Ordering::Relaxed);
        }
    }

    /// Resolves when the accept loop chose this connection for closing.
    pub async fn evicted(&self) {
        self.evict.notified().await
    }
}

/// Connections that had not sent a request when they were accepted, oldest
/// first. Entries of connections that have since sent one (or closed) are
/// skipped when evicting and dropped when the queue is compacted, so pushing
/// stays O(1) amortised and the queue stays within about twice the number of
/// silent connections. (A stale entry keeps its closed connection's small
/// state allocated; left to pile up, those pin heap pages after a burst.)
#[derive(Default)]
pub struct Silent {
    queue: Mutex<Queue>,
}

#[derive(Default)]
struct Queue {
    entries: VecDeque<Weak<ConnState>>,
    compact_at: usize,
}

impl Queue {
    fn compact(&mut self) {
        self.entries
            .retain(|w| w.upgrade().is_some_and(|c| !c.started()));
        self.entries.shrink_to(2 * self.entries.len());
        self.compact_at = 2 * self.entries.len() + 64;
    }
}

impl Silent {
    pub fn push(&self, conn: &Arc<ConnState>) {
        let mut q = self.queue.lock().expect("silent queue lock");
        if q.entries.len() >= q.compact_at {
            q.compact();
        }
        q.entries.push_back(Arc::downgrade(conn));
    }

    /// Drops the entries of connections that have sent a request or closed.
    pub fn compact(&self) {
        self.queue.lock().expect("silent queue lock").compact();
    }

    /// Asks the oldest connection that never sent a request to close.
    /// The oldest first: a real client sends its request within milliseconds
    /// of connecting, so the longest-silent one is the least likely to be
    /// one, and it is the nearest to its own deadline anyway. Connections
    /// that have served a request (a load balancer's pooled keep-alive
    /// connections) are never chosen: closing one of those races with the
    /// balancer reusing it, which it answers with a 502.
    pub fn evict_oldest(&self) -> bool {
        let mut q = self.queue.lock().expect("silent queue lock");
        while let Some(w) = q.entries.pop_front() {
            let Some(c) = w.upgrade() else { continue };
            if !c.started() && !c.evicted.swap(true, Ordering::Relaxed) {
                c.evict.notify_one();
                return true;
            }
        }
        false
    }
}

/// The TCP stream with a deadline for the first request's head: once it
/// passes with no request parsed, reads fail and hyper drops the connection.
/// After the first request the check is one relaxed load per read.
pub struct FirstRequestDeadline {
    inner: TcpStream,
    state: Arc<ConnState>,
    deadline: Option<Pin<Box<Sleep>>>,
}

impl FirstRequestDeadline {
    pub fn new(inner: TcpStream, state: Arc<ConnState>, timeout: Duration) -> Self {
        Self {
            inner,
            state,
            deadline: Some(Box::pin(tokio::time::sleep(timeout))),
        }
    }
}

impl AsyncRead for FirstRequestDeadline {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if let Some(deadline) = &mut this.deadline {
            if this.state.started() {
                this.deadline = None;
            } else if deadline.as_mut().poll(cx).is_ready() {
                this.state.timed_out.store(true, Ordering::Relaxed);
                return Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "no request before the first-request deadline",
                )));
            }
        }
        Pin::new(&mut this.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for FirstRequestDeadline {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

/// The connection's hyper service, which notes that a request arrived.
#[derive(Clone)]
pub struct MarkStarted<S> {
    inner: S,
    state: Arc<ConnState>,
}

impl<S> MarkStarted<S> {
    pub fn new(inner: S, state: Arc<ConnState>) -> Self {
        Self { inner, state }
    }
}

impl<S, R> hyper::service::Service<R> for MarkStarted<S>
where
    S: hyper::service::Service<R>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn call(&self, req: R) -> Self::Future {
        self.state.mark_started();
        self.inner.call(req)
    }
}

/// How a connection ended, when it is worth counting.
#[derive(Debug, PartialEq, Eq)]
pub enum Ending {
    /// The client closed, or the connection finished normally.
    Normal,
    /// Closed by the server for a reason that is not a parse error.
    Closed(&'static str),
    /// The HTTP parser refused a request (hyper answered 400/414/431 itself
    /// or closed the connection).
    Rejected(&'static str),
}

/// Sorts the outcome of `serve_connection`. An idle keep-alive connection
/// closed by hyper's timer is normal housekeeping, kept apart from parse
/// errors so that an attack or a broken client stands out.
pub fn classify(result: &Result<(), hyper::Error>, state: &ConnState) -> Ending {
    if state.timed_out.load(Ordering::Relaxed) {
        return Ending::Closed("first_request_timeout");
    }
    if state.evicted.load(Ordering::Relaxed) {
        return Ending::Closed("evicted");
    }
    let Err(e) = result else {
        return Ending::Normal;
    };
    if e.is_timeout() {
        return Ending::Closed("idle_timeout");
    }
    if e.is_parse() {
        return Ending::Rejected(parse_kind(e));
    }
    if e.is_incomplete_message() {
        return Ending::Closed("incomplete_request");
    }
    Ending::Closed("io_error")
}

/// hyper does not expose its parse error kinds; its messages are fixed
/// strings (hyper 1.x `Error::description`).
fn parse_kind(e: &hyper::Error) -> &'static str {
    if e.is_parse_too_large() {
        return if e.to_string().starts_with("URI") {
            "uri_too_long"
        } else {
            "head_too_large"
        };
    }
    let msg = e.to_string();
    [
        ("invalid HTTP method", "method"),
        ("invalid HTTP version", "version"),
        ("invalid URI", "uri"),
        ("invalid HTTP header", "header"),
        ("invalid content-length", "content_length"),
        ("invalid transfer-encoding", "transfer_encoding"),
        ("unexpected transfer-encoding", "transfer_encoding"),
    ]
    .into_iter()
    .find_map(|(prefix, kind)| msg.starts_with(prefix).then_some(kind))
    .unwrap_or("other")
}

/// Counts a connection's ending (by listener, `api` or `metrics`) and logs
/// parse rejections, at most `LOG_PER_SECOND` lines a second (a flood of
/// bad requests must not flood the log); the next line says how many were
/// left out.
pub fn record(metrics: &Metrics, listener: &'static str, ending: Ending) {
    match ending {
        Ending::Normal => {}
        Ending::Closed(reason) => metrics.connection_closed(listener, reason),
        Ending::Rejected(kind) => {
            metrics.parse_error(kind);
            if let Some(suppressed) = LOG_LIMIT.allow() {
                tracing::warn!(
                    listener,
                    kind,
                    suppressed,
                    "request refused by the HTTP parser"
                );
            }
        }
    }
}

const LOG_PER_SECOND: u64 = 10;
static LOG_LIMIT: RateLimit = RateLimit::new(LOG_PER_SECOND);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn evicts_the_oldest_silent_connection_and_never_a_used_one() {
        let silent = Silent::default();
        let used = ConnState::new();
        let old = ConnState::new();
        let young = ConnState::new();
        silent.push(&used);
        silent.push(&old);
        silent.push(&young);
        used.mark_started();
        assert!(silent.evict_oldest());
        assert!(old.evicted.load(Ordering::Relaxed));
        assert!(!used.evicted.load(Ordering::Relaxed));
        assert!(!young.evicted.load(Ordering::Relaxed));
        drop(young);
        assert!(!silent.evict_oldest(), "a closed connection is not evicted");
    }

    #[test]
    fn the_queue_is_compacted() {
        let silent = Silent::default();
        let keep: Vec<_> = (0..3).map(|_| ConnState::new()).collect();
        for c in &keep {
            silent.push(c);
        }
        for _ in 0..1000 {
            let c = ConnState::new();
            silent.push(&c);
            c.mark_started();
        }
        let q = silent.queue.lock().unwrap();
        assert!(
            q.entries.len() <= 2 * keep.len() + 64 + 1,
            "{}",
            q.entries.len()
        );
    }
}
