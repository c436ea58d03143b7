//! `loadgen run`: `--connections` workers, each with its own connection and
//! its own users, send GETs and PUTs at a fixed total rate until the
//! duration, the request budget, the stop file or a signal ends the load;
//! then each reads back (and optionally deletes) what it wrote.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use hyper::Method;
use tokio::sync::watch;

use crate::calendar::{self, Date};
use crate::cli::RunArgs;
use crate::client::{Client, Failure, Outcome, Target};
use crate::report::{self, Record, Totals};
use crate::verify::{self, UserState, VerifyResult, greeting_matches};

pub fn now_unix() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

/// Usernames are letters only: numbers are written in base 26 with a..z.
pub fn letters(mut n: usize) -> String {
    let mut out = Vec::new();
    loop {
        out.push(b'a' + (n % 26) as u8);
        n /= 26;
        if n == 0 {
            break;
        }
    }
    out.reverse();
    String::from_utf8(out).expect("ascii")
}

/// A per-run prefix of six letters from the seed keeps users of different
/// runs apart.
pub fn run_prefix(seed: u64) -> String {
    let mut x = seed;
    (0..6)
        .map(|_| {
            x = x
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (b'a' + ((x >> 33) % 26) as u8) as char
        })
        .collect()
}

/// Counters shared by all workers, for progress lines and the ready file.
#[derive(Default)]
struct Shared {
    issued: AtomicU64,
    completed: AtomicU64,
    failed: AtomicU64,
    workers_live: AtomicUsize,
    /// Microseconds since the Unix epoch of the last good and failed answer.
    last_ok_us: AtomicU64,
    last_err_us: AtomicU64,
}

impl Shared {
    fn status(&self) -> String {
        report::status(
            self.completed.load(Ordering::Relaxed),
            self.failed.load(Ordering::Relaxed),
            self.last_ok_us.load(Ordering::Relaxed),
            self.last_err_us.load(Ordering::Relaxed),
        )
    }
}

/// One connection's load: its users and what it sent.
pub struct Worker {
    id: usize,
    args: Arc<RunArgs>,
    prefix: String,
    users: Vec<UserState>,
    next_put: usize,
    client: Client,
    rng: u64,
    records: Vec<Record>,
}

struct WorkerResult {
    records: Vec<Record>,
    reconnects: u64,
    verify: VerifyResult,
    cleanup_left: u64,
}

impl Worker {
    pub fn new(
        id: usize,
        args: Arc<RunArgs>,
        target: Arc<Target>,
        prefix: &str,
        seed: u64,
    ) -> Self {
        Worker {
            id,
            client: args.client.client(target),
            prefix: prefix.to_owned(),
            users: if args.fresh_users {
                Vec::new()
            } else {
                (0..args.users_per_connection)
                    .map(|_| UserState::default())
                    .collect()
            },
            next_put: 0,
            rng: seed ^ ((id as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15)) | 1,
            records: Vec::new(),
            args,
        }
    }

