//! `DATABASE_URL`, parsed once, when the configuration is read, into the
//! database it names. The service connects with the typed value; the
//! backup and restore scripts ask `hello-birthday database --env` for it
//! instead of parsing the URL again.
//!
//! Accepted:
//!
//! | form | database |
//! |---|---|
//! | `sqlite://data/x.db`, `sqlite:data/x.db` | SQLite file, relative to the working directory |
//! | `sqlite:///var/lib/x.db`, `sqlite:/var/lib/x.db` | SQLite file, absolute path |
//! | `postgres://user:pass@host:port/db?sslmode=require`, `postgresql://...` | PostgreSQL |
//!
//! Refused, with the reason: any other scheme or none (a bare path would
//! turn a mistyped `postgres://` into a new, empty SQLite file), a SQLite
//! URL without a path, with `?parameters` (none is read, and one silently
//! ignored would mislead) or `:memory:` (every write lost at exit), and a
//! PostgreSQL URL without a host or with a parameter the driver does not
//! know. The SQLite path is taken as written: no percent-decoding.

use std::fmt;
use std::path::{Path, PathBuf};
use tokio_postgres::config::{
    ChannelBinding, Host, LoadBalanceHosts, SslMode, SslNegotiation, TargetSessionAttrs,
};

/// The database `DATABASE_URL` names, with a redacted form for logs.
#[derive(Clone)]
pub struct DatabaseUrl {
    database: Database,
    redacted: String,
}

/// Which backend, and everything it needs to connect.
#[derive(Clone, Debug)]
pub enum Database {
    /// The SQLite file, as written in the URL.
    Sqlite(PathBuf),
    /// A PostgreSQL server. `tokio_postgres::Config` keeps the password and
    /// never prints it (its `Debug` shows `password: Some(_)`).
    Postgres(Box<tokio_postgres::Config>),
}

/// Why a `DATABASE_URL` was refused; never holds the password.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{reason} (got {redacted})")]
pub struct DatabaseUrlError {
    reason: String,
    redacted: String,
}

impl DatabaseUrl {
    /// Parses a URL in one of the accepted forms (see the module doc). The
    /// input may come from a variable, a flag or a file.
    pub fn parse(url: &str) -> Result<Self, DatabaseUrlError> {
        let redacted = redact_url(url);
        let refuse = |reason: &str| DatabaseUrlError {
            reason: reason.to_owned(),
            redacted: redacted.clone(),
        };
        let database = if let Some(rest) = url
            .strip_prefix("sqlite://")
            .or_else(|| url.strip_prefix("sqlite:"))
        {
            if rest.is_empty() {
                return Err(refuse("a sqlite URL needs a file path: sqlite://PATH"));
            }
            if rest.contains('?') {
                return Err(refuse("a sqlite URL takes no ?parameters"));
            }
            if rest == ":memory:" {
                return Err(refuse(
                    "an in-memory SQLite database would lose every write at exit",
                ));
            }
            Database::Sqlite(PathBuf::from(rest))
        } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            let config: tokio_postgres::Config =
                url.parse().map_err(|e: tokio_postgres::Error| {
                    // The driver's message is generic; the cause says which part.
                    let mut why = e.to_string();
                    let mut cause = std::error::Error::source(&e);
                    while let Some(c) = cause {
                        why = format!("{why}: {c}");
                        cause = c.source();
                    }
                    refuse(&why)
                })?;
            if config.get_hosts().is_empty() && config.get_hostaddrs().is_empty() {
                return Err(refuse(
                    "a postgres URL needs a host: postgres://user@host:port/db",
                ));
            }
            Database::Postgres(Box::new(config))
        } else {
            return Err(refuse(
                "must start with sqlite://, sqlite:, postgres:// or postgresql://",
            ));
        };
        Ok(Self { database, redacted })
    }

    pub fn database(&self) -> &Database {
        &self.database
    }

    /// The URL with its password replaced by `***`.
    pub fn redacted(&self) -> &str {
        &self.redacted
    }

    /// The database as shell assignments a script can `eval`, one a line,
    /// each value in single quotes: `DATABASE_BACKEND`, `DATABASE_SOURCE`
    /// (the redacted URL) and, for SQLite, `DATABASE_PATH` (absolute); for
    /// PostgreSQL, the libpq variables (`export PGHOST=...`), so that `psql`
    /// and `pg_dump` connect where the service does without the URL, and
    /// the password on no command line. `ca_file` (DATABASE_CA_FILE)
    /// becomes `PGSSLROOTCERT`. Connection tuning that libpq reads from no
    /// variable (TCP keepalives, user timeout) is left out.
    pub fn shell_env(&self, ca_file: Option<&Path>) -> std::io::Result<Vec<u8>> {
        let mut out = Vec::new();
        let backend = match &self.database {
            Database::Sqlite(_) => "sqlite",
            Database::Postgres(_) => "postgres",
        };
        assign(&mut out, false, "DATABASE_BACKEND", backend.as_bytes());
        assign(&mut out, false, "DATABASE_SOURCE", self.redacted.as_bytes());
        match &self.database {
            Database::Sqlite(path) => {
                let path = std::path::absolute(path)?;
                assign(
                    &mut out,
                    false,
                    "DATABASE_PATH",
                    path.as_os_str().as_encoded_bytes(),
                );
            }
            Database::Postgres(pg) => {
                for (name, value) in libpq_env(pg, ca_file) {
                    assign(&mut out, true, name, &value);
                }
            }
        }
        Ok(out)
    }
}

