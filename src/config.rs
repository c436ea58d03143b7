//! Configuration: environment first (12-factor), every variable also a flag.

mod database;
pub mod range;

pub use database::{Database, DatabaseUrl, DatabaseUrlError, redact_url};

use clap::{Args, Parser, Subcommand, ValueEnum};
use std::net::IpAddr;
use std::num::NonZeroUsize;
use std::time::Duration;

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

/// The command line: the service's configuration, and a subcommand for
/// the scripts that need part of it.
#[derive(Clone, Debug, Parser)]
#[command(
    name = "hello-birthday",
    version = crate::build::VERSION_LINE,
    about = "Remembers people's dates of birth and greets them.",
    long_about = None
)]
pub struct Cli {
    #[command(flatten)]
    pub config: Config,
    #[command(subcommand)]
    pub command: Option<Command>,
}

#[derive(Clone, Debug, Subcommand)]
pub enum Command {
    /// Says which database DATABASE_URL names, parsed as the service parses
    /// it, and exits (2 when the URL is refused).
    Database {
        /// Print shell assignments to `eval`: DATABASE_BACKEND,
        /// DATABASE_SOURCE (no password) and DATABASE_PATH for SQLite; for
        /// PostgreSQL `export PGHOST=...` and the other libpq variables,
        /// PGPASSWORD included when the URL has a password.
        #[arg(long)]
        env: bool,
    },
}

/// Every setting, checked when it is read: numbers against their range,
/// durations in the unit their name says, carried as `Duration`.
#[derive(Clone, Debug, Args)]
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
    #[arg(long, env = "METRICS_MAX_CONNECTIONS", default_value = "8", value_parser = range::count(1024))]
    pub metrics_max_connections: NonZeroUsize,

    /// sqlite://PATH or postgres://user:password@host:port/db (the password is never printed).
    #[arg(
        long,
        env = "DATABASE_URL",
        default_value = "sqlite://data/hello-birthday.db",
        hide_env_values = true,
        value_parser = database::DatabaseUrlParser
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
    #[arg(long, env = "DB_POOL_SIZE", default_value = "16", value_parser = range::count(1024))]
    pub db_pool_size: NonZeroUsize,

    /// Deadline for a database call, pool wait included; past it the request gets 503.
    #[arg(long = "db-timeout-ms", env = "DB_TIMEOUT_MS", value_name = "MS", default_value = "2000", value_parser = range::millis(1, 600_000))]
    pub db_timeout: Duration,

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
    #[arg(long = "slow-request-ms", env = "SLOW_REQUEST_MS", value_name = "MS", default_value = "100", value_parser = range::millis(1, 3_600_000))]
    pub slow_request: Duration,

    /// Seconds between request summary lines (counts by status class; 0: none).
    #[arg(long = "log-summary-seconds", env = "LOG_SUMMARY_SECONDS", value_name = "SECONDS", default_value = "60", value_parser = range::seconds(0, 86_400))]
    pub log_summary_every: Duration,

    /// After SIGTERM: seconds during which readiness is 503 but requests are still served.
    #[arg(long = "drain-seconds", env = "DRAIN_SECONDS", value_name = "SECONDS", default_value = "5", value_parser = range::seconds(0, 3600))]
    pub drain: Duration,

    /// After the drain: seconds in-flight requests get to finish before exit.
    #[arg(long = "shutdown-timeout-seconds", env = "SHUTDOWN_TIMEOUT_SECONDS", value_name = "SECONDS", default_value = "10", value_parser = range::seconds(0, 3600))]
    pub shutdown_timeout: Duration,

    /// Per-request deadline; past it the request gets 503.
    #[arg(long = "request-timeout-seconds", env = "REQUEST_TIMEOUT_SECONDS", value_name = "SECONDS", default_value = "5", value_parser = range::seconds(1, 3600))]
    pub request_timeout: Duration,

    /// Requests served at once; beyond it requests are shed with 503 + Retry-After.
    #[arg(long, env = "MAX_CONCURRENT_REQUESTS", default_value = "1024", value_parser = range::count(1_000_000))]
    pub max_concurrent_requests: NonZeroUsize,

    /// Open client connections at once; beyond it new connections are closed at accept.
    #[arg(long, env = "MAX_CONNECTIONS", default_value = "10000", value_parser = range::count(1_000_000))]
    pub max_connections: NonZeroUsize,

    /// How long a connection may wait for a request's headers, idle keep-alive
    /// included; above the load balancer's 60 s idle timeout so the balancer,
    /// not the service, closes idle connections.
    #[arg(long = "keepalive-seconds", env = "KEEPALIVE_SECONDS", value_name = "SECONDS", default_value = "75", value_parser = range::seconds(1, 3600))]
    pub keepalive: Duration,

    /// Seconds a new connection has to send its first request's headers;
    /// a connection silent for longer is closed (the keep-alive timeout
    /// applies only between requests).
    #[arg(long = "first-request-timeout-seconds", env = "FIRST_REQUEST_TIMEOUT_SECONDS", value_name = "SECONDS", default_value = "10", value_parser = range::seconds(1, 3600))]
    pub first_request_timeout: Duration,

    /// Seconds a client has to send a request's body once its headers arrived;
    /// past it the request gets 408. No concurrency slot is held meanwhile.
    #[arg(long = "body-timeout-seconds", env = "BODY_TIMEOUT_SECONDS", value_name = "SECONDS", default_value = "10", value_parser = range::seconds(1, 3600))]
    pub body_timeout: Duration,

    /// Release label reported by /healthz and hello_birthday_build_info (defaults to the version).
    #[arg(long, env = "RELEASE")]
    pub release: Option<String>,
}

