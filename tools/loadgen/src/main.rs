//! The load generator of every test that judges writes: steady-rate load for
//! the deploy tests, the drills and the monitoring checks, on loopback.
//!
//! Three other pieces send requests, each for a reason of its own: the
//! hardening harness's `Writers` (tests/hardening/harness.py) runs in the
//! test's own process so a test can stop it at a chosen instant and inspect
//! every malformed error body; `.github/scripts/staging_load.py` runs on a
//! hosted runner against staging over TLS (this binary speaks plain HTTP to
//! loopback only; the deploy job does not build it) and judges latency from
//! CloudWatch; the AWS canary's `curl --rate` loop (deploy/aws/canary.sh)
//! only keeps the canary's target group busy during its window, with
//! nothing to verify afterwards.
//!
//! `loadgen` holds `--connections` keep-alive HTTP/1.1 connections to one or
//! more loopback addresses (`--url`, repeatable; connection i goes to URL
//! i mod n) and sends GET and PUT requests on them at a fixed total
//! `--rate`, until `--duration` elapses, `--max-requests` have been sent, the
//! `--stop-file` appears, or it receives SIGINT/SIGTERM. Every request counts:
//! a non-2xx answer, a connection error, a timeout or a GET whose greeting does
//! not match the last acknowledged write is a failure.
//!
//! Each connection owns its own users, so the order of writes per user is the
//! order the connection sent them. After the load stops every user that got a
//! 204 is read back, and its greeting must match the last acknowledged date of
//! birth (or a later write whose outcome the client never learned): a missing
//! or stale value is a lost write.
//!
//! Optional outputs: a per-request CSV (`--csv`, for the deploy timeline) and
//! a JSON summary (`--summary`). The exit code is non-zero when failures
//! exceed `--max-failures`, any write is lost, any GET answered a wrong value,
//! or the achieved rate is below `--min-rate`.
//!
//! For the monitoring checks, `--invalid-ratio` mixes in requests whose answer
//! the contract fixes whatever is stored (404 for a user never written, 400
//! for an invalid username) and `--accept-status 503` lets a deliberate
//! database outage answer 503. For the drills, `--fresh-users` writes every
//! PUT to a new user and `--writes` logs each one with the time it was
//! acknowledged, so a backup or a failover can be judged against that time;
//! `--check FILE` (no load) later reads those users back from another
//! service (a restored one, a new primary) and compares them with the
//! calendar, a reference service and the database rows.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use clap::Parser;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::SendRequest;
use hyper::{Method, Request};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio::sync::watch;

mod calendar;
mod check;

use calendar::Date;

