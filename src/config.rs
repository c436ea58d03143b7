//! Configuration: environment first (12-factor), every variable also a flag.

use clap::{Parser, ValueEnum};
use secrecy::{ExposeSecret, SecretString};
use std::fmt;
use std::net::IpAddr;
use std::time::Duration;

/// A database URL that never prints its password: `Debug` and `Display`
/// show `postgres://user:***@host/db`. Held as a `secrecy` secret, so the
/// one way to the real URL is an explicit `expose`, and the memory is
/// zeroed when it is dropped.
#[derive(Clone)]
pub struct DatabaseUrl(SecretString);

impl DatabaseUrl {
    pub fn new(url: impl Into<String>) -> Self {
        Self(SecretString::from(url.into()))
    }

    /// The real URL, for the driver only.
    pub fn expose(&self) -> &str {
        self.0.expose_secret()
    }

    pub fn redacted(&self) -> String {
        redact_url(self.expose())
    }
}

impl std::str::FromStr for DatabaseUrl {
    type Err = std::convert::Infallible;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(Self::new(s))
    }
}

impl fmt::Debug for DatabaseUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "DatabaseUrl({})", self.redacted())
    }
}

impl fmt::Display for DatabaseUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.redacted())
    }
}

/// Replaces the password of `scheme://user:password@host` and of a
/// `password=...` parameter with `***`.
pub fn redact_url(url: &str) -> String {
    let mut out = url.to_owned();
    if let Some(scheme_end) = out.find("://") {
        let rest_start = scheme_end + 3;
        let authority_end = out[rest_start..]
            .find(['/', '?'])
            .map_or(out.len(), |i| rest_start + i);
        if let Some(at) = out[rest_start..authority_end].rfind('@') {
            let at = rest_start + at;
            if let Some(colon) = out[rest_start..at].find(':') {
                out.replace_range(rest_start + colon + 1..at, "***");
            }
        }
    }
    if let Some(p) = out.find("password=") {
        let start = p + "password=".len();
        let end = out[start..].find('&').map_or(out.len(), |i| start + i);
        out.replace_range(start..end, "***");
    }
    out
}

#[derive(Copy, Clone, Debug, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines for a terminal.
    Text,
    /// One JSON object per line, for log shippers.
    Json,
}

/// Which requests get a log line of their own.
#[derive(Copy, Clone, Debug, PartialEq, Eq, ValueEnum)]
pub enum RequestLog {
    /// Every answer with status 400 or above and every request slower than
    /// SLOW_REQUEST_MS, at most 100 lines a second (the rest are counted);
    /// the others are counted in the metrics and in the summary line.
    Errors,
    /// One line per request (debugging; about 150 bytes each).
    All,
    /// No request lines (the summary line still comes).
    Off,
}

#[derive(Clone, Debug, Parser)]
#[command(
    name = "hello-birthday",
    version = crate::build::VERSION_LINE,
    about = "Remembers people's dates of birth and greets them.",
    long_about = None
)]
pub struct Config {
    /// Public API port (0 picks a free one).
    #[arg(long, env = "PORT", default_value_t = 5000)]
    pub port: u16,

    /// Prometheus /metrics port, never served on the public port (0 picks a free one).
    #[arg(long, env = "METRICS_PORT", default_value_t = 9464)]
    pub metrics_port: u16,

    /// Address the public API listener binds to.
    #[arg(long, env = "BIND_ADDR", default_value = "0.0.0.0")]
    pub bind_addr: IpAddr,

    /// Address the metrics listener binds to: loopback unless a scraper on another host needs it (0.0.0.0).
    #[arg(long, env = "METRICS_BIND_ADDR", default_value = "127.0.0.1")]
    pub metrics_bind_addr: IpAddr,

    /// Open connections to the metrics listener at once (one request each); beyond it the oldest silent one is closed, else the new one.
    #[arg(long, env = "METRICS_MAX_CONNECTIONS", default_value_t = 8)]
    pub metrics_max_connections: usize,