/// The libpq environment variables that say what `config` says.
fn libpq_env(pg: &tokio_postgres::Config, ca_file: Option<&Path>) -> Vec<(&'static str, Vec<u8>)> {
    let mut env: Vec<(&'static str, Vec<u8>)> = Vec::new();
    let mut put = |name, value: &[u8]| env.push((name, value.to_vec()));
    let join = |items: Vec<String>| items.join(",").into_bytes();
    if !pg.get_hosts().is_empty() {
        let hosts = pg
            .get_hosts()
            .iter()
            .map(|h| match h {
                Host::Tcp(name) => name.clone(),
                Host::Unix(dir) => dir.display().to_string(),
            })
            .collect();
        put("PGHOST", &join(hosts));
    }
    if !pg.get_hostaddrs().is_empty() {
        put(
            "PGHOSTADDR",
            &join(pg.get_hostaddrs().iter().map(ToString::to_string).collect()),
        );
    }
    if !pg.get_ports().is_empty() {
        put(
            "PGPORT",
            &join(pg.get_ports().iter().map(ToString::to_string).collect()),
        );
    }
    if let Some(user) = pg.get_user() {
        put("PGUSER", user.as_bytes());
    }
    if let Some(password) = pg.get_password() {
        put("PGPASSWORD", password);
    }
    if let Some(db) = pg.get_dbname() {
        put("PGDATABASE", db.as_bytes());
    }
    if let Some(options) = pg.get_options() {
        put("PGOPTIONS", options.as_bytes());
    }
    if let Some(app) = pg.get_application_name() {
        put("PGAPPNAME", app.as_bytes());
    }
    // Always said: libpq's default (prefer) is the driver's, but a reader
    // of the output should not need to know that.
    let sslmode = match pg.get_ssl_mode() {
        SslMode::Disable => "disable",
        SslMode::Require => "require",
        _ => "prefer",
    };
    put("PGSSLMODE", sslmode.as_bytes());
    if matches!(pg.get_ssl_negotiation(), SslNegotiation::Direct) {
        put("PGSSLNEGOTIATION", b"direct");
    }
    if let Some(ca) = ca_file {
        put("PGSSLROOTCERT", ca.as_os_str().as_encoded_bytes());
    }
    if let Some(t) = pg.get_connect_timeout() {
        // Whole seconds in both (the driver sets none for 0).
        put("PGCONNECT_TIMEOUT", t.as_secs().to_string().as_bytes());
    }
    if matches!(pg.get_target_session_attrs(), TargetSessionAttrs::ReadWrite) {
        put("PGTARGETSESSIONATTRS", b"read-write");
    }
    match pg.get_channel_binding() {
        ChannelBinding::Disable => put("PGCHANNELBINDING", b"disable"),
        ChannelBinding::Require => put("PGCHANNELBINDING", b"require"),
        _ => {}
    }
    if matches!(pg.get_load_balance_hosts(), LoadBalanceHosts::Random) {
        put("PGLOADBALANCEHOSTS", b"random");
    }
    env
}

/// `NAME='value'` (with `export ` first when `export`), the value in POSIX
/// single quotes: inside them every byte is literal but `'`, written as
/// `'\''`. Environment values cannot hold NUL, and no parsed value does.
fn assign(out: &mut Vec<u8>, export: bool, name: &str, value: &[u8]) {
    if export {
        out.extend_from_slice(b"export ");
    }
    out.extend_from_slice(name.as_bytes());
    out.extend_from_slice(b"='");
    for &b in value {
        if b == b'\'' {
            out.extend_from_slice(b"'\\''");
        } else {
            out.push(b);
        }
    }
    out.extend_from_slice(b"'\n");
}

impl std::str::FromStr for DatabaseUrl {
    type Err = DatabaseUrlError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

impl fmt::Debug for DatabaseUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "DatabaseUrl({})", self.redacted)
    }
}