    fn rand(&mut self) -> u64 {
        // xorshift64*: plenty for picking users and dates.
        let mut x = self.rng;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.rng = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn rand_f64(&mut self) -> f64 {
        (self.rand() >> 11) as f64 / (1u64 << 53) as f64
    }

    fn username(&self, user: usize) -> String {
        username(&self.prefix, self.id, user)
    }

    /// A date of birth whose month and day differ from every value the user
    /// may hold now, so that a lost update changes the greeting.
    fn fresh_date(&mut self, user: usize) -> Date {
        if self.args.fresh_users && user.is_multiple_of(97) {
            // A new user: Feb 29 of a leap year between 1952 and 2000.
            return Date::new(1952 + 4 * (self.rand() % 13) as i64, 2, 29);
        }
        let lo = Date::new(1950, 1, 1).days();
        let hi = Date::new(2005, 12, 31).days();
        loop {
            let day = lo + (self.rand() % (hi - lo + 1) as u64) as i64;
            let date = Date::from_days(day);
            if date.month == 2 && date.day == 29 {
                continue;
            }
            let clash = self.users[user]
                .candidates()
                .any(|d| d.month == date.month && d.day == date.day);
            if !clash {
                return date;
            }
        }
    }

    /// A status listed in --accept-status is not a failure (but not a 2xx either).
    fn accepted(&self, mut out: Outcome) -> Outcome {
        if out.failure == Some(Failure::Status) && self.args.accept_status.contains(&out.status) {
            out.failure = None;
        }
        out
    }

    /// A request whose answer the contract fixes: 404 for a user never
    /// written, 400 for an invalid username; either as problem+json with that
    /// status in its body.
    async fn probe(&mut self) -> (&'static str, Option<Failure>, u16, Arc<str>) {
        let n = self.rand();
        let (path, want) = if n.is_multiple_of(2) {
            (
                format!(
                    "/hello/{}nobody{}",
                    self.prefix,
                    letters((n >> 1) as usize % 10_000)
                ),
                404,
            )
        } else {
            (format!("/hello/{}{}", self.prefix, (n >> 1) % 10_000), 400)
        };
        let out = self.client.send(Method::GET, &path, None).await;
        let failure = probe_failure(&out, want, &self.args.accept_status);
        match failure {
            Some(Failure::Status) if out.status == want => {
                eprintln!("loadgen: GET {path} answered {want} without a problem body")
            }
            Some(Failure::Status) if out.failure.is_none() => {
                eprintln!("loadgen: GET {path} answered {}, not {want}", out.status)
            }
            _ => {}
        }
        ("GET", failure, out.status, out.server)
    }

    async fn one_request(&mut self) {
        let has_written = self.users.iter().any(|u| u.confirmed.is_some());
        let probe = self.args.invalid_ratio > 0.0 && self.rand_f64() < self.args.invalid_ratio;
        let do_put = !probe && (!has_written || self.rand_f64() < self.args.put_ratio);
        let start_unix = now_unix();
        let start = Instant::now();
        let today_before = calendar::today_utc();
        let mut write = None;
        let (method, failure, status, server) = if probe {
            self.probe().await
        } else if do_put {
            let user = if self.args.fresh_users {
                self.users.push(UserState::default());
                self.users.len() - 1
            } else {
                let user = self.next_put;
                self.next_put = (self.next_put + 1) % self.users.len();
                user
            };
            let date = self.fresh_date(user);
            let name = self.username(user);
            let path = format!("/hello/{name}");
            let body = format!("{{\"dateOfBirth\":\"{date}\"}}");
            let out = self.client.send(Method::PUT, &path, Some(body)).await;
            let out = self.accepted(out);
            self.users[user].record_put(date, out.status);
            if self.args.writes.is_some() {
                write = Some((name, date));
            }
            ("PUT", out.failure, out.status, out.server)
        } else {
            let n = self.users.len();
            let mut user = (self.rand() % n as u64) as usize;
            while self.users[user].confirmed.is_none() {
                user = (user + 1) % n;
            }
            let name = self.username(user);
            let out = self
                .client
                .send(Method::GET, &format!("/hello/{name}"), None)
                .await;
            let out = self.accepted(out);
            let mut failure = out.failure;
            if out.status == 200 {
                let days = [today_before, calendar::today_utc()];
                if !greeting_matches(&self.users[user], &name, &out.body, &days) {
                    failure = Some(Failure::Mismatch);
                    eprintln!(
                        "loadgen: GET /hello/{name} answered {:?}, not the value last written",
                        String::from_utf8_lossy(&out.body)
                    );
                }
            }
            ("GET", failure, out.status, out.server)
        };
        self.records.push(Record {
            start_unix,
            latency: start.elapsed(),
            method,
            status,
            server,
            failure,
            write,
        });
    }

    /// Sends on every tick until told to stop or the budget is spent, then
    /// reads back and cleans up.
    async fn drive(
        mut self,
        shared: Arc<Shared>,
        mut stop: watch::Receiver<bool>,
        first_tick: tokio::time::Instant,
        period: Duration,
    ) -> WorkerResult {
        let args = self.args.clone();
        let mut ticker = tokio::time::interval_at(first_tick, period);
        // A connection still waiting for an answer skips its missed ticks
        // instead of bursting afterwards: a stall shows as a dip in the
        // achieved rate (which --min-rate checks), never as a catch-up burst
        // that no real client would send.
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        let mut live = false;
        loop {
            tokio::select! {
                _ = ticker.tick() => {}
                _ = stop.changed() => break,
            }
            if *stop.borrow() {
                break;
            }
            if let Some(max) = args.max_requests
                && shared.issued.fetch_add(1, Ordering::Relaxed) >= max
            {
                break;
            }
            self.one_request().await;
            let failed = self.records.last().is_some_and(|r| r.failure.is_some());
            let at = (now_unix() * 1e6) as u64;
            shared.completed.fetch_add(1, Ordering::Relaxed);
            if failed {
                shared.failed.fetch_add(1, Ordering::Relaxed);
                shared.last_err_us.fetch_max(at, Ordering::Relaxed);
            } else {
                shared.last_ok_us.fetch_max(at, Ordering::Relaxed);
            }
            if !failed && !live {
                live = true;
                shared.workers_live.fetch_add(1, Ordering::Relaxed);
            }
        }
        let (prefix, id) = (self.prefix.clone(), self.id);
        let name = |user| username(&prefix, id, user);
        let verify = if args.no_verify {
            VerifyResult::default()
        } else {
            verify::read_back(&mut self.client, &self.users, name).await
        };
        let cleanup_left = if args.cleanup {
            verify::cleanup(&mut self.client, &self.users, name).await
        } else {
            0
        };
        WorkerResult {
            records: self.records,
            reconnects: self.client.reconnects,
            verify,
            cleanup_left,
        }
    }
}

/// Connection `id`'s user number `user`.
fn username(prefix: &str, id: usize, user: usize) -> String {
    format!("{prefix}w{}u{}", letters(id), letters(user))
}

/// How a probe that must answer `want` as problem+json counts.
fn probe_failure(out: &Outcome, want: u16, accept: &[u16]) -> Option<Failure> {
    match out.failure {
        Some(Failure::Status) if out.status == want => {
            let body: serde_json::Value = serde_json::from_slice(&out.body).unwrap_or_default();
            if body.get("status").and_then(|s| s.as_u64()) == Some(u64::from(want)) {
                None
            } else {
                Some(Failure::Status)
            }
        }
        Some(Failure::Status) if accept.contains(&out.status) => None,
        None => Some(Failure::Status),
        other => other,
    }
}

async fn wait_for_stop(args: Arc<RunArgs>, stop: watch::Sender<bool>) {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("SIGTERM handler");
    let deadline = tokio::time::sleep(Duration::from_secs_f64(args.duration));
    tokio::pin!(deadline);
    let mut poll = tokio::time::interval(Duration::from_millis(100));
    loop {
        tokio::select! {
            _ = &mut deadline => break,
            _ = tokio::signal::ctrl_c() => { eprintln!("loadgen: SIGINT, stopping the load"); break }
            _ = term.recv() => { eprintln!("loadgen: SIGTERM, stopping the load"); break }
            _ = poll.tick() => {
                if args.stop_file.as_ref().is_some_and(|p| p.exists()) {
                    eprintln!("loadgen: stop file present, stopping the load");
                    break;
                }
                if stop.is_closed() || *stop.borrow() {
                    return;
                }
            }
        }
    }
    let _ = stop.send(true);
}

/// Progress once a second, the status and ready files, until the stop.
async fn progress(
    args: Arc<RunArgs>,
    shared: Arc<Shared>,
    mut stop: watch::Receiver<bool>,
    t0: tokio::time::Instant,
) {
    let connections = args.client.connections;
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    let mut ready_written = false;
    let mut last_print = Instant::now();
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.changed() => break,
        }
        if let Some(p) = &args.status {
            report::replace_file(p, &shared.status());
        }
        if !ready_written && shared.workers_live.load(Ordering::Relaxed) == connections {
            ready_written = true;
            if let Some(p) = &args.ready_file {
                let _ = std::fs::write(p, "ready\n");
            }
            eprintln!("loadgen: all {connections} connections answered");
        }
        if last_print.elapsed() >= Duration::from_secs(1) {
            last_print = Instant::now();
            eprintln!(
                "loadgen: t={:.0}s requests={} failures={}",
                t0.elapsed().as_secs_f64(),
                shared.completed.load(Ordering::Relaxed),
                shared.failed.load(Ordering::Relaxed)
            );
        }
    }
}

