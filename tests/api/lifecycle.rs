//! The real binary as an operator runs it: crash safety, commits that reach
//! the disk before the answer, graceful drain, and the signals that start it.

use crate::support::wait_until;
use hello_birthday::domain::{DateOfBirth, Username, greeting};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub struct Server {
    pub child: Child,
    pub addr: SocketAddr,
    pub metrics_addr: SocketAddr,
    /// The service's own process (not the same as `child` under strace).
    pub pid: u32,
    /// Every JSON log line the service wrote so far.
    logs: Arc<Mutex<Vec<serde_json::Value>>>,
}

impl Server {
    /// Whether some log line so far satisfies `pred`.
    pub fn logged(&self, pred: impl Fn(&serde_json::Value) -> bool) -> bool {
        self.logs.lock().unwrap().iter().any(pred)
    }

    pub fn signal(&self, sig: libc::c_int) {
        // SAFETY: sending a signal to a process this test started.
        let rc = unsafe { libc::kill(self.pid as libc::pid_t, sig) };
        assert_eq!(rc, 0, "kill({}, {sig})", self.pid);
    }

    /// Waits for the process to exit, at most `deadline`.
    pub fn wait_exit(&mut self, deadline: Duration) -> std::process::ExitStatus {
        let started = Instant::now();
        loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                return s;
            }
            assert!(
                started.elapsed() < deadline,
                "process did not exit within {deadline:?}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// A failed assertion must not leave the service running (it would hold the
/// test's output pipe open and outlive the run).
impl Drop for Server {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            // SAFETY: killing a process this test started.
            unsafe { libc::kill(self.pid as libc::pid_t, libc::SIGKILL) };
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Starts the binary on free ports and waits for its `listening` log line.
pub fn start(db: &Path, extra: &[(&str, &str)]) -> Server {
    start_cmd(
        Command::new(env!("CARGO_BIN_EXE_hello-birthday")),
        db,
        extra,
    )
}

/// As `start`, with `cmd` running the binary (directly, or under a tracer
/// that runs it as its only child).
pub fn start_cmd(mut cmd: Command, db: &Path, extra: &[(&str, &str)]) -> Server {
    cmd.env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("DATABASE_URL", format!("sqlite://{}", db.display()))
        .env("PORT", "0")
        .env("METRICS_PORT", "0")
        .env("BIND_ADDR", "127.0.0.1")
        .env("LOG_FORMAT", "json")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    for (k, v) in extra {
        cmd.env(k, v);
    }
    let program = cmd.get_program().to_string_lossy().into_owned();
    let mut child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("starting {program}: {e} (scripts/setup.sh dev installs it)"));
    let stdout = child.stdout.take().unwrap();
    let logs = Arc::new(Mutex::new(Vec::new()));
    let (tx, rx) = std::sync::mpsc::channel();
    let sink = logs.clone();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if let Ok(v) = serde_json::from_str::<serde_json::Value>(&line) {
                if v["message"] == "listening" {
                    let _ = tx.send((
                        v["addr"].as_str().unwrap().parse().unwrap(),
                        v["metrics_addr"].as_str().unwrap().parse().unwrap(),
                    ));
                }
                sink.lock().unwrap().push(v);
            }
        }
    });
    let (addr, metrics_addr) = rx
        .recv_timeout(Duration::from_secs(20))
        .expect("a listening line within 20 s");
    let pid = only_child_of(child.id()).unwrap_or(child.id());
    Server {
        child,
        addr,
        metrics_addr,
        pid,
        logs,
    }
}

/// The one child process of `pid`, if it has one (the traced service).
fn only_child_of(pid: u32) -> Option<u32> {
    let children = std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children")).ok()?;
    let mut it = children.split_whitespace();
    let first = it.next()?.parse().ok()?;
    it.next().is_none().then_some(first)
}

