//! The systemd notify protocol (`Type=notify`, sd_notify(3)), written on a
//! `UnixDatagram`: `READY=1` once the service accepts connections,
//! `STOPPING=1` when the drain starts, `WATCHDOG=1` while the service
//! proves it works. Without `NOTIFY_SOCKET` (not under systemd) it does
//! nothing.
//!
//! The watchdog is fed only when, within its deadline,
//! - the accept loop answers a probe (the task that takes new connections
//!   is being polled: not wedged, not ended), and
//! - on SQLite, the writer thread answers a ping through its queue (a
//!   writer stuck on a lock or a disk blocks every PUT behind it).
//!
//! A shared PostgreSQL server is not probed: its outage is every
//! instance's, and restarting them all would not bring it back (the same
//! rule as readiness, `http/health.rs`).

use std::os::unix::net::UnixDatagram;
use std::time::Duration;

pub struct Notifier {
    socket: UnixDatagram,
    addr: std::os::unix::net::SocketAddr,
}

impl Notifier {
    /// From `NOTIFY_SOCKET` (a path, or `@name` for an abstract socket).
    pub fn from_env() -> Option<Self> {
        let path = std::env::var_os("NOTIFY_SOCKET")?;
        match Self::connect(&path) {
            Ok(n) => Some(n),
            Err(e) => {
                tracing::warn!(error = %e, socket = ?path, "NOTIFY_SOCKET is unusable; not notifying systemd");
                None
            }
        }
    }

    fn connect(path: &std::ffi::OsStr) -> std::io::Result<Self> {
        use std::os::unix::ffi::OsStrExt;
        let bytes = path.as_bytes();
        let addr = match bytes.strip_prefix(b"@") {
            #[cfg(target_os = "linux")]
            Some(name) => {
                use std::os::linux::net::SocketAddrExt;
                std::os::unix::net::SocketAddr::from_abstract_name(name)?
            }
            #[cfg(not(target_os = "linux"))]
            Some(_) => {
                return Err(std::io::Error::other("abstract sockets need Linux"));
            }
            None => std::os::unix::net::SocketAddr::from_pathname(path)?,
        };
        Ok(Self {
            socket: UnixDatagram::unbound()?,
            addr,
        })
    }

    /// Sends one state update; a failure is logged, never fatal (systemd
    /// then times the start out or restarts the unit, which is the point).
    pub fn send(&self, state: &str) {
        if let Err(e) = self.socket.send_to_addr(state.as_bytes(), &self.addr) {
            tracing::warn!(error = %e, state, "could not notify systemd");
        }
    }
}

/// The watchdog period systemd asked for (`WATCHDOG_USEC`), if it is meant
/// for this process (`WATCHDOG_PID`, when set, names it).
pub fn watchdog_period() -> Option<Duration> {
    let usec: u64 = std::env::var("WATCHDOG_USEC").ok()?.trim().parse().ok()?;
    if let Ok(pid) = std::env::var("WATCHDOG_PID") {
        if pid.trim().parse::<u32>().ok()? != std::process::id() {
            return None;
        }
    }
    (usec > 0).then(|| Duration::from_micros(usec))
}

/// How often to check and feed: twice per period, as sd_watchdog_enabled(3)
/// recommends, so one slow check does not miss the deadline.
pub fn feed_interval(period: Duration) -> Duration {
    (period / 2).max(Duration::from_millis(10))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_reach_a_path_socket_and_an_abstract_one() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify");
        let listener = UnixDatagram::bind(&path).unwrap();
        let n = Notifier::connect(path.as_os_str()).unwrap();
        n.send("READY=1");
        let mut buf = [0u8; 64];
        let len = listener.recv(&mut buf).unwrap();
        assert_eq!(&buf[..len], b"READY=1");

        #[cfg(target_os = "linux")]
        {
            use std::os::linux::net::SocketAddrExt;
            let name = format!("hello-birthday-test-{}", std::process::id());
            let addr = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
            let listener = UnixDatagram::bind_addr(&addr).unwrap();
            let n = Notifier::connect(std::ffi::OsStr::new(&format!("@{name}"))).unwrap();
            n.send("STOPPING=1");
            let len = listener.recv(&mut buf).unwrap();
            assert_eq!(&buf[..len], b"STOPPING=1");
        }
    }

    #[test]
    fn the_feed_interval_is_half_the_period() {
        assert_eq!(
            feed_interval(Duration::from_secs(10)),
            Duration::from_secs(5)
        );
        assert_eq!(
            feed_interval(Duration::from_micros(1)),
            Duration::from_millis(10)
        );
    }
}
