//! `loadgen check`: no load. Reads back the users that earlier runs acknowledged
//! (their `--writes` files) from another service, such as one started on a
//! restored backup or after a failover, and checks each answer three ways:
//! the greeting against this crate's own calendar, the body against a
//! reference service (`--reference`), and the date in the database rows
//! (`--db-rows`).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use hyper::Method;

use crate::calendar::{self, Date};
use crate::cli::CheckArgs;
use crate::client::{Client, Target, parse_target};

/// Adds to `want` the `{user: date}` of every write in one `--writes` file
/// (`text`, named `name`) answered 2xx (before `acked_before`). A later line
/// for the same user wins.
fn expected_in(
    name: &str,
    text: &str,
    acked_before: Option<f64>,
    want: &mut BTreeMap<String, Date>,
) -> Result<(), String> {
    for (n, line) in text
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
    {
        let bad = || format!("{name}:{}: not a --writes line", n + 1);
        let v: serde_json::Value = serde_json::from_str(line).map_err(|_| bad())?;
        let status = v["status"].as_u64().ok_or_else(bad)?;
        let t_end = v["t_end"].as_f64().ok_or_else(bad)?;
        let user = v["user"].as_str().ok_or_else(bad)?;
        let dob = v["dob"].as_str().and_then(Date::parse).ok_or_else(bad)?;
        if (200..300).contains(&status) && acked_before.is_none_or(|t| t_end < t) {
            want.insert(user.to_owned(), dob);
        }
    }
    Ok(())
}

fn expected(args: &CheckArgs) -> Result<BTreeMap<String, Date>, String> {
    let mut want = BTreeMap::new();
    for path in &args.files {
        let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
        expected_in(
            &path.display().to_string(),
            &text,
            args.acked_before,
            &mut want,
        )?;
    }
    Ok(want)
}

/// `username|YYYY-MM-DD` lines (psql -At, sqlite3 default output).
fn parse_rows(text: &str) -> BTreeMap<String, String> {
    text.lines()
        .filter_map(|l| l.trim().split_once('|'))
        .map(|(u, d)| (u.to_owned(), d.to_owned()))
        .collect()
}

/// Every acknowledged user whose row is missing or holds another date.
fn row_problems(want: &BTreeMap<String, Date>, rows: &BTreeMap<String, String>) -> Vec<String> {
    want.iter()
        .filter_map(|(user, dob)| {
            let got = rows.get(user).map(String::as_str);
            (got != Some(dob.to_string().as_str()))
                .then(|| format!("{user}: database has {got:?}, acknowledged {dob}"))
        })
        .collect()
}

/// Is `msg` the greeting for `dob` on one of the days the answer may have
/// been computed on?
fn greeting_ok(user: &str, dob: Date, msg: &str, days: &[Date]) -> bool {
    days.iter()
        .any(|t| calendar::greeting(user, dob, *t) == msg)
}

/// GET with up to three tries when no answer came: this checks data, not
/// availability.
async fn get(w: &mut Client, path: &str) -> (u16, bytes::Bytes) {
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
    mut main: Client,
    mut reference: Option<Client>,
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
        if !greeting_ok(&user, dob, &msg, &[before, after]) {
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
pub async fn run(args: CheckArgs, target: Arc<Target>) -> i32 {
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
    let reference = match args.reference.as_deref().map(parse_target) {
        None => None,
        Some(Ok(t)) => Some(Arc::new(t)),
        Some(Err(e)) => {
            eprintln!("loadgen: --reference: {e}");
            return 2;
        }
    };
    let mut problems = Vec::new();
    if let Some(path) = &args.db_rows {
        match std::fs::read_to_string(path) {
            Ok(text) => problems.extend(row_problems(&want, &parse_rows(&text))),
            Err(e) => {
                eprintln!("loadgen: --db-rows: {}: {e}", path.display());
                return 2;
            }
        }
    }
    let n = args.client.connections.clamp(1, want.len());
    let mut shares: Vec<Vec<(String, Date)>> = vec![Vec::new(); n];
    for (i, (user, dob)) in want.iter().enumerate() {
        shares[i % n].push((user.clone(), *dob));
    }
    let t0 = Instant::now();
    let mut handles = Vec::new();
    for users in shares {
        let main = args.client.client(target.clone());
        let reference = reference.clone().map(|t| args.client.client(t));
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_acknowledged_writes_before_the_cut_are_expected() {
        let text = r#"{"user":"a","dob":"1990-01-02","t_start":1,"t_end":10.0,"status":204}
{"user":"b","dob":"1990-01-03","t_start":1,"t_end":11.0,"status":0}

{"user":"c","dob":"2000-02-29","t_start":1,"t_end":19.9,"status":204}
{"user":"d","dob":"1990-01-05","t_start":1,"t_end":20.0,"status":204}
{"user":"e","dob":"1990-01-06","t_start":1,"t_end":12.0,"status":503}
"#;
        let mut want = BTreeMap::new();
        expected_in("w", text, Some(20.0), &mut want).unwrap();
        assert_eq!(
            want.into_iter().collect::<Vec<_>>(),
            [
                ("a".into(), Date::new(1990, 1, 2)),
                ("c".into(), Date::new(2000, 2, 29))
            ]
        );
        let mut all = BTreeMap::new();
        expected_in("w", text, None, &mut all).unwrap();
        assert_eq!(all.len(), 3);
    }

    #[test]
    fn a_bad_line_names_its_file_and_line() {
        let mut want = BTreeMap::new();
        let bad = "{\"user\":\"a\",\"dob\":\"1990-01-02\",\"t_end\":1,\"status\":204}\n{\"user\":\"a\",\"dob\":\"1990-02-30\",\"t_end\":1,\"status\":204}\n";
        assert_eq!(
            expected_in("f.jsonl", bad, None, &mut want).unwrap_err(),
            "f.jsonl:2: not a --writes line"
        );
        assert!(expected_in("f", "not json\n", None, &mut want).is_err());
    }

    #[test]
    fn rows_must_hold_every_acknowledged_date() {
        let want = BTreeMap::from([
            ("a".to_string(), Date::new(1990, 1, 2)),
            ("b".to_string(), Date::new(1990, 1, 3)),
            ("c".to_string(), Date::new(1990, 1, 4)),
        ]);
        let rows = parse_rows("a|1990-01-02\n b|1990-01-09 \nno separator\nz|2000-01-01\n");
        assert_eq!(rows.len(), 3);
        assert_eq!(
            row_problems(&want, &rows),
            [
                "b: database has Some(\"1990-01-09\"), acknowledged 1990-01-03",
                "c: database has None, acknowledged 1990-01-04",
            ]
        );
        assert!(
            row_problems(
                &want,
                &parse_rows("a|1990-01-02\nb|1990-01-03\nc|1990-01-04")
            )
            .is_empty()
        );
    }

    #[test]
    fn a_greeting_is_checked_with_the_calendar() {
        let dob = Date::new(2000, 2, 29);
        let today = Date::new(2027, 2, 28);
        let msg = calendar::greeting("ann", dob, today);
        assert!(greeting_ok("ann", dob, &msg, &[today]));
        assert!(!greeting_ok("ann", Date::new(2000, 3, 1), &msg, &[today]));
        assert!(!greeting_ok("bob", dob, &msg, &[today]));
    }
}