fn expected_message(user: &str, dob: &str) -> [String; 2] {
    // Two candidates, so a test that spans midnight UTC does not flake.
    let today = time::OffsetDateTime::now_utc().date();
    let u = Username::parse(user).unwrap();
    [today, today.next_day().unwrap()].map(|d| {
        let dob = DateOfBirth::parse(dob, d).unwrap();
        greeting(&u, &dob, d)
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_puts_survive_sigkill_during_a_write_burst() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("crash.db");
    let mut server = start(&db, &[]);
    let base = format!("http://{}", server.addr);
    let client = reqwest::Client::new();

    // Writers run flat out; the process is killed while they still are.
    let stop = Arc::new(AtomicBool::new(false));
    let mut writers = Vec::new();
    for w in 0..16 {
        let (client, base, stop) = (client.clone(), base.clone(), stop.clone());
        writers.push(tokio::spawn(async move {
            let mut acked = Vec::new();
            let mut i = 0u32;
            while !stop.load(Ordering::Relaxed) {
                let user = format!("w{}u{}", letters(w), letters(i));
                let dob = format!("19{:02}-{:02}-{:02}", 50 + i % 50, 1 + i % 12, 1 + i % 28);
                let sent = client
                    .put(format!("{base}/hello/{user}"))
                    .header("content-type", "application/json")
                    .body(format!(r#"{{"dateOfBirth":"{dob}"}}"#))
                    .send()
                    .await;
                match sent {
                    Ok(r) if r.status() == 204 => acked.push((user, dob)),
                    Ok(r) => panic!("unexpected status {}", r.status()),
                    Err(_) => break, // the process is gone
                }
                i += 1;
            }
            acked
        }));
    }
    let metrics = format!("http://{}/metrics", server.metrics_addr);
    wait_until("200 acknowledged PUTs", Duration::from_secs(30), || async {
        let text = reqwest::get(&metrics).await.unwrap().text().await.unwrap();
        text.lines()
            .find(|l| {
                l.starts_with(
                    r#"http_server_request_duration_seconds_count{http_request_method="PUT",http_route="/hello/{username}",http_response_status_code="204"}"#,
                )
            })
            .and_then(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
            .is_some_and(|n| n >= 200)
    })
    .await;
    server.child.kill().unwrap(); // SIGKILL
    server.child.wait().unwrap();
    stop.store(true, Ordering::Relaxed);
    let mut acked = Vec::new();
    for w in writers {
        acked.extend(w.await.unwrap());
    }
    assert!(acked.len() >= 200, "only {} PUTs acknowledged", acked.len());

    let mut server = start(&db, &[]);
    let base = format!("http://{}", server.addr);
    for (user, dob) in &acked {
        let resp = client
            .get(format!("{base}/hello/{user}"))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200, "acknowledged PUT of {user} lost");
        let v: serde_json::Value = resp.json().await.unwrap();
        let msg = v["message"].as_str().unwrap();
        assert!(
            expected_message(user, dob).iter().any(|m| m == msg),
            "{user}: {msg}"
        );
    }
    eprintln!(
        "{} acknowledged PUTs, all present after SIGKILL",
        acked.len()
    );
    server.child.kill().unwrap();
    server.child.wait().unwrap();
}

/// Encodes a number as letters (usernames are letters only).
fn letters(mut n: u32) -> String {
    let mut s = String::new();
    loop {
        s.push((b'a' + (n % 26) as u8) as char);
        n /= 26;
        if n == 0 {
            return s;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_then_finishes_in_flight_requests() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = start(
        &dir.path().join("drain.db"),
        &[("DRAIN_SECONDS", "1"), ("SHUTDOWN_TIMEOUT_SECONDS", "10")],
    );
    let base = format!("http://{}", server.addr);
    let metrics = format!("http://{}/metrics", server.metrics_addr);

    // A slow client: headers sent, body only half so far.
    let body = br#"{"dateOfBirth":"1990-01-01"}"#;
    let mut slow = TcpStream::connect(server.addr).unwrap();
    write!(
        slow,
        "PUT /hello/slow HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\n\r\n",
        body.len()
    )
    .unwrap();
    slow.write_all(&body[..10]).unwrap();
    wait_until(
        "the slow request to be in flight",
        Duration::from_secs(10),
        || async {
            let text = reqwest::get(&metrics).await.unwrap().text().await.unwrap();
            text.lines()
                .any(|l| l == r#"http_server_active_requests{http_request_method="PUT"} 1"#)
        },
    )
    .await;

    server.signal(libc::SIGTERM);
    let client = reqwest::Client::new();
    wait_until("readiness to turn 503", Duration::from_secs(5), || async {
        client
            .get(format!("{base}/readyz"))
            .send()
            .await
            .is_ok_and(|r| r.status() == 503)
    })
    .await;
    // Still serving during the drain.
    assert_eq!(
        client
            .get(format!("{base}/healthz"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    // Then the listener closes...
    wait_until("the listener to close", Duration::from_secs(5), || async {
        TcpStream::connect(server.addr).is_err()
    })
    .await;
    // ...and the in-flight request still completes.
    slow.write_all(&body[10..]).unwrap();
    slow.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut answer = String::new();
    let _ = slow.read_to_string(&mut answer);
    assert!(
        answer.starts_with("HTTP/1.1 204"),
        "in-flight request answered: {answer:?}"
    );
    assert!(
        answer.to_ascii_lowercase().contains("connection: close"),
        "{answer}"
    );

    let status = server.wait_exit(Duration::from_secs(10));
    assert!(status.success(), "exit status {status}");

    // The write was acknowledged, so it is there on the next start.
    let mut again = start(&dir.path().join("drain.db"), &[]);
    let r = client
        .get(format!("http://{}/hello/slow", again.addr))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    again.child.kill().unwrap();
    again.child.wait().unwrap();
}

/// Sends one PUT and returns its status.
async fn put(client: &reqwest::Client, base: &str, user: &str, dob: &str) -> u16 {
    client
        .put(format!("{base}/hello/{user}"))
        .header("content-type", "application/json")
        .body(format!(r#"{{"dateOfBirth":"{dob}"}}"#))
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

/// kill -9 (above) only proves a write survives the process; power loss
/// also takes the page cache, so a 204 must wait for an fsync of the WAL.
/// The real binary runs under strace: between two acknowledged PUTs (sent
/// one after the other, so each is its own commit) there must be a
/// completed fsync or fdatasync of the `-wal` file, before the 204 is
/// written to the socket. With `synchronous=OFF` or `NORMAL` SQLite does
/// not sync the WAL at commit and this fails.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_acknowledged_put_is_fsynced_before_its_204() {
    let dir = tempfile::tempdir().unwrap();
    let trace = dir.path().join("strace.txt");
    let mut strace = Command::new("strace");
    strace
        .args(["-f", "-qq", "-e", "signal=none", "-y", "-s", "24"])
        .args(["-e", "trace=fsync,fdatasync,write,writev,sendto,sendmsg"])
        .arg("-o")
        .arg(&trace)
        .arg(env!("CARGO_BIN_EXE_hello-birthday"));
    let mut server = start_cmd(
        strace,
        &dir.path().join("sync.db"),
        &[("DRAIN_SECONDS", "0")],
    );
    assert_ne!(
        server.pid,
        server.child.id(),
        "the service runs under strace"
    );
    let base = format!("http://{}", server.addr);
    let client = reqwest::Client::new();

    const PUTS: usize = 20;
    for i in 0..=PUTS {
        let status = put(
            &client,
            &base,
            &format!("sync{}", letters(i as u32)),
            "1990-05-17",
        )
        .await;
        assert_eq!(status, 204);
    }
    server.signal(libc::SIGTERM);
    let status = server.wait_exit(Duration::from_secs(20));
    assert!(status.success(), "exit status {status}");

    // In strace's order: a sync counts once it has returned 0 (its own line
    // or its `resumed` line); an answer counts when its write starts.
    let text = std::fs::read_to_string(&trace).unwrap();
    let mut syncs_since_ack = 0;
    let mut acks = Vec::new();
    let mut pending_wal_sync = std::collections::HashSet::new();
    for line in text.lines() {
        let tid = line.split_whitespace().next().unwrap_or("");
        let is_sync = line.contains("fsync(") || line.contains("fdatasync(");
        if is_sync && line.contains("-wal>") {
            if line.ends_with("<unfinished ...>") {
                pending_wal_sync.insert(tid.to_owned());
            } else if line.ends_with("= 0") {
                syncs_since_ack += 1;
            }
        } else if line.contains("sync resumed>") && pending_wal_sync.remove(tid) {
            if line.ends_with("= 0") {
                syncs_since_ack += 1;
            }
        } else if line.contains("HTTP/1.1 204") {
            acks.push(syncs_since_ack);
            syncs_since_ack = 0;
        }
    }
    assert_eq!(acks.len(), PUTS + 1, "one 204 per PUT in the trace");
    // The first PUT is a warm-up: syncs at start-up come before it.
    let unsynced: Vec<usize> = (1..acks.len()).filter(|&i| acks[i] == 0).collect();
    assert!(
        unsynced.is_empty(),
        "204s written with no fsync of the WAL since the previous one: PUTs {unsynced:?} of {PUTS} \
         (syncs before each: {acks:?})"
    );
    eprintln!(
        "{PUTS} sequential PUTs, WAL syncs before each 204: {:?}",
        &acks[1..]
    );
}

/// Ctrl-C in a terminal: the first SIGINT drains (and says a second one
/// exits at once), the second exits at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_sigint_exits_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = start(&dir.path().join("int.db"), &[("DRAIN_SECONDS", "60")]);
    server.signal(libc::SIGINT);
    let deadline = Duration::from_secs(10);
    wait_until("the first SIGINT's log line", deadline, || async {
        server.logged(|v| {
            v["message"]
                .as_str()
                .is_some_and(|m| m.contains("SIGINT") && m.contains("again"))
        })
    })
    .await;
    let client = reqwest::Client::new();
    let ready = client
        .get(format!("http://{}/readyz", server.addr))
        .send()
        .await
        .unwrap();
    assert_eq!(ready.status(), 503, "draining after the first SIGINT");

    let second = Instant::now();
    server.signal(libc::SIGINT);
    // Far inside the 60 s drain: the drain did not end it.
    let status = server.wait_exit(deadline);
    assert_eq!(status.code(), Some(130), "exit status {status}");
    eprintln!("exited {:?} after the second SIGINT", second.elapsed());
}

/// `deploy/local/stack.sh down` sends SIGTERM twice: the second must not cut
/// the drain short.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_sigterm_keeps_draining() {
    let dir = tempfile::tempdir().unwrap();
    let drain = Duration::from_secs(2);
    let mut server = start(&dir.path().join("term.db"), &[("DRAIN_SECONDS", "2")]);
    let first = Instant::now();
    server.signal(libc::SIGTERM);
    wait_until("the SIGTERM log line", Duration::from_secs(10), || async {
        server.logged(|v| v["message"].as_str().is_some_and(|m| m.contains("SIGTERM")))
    })
    .await;
    server.signal(libc::SIGTERM);
    let status = server.wait_exit(Duration::from_secs(20));
    assert!(status.success(), "exit status {status}");
    assert!(
        first.elapsed() >= drain,
        "exited {:?} after the first SIGTERM, before the {drain:?} drain ended",
        first.elapsed()
    );
    wait_until("the stopped log line", Duration::from_secs(5), || async {
        server.logged(|v| v["message"] == "stopped")
    })
    .await;
}
