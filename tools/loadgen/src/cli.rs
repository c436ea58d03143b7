//! The command line: `loadgen run` sends load and judges it, `loadgen check`
//! reads back the writes an earlier run recorded. Every range is checked
//! here, before anything is sent.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

use crate::client::{Client, Target, parse_target};

#[derive(Parser, Debug)]
#[command(
    version,
    about = "Steady-rate GET/PUT load that counts every failure and verifies every acknowledged write"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Send steady-rate load, then read back every acknowledged write.
    Run(RunArgs),
    /// No load: read back the users acknowledged in `run --writes` files
    /// from --url, one GET each, and check every greeting with the calendar;
    /// without --url, compare the --db-rows alone with the files.
    Check(CheckArgs),
}

/// How to reach the service, for both subcommands.
#[derive(Args, Debug, Clone)]
pub struct ClientArgs {
    /// Base URL, loopback only: http://127.0.0.1:PORT (or localhost, [::1]).
    /// Repeatable: connection i talks to URL i mod n. Required by `run`;
    /// `check` without it reads the --db-rows alone.
    #[arg(long)]
    pub url: Vec<String>,
    /// Concurrent keep-alive connections (one worker each).
    #[arg(long, default_value_t = 24)]
    pub connections: usize,
    /// Deadline for one request, connection set-up included, in milliseconds.
    #[arg(long, default_value_t = 5000)]
    pub timeout_ms: u64,
    /// Response header that names the server that answered (added by HAProxy).
    #[arg(long, default_value = "x-served-by")]
    pub server_header: String,
}

impl ClientArgs {
    /// The targets, in --url order.
    pub fn targets(&self) -> Result<Vec<Arc<Target>>, String> {
        self.url
            .iter()
            .map(|u| parse_target(u).map(Arc::new))
            .collect()
    }

    pub fn client(&self, target: Arc<Target>) -> Client {
        Client::new(
            target,
            Duration::from_millis(self.timeout_ms),
            Arc::from(self.server_header.as_str()),
        )
    }
}

#[derive(Args, Debug, Clone)]
pub struct RunArgs {
    #[command(flatten)]
    pub client: ClientArgs,
    /// Total requests per second across all connections.
    #[arg(long, default_value_t = 300.0)]
    pub rate: f64,
    /// Upper bound on the load phase, in seconds.
    #[arg(long, default_value_t = 60.0)]
    pub duration: f64,
    /// Upper bound on the number of load requests.
    #[arg(long)]
    pub max_requests: Option<u64>,
    /// Share of PUTs among the load requests (the rest are GETs).
    #[arg(long, default_value_t = 0.3)]
    pub put_ratio: f64,
    /// Users owned by each connection.
    #[arg(long, default_value_t = 20)]
    pub users_per_connection: usize,
    /// Stop the load as soon as this file exists.
    #[arg(long)]
    pub stop_file: Option<PathBuf>,
    /// Create this file once every connection has had a successful answer.
    #[arg(long)]
    pub ready_file: Option<PathBuf>,
    /// Write one CSV row per load request here.
    #[arg(long)]
    pub csv: Option<PathBuf>,
    /// Write the summary as JSON here.
    #[arg(long)]
    pub summary: Option<PathBuf>,
    /// Failures (non-2xx, connection errors, timeouts) tolerated before the exit code turns non-zero.
    #[arg(long, default_value_t = 0)]
    pub max_failures: u64,
    /// Fail when the achieved request rate is below this.
    #[arg(long, default_value_t = 0.0)]
    pub min_rate: f64,
    /// Skip reading every acknowledged write back at the end.
    #[arg(long)]
    pub no_verify: bool,
    /// Delete every user this run wrote once the load (and verification) is
    /// over, so a long-lived environment keeps no synthetic users.
    #[arg(long)]
    pub cleanup: bool,
    /// Seed for the pseudo-random choices (default: from the clock).
    #[arg(long)]
    pub seed: Option<u64>,
    /// Share of requests whose answer the contract fixes whatever is stored:
    /// a GET of a user this run never wrote must answer 404, a GET of an
    /// invalid username 400, both as problem+json.
    #[arg(long, default_value_t = 0.0)]
    pub invalid_ratio: f64,
    /// A status that counts as expected for any request (repeatable), e.g.
    /// 503 while the database is stopped on purpose. A PUT so answered stays
    /// unacknowledged.
    #[arg(long = "accept-status")]
    pub accept_status: Vec<u16>,
    /// Username prefix (letters; default: random per run).
    #[arg(long)]
    pub prefix: Option<String>,
    /// Every PUT writes a user never written before (no updates), so each
    /// write has one acknowledgement time. Every 97th new user is born on a
    /// Feb 29.
    #[arg(long)]
    pub fresh_users: bool,
    /// Append one JSON line per PUT here: user, dob, t_start, t_end (Unix
    /// seconds) and status (0: no answer).
    #[arg(long)]
    pub writes: Option<PathBuf>,
    /// Rewrite this JSON file every 100 ms with the counters so far: ok, err,
    /// last_ok, last_err (Unix seconds of the last answer of each kind).
    #[arg(long)]
    pub status: Option<PathBuf>,
}

