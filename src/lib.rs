//! hello-birthday: remembers people's dates of birth and greets them.
//!
//! Data travels one way through the crate:
//!
//! ```text
//! HTTP request -> http (parse into domain types) -> domain (pure calendar)
//!              -> store (sqlite | postgres) -> domain -> http response
//! ```
//!
//! - [`domain`]: validated types (`Username`, `DateOfBirth`) and the greeting;
//!   pure, no I/O, no clock reads.
//! - [`store`]: SQLite (default, group-committed writes) and PostgreSQL behind
//!   one interface, chosen by the database `DATABASE_URL` names; embedded
//!   migrations; [`store::StoreHandle`], the store that may still be
//!   connecting.
//! - [`http`]: routes, the strict body decoder, one error type mapped to RFC
//!   9457 problem+json, and the middleware for limits, metrics and logs.
//! - [`config`]: every setting parsed and checked once (`DATABASE_URL` into a
//!   [`config::Database`], durations into `Duration`s).
//! - [`app`]: builds the application from a [`config::Config`] and serves it
//!   with a drain-then-stop shutdown; used by `main` and by the tests.
//! - [`fd_limit`]: the open-files limit and the connection caps within it;
//!   [`shutdown`]: the signals that start the drain.
//! - [`metrics`], [`telemetry`], [`trace`]: Prometheus metrics, structured
//!   logs, OpenTelemetry traces; [`notify`]: systemd's notify protocol.

pub mod app;
pub mod config;
pub mod domain;
pub mod fd_limit;
pub mod http;
pub mod metrics;
pub mod notify;
pub mod shutdown;
pub mod store;
pub mod telemetry;
pub mod trace;

/// What this binary is: version, git revision and a per-process nonce.
pub mod build {
    pub const VERSION: &str = env!("CARGO_PKG_VERSION");
    pub const REVISION: &str = env!("HELLO_GIT_REVISION");
    pub const VERSION_LINE: &str = concat!(
        env!("CARGO_PKG_VERSION"),
        " (revision ",
        env!("HELLO_GIT_REVISION"),
        ")"
    );

    /// A number unique enough per process to prefix request ids.
    pub fn instance_nonce() -> u32 {
        static NONCE: std::sync::OnceLock<u32> = std::sync::OnceLock::new();
        *NONCE.get_or_init(|| {
            let t = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.subsec_nanos())
                .unwrap_or(0);
            t ^ std::process::id().rotate_left(16)
        })
    }
}