impl Config {
    /// The defaults, as if no flag or variable were given (tests start from here).
    pub fn defaults() -> Self {
        Cli::parse_from(["hello-birthday"]).config
    }

    /// Reads the database URL from `DATABASE_URL_FILE`, else from the
    /// systemd credential `database-url` (`LoadCredential=`), if either is
    /// there, and parses it as `DATABASE_URL` is parsed. `url_in_env` says
    /// whether `DATABASE_URL` is set too:
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
        // The parse error names the reason and the redacted URL only.
        self.database_url = DatabaseUrl::parse(url)
            .map_err(|e| anyhow::anyhow!("the database URL in {}: {e}", path.display()))?;
        Ok(None)
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

    fn parse(args: &[&str]) -> Result<Config, String> {
        Cli::try_parse_from(std::iter::once("hello-birthday").chain(args.iter().copied()))
            .map(|cli| cli.config)
            .map_err(|e| e.to_string())
    }

    #[test]
    fn the_database_url_comes_from_a_file_or_a_credential() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("url");
        std::fs::write(&file, "postgres://u:from-file@h/db\n").unwrap();
        let creds = dir.path().join("creds");
        std::fs::create_dir(&creds).unwrap();
        std::fs::write(creds.join("database-url"), "postgres://u:from-cred@h/db").unwrap();
        let url = |c: &Config| c.database_url.redacted().to_owned();
        let default = url(&Config::defaults());

        let mut c = Config::defaults();
        c.resolve_secrets(false, None).unwrap();
        assert_eq!(url(&c), default);

        let mut c = Config::defaults();
        c.resolve_secrets(false, Some(&creds)).unwrap();
        assert_eq!(url(&c), "postgres://u:***@h/db");
        let Database::Postgres(pg) = c.database_url.database() else {
            panic!("a postgres URL")
        };
        assert_eq!(pg.get_password(), Some(&b"from-cred"[..]));

        let mut c = Config::defaults();
        c.database_url_file = Some(file.clone());
        c.resolve_secrets(false, Some(&creds)).unwrap();
        let Database::Postgres(pg) = c.database_url.database() else {
            panic!("a postgres URL")
        };
        assert_eq!(pg.get_password(), Some(&b"from-file"[..]));

        // A credentials directory without the credential changes nothing.
        let mut c = Config::defaults();
        assert_eq!(c.resolve_secrets(true, Some(dir.path())).unwrap(), None);
        assert_eq!(url(&c), default);

        // DATABASE_URL beside the credential: the variable, and a warning.
        let mut c = Config::defaults();
        let warning = c.resolve_secrets(true, Some(&creds)).unwrap();
        assert!(warning.unwrap().contains("not read"));
        assert_eq!(url(&c), default);

        let mut c = Config::defaults();
        c.database_url_file = Some(file.clone());
        let err = c.resolve_secrets(true, None).unwrap_err().to_string();
        assert!(err.contains("both set"), "{err}");

        let refused = dir.path().join("refused");
        std::fs::write(&refused, "mysql://u:from-file@h/db").unwrap();
        for (name, content) in [("missing", None), ("empty", Some("\n")), ("refused", None)] {
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
    fn durations_in_the_unit_of_their_name() {
        let c = parse(&[
            "--db-timeout-ms",
            "250",
            "--drain-seconds",
            "0",
            "--keepalive-seconds",
            "61",
        ])
        .unwrap();
        assert_eq!(c.db_timeout, Duration::from_millis(250));
        assert_eq!(c.drain, Duration::ZERO);
        assert_eq!(c.keepalive, Duration::from_secs(61));
        let d = Config::defaults();
        assert_eq!(d.request_timeout, Duration::from_secs(5));
        assert_eq!(d.slow_request, Duration::from_millis(100));
    }

    #[test]
    fn out_of_range_values_are_refused_with_the_range() {
        for (args, want) in [
            (
                &["--request-timeout-seconds", "0"][..],
                "from 1 to 3600 s, got '0'",
            ),
            (&["--max-connections", "0"], "from 1 to 1000000, got '0'"),
            (&["--db-pool-size=-1"], "from 1 to 1024, got '-1'"),
            (&["--db-timeout-ms", "2s"], "from 1 to 600000 ms, got '2s'"),
            (&["--drain-seconds", "3601"], "from 0 to 3600 s"),
            (
                &["--metrics-max-connections", "0"],
                "METRICS_MAX_CONNECTIONS (--metrics-max-connections)",
            ),
        ] {
            let err = parse(args).unwrap_err();
            assert!(err.contains(want), "{args:?}: {err}");
        }
    }

    #[test]
    fn a_refused_url_names_the_variable_and_hides_the_password() {
        let err = parse(&["--database-url", "mysql://u:secret@h/db"]).unwrap_err();
        assert!(err.contains("DATABASE_URL (--database-url)"), "{err}");
        assert!(err.contains("mysql://u:***@h/db"), "{err}");
        assert!(!err.contains("secret"), "{err}");
    }
}
