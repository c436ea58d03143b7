//! The open-files limit and the connection caps that fit inside it: every
//! client connection is a file descriptor.

use crate::config::Config;

/// Raises the open-files soft limit to the hard limit: the usual soft limit
/// (1024) is far below what one instance can serve.
pub fn raise_fd_limit() {
    #[cfg(unix)]
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(limit) => tracing::debug!(limit, "open files limit"),
        Err(e) => tracing::warn!(error = %e, "cannot raise the open files limit"),
    }
}

/// Open connections each listener accepts at once.
#[derive(Clone, Copy, Debug)]
pub struct Caps {
    pub api: usize,
    pub metrics: usize,
}

/// File descriptors kept outside the connection caps, so that neither
/// listener can take the last ones: the listeners, stdio and the runtime's
/// own; SQLite's three per connection (file, WAL, shared memory) for a
/// reader per worker thread and the writer; the PostgreSQL pool; and room
/// for short-lived ones (/proc reads, a connection accepted only to be
/// closed at the cap).
fn reserved_fds(config: &Config) -> usize {
    let workers = std::thread::available_parallelism().map_or(1, |n| n.get());
    32 + 3 * (workers + 1) + config.db_pool_size.get()
}

/// The connection caps within the open-files limit. Every connection is a
/// file descriptor: with the caps inside the limit an accept never fails
/// with EMFILE, so the API port can always accept, and at its cap make room
/// by closing a silent connection instead of leaving the new one (a load
/// balancer's health check) in the kernel's queue.
pub fn connection_caps(config: &Config) -> Caps {
    let metrics = config.metrics_max_connections.get();
    let wanted = config.max_connections.get();
    #[cfg(unix)]
    let limit = rlimit::getrlimit(rlimit::Resource::NOFILE)
        .map_or(u64::MAX, |(soft, _hard)| soft)
        .min(usize::MAX as u64) as usize;
    #[cfg(not(unix))]
    let limit = usize::MAX;
    let budget = limit.saturating_sub(reserved_fds(config) + metrics).max(1);
    if budget < wanted {
        tracing::warn!(
            open_files_limit = limit,
            max_connections = wanted,
            allowed = budget,
            "the open-files limit allows fewer API connections than MAX_CONNECTIONS; raise the limit (ulimit -n, LimitNOFILE=) to get them all"
        );
    }
    Caps {
        api: wanted.min(budget),
        metrics,
    }
}