/// Runs the load and the read-back; returns the records (sorted by start),
/// when the load began, and the workers' totals.
async fn load(
    args: Arc<RunArgs>,
    targets: &[Arc<Target>],
    seed: u64,
    prefix: &str,
) -> (Vec<Record>, f64, Totals) {
    let connections = args.client.connections;
    let shared = Arc::new(Shared::default());
    let (stop_tx, stop_rx) = watch::channel(false);
    let period = Duration::from_secs_f64(connections as f64 / args.rate);
    let t0 = tokio::time::Instant::now();
    let started_unix = now_unix();
    let handles: Vec<_> = (0..connections)
        .map(|id| {
            let worker = Worker::new(
                id,
                args.clone(),
                targets[id % targets.len()].clone(),
                prefix,
                seed,
            );
            // Spread the workers' ticks evenly over one period.
            let offset = period.mul_f64(id as f64 / connections as f64);
            tokio::spawn(worker.drive(shared.clone(), stop_rx.clone(), t0 + offset, period))
        })
        .collect();
    let progress = tokio::spawn(progress(args.clone(), shared.clone(), stop_rx.clone(), t0));
    let stopper = tokio::spawn(wait_for_stop(args.clone(), stop_tx.clone()));

    let mut records = Vec::new();
    let mut totals = Totals::default();
    for h in handles {
        let r = h.await.expect("worker panicked");
        // Once one worker is done (stop, deadline or --max-requests), all are.
        let _ = stop_tx.send(true);
        records.extend(r.records);
        totals.reconnects += r.reconnects;
        totals.cleanup_left += r.cleanup_left;
        totals.verify.add(r.verify);
    }
    let _ = stop_tx.send(true);
    let _ = progress.await;
    stopper.abort();
    if let Some(p) = &args.status {
        report::replace_file(p, &shared.status());
    }
    records.sort_by(|a, b| a.start_unix.total_cmp(&b.start_unix));
    (records, started_unix, totals)
}

