//! The real binary as an operator runs it: crash safety and graceful drain.

use crate::support::wait_until;
use hello_birthday::domain::{DateOfBirth, Username, greeting};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

struct Server {
    child: Child,
    addr: SocketAddr,
    metrics_addr: SocketAddr,
}

/// Starts the binary on free ports and waits for its `listening` log line.
fn start(db: &Path, extra: &[(&str, &str)]) -> Server {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_hello-birthday"));
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
    let mut child = cmd.spawn().expect("the binary starts");
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if let Ok(v) = serde_json::from_str::<serde_json::Value>(&line) {
                if v["message"] == "listening" {
                    let _ = tx.send((
                        v["addr"].as_str().unwrap().parse().unwrap(),
                        v["metrics_addr"].as_str().unwrap().parse().unwrap(),
                    ));
                }
            }
        }
    });
    let (addr, metrics_addr) = rx
        .recv_timeout(Duration::from_secs(20))
        .expect("a listening line within 20 s");
    Server {
        child,
        addr,
        metrics_addr,
    }
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
            .find(|l| l.starts_with(r#"http_requests_total{method="PUT""#) && l.contains("\"204\""))
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
            text.lines().any(|l| l == "http_requests_in_flight 1")
        },
    )
    .await;

    // SAFETY: sending a signal to our own child.
    unsafe { libc::kill(server.child.id() as i32, libc::SIGTERM) };
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

    let started = Instant::now();
    let status = loop {
        if let Some(s) = server.child.try_wait().unwrap() {
            break s;
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "process did not exit"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
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