    /// sqlite://PATH or postgres://user:password@host:port/db (the password is never printed).
    #[arg(
        long,
        env = "DATABASE_URL",
        default_value = "sqlite://data/hello-birthday.db",
        hide_env_values = true
    )]
    pub database_url: DatabaseUrl,

    /// A file holding the database URL (a secret kept out of the environment);
    /// replaces DATABASE_URL, which must then be unset. Without it, systemd's
    /// credential `database-url` ($CREDENTIALS_DIRECTORY/database-url) is read if present.
    #[arg(long, env = "DATABASE_URL_FILE")]
    pub database_url_file: Option<std::path::PathBuf>,

    /// PEM bundle of extra CA certificates for PostgreSQL TLS (the RDS CA bundle).
    #[arg(long, env = "DATABASE_CA_FILE")]
    pub database_ca_file: Option<std::path::PathBuf>,

    /// PostgreSQL connections per instance.
    #[arg(long, env = "DB_POOL_SIZE", default_value_t = 16)]
    pub db_pool_size: usize,

    /// Deadline for a database call, pool wait included; past it the request gets 503.
    #[arg(long, env = "DB_TIMEOUT_MS", default_value_t = 2000)]
    pub db_timeout_ms: u64,

    /// Log format.
    #[arg(long, env = "LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,

    /// Log level or tracing filter (e.g. info, debug, hello_birthday=debug) [default: info].
    /// RUST_LOG, when set and not empty, takes precedence.
    #[arg(long, env = "LOG_LEVEL")]
    pub log_level: Option<String>,

    /// Which requests are logged one by one (needs LOG_LEVEL info for target http).
    #[arg(long, env = "REQUEST_LOG", value_enum, default_value_t = RequestLog::Errors)]
    pub request_log: RequestLog,

    /// A request slower than this is logged even when it succeeded (the latency SLO's threshold).
    #[arg(long, env = "SLOW_REQUEST_MS", default_value_t = 100)]
    pub slow_request_ms: u64,

    /// Seconds between request summary lines (counts by status class; 0: none).
    #[arg(long, env = "LOG_SUMMARY_SECONDS", default_value_t = 60)]
    pub log_summary_seconds: u64,

    /// After SIGTERM: seconds during which readiness is 503 but requests are still served.
    #[arg(long, env = "DRAIN_SECONDS", default_value_t = 5)]
    pub drain_seconds: u64,

    /// After the drain: seconds in-flight requests get to finish before exit.
    #[arg(long, env = "SHUTDOWN_TIMEOUT_SECONDS", default_value_t = 10)]
    pub shutdown_timeout_seconds: u64,

    /// Per-request deadline; past it the request gets 503.
    #[arg(long, env = "REQUEST_TIMEOUT_SECONDS", default_value_t = 5)]
    pub request_timeout_seconds: u64,

    /// Requests served at once; beyond it requests are shed with 503 + Retry-After.
    #[arg(long, env = "MAX_CONCURRENT_REQUESTS", default_value_t = 1024)]
    pub max_concurrent_requests: usize,

    /// Open client connections at once; beyond it new connections are closed at accept.
    #[arg(long, env = "MAX_CONNECTIONS", default_value_t = 10_000)]
    pub max_connections: usize,

    /// How long a connection may wait for a request's headers, idle keep-alive
    /// included; above the load balancer's 60 s idle timeout so the balancer,
    /// not the service, closes idle connections.
    #[arg(long, env = "KEEPALIVE_SECONDS", default_value_t = 75)]
    pub keepalive_seconds: u64,

    /// Seconds a new connection has to send its first request's headers;
    /// a connection silent for longer is closed (the keep-alive timeout
    /// applies only between requests).
    #[arg(long, env = "FIRST_REQUEST_TIMEOUT_SECONDS", default_value_t = 10)]
    pub first_request_timeout_seconds: u64,

    /// Seconds a client has to send a request's body once its headers arrived;
    /// past it the request gets 408. No concurrency slot is held meanwhile.
    #[arg(long, env = "BODY_TIMEOUT_SECONDS", default_value_t = 10)]
    pub body_timeout_seconds: u64,

    /// Release label reported by /healthz and hello_birthday_build_info (defaults to the version).
    #[arg(long, env = "RELEASE")]
    pub release: Option<String>,
}

impl Config {
    /// The defaults, as if no flag or variable were given (tests start from here).
    pub fn defaults() -> Self {
        Self::parse_from(["hello-birthday"])
    }

    /// Reads the database URL from `DATABASE_URL_FILE`, else from the
    /// systemd credential `database-url` (`LoadCredential=`), if either is
    /// there. `url_in_env` says whether `DATABASE_URL` is set too:
    /// - with `DATABASE_URL_FILE`, two explicit sources of one secret are
    ///   refused rather than one silently preferred;
    /// - with the credential, `DATABASE_URL` wins and the returned warning
    ///   says so: a host whose env file predates the credential keeps
    ///   working until the operator moves the secret.
    pub fn resolve_secrets(
        &mut self,
        url_in_env: bool,
        credentials_dir: Option<&std::path::Path>,
    ) -> anyhow::Result<Option<String>> {
        let credential = credentials_dir
            .map(|d| d.join("database-url"))
            .filter(|p| p.exists());
        let path = match (self.database_url_file.clone(), credential) {
            (Some(file), _) => {
                anyhow::ensure!(
                    !url_in_env,
                    "DATABASE_URL and DATABASE_URL_FILE are both set: keep the secret in one place"
                );
                file
            }
            (None, Some(_)) if url_in_env => {
                return Ok(Some(
                    "DATABASE_URL is set in the environment, so the credential database-url is \
                     not read; move the URL out of the env file"
                        .into(),
                ));
            }
            (None, Some(credential)) => credential,
            (None, None) => return Ok(None),
        };
        let text = std::fs::read_to_string(&path).map_err(|e| {
            anyhow::anyhow!("reading the database URL from {}: {e}", path.display())
        })?;
        let url = text.trim();
        anyhow::ensure!(!url.is_empty(), "{} is empty", path.display());
        self.database_url = DatabaseUrl::new(url);
        Ok(None)
    }

