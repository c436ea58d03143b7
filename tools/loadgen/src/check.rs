//! `--check`: no load. Reads back the users that earlier runs acknowledged
//! (their `--writes` files) from another service, such as one started on a
//! restored backup or after a failover, and checks each answer three ways:
//! the greeting against this crate's own calendar, the body against a
//! reference service (`--reference`), and the date in the database rows
//! (`--db-rows`).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use hyper::Method;

use super::{Args, Target, Worker, calendar};
use calendar::Date;

/// `{user: date}` of every write answered 2xx (before `--acked-before`).
fn expected(args: &Args) -> Result<BTreeMap<String, Date>, String> {
    let mut want = BTreeMap::new();
    for path in &args.check {
        let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
        for (n, line) in text
            .lines()
            .enumerate()
            .filter(|(_, l)| !l.trim().is_empty())
        {
            let bad = || format!("{}:{}: not a --writes line", path.display(), n + 1);
            let v: serde_json::Value = serde_json::from_str(line).map_err(|_| bad())?;
            let status = v["status"].as_u64().ok_or_else(bad)?;
            let t_end = v["t_end"].as_f64().ok_or_else(bad)?;
            let user = v["user"].as_str().ok_or_else(bad)?;
            let dob = v["dob"].as_str().and_then(Date::parse).ok_or_else(bad)?;
            if (200..300).contains(&status) && args.acked_before.is_none_or(|t| t_end < t) {
                want.insert(user.to_owned(), dob);
            }
        }
    }
    Ok(want)
}

fn read_rows(path: &std::path::Path) -> Result<BTreeMap<String, String>, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    Ok(text
        .lines()
        .filter_map(|l| l.trim().split_once('|'))
        .map(|(u, d)| (u.to_owned(), d.to_owned()))
        .collect())
}

fn client(args: &Arc<Args>, target: Arc<Target>, id: usize) -> Worker {
    Worker {
        id,
        target,
        args: args.clone(),
        prefix: String::new(),
        users: Vec::new(),
        next_put: 0,
        conn: None,
        rng: 1,
        records: Vec::new(),
        reconnects: 0,
        unknown_server: Arc::from("-"),
    }
}

/// GET with up to three tries when no answer came: this checks data, not
/// availability.
async fn get(w: &mut Worker, path: &str) -> (u16, bytes::Bytes) {
    let mut out = w.send(Method::GET, path, None).await;
    for attempt in 1..3 {
        if out.status != 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100 * attempt)).await;
        out = w.send(Method::GET, path, None).await;
    }
    (out.status, out.body)
}

async fn check_users(
    mut main: Worker,
    mut reference: Option<Worker>,
    users: Vec<(String, Date)>,
) -> Vec<String> {
    let mut problems = Vec::new();
    for (user, dob) in users {
        let before = calendar::today_utc();
        let path = format!("/hello/{user}");
        let (status, body) = get(&mut main, &path).await;
        let after = calendar::today_utc();
        if status != 200 {
            problems.push(format!(
                "{user}: GET answered {status} {}",
                String::from_utf8_lossy(&body)
            ));
            continue;
        }
        let msg = serde_json::from_slice::<serde_json::Value>(&body)
            .ok()
            .and_then(|v| v["message"].as_str().map(str::to_owned))
            .unwrap_or_default();
        if ![before, after]
            .iter()
            .any(|t| calendar::greeting(&user, dob, *t) == msg)
        {
            problems.push(format!("{user}: {msg:?} is not the greeting for {dob}"));
            continue;
        }
        if let Some(r) = reference.as_mut() {
            let (rstatus, rbody) = get(r, &path).await;
            if (rstatus, &rbody) != (status, &body) {
                problems.push(format!(
                    "{user}: {} differs from the reference's {rstatus} {}",
                    String::from_utf8_lossy(&body),
                    String::from_utf8_lossy(&rbody)
                ));
            }
        }
    }
    problems
}

/// Runs the check; returns the exit code.
pub async fn run(args: Args, target: Arc<Target>) -> i32 {
    let want = match expected(&args) {
        Ok(w) if !w.is_empty() => w,
        Ok(_) => {
            eprintln!("loadgen: check: no acknowledged write to check");
            return 1;
        }
        Err(e) => {
            eprintln!("loadgen: check: {e}");
            return 2;
        }
    };
    let reference = match args.reference.as_deref().map(super::parse_target) {
        None => None,
        Some(Ok(t)) => Some(Arc::new(t)),
        Some(Err(e)) => {
            eprintln!("loadgen: --reference: {e}");
            return 2;
        }
    };
    let mut problems = Vec::new();
    if let Some(path) = &args.db_rows {
        match read_rows(path) {
            Ok(rows) => {
                for (user, dob) in &want {
                    let got = rows.get(user).map(String::as_str);
                    if got != Some(dob.to_string().as_str()) {
                        problems.push(format!("{user}: database has {got:?}, acknowledged {dob}"));
                    }
                }
            }
            Err(e) => {
                eprintln!("loadgen: --db-rows: {e}");
                return 2;
            }
        }
    }
    let args = Arc::new(args);
    let n = args.connections.clamp(1, want.len());
    let mut shares: Vec<Vec<(String, Date)>> = vec![Vec::new(); n];
    for (i, (user, dob)) in want.iter().enumerate() {
        shares[i % n].push((user.clone(), *dob));
    }
    let t0 = Instant::now();
    let mut handles = Vec::new();
    for (id, users) in shares.into_iter().enumerate() {
        let main = client(&args, target.clone(), id);
        let reference = reference.clone().map(|t| client(&args, t, id));
        handles.push(tokio::spawn(check_users(main, reference, users)));
    }
    for h in handles {
        problems.extend(h.await.expect("check worker"));
    }
    let what = format!(
        "{} users read back, greetings checked against the calendar{}{}",
        want.len(),
        if args.reference.is_some() {
            ", bodies equal to the reference"
        } else {
            ""
        },
        if args.db_rows.is_some() {
            ", database rows checked"
        } else {
            ""
        },
    );
    if problems.is_empty() {
        println!(
            "loadgen: check: PASS: {what} in {:.2} s",
            t0.elapsed().as_secs_f64()
        );
        0
    } else {
        for p in problems.iter().take(20) {
            eprintln!("loadgen: check:   {p}");
        }
        println!("loadgen: check: FAIL: {} problems; {what}", problems.len());
        1
    }
}