#[derive(Parser, Debug, Clone)]
#[command(
    version,
    about = "Steady-rate GET/PUT load that counts every failure and verifies every acknowledged write"
)]
struct Args {
    /// Base URL, loopback only: http://127.0.0.1:PORT (or localhost, [::1]).
    /// Repeatable: connection i talks to URL i mod n.
    #[arg(long, required = true)]
    url: Vec<String>,
    /// Total requests per second across all connections.
    #[arg(long, default_value_t = 300.0)]
    rate: f64,
    /// Concurrent keep-alive connections (one worker each).
    #[arg(long, default_value_t = 24)]
    connections: usize,
    /// Upper bound on the load phase, in seconds.
    #[arg(long, default_value_t = 60.0)]
    duration: f64,
    /// Upper bound on the number of load requests.
    #[arg(long)]
    max_requests: Option<u64>,
    /// Share of PUTs among the load requests (the rest are GETs).
    #[arg(long, default_value_t = 0.3)]
    put_ratio: f64,
    /// Users owned by each connection.
    #[arg(long, default_value_t = 20)]
    users_per_connection: usize,
    /// Deadline for one request, connection set-up included, in milliseconds.
    #[arg(long, default_value_t = 5000)]
    timeout_ms: u64,
    /// Response header that names the server that answered (added by HAProxy).
    #[arg(long, default_value = "x-served-by")]
    server_header: String,
    /// Stop the load as soon as this file exists.
    #[arg(long)]
    stop_file: Option<PathBuf>,
    /// Create this file once every connection has had a successful answer.
    #[arg(long)]
    ready_file: Option<PathBuf>,
    /// Write one CSV row per load request here.
    #[arg(long)]
    csv: Option<PathBuf>,
    /// Write the summary as JSON here.
    #[arg(long)]
    summary: Option<PathBuf>,
    /// Failures (non-2xx, connection errors, timeouts) tolerated before the exit code turns non-zero.
    #[arg(long, default_value_t = 0)]
    max_failures: u64,
    /// Fail when the achieved request rate is below this.
    #[arg(long, default_value_t = 0.0)]
    min_rate: f64,
    /// Skip reading every acknowledged write back at the end.
    #[arg(long)]
    no_verify: bool,
    /// Delete every user this run wrote once the load (and verification) is
    /// over, so a long-lived environment keeps no synthetic users.
    #[arg(long)]
    cleanup: bool,
    /// Seed for the pseudo-random choices (default: from the clock).
    #[arg(long)]
    seed: Option<u64>,
    /// Share of requests whose answer the contract fixes whatever is stored:
    /// a GET of a user this run never wrote must answer 404, a GET of an
    /// invalid username 400, both as problem+json.
    #[arg(long, default_value_t = 0.0)]
    invalid_ratio: f64,
    /// A status that counts as expected for any request (repeatable), e.g.
    /// 503 while the database is stopped on purpose. A PUT so answered stays
    /// unacknowledged.
    #[arg(long = "accept-status")]
    accept_status: Vec<u16>,
    /// Username prefix (letters; default: random per run).
    #[arg(long)]
    prefix: Option<String>,
    /// Every PUT writes a user never written before (no updates), so each
    /// write has one acknowledgement time. Every 97th new user is born on a
    /// Feb 29.
    #[arg(long)]
    fresh_users: bool,
    /// Append one JSON line per PUT here: user, dob, t_start, t_end (Unix
    /// seconds) and status (0: no answer).
    #[arg(long)]
    writes: Option<PathBuf>,
    /// Rewrite this JSON file every 100 ms with the counters so far: ok, err,
    /// last_ok, last_err (Unix seconds of the last answer of each kind).
    #[arg(long)]
    status: Option<PathBuf>,
    /// No load: read back the users acknowledged in these --writes files
    /// (repeatable) from --url, one GET each, and check every greeting with
    /// the calendar.
    #[arg(long)]
    check: Vec<PathBuf>,
    /// With --check: only writes acknowledged before this Unix time.
    #[arg(long)]
    acked_before: Option<f64>,
    /// With --check: each body must equal this service's answer.
    #[arg(long)]
    reference: Option<String>,
    /// With --check: `username|YYYY-MM-DD` lines from the database, which
    /// must hold every checked user with its exact date.
    #[arg(long)]
    db_rows: Option<PathBuf>,
}

/// Why a request counts as failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Failure {
    /// The server answered with a status outside 2xx.
    Status,
    /// The TCP connection could not be opened.
    Connect,
    /// The connection broke while the request was in flight.
    Io,
    /// No complete answer within `--timeout-ms`.
    Timeout,
    /// A 200 whose greeting does not match any value this client wrote.
    Mismatch,
}

impl Failure {
    fn as_str(self) -> &'static str {
        match self {
            Failure::Status => "status",
            Failure::Connect => "connect",
            Failure::Io => "io",
            Failure::Timeout => "timeout",
            Failure::Mismatch => "mismatch",
        }
    }
}

/// One load request, as written to the CSV.
struct Record {
    start_unix: f64,
    latency: Duration,
    method: &'static str,
    status: u16,
    server: Arc<str>,
    failure: Option<Failure>,
    /// For a PUT: the user and the date sent (for --writes).
    write: Option<(String, Date)>,
}

/// The answer to one request, or why there was none.
struct Outcome {
    status: u16,
    server: Arc<str>,
    body: Bytes,
    failure: Option<Failure>,
}