impl fmt::Display for DatabaseUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.redacted)
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

/// clap's own error for a bad value quotes the value, and this one may hold
/// a password: this parser's error says only the reason and the redacted URL.
#[derive(Clone, Copy, Debug, Default)]
pub struct DatabaseUrlParser;

impl clap::builder::TypedValueParser for DatabaseUrlParser {
    type Value = DatabaseUrl;

    fn parse_ref(
        &self,
        cmd: &clap::Command,
        arg: Option<&clap::Arg>,
        value: &std::ffi::OsStr,
    ) -> Result<DatabaseUrl, clap::Error> {
        let name = super::range::arg_name(arg);
        let fail = |msg: String| {
            clap::Error::raw(
                clap::error::ErrorKind::ValueValidation,
                format!("{name}: {msg}\n"),
            )
            .with_cmd(cmd)
        };
        let url = value
            .to_str()
            .ok_or_else(|| fail("not valid UTF-8".to_owned()))?;
        DatabaseUrl::parse(url).map_err(|e| fail(e.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sqlite(url: &str) -> PathBuf {
        match DatabaseUrl::parse(url).unwrap().database {
            Database::Sqlite(p) => p,
            other => panic!("{url}: {other:?}"),
        }
    }

    fn postgres(url: &str) -> tokio_postgres::Config {
        match DatabaseUrl::parse(url).unwrap().database {
            Database::Postgres(c) => *c,
            other => panic!("{url}: {other:?}"),
        }
    }

    /// The reason alone: the message also quotes the (redacted) URL.
    fn refused(url: &str) -> String {
        let e = DatabaseUrl::parse(url).unwrap_err();
        assert!(!e.to_string().contains("secret"), "{e}");
        e.reason
    }

    #[test]
    fn sqlite_forms() {
        assert_eq!(sqlite("sqlite://data/x.db"), Path::new("data/x.db"));
        assert_eq!(sqlite("sqlite:data/x.db"), Path::new("data/x.db"));
        assert_eq!(sqlite("sqlite:///var/lib/x.db"), Path::new("/var/lib/x.db"));
        assert_eq!(sqlite("sqlite:/var/lib/x.db"), Path::new("/var/lib/x.db"));
        // Taken as written, spaces and percent signs included.
        assert_eq!(
            sqlite("sqlite:///tmp/a b%20c.db"),
            Path::new("/tmp/a b%20c.db")
        );
    }

    #[test]
    fn postgres_forms() {
        for scheme in ["postgres", "postgresql"] {
            let c = postgres(&format!(
                "{scheme}://hb:s%40cret@db.example:6432/hello?sslmode=require&connect_timeout=5"
            ));
            assert_eq!(c.get_user(), Some("hb"));
            assert_eq!(c.get_password(), Some(&b"s@cret"[..]));
            assert_eq!(c.get_dbname(), Some("hello"));
            assert_eq!(c.get_hosts(), [Host::Tcp("db.example".into())]);
            assert_eq!(c.get_ports(), [6432]);
            assert!(matches!(c.get_ssl_mode(), SslMode::Require));
        }
        let c = postgres("postgres://hb@[::1]:5432/db");
        assert_eq!(c.get_hosts(), [Host::Tcp("::1".into())]);
        let c = postgres("postgres://hb@/db?host=/run/postgresql");
        assert_eq!(c.get_hosts(), [Host::Unix("/run/postgresql".into())]);
    }

    #[test]
    fn refused_forms_say_why_without_the_password() {
        for (url, why) in [
            ("", "must start with"),
            ("data/x.db", "must start with"),
            ("/var/lib/x.db", "must start with"),
            ("postgress://u:secret@h/db", "must start with"),
            ("mysql://u:secret@h/db", "must start with"),
            ("host=h user=u password=secret", "must start with"),
            ("sqlite://", "needs a file path"),
            ("sqlite:", "needs a file path"),
            ("sqlite://x.db?mode=ro", "no ?parameters"),
            ("sqlite::memory:", "in-memory"),
            ("postgres://u:secret@/db", "needs a host"),
            ("postgres://u:secret@h/db?sslmode=verify-full", "sslmode"),
            ("postgres://u:secret@h/db?bogus=1", "bogus"),
            ("postgres://u:secret@h:notaport/db", "port"),
        ] {
            let msg = refused(url);
            assert!(msg.contains(why), "{url}: {msg}");
        }
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
        }
        let url = DatabaseUrl::parse("postgres://u:secret@h/db?password=secret").unwrap();
        for shown in [
            format!("{url:?}"),
            url.to_string(),
            format!("{:?}", url.database()),
        ] {
            assert!(!shown.contains("secret"), "{shown}");
        }
    }

    /// The assignments, read back by a real shell, give back every byte.
    #[test]
    fn shell_env_survives_a_shell() {
        let password = "it's a \"pass\" $HOME `id` \\n\nnewline;";
        let url = format!(
            "postgres://hb:{}@db.example:6432/hello?sslmode=require&application_name=a%20b",
            password
                .bytes()
                .map(|b| format!("%{b:02X}"))
                .collect::<String>()
        );
        let env = DatabaseUrl::parse(&url)
            .unwrap()
            .shell_env(Some(Path::new("/etc/ssl/rds ca.pem")))
            .unwrap();
        let script = [
            &env[..],
            b"printf '%s\\0' \"$DATABASE_BACKEND\" \"$DATABASE_SOURCE\" \"$PGHOST\" \"$PGPORT\" \
              \"$PGUSER\" \"$PGPASSWORD\" \"$PGDATABASE\" \"$PGSSLMODE\" \"$PGSSLROOTCERT\" \"$PGAPPNAME\"\n",
        ]
        .concat();
        let out = std::process::Command::new("bash")
            .args(["-c", std::str::from_utf8(&script).unwrap()])
            .output()
            .expect("bash");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let got: Vec<String> = String::from_utf8(out.stdout)
            .unwrap()
            .split_terminator('\0')
            .map(str::to_owned)
            .collect();
        assert_eq!(
            got,
            [
                "postgres",
                "postgres://hb:***@db.example:6432/hello?sslmode=require&application_name=a%20b",
                "db.example",
                "6432",
                "hb",
                password,
                "hello",
                "require",
                "/etc/ssl/rds ca.pem",
                "a b",
            ]
        );
    }

    #[test]
    fn shell_env_sqlite_path_is_absolute() {
        let env = DatabaseUrl::parse("sqlite:data/x.db")
            .unwrap()
            .shell_env(None)
            .unwrap();
        let env = String::from_utf8(env).unwrap();
        let cwd = std::env::current_dir().unwrap();
        assert!(env.contains("DATABASE_BACKEND='sqlite'\n"), "{env}");
        assert!(
            env.contains(&format!("DATABASE_PATH='{}/data/x.db'\n", cwd.display())),
            "{env}"
        );
        assert!(!env.contains("export"), "{env}");
    }
}