    pub fn db_timeout(&self) -> Duration {
        Duration::from_millis(self.db_timeout_ms)
    }

    /// The log filter in effect and where it came from: `RUST_LOG` (the
    /// variable every tracing user reaches for) when set and not empty,
    /// else `LOG_LEVEL` / `--log-level`, else `info`.
    pub fn log_filter(&self, rust_log: Option<&str>) -> (String, &'static str) {
        match (
            rust_log.map(str::trim).filter(|v| !v.is_empty()),
            &self.log_level,
        ) {
            (Some(r), _) => (r.to_owned(), "RUST_LOG"),
            (None, Some(l)) => (l.clone(), "LOG_LEVEL"),
            (None, None) => ("info".to_owned(), "default"),
        }
    }

    pub fn release(&self) -> &str {
        self.release.as_deref().unwrap_or(crate::build::VERSION)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_database_url_comes_from_a_file_or_a_credential() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("url");
        std::fs::write(&file, "postgres://u:from-file@h/db\n").unwrap();
        let creds = dir.path().join("creds");
        std::fs::create_dir(&creds).unwrap();
        std::fs::write(creds.join("database-url"), "postgres://u:from-cred@h/db").unwrap();

        let mut c = Config::defaults();
        c.resolve_secrets(false, None).unwrap();
        assert_eq!(c.database_url.expose(), "sqlite://data/hello-birthday.db");

        let mut c = Config::defaults();
        c.resolve_secrets(false, Some(&creds)).unwrap();
        assert_eq!(c.database_url.expose(), "postgres://u:from-cred@h/db");

        let mut c = Config::defaults();
        c.database_url_file = Some(file.clone());
        c.resolve_secrets(false, Some(&creds)).unwrap();
        assert_eq!(c.database_url.expose(), "postgres://u:from-file@h/db");

        // A credentials directory without the credential changes nothing.
        let mut c = Config::defaults();
        assert_eq!(c.resolve_secrets(true, Some(dir.path())).unwrap(), None);
        assert_eq!(c.database_url.expose(), "sqlite://data/hello-birthday.db");

        // DATABASE_URL beside the credential: the variable, and a warning.
        let mut c = Config::defaults();
        let warning = c.resolve_secrets(true, Some(&creds)).unwrap();
        assert!(warning.unwrap().contains("not read"));
        assert_eq!(c.database_url.expose(), "sqlite://data/hello-birthday.db");

        let mut c = Config::defaults();
        c.database_url_file = Some(file.clone());
        let err = c.resolve_secrets(true, None).unwrap_err().to_string();
        assert!(err.contains("both set"), "{err}");

        for (name, content) in [("missing", None), ("empty", Some("\n"))] {
            let path = dir.path().join(name);
            if let Some(text) = content {
                std::fs::write(&path, text).unwrap();
            }
            let mut c = Config::defaults();
            c.database_url_file = Some(path);
            let err = format!("{:#}", c.resolve_secrets(false, None).unwrap_err());
            assert!(err.contains(name), "{err}");
            assert!(!err.contains("from-file"), "{err}");
        }
    }

    #[test]
    fn rust_log_wins_over_log_level_which_wins_over_the_default() {
        let mut c = Config::defaults();
        c.log_level = None;
        assert_eq!(c.log_filter(None), ("info".into(), "default"));
        assert_eq!(c.log_filter(Some("  ")), ("info".into(), "default"));
        assert_eq!(c.log_filter(Some("debug")), ("debug".into(), "RUST_LOG"));
        c.log_level = Some("warn".into());
        assert_eq!(c.log_filter(None), ("warn".into(), "LOG_LEVEL"));
        assert_eq!(c.log_filter(Some("")), ("warn".into(), "LOG_LEVEL"));
        assert_eq!(
            c.log_filter(Some("hello_birthday=debug")),
            ("hello_birthday=debug".into(), "RUST_LOG")
        );
    }

    #[test]
    fn redacts_passwords() {
        for (url, want) in [
            (
                "postgres://u:secret@h:5432/db",
                "postgres://u:***@h:5432/db",
            ),
            ("postgres://u:se:cr@et@h/db", "postgres://u:***@h/db"),
            ("postgres://u@h/db", "postgres://u@h/db"),
            (
                "postgres://h/db?password=secret&x=1",
                "postgres://h/db?password=***&x=1",
            ),
            ("sqlite://data/x.db", "sqlite://data/x.db"),
        ] {
            assert_eq!(redact_url(url), want);
            assert!(!format!("{:?}", DatabaseUrl::new(url)).contains("secret"));
        }
    }
}