/// `loadgen run`; returns the exit code.
pub async fn run(args: RunArgs, targets: Vec<Arc<Target>>) -> i32 {
    let args = Arc::new(args);
    let seed = args.seed.unwrap_or_else(|| {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(1)
            | 1
    });
    let prefix = args.prefix.clone().unwrap_or_else(|| run_prefix(seed));
    eprintln!(
        "loadgen: {} req/s over {} connections to {} for at most {}s{} (users {}*)",
        args.rate,
        args.client.connections,
        args.client.url.join(" "),
        args.duration,
        args.max_requests
            .map(|m| format!(" or {m} requests"))
            .unwrap_or_default(),
        prefix
    );
    let (records, started_unix, totals) = load(args.clone(), &targets, seed, &prefix).await;
    let rep = report::summarise(&records, started_unix);

    let outputs = [
        (&args.csv, report::csv as fn(&[Record]) -> String),
        (&args.writes, report::writes),
    ];
    for (path, render) in outputs {
        if let Some(p) = path
            && let Err(e) = std::fs::write(p, render(&records))
        {
            eprintln!("loadgen: cannot write {}: {e}", p.display());
            return 2;
        }
    }
    if let Some(p) = &args.summary
        && let Err(e) = std::fs::write(p, format!("{:#}\n", rep.json(&args, &totals)))
    {
        eprintln!("loadgen: cannot write {}: {e}", p.display());
        return 2;
    }
    for line in rep.lines(&args, &totals) {
        println!("{line}");
    }
    let problems = rep.problems(&args, &totals);
    if problems.is_empty() {
        println!("loadgen: PASS");
        0
    } else {
        println!("loadgen: FAIL: {}", problems.join("; "));
        1
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use clap::Parser;

    fn args(extra: &[&str]) -> Arc<RunArgs> {
        let mut v = vec!["loadgen", "run", "--url", "http://127.0.0.1:1"];
        v.extend_from_slice(extra);
        match crate::cli::Cli::parse_from(v).command {
            crate::cli::Command::Run(r) => Arc::new(r),
            _ => unreachable!(),
        }
    }

    fn worker(extra: &[&str]) -> Worker {
        let a = args(extra);
        let t = Arc::new(crate::client::parse_target("http://127.0.0.1:1").unwrap());
        Worker::new(3, a, t, "pre", 42)
    }

    #[test]
    fn usernames_are_letters_and_distinct() {
        assert_eq!(letters(0), "a");
        assert_eq!(letters(25), "z");
        assert_eq!(letters(26), "ba");
        assert_eq!(letters(27 * 26), "bba");
        let names: std::collections::BTreeSet<_> = (0..30)
            .flat_map(|w| (0..30).map(move |u| username("p", w, u)))
            .collect();
        assert_eq!(names.len(), 900);
        assert!(
            names
                .iter()
                .all(|n| n.bytes().all(|b| b.is_ascii_lowercase()))
        );
        let p = run_prefix(7);
        assert_eq!(p.len(), 6);
        assert_eq!(p, run_prefix(7));
        assert_ne!(p, run_prefix(9));
    }

    #[test]
    fn a_new_date_never_shares_a_birthday_with_a_possible_value() {
        let mut w = worker(&[]);
        for _ in 0..2000 {
            let d = w.fresh_date(0);
            assert!(!(d.month == 2 && d.day == 29));
            assert!((1950..=2005).contains(&d.year));
            assert!(
                !w.users[0]
                    .candidates()
                    .any(|c| (c.month, c.day) == (d.month, d.day)),
                "{d} clashes"
            );
            let status = if w.rand().is_multiple_of(2) { 204 } else { 0 };
            w.users[0].record_put(d, status);
        }
    }

    #[test]
    fn every_97th_fresh_user_is_a_leap_day() {
        let mut w = worker(&["--fresh-users"]);
        assert!(w.users.is_empty());
        w.users.resize_with(195, UserState::default);
        for user in [0, 97, 194] {
            let d = w.fresh_date(user);
            assert_eq!((d.month, d.day), (2, 29));
            assert!(calendar::is_leap(d.year) && (1952..=2000).contains(&d.year));
        }
        assert_ne!((w.fresh_date(1).month, w.fresh_date(1).day), (2, 29));
    }

    fn out(status: u16, failure: Option<Failure>, body: &str) -> Outcome {
        Outcome {
            status,
            server: Arc::from("-"),
            body: Bytes::from(body.to_owned()),
            failure,
        }
    }

    #[test]
    fn a_probe_needs_its_status_as_problem_json() {
        let s = Some(Failure::Status);
        assert_eq!(
            probe_failure(&out(404, s, r#"{"status":404}"#), 404, &[]),
            None
        );
        assert_eq!(
            probe_failure(&out(404, s, r#"{"status":400}"#), 404, &[]),
            s
        );
        assert_eq!(probe_failure(&out(404, s, "not found"), 404, &[]), s);
        assert_eq!(
            probe_failure(&out(400, s, r#"{"status":400}"#), 404, &[]),
            s
        );
        assert_eq!(probe_failure(&out(503, s, ""), 404, &[503]), None);
        // A 200 to a user never written is a wrong answer.
        assert_eq!(probe_failure(&out(200, None, "{}"), 404, &[]), s);
        let t = Some(Failure::Timeout);
        assert_eq!(probe_failure(&out(0, t, ""), 400, &[]), t);
    }

    #[test]
    fn accepted_statuses_are_not_failures() {
        let w = worker(&["--accept-status", "503"]);
        assert_eq!(
            w.accepted(out(503, Some(Failure::Status), "")).failure,
            None
        );
        assert_eq!(
            w.accepted(out(500, Some(Failure::Status), "")).failure,
            Some(Failure::Status)
        );
        assert_eq!(
            w.accepted(out(0, Some(Failure::Io), "")).failure,
            Some(Failure::Io)
        );
    }
}