impl RunArgs {
    /// The ranges clap cannot say; an error here is a usage error (exit 2).
    pub fn validate(&self) -> Result<(), String> {
        if self.client.url.is_empty() {
            return Err("run needs --url".into());
        }
        if let Some(p) = &self.prefix
            && (p.is_empty() || !p.bytes().all(|b| b.is_ascii_alphabetic()))
        {
            return Err("--prefix must be letters only".into());
        }
        if self.rate <= 0.0
            || self.client.connections == 0
            || self.users_per_connection == 0
            || self.duration <= 0.0
        {
            return Err(
                "--rate, --connections, --users-per-connection and --duration must be positive"
                    .into(),
            );
        }
        Ok(())
    }
}

#[derive(Args, Debug, Clone)]
pub struct CheckArgs {
    #[command(flatten)]
    pub client: ClientArgs,
    /// `run --writes` files whose acknowledged writes are read back.
    #[arg(required = true, value_name = "FILE")]
    pub files: Vec<PathBuf>,
    /// Only writes acknowledged before this Unix time. Without --url, the
    /// target time of a restore: a write sent after it must not be in the
    /// rows either.
    #[arg(long)]
    pub acked_before: Option<f64>,
    /// Each body must equal this service's answer.
    #[arg(long)]
    pub reference: Option<String>,
    /// `username|YYYY-MM-DD` lines from the database, which must hold every
    /// checked user with its exact date.
    #[arg(long)]
    pub db_rows: Option<PathBuf>,
    /// Without --url: acknowledged writes missing from the rows are counted
    /// and listed, not a failure (a restore to the latest point measures
    /// its loss).
    #[arg(long)]
    pub allow_missing: bool,
    /// Without --url: write the figures of the comparison here as JSON.
    #[arg(long)]
    pub report: Option<PathBuf>,
}

impl CheckArgs {
    /// Is this the rows-only check (no service to read)?
    pub fn rows_only(&self) -> bool {
        self.client.url.is_empty()
    }

    /// The combinations clap cannot say; an error here is a usage error.
    pub fn validate(&self) -> Result<(), String> {
        match (self.rows_only(), self.db_rows.is_some()) {
            (true, false) => Err("check needs --url (read back over HTTP) or --db-rows".into()),
            (false, _) if self.allow_missing || self.report.is_some() => {
                Err("--allow-missing and --report are for the rows-only check (no --url)".into())
            }
            (true, _) if self.reference.is_some() => Err("--reference needs --url".into()),
            _ => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(std::iter::once("loadgen").chain(args.iter().copied()))
    }

    fn run(args: &[&str]) -> RunArgs {
        match parse(args).unwrap().command {
            Command::Run(r) => r,
            other => panic!("not run: {other:?}"),
        }
    }

    #[test]
    fn run_takes_the_load_flags_with_their_defaults() {
        let r = run(&[
            "run",
            "--url",
            "http://127.0.0.1:1",
            "--url",
            "http://[::1]:2",
        ]);
        assert_eq!(r.client.url.len(), 2);
        assert_eq!(
            (r.rate, r.client.connections, r.duration, r.put_ratio),
            (300.0, 24, 60.0, 0.3)
        );
        assert_eq!(r.client.targets().unwrap().len(), 2);
        assert!(r.validate().is_ok());
        let r = run(&[
            "run",
            "--url",
            "http://127.0.0.1:1",
            "--accept-status",
            "503",
            "--accept-status",
            "502",
            "--fresh-users",
            "--writes",
            "w.jsonl",
        ]);
        assert_eq!(r.accept_status, vec![503, 502]);
        assert!(r.fresh_users);
    }

    #[test]
    fn ranges_are_usage_errors() {
        for extra in [
            &["--rate", "0"][..],
            &["--connections", "0"],
            &["--users-per-connection", "0"],
            &["--duration=-1"],
            &["--prefix", "ab1"],
            &["--prefix", ""],
        ] {
            let mut args = vec!["run", "--url", "http://127.0.0.1:1"];
            args.extend_from_slice(extra);
            assert!(run(&args).validate().is_err(), "{extra:?} accepted");
        }
        let r = run(&["run", "--url", "http://10.1.1.1:80"]);
        assert!(r.client.targets().is_err());
    }

    #[test]
    fn check_takes_files_and_no_load_flags() {
        let Command::Check(c) = parse(&[
            "check",
            "a.jsonl",
            "b.jsonl",
            "--url",
            "http://127.0.0.1:1",
            "--db-rows",
            "rows",
            "--acked-before",
            "12.5",
        ])
        .unwrap()
        .command
        else {
            panic!("not check")
        };
        assert_eq!(c.files.len(), 2);
        assert_eq!(c.acked_before, Some(12.5));
        assert!(parse(&["check", "--url", "http://127.0.0.1:1"]).is_err());
        assert!(parse(&["check", "f", "--url", "http://127.0.0.1:1", "--rate", "5"]).is_err());
        assert!(run(&["run"]).validate().is_err());
        assert!(parse(&["--url", "http://127.0.0.1:1"]).is_err());
    }
}