/// What this client knows about one user's stored date of birth.
#[derive(Default)]
struct UserState {
    /// The value of the last PUT answered 2xx.
    confirmed: Option<Date>,
    /// Values of later PUTs whose outcome is unknown (error or non-2xx): the
    /// server may or may not have stored them.
    uncertain: Vec<Date>,
}

impl UserState {
    fn candidates(&self) -> impl Iterator<Item = &Date> {
        self.confirmed.iter().chain(self.uncertain.iter())
    }
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

struct Target {
    addr: SocketAddr,
    host_header: String,
}

struct Worker {
    id: usize,
    target: Arc<Target>,
    args: Arc<Args>,
    prefix: String,
    users: Vec<UserState>,
    next_put: usize,
    conn: Option<SendRequest<Full<Bytes>>>,
    rng: u64,
    records: Vec<Record>,
    reconnects: u64,
    unknown_server: Arc<str>,
}

struct WorkerResult {
    records: Vec<Record>,
    reconnects: u64,
    verify: VerifyResult,
    cleanup_left: u64,
}

#[derive(Default)]
struct VerifyResult {
    users_checked: u64,
    verified: u64,
    lost: u64,
    errors: u64,
    examples: Vec<String>,
}

fn now_unix() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

/// Usernames are letters only: numbers are written in base 26 with a..z.
fn letters(mut n: usize) -> String {
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

impl Worker {
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
        format!("{}w{}u{}", self.prefix, letters(self.id), letters(user))
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

    async fn connect(&self) -> Result<SendRequest<Full<Bytes>>, Failure> {
        let stream = TcpStream::connect(self.target.addr)
            .await
            .map_err(|_| Failure::Connect)?;
        let _ = stream.set_nodelay(true);
        let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|_| Failure::Connect)?;
        tokio::spawn(async move {
            // The connection task ends when the peer or this client closes it;
            // the request side sees the error.
            let _ = conn.await;
        });
        Ok(sender)
    }

    /// Sends one request on this worker's connection, opening a new one when
    /// the previous was closed while idle (nothing was sent on it, so that is
    /// not a failure).
    async fn send(&mut self, method: Method, path: &str, body: Option<String>) -> Outcome {
        let deadline = Duration::from_millis(self.args.timeout_ms);
        let host = self.target.host_header.clone();
        let header_name = self.args.server_header.clone();
        let unknown = self.unknown_server.clone();
        let fut = async {
            if let Some(sender) = self.conn.as_mut()
                && sender.ready().await.is_err()
            {
                self.conn = None;
                self.reconnects += 1;
            }
            if self.conn.is_none() {
                let sender = self.connect().await?;
                self.conn = Some(sender);
            }
            let sender = self.conn.as_mut().expect("connected");
            sender.ready().await.map_err(|_| Failure::Io)?;
            let mut req = Request::builder()
                .method(method)
                .uri(path)
                .header(hyper::header::HOST, host);
            let body = match body {
                Some(b) => {
                    req = req.header(hyper::header::CONTENT_TYPE, "application/json");
                    Full::new(Bytes::from(b))
                }
                None => Full::new(Bytes::new()),
            };
            let req = req.body(body).expect("valid request");
            let resp = sender.send_request(req).await.map_err(|_| Failure::Io)?;
            let status = resp.status().as_u16();
            let server: Arc<str> = resp
                .headers()
                .get(header_name.as_str())
                .and_then(|v| v.to_str().ok())
                .map(Arc::from)
                .unwrap_or(unknown);
            let body = resp
                .into_body()
                .collect()
                .await
                .map_err(|_| Failure::Io)?
                .to_bytes();
            Ok::<_, Failure>((status, server, body))
        };
        match tokio::time::timeout(deadline, fut).await {
            Ok(Ok((status, server, body))) => Outcome {
                status,
                server,
                body,
                failure: (!(200..300).contains(&status)).then_some(Failure::Status),
            },
            Ok(Err(f)) => {
                self.conn = None;
                Outcome {
                    status: 0,
                    server: self.unknown_server.clone(),
                    body: Bytes::new(),
                    failure: Some(f),
                }
            }
            Err(_) => {
                // The connection's state is unknown after a timeout: start afresh.
                self.conn = None;
                Outcome {
                    status: 0,
                    server: self.unknown_server.clone(),
                    body: Bytes::new(),
                    failure: Some(Failure::Timeout),
                }
            }
        }
    }

    /// Does a 200 body carry the greeting of one of the values the user may hold?
    fn greeting_matches(&self, user: usize, name: &str, body: &[u8], days: &[Date]) -> bool {
        let Ok(v) = serde_json::from_slice::<serde_json::Value>(body) else {
            return false;
        };
        let Some(msg) = v.get("message").and_then(|m| m.as_str()) else {
            return false;
        };
        self.users[user].candidates().any(|dob| {
            days.iter()
                .any(|today| calendar::greeting(name, *dob, *today) == msg)
        })
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
        let out = self.send(Method::GET, &path, None).await;
        let failure = match out.failure {
            Some(Failure::Status) if out.status == want => {
                let body: serde_json::Value = serde_json::from_slice(&out.body).unwrap_or_default();
                if body.get("status").and_then(|s| s.as_u64()) == Some(u64::from(want)) {
                    None
                } else {
                    eprintln!("loadgen: GET {path} answered {want} without a problem body");
                    Some(Failure::Status)
                }
            }
            Some(Failure::Status) if self.args.accept_status.contains(&out.status) => None,
            None => {
                eprintln!("loadgen: GET {path} answered {}, not {want}", out.status);
                Some(Failure::Status)
            }
            other => other,
        };
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
            let out = self.send(Method::PUT, &path, Some(body)).await;
            let out = self.accepted(out);
            let state = &mut self.users[user];
            if (200..300).contains(&out.status) {
                state.confirmed = Some(date);
                state.uncertain.clear();
            } else {
                state.uncertain.push(date);
            }
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
                .send(Method::GET, &format!("/hello/{name}"), None)
                .await;
            let out = self.accepted(out);
            let mut failure = out.failure;
            if out.status == 200 {
                let days = [today_before, calendar::today_utc()];
                if !self.greeting_matches(user, &name, &out.body, &days) {
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

    /// Reads back every user this worker wrote. Retries a read that fails for
    /// transport reasons: this phase checks data, not availability.
    async fn verify(&mut self) -> VerifyResult {
        let mut res = VerifyResult::default();
        for user in 0..self.users.len() {
            if self.users[user].candidates().next().is_none() {
                continue;
            }
            res.users_checked += 1;
            let name = self.username(user);
            let path = format!("/hello/{name}");
            let mut answer = None;
            for attempt in 0..5 {
                let today = calendar::today_utc();
                let out = self.send(Method::GET, &path, None).await;
                if out.status == 200 || out.status == 404 {
                    answer = Some((out, today));
                    break;
                }
                tokio::time::sleep(Duration::from_millis(100 * (attempt + 1))).await;
            }
            let Some((out, today)) = answer else {
                res.errors += 1;
                continue;
            };
            let state = &self.users[user];
            let ok = match out.status {
                200 => {
                    self.greeting_matches(user, &name, &out.body, &[today, calendar::today_utc()])
                }
                // Only a user none of whose writes was acknowledged may be absent.
                _ => state.confirmed.is_none(),
            };
            if ok {
                res.verified += 1;
            } else {
                res.lost += 1;
                if res.examples.len() < 5 {
                    res.examples.push(format!(
                        "{name}: expected one of [{}], got {} {}",
                        state
                            .candidates()
                            .map(|d| d.to_string())
                            .collect::<Vec<_>>()
                            .join(", "),
                        out.status,
                        String::from_utf8_lossy(&out.body)
                    ));
                }
            }
        }
        res
    }

    /// Deletes every user this worker may have written; returns how many
    /// could not be deleted (204 and 404 both mean gone).
    async fn cleanup(&mut self) -> u64 {
        let mut left = 0;
        for user in 0..self.users.len() {
            if self.users[user].candidates().next().is_none() {
                continue;
            }
            let path = format!("/hello/{}", self.username(user));
            let mut gone = false;
            for attempt in 0..3 {
                let out = self.send(Method::DELETE, &path, None).await;
                if out.status == 204 || out.status == 404 {
                    gone = true;
                    break;
                }
                tokio::time::sleep(Duration::from_millis(100 * (attempt + 1))).await;
            }
            left += u64::from(!gone);
        }
        left
    }
}

fn parse_target(url: &str) -> Result<Target, String> {
    let rest = url
        .strip_prefix("http://")
        .ok_or("only http:// URLs are supported")?;
    let authority = rest.split('/').next().unwrap_or_default();
    let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
        let (h, p) = v6.split_once("]:").ok_or("expected [::1]:PORT")?;
        (h.to_string(), p)
    } else {
        let (h, p) = authority
            .rsplit_once(':')
            .ok_or("the URL needs an explicit port")?;
        (h.to_string(), p)
    };
    let port: u16 = port.parse().map_err(|_| format!("bad port {port:?}"))?;
    let ip: IpAddr = if host == "localhost" {
        IpAddr::V4(Ipv4Addr::LOCALHOST)
    } else {
        host.parse()
            .map_err(|_| format!("host {host:?} is not an IP address"))?
    };
    // Load goes to this machine only.
    if !ip.is_loopback() {
        return Err(format!(
            "{ip} is not a loopback address: loadgen only targets 127.0.0.0/8 and ::1"
        ));
    }
    Ok(Target {
        addr: SocketAddr::new(ip, port),
        host_header: authority.to_string(),
    })
}

fn percentile(sorted: &[Duration], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let idx = ((p / 100.0) * (sorted.len() - 1) as f64).round() as usize;
    sorted[idx.min(sorted.len() - 1)].as_secs_f64() * 1000.0
}

fn write_csv(path: &PathBuf, records: &[Record]) -> std::io::Result<()> {
    let mut out = String::with_capacity(records.len() * 64 + 64);
    out.push_str("start_unix_s,latency_ms,method,status,server,error,kind\n");
    for r in records {
        let _ = writeln!(
            out,
            "{:.6},{:.3},{},{},{},{},{}",
            r.start_unix,
            r.latency.as_secs_f64() * 1000.0,
            r.method,
            r.status,
            r.server.replace(',', ";"),
            u8::from(r.failure.is_some()),
            r.failure.map(Failure::as_str).unwrap_or("")
        );
    }
    std::fs::write(path, out)
}

/// The counters so far, replaced atomically (a reader never sees half a file).
fn write_status(path: &PathBuf, shared: &Shared) {
    let completed = shared.completed.load(Ordering::Relaxed);
    let failed = shared.failed.load(Ordering::Relaxed);
    let secs = |a: &AtomicU64| a.load(Ordering::Relaxed) as f64 / 1e6;
    let body = serde_json::json!({
        "ok": completed - failed.min(completed),
        "err": failed,
        "last_ok": secs(&shared.last_ok_us),
        "last_err": secs(&shared.last_err_us),
    });
    let tmp = path.with_extension("tmp");
    if std::fs::write(&tmp, format!("{body}\n")).is_ok() {
        let _ = std::fs::rename(&tmp, path);
    }
}

async fn wait_for_stop(args: Arc<Args>, stop: watch::Sender<bool>) {
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

fn usage_error(msg: impl std::fmt::Display) -> ! {
    eprintln!("loadgen: {msg}");
    std::process::exit(2);
}

/// One JSON line per PUT, in the order they were sent.
fn write_writes(path: &PathBuf, records: &[Record]) -> std::io::Result<()> {
    let mut out = String::new();
    for r in records {
        if let Some((user, dob)) = &r.write {
            let line = serde_json::json!({
                "user": user,
                "dob": dob.to_string(),
                "t_start": r.start_unix,
                "t_end": r.start_unix + r.latency.as_secs_f64(),
                "status": r.status,
            });
            let _ = writeln!(out, "{line}");
        }
    }
    std::fs::write(path, out)
}

#[tokio::main]
async fn main() {
    let args = Args::parse();
    let targets: Vec<Arc<Target>> = args
        .url
        .iter()
        .map(|u| {
            parse_target(u)
                .map(Arc::new)
                .unwrap_or_else(|e| usage_error(e))
        })
        .collect();
    if let Some(p) = &args.prefix
        && (p.is_empty() || !p.bytes().all(|b| b.is_ascii_alphabetic()))
    {
        usage_error("--prefix must be letters only");
    }
    if !args.check.is_empty() {
        std::process::exit(check::run(args, targets[0].clone()).await);
    }
    if args.rate <= 0.0
        || args.connections == 0
        || args.users_per_connection == 0
        || args.duration <= 0.0
    {
        eprintln!(
            "loadgen: --rate, --connections, --users-per-connection and --duration must be positive"
        );
        std::process::exit(2);
    }
    let args = Arc::new(args);
    let seed = args.seed.unwrap_or_else(|| {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(1)
            | 1
    });
    // A per-run prefix keeps users of different runs apart.
    let prefix: String = args.prefix.clone().unwrap_or_else(|| {
        let mut x = seed;
        (0..6)
            .map(|_| {
                x = x
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                (b'a' + ((x >> 33) % 26) as u8) as char
            })
            .collect()
    });
    eprintln!(
        "loadgen: {} req/s over {} connections to {} for at most {}s{} (users {}*)",
        args.rate,
        args.connections,
        args.url.join(" "),
        args.duration,
        args.max_requests
            .map(|m| format!(" or {m} requests"))
            .unwrap_or_default(),
        prefix
    );

    let shared = Arc::new(Shared::default());
    let (stop_tx, stop_rx) = watch::channel(false);
    let period = Duration::from_secs_f64(args.connections as f64 / args.rate);
    let t0 = tokio::time::Instant::now();
    let started_unix = now_unix();
    let unknown_server: Arc<str> = Arc::from("-");

    let mut handles = Vec::new();
    for id in 0..args.connections {
        let mut worker = Worker {
            id,
            target: targets[id % targets.len()].clone(),
            args: args.clone(),
            prefix: prefix.clone(),
            users: if args.fresh_users {
                Vec::new()
            } else {
                (0..args.users_per_connection)
                    .map(|_| UserState::default())
                    .collect()
            },
            next_put: 0,
            conn: None,
            rng: seed ^ ((id as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15)) | 1,
            records: Vec::new(),
            reconnects: 0,
            unknown_server: unknown_server.clone(),
        };
        let shared = shared.clone();
        let mut stop = stop_rx.clone();
        let args = args.clone();
        // Spread the workers' ticks evenly over one period.
        let offset = period.mul_f64(id as f64 / args.connections as f64);
        handles.push(tokio::spawn(async move {
            let mut ticker = tokio::time::interval_at(t0 + offset, period);
            // A connection still waiting for an answer skips its missed
            // ticks instead of bursting afterwards: a stall shows as a dip
            // in the achieved rate (which --min-rate checks), never as a
            // catch-up burst that no real client would send.
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
                worker.one_request().await;
                let failed = worker.records.last().is_some_and(|r| r.failure.is_some());
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
            let verify = if args.no_verify {
                VerifyResult::default()
            } else {
                worker.verify().await
            };
            let cleanup_left = if args.cleanup {
                worker.cleanup().await
            } else {
                0
            };
            WorkerResult {
                records: worker.records,
                reconnects: worker.reconnects,
                verify,
                cleanup_left,
            }
        }));
    }

    // Progress once a second, the ready file, and the stop conditions.
    let progress = {
        let shared = shared.clone();
        let args = args.clone();
        let mut stop = stop_rx.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(100));
            let mut ready_written = false;
            let mut last_print = Instant::now();
            loop {
                tokio::select! {
                    _ = tick.tick() => {}
                    _ = stop.changed() => break,
                }
                if let Some(p) = &args.status {
                    write_status(p, &shared);
                }
                if !ready_written && shared.workers_live.load(Ordering::Relaxed) == args.connections
                {
                    ready_written = true;
                    if let Some(p) = &args.ready_file {
                        let _ = std::fs::write(p, "ready\n");
                    }
                    eprintln!("loadgen: all {} connections answered", args.connections);
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
        })
    };
    let stopper = tokio::spawn(wait_for_stop(args.clone(), stop_tx.clone()));

    let mut records = Vec::new();
    let mut reconnects = 0;
    let mut cleanup_left = 0;
    let mut verify = VerifyResult::default();
    for h in handles {
        let r = h.await.expect("worker panicked");
        // Once one worker is done (stop, deadline or --max-requests), all are.
        let _ = stop_tx.send(true);
        records.extend(r.records);
        reconnects += r.reconnects;
        cleanup_left += r.cleanup_left;
        verify.users_checked += r.verify.users_checked;
        verify.verified += r.verify.verified;
        verify.lost += r.verify.lost;
        verify.errors += r.verify.errors;
        for e in r.verify.examples {
            if verify.examples.len() < 10 {
                verify.examples.push(e);
            }
        }
    }
    let _ = stop_tx.send(true);
    let _ = progress.await;
    stopper.abort();
    if let Some(p) = &args.status {
        write_status(p, &shared);
    }

    records.sort_by(|a, b| a.start_unix.total_cmp(&b.start_unix));
    let requests = records.len() as u64;
    let end_unix = records
        .iter()
        .map(|r| r.start_unix + r.latency.as_secs_f64())
        .fold(started_unix, f64::max);
    let load_seconds = records
        .first()
        .map(|f| end_unix - f.start_unix)
        .unwrap_or(0.0)
        .max(1e-9);
    let rate = requests as f64 / load_seconds;

    let mut by_kind: BTreeMap<&str, u64> = BTreeMap::new();
    let mut by_status: BTreeMap<u16, u64> = BTreeMap::new();
    let mut by_server: BTreeMap<String, (u64, u64)> = BTreeMap::new();
    let mut by_method: BTreeMap<&str, u64> = BTreeMap::new();
    let mut per_second: BTreeMap<i64, u64> = BTreeMap::new();
    let mut latencies: Vec<Duration> = Vec::with_capacity(records.len());
    let mut failures = 0u64;
    let mut mismatches = 0u64;
    let mut first_failure: Option<f64> = None;
    let mut last_failure: Option<f64> = None;
    let mut puts_acked = 0u64;
    for r in &records {
        *by_status.entry(r.status).or_default() += 1;
        *by_method.entry(r.method).or_default() += 1;
        let e = by_server.entry(r.server.to_string()).or_default();
        e.0 += 1;
        if let Some(f) = r.failure {
            e.1 += 1;
            *by_kind.entry(f.as_str()).or_default() += 1;
            if f == Failure::Mismatch {
                mismatches += 1;
            } else {
                failures += 1;
            }
            first_failure.get_or_insert(r.start_unix);
            last_failure = Some(r.start_unix);
        } else {
            latencies.push(r.latency);
            if r.method == "PUT" {
                puts_acked += 1;
            }
        }
        if let Some(f) = records.first() {
            *per_second
                .entry((r.start_unix - f.start_unix) as i64)
                .or_default() += 1;
        }
    }
    latencies.sort();
    // The last second is usually partial: leave it out of the minimum.
    let full_seconds = load_seconds.floor() as i64;
    let min_per_second = (0..full_seconds)
        .map(|s| per_second.get(&s).copied().unwrap_or(0))
        .min()
        .unwrap_or(0);

    let summary = serde_json::json!({
        "url": args.url.join(" "),
        "connections": args.connections,
        "target_rate": args.rate,
        "requests": requests,
        "ok": requests - failures - mismatches,
        "failures": failures,
        "mismatches": mismatches,
        "failures_by_kind": by_kind,
        "by_status": by_status.iter().map(|(k, v)| (k.to_string(), *v)).collect::<BTreeMap<_, _>>(),
        "by_method": by_method,
        "by_server": by_server.iter().map(|(k, (n, f))| (k.clone(), serde_json::json!({"requests": n, "failures": f}))).collect::<BTreeMap<_, _>>(),
        "first_failure_unix": first_failure,
        "last_failure_unix": last_failure,
        "started_unix": records.first().map(|r| r.start_unix),
        "ended_unix": end_unix,
        "duration_s": load_seconds,
        "rate": rate,
        "min_requests_in_a_second": min_per_second,
        "latency_ms": {
            "p50": percentile(&latencies, 50.0),
            "p90": percentile(&latencies, 90.0),
            "p99": percentile(&latencies, 99.0),
            "max": percentile(&latencies, 100.0),
        },
        "reconnects": reconnects,
        "cleanup": {"enabled": args.cleanup, "left": cleanup_left},
        "puts_acked": puts_acked,
        "verify": {
            "enabled": !args.no_verify,
            "users_checked": verify.users_checked,
            "verified": verify.verified,
            "lost": verify.lost,
            "errors": verify.errors,
            "examples": verify.examples,
        },
    });

    if let Some(p) = &args.csv
        && let Err(e) = write_csv(p, &records)
    {
        eprintln!("loadgen: cannot write {}: {e}", p.display());
        std::process::exit(2);
    }
    if let Some(p) = &args.writes
        && let Err(e) = write_writes(p, &records)
    {
        eprintln!("loadgen: cannot write {}: {e}", p.display());
        std::process::exit(2);
    }
    if let Some(p) = &args.summary
        && let Err(e) = std::fs::write(p, format!("{summary:#}\n"))
    {
        eprintln!("loadgen: cannot write {}: {e}", p.display());
        std::process::exit(2);
    }

    println!(
        "loadgen: {requests} requests in {load_seconds:.1}s ({rate:.0} req/s, lowest second {min_per_second}), \
         {failures} failures {by_kind:?}, {mismatches} wrong values, p50 {:.1} ms p99 {:.1} ms max {:.1} ms",
        percentile(&latencies, 50.0),
        percentile(&latencies, 99.0),
        percentile(&latencies, 100.0)
    );
    println!(
        "loadgen: by server {:?}",
        by_server
            .iter()
            .map(|(k, (n, _))| format!("{k}={n}"))
            .collect::<Vec<_>>()
    );
    println!(
        "loadgen: by status {:?}",
        by_status
            .iter()
            .map(|(k, n)| format!("{k}={n}"))
            .collect::<Vec<_>>()
    );
    if !args.no_verify {
        println!(
            "loadgen: {puts_acked} acknowledged PUTs over {} users: {} read back intact, {} lost, {} unreadable",
            verify.users_checked, verify.verified, verify.lost, verify.errors
        );
        for e in &verify.examples {
            println!("loadgen:   lost: {e}");
        }
    }

    let mut problems = Vec::new();
    if failures > args.max_failures {
        problems.push(format!(
            "{failures} failed requests (allowed {})",
            args.max_failures
        ));
    }
    if mismatches > 0 {
        problems.push(format!(
            "{mismatches} GETs answered a value that was not written"
        ));
    }
    if verify.lost > 0 || verify.errors > 0 {
        problems.push(format!(
            "{} lost writes, {} unreadable users",
            verify.lost, verify.errors
        ));
    }
    if rate < args.min_rate {
        problems.push(format!(
            "achieved {rate:.0} req/s, below --min-rate {}",
            args.min_rate
        ));
    }
    if args.cleanup {
        println!("loadgen: cleanup: {cleanup_left} users could not be deleted");
        if cleanup_left > 0 {
            problems.push(format!("{cleanup_left} users left behind"));
        }
    }
    if problems.is_empty() {
        println!("loadgen: PASS");
    } else {
        println!("loadgen: FAIL: {}", problems.join("; "));
        std::process::exit(1);
    }
}
