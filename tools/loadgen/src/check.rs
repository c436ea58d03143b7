//! `loadgen check`: no load. Reads back the users that earlier runs acknowledged
//! (their `--writes` files) from another service, such as one started on a
//! restored backup or after a failover, and checks each answer three ways:
//! the greeting against this crate's own calendar, the body against a
//! reference service (`--reference`), and the date in the database rows
//! (`--db-rows`).
//!
//! Without `--url` it reads no service: the rows alone (`--db-rows`) are
//! compared with the record, as `scripts/restore.sh --verify-writes` does
//! after a point-in-time restore. That comparison also judges writes against
//! a target time (`--acked-before`): acknowledged before it, a write must be
//! there with its date; sent after it, it must not be there; in flight, it
//! may be either. A row proves which write it came from only when each user
//! was written once, so a record that writes a user twice is refused.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use hyper::Method;
use serde_json::json;

use crate::calendar::{self, Date};
use crate::cli::CheckArgs;
use crate::client::{Client, Target, parse_target};

/// One line of a `run --writes` file.
#[derive(Clone, Debug, PartialEq)]
struct Write {
    user: String,
    dob: Date,
    /// Needed only to judge a write against a target time.
    t_start: Option<f64>,
    t_end: f64,
    /// 0: no answer.
    status: u64,
    /// `file:line`, for messages.
    at: String,
}

impl Write {
    fn acknowledged(&self) -> bool {
        (200..300).contains(&self.status)
    }
}

/// The writes of one `--writes` file (`text`, named `name`), in file order.
fn parse_writes(name: &str, text: &str) -> Result<Vec<Write>, String> {
    text.lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(n, line)| {
            let bad = || format!("{name}:{}: not a --writes line", n + 1);
            let v: serde_json::Value = serde_json::from_str(line).map_err(|_| bad())?;
            Ok(Write {
                user: v["user"].as_str().ok_or_else(bad)?.to_owned(),
                dob: v["dob"].as_str().and_then(Date::parse).ok_or_else(bad)?,
                t_start: v["t_start"].as_f64(),
                t_end: v["t_end"].as_f64().ok_or_else(bad)?,
                status: v["status"].as_u64().ok_or_else(bad)?,
                at: format!("{name}:{}", n + 1),
            })
        })
        .collect()
}

/// Adds to `want` the `{user: date}` of every write in one `--writes` file
/// (`text`, named `name`) answered 2xx (before `acked_before`). A later line
/// for the same user wins.
fn expected_in(
    name: &str,
    text: &str,
    acked_before: Option<f64>,
    want: &mut BTreeMap<String, Date>,
) -> Result<(), String> {
    for w in parse_writes(name, text)? {
        if w.acknowledged() && acked_before.is_none_or(|t| w.t_end < t) {
            want.insert(w.user, w.dob);
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

/// The record's writes must name each user once: with two writes of one
/// user a row cannot say which of them it holds (an older value would pass
/// for a lost update, a later write for one kept from before the target).
fn one_write_per_user(writes: &[Write]) -> Result<(), String> {
    let mut seen: HashMap<&str, &str> = HashMap::new();
    for w in writes {
        if let Some(first) = seen.insert(&w.user, &w.at) {
            return Err(format!(
                "the record writes user {} twice ({first} and {}): checking rows needs one \
                 write per user, as loadgen run --fresh-users records",
                w.user, w.at
            ));
        }
    }
    Ok(())
}

/// Unix seconds as `YYYY-MM-DDTHH:MM:SS.mmmZ`.
fn utc(t: f64) -> String {
    let ms = (t * 1000.0).round() as i64;
    let (days, ms) = (ms.div_euclid(86_400_000), ms.rem_euclid(86_400_000));
    format!(
        "{}T{:02}:{:02}:{:02}.{:03}Z",
        Date::from_days(days),
        ms / 3_600_000,
        ms / 60_000 % 60,
        ms / 1000 % 60,
        ms % 1000
    )
}

/// Compares the rows with a record of writes, each user written once, as of
/// `target` (Unix seconds; `None`: every write the record holds). Returns
/// the figures (the `--report` JSON) and the line that says them.
fn compare_rows(
    writes: &[Write],
    rows: &BTreeMap<String, String>,
    target: Option<f64>,
) -> Result<(serde_json::Value, String), String> {
    one_write_per_user(writes)?;
    let start = |w: &Write| {
        w.t_start
            .ok_or_else(|| format!("{}: no t_start, needed with a target time", w.at))
    };
    let acked: Vec<&Write> = writes.iter().filter(|w| w.acknowledged()).collect();
    let want: Vec<&Write> = acked
        .iter()
        .copied()
        .filter(|w| target.is_none_or(|t| w.t_end < t))
        .collect();
    let row = |w: &Write| rows.get(&w.user).map(String::as_str);
    let missing: Vec<&Write> = want.iter().copied().filter(|w| row(w).is_none()).collect();
    let wrong: Vec<&Write> = want
        .iter()
        .copied()
        .filter(|w| row(w).is_some_and(|d| d != w.dob.to_string()))
        .collect();
    let (mut after, mut in_flight) = (Vec::new(), Vec::new());
    if let Some(t) = target {
        for w in writes {
            let t_start = start(w)?;
            if t_start > t && row(w).is_some() {
                after.push(w);
            }
            if t_start <= t && w.t_end >= t {
                in_flight.push(w);
            }
        }
    }
    let kept = in_flight.iter().filter(|w| row(w).is_some()).count();
    let t_ends = |ws: &[&Write]| ws.iter().map(|w| w.t_end).collect::<Vec<_>>();
    let min = |v: &[f64]| v.iter().copied().reduce(f64::min);
    let max = |v: &[f64]| v.iter().copied().reduce(f64::max);
    let m = t_ends(&missing);
    let (first, last) = (min(&m), max(&m));
    let span = last.zip(first).map_or(0.0, |(l, f)| l - f);
    let present = want.len() - missing.len() - wrong.len();
    let users = |ws: &[&Write]| {
        ws.iter()
            .take(5)
            .map(|w| w.user.clone())
            .collect::<Vec<_>>()
    };
    let report = json!({
        "target_epoch": target,
        "writes": writes.len(),
        "acknowledged": acked.len(),
        "expected": want.len(),
        "present": present,
        "missing": missing.len(),
        "wrong": wrong.len(),
        "missing_first_t_end": first,
        "missing_last_t_end": last,
        "missing_span_seconds": span,
        "last_acknowledged_t_end": max(&t_ends(&acked)),
        "in_flight": in_flight.len(),
        "in_flight_present": kept,
        "after_target_present": after.len(),
        "examples_missing": users(&missing),
        "examples_wrong": wrong.iter().take(5)
            .map(|w| format!("{}: database has {}, acknowledged {}", w.user, row(w).unwrap_or_default(), w.dob))
            .collect::<Vec<_>>(),
        "examples_after": users(&after),
    });
    let mut line = format!(
        "{} writes acknowledged{} (of {} sent): {present} present, {} missing",
        want.len(),
        if target.is_some() {
            " before the target"
        } else {
            ""
        },
        writes.len(),
        missing.len()
    );
    if let (Some(f), Some(l)) = (first, last) {
        line += &format!(
            " (acknowledged between {} and {}, {span:.3} s; e.g. {})",
            utc(f),
            utc(l),
            users(&missing).join(" ")
        );
    }
    line += &format!(", {} with another value", wrong.len());
    if target.is_some() {
        line += &format!(
            "; in flight at the target: {} ({kept} kept); sent after the target yet present: {}",
            in_flight.len(),
            after.len()
        );
    }
    Ok((report, line))
}

/// The verdict on `compare_rows`'s figures, as examples (none: pass): a
/// wrong value or a write from after the target always fails; a missing
/// write fails unless `allow_missing` (a restore to the latest point, whose
/// loss is measured rather than refused).
fn rows_problems(report: &serde_json::Value, allow_missing: bool) -> Vec<String> {
    let list = |key: &str| {
        report[key]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|v| v.as_str().map(str::to_owned))
            .collect::<Vec<_>>()
    };
    let mut problems = list("examples_wrong");
    problems.extend(
        list("examples_after")
            .into_iter()
            .map(|u| format!("{u}: sent after the target, yet in the database")),
    );
    if !allow_missing {
        problems.extend(
            list("examples_missing")
                .into_iter()
                .map(|u| format!("{u}: acknowledged, not in the database")),
        );
    }
    // An example exists for every kind of problem counted.
    problems
}

/// `check --db-rows ROWS FILE...` without `--url`: the rows alone. Returns
/// the exit code: 0 pass, 1 the rows contradict the record (or the record
/// cannot be judged: a user written twice, no write at all), 2 unreadable
/// input or an unwritable report.
pub fn run_rows(args: &CheckArgs) -> i32 {
    let mut writes = Vec::new();
    for path in &args.files {
        let text = match std::fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) => {
                eprintln!("loadgen: check: {}: {e}", path.display());
                return 2;
            }
        };
        match parse_writes(&path.display().to_string(), &text) {
            Ok(w) => writes.extend(w),
            Err(e) => {
                eprintln!("loadgen: check: {e}");
                return 2;
            }
        }
    }
    if writes.is_empty() {
        eprintln!("loadgen: check: the record holds no write");
        return 1;
    }
    let Some(rows_path) = &args.db_rows else {
        eprintln!("loadgen: check: --db-rows is required without --url");
        return 2;
    };
    let rows = match std::fs::read_to_string(rows_path) {
        Ok(text) => parse_rows(&text),
        Err(e) => {
            eprintln!("loadgen: --db-rows: {}: {e}", rows_path.display());
            return 2;
        }
    };
    let (report, line) = match compare_rows(&writes, &rows, args.acked_before) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("loadgen: check: REFUSED: {e}");
            return 1;
        }
    };
    if let Some(path) = &args.report
        && let Err(e) = std::fs::write(path, format!("{report}\n"))
    {
        eprintln!("loadgen: --report: {}: {e}", path.display());
        return 2;
    }
    let problems = rows_problems(&report, args.allow_missing);
    for p in &problems {
        eprintln!("loadgen: check:   {p}");
    }
    let verdict = if problems.is_empty() { "PASS" } else { "FAIL" };
    println!("loadgen: check: {verdict}: database rows: {line}");
    i32::from(!problems.is_empty())
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

    /// A record line: acknowledged when `status` is 2xx.
    fn w(user: &str, dob: &str, t_start: f64, t_end: f64, status: u16) -> String {
        format!(
            r#"{{"user":"{user}","dob":"{dob}","t_start":{t_start},"t_end":{t_end},"status":{status}}}"#
        )
    }

    fn writes(lines: &[String]) -> Vec<Write> {
        parse_writes("w.jsonl", &lines.join("\n")).unwrap()
    }

    #[test]
    fn rows_alone_are_judged_against_a_target_time() {
        let record = writes(&[
            w("a", "1990-01-02", 1.0, 2.0, 204),   // before: present
            w("b", "1990-01-03", 3.0, 4.0, 204),   // before: missing
            w("c", "2000-02-29", 5.0, 6.0, 204),   // before: another value
            w("d", "1990-01-05", 9.0, 11.0, 204),  // in flight, kept
            w("e", "1990-01-06", 9.5, 10.5, 0),    // in flight, no answer, absent
            w("f", "1990-01-07", 12.0, 13.0, 204), // after: present (wrong)
            w("g", "1990-01-08", 14.0, 15.0, 204), // after: absent (right)
            w("h", "1990-01-09", 2.0, 3.0, 503),   // refused: not expected
        ]);
        let rows = parse_rows("a|1990-01-02\nc|2000-03-01\nd|1990-01-05\nf|1990-01-07\n");
        let (r, line) = compare_rows(&record, &rows, Some(10.0)).unwrap();
        let n = |k: &str| r[k].as_u64().unwrap();
        assert_eq!(
            [
                "writes",
                "acknowledged",
                "expected",
                "present",
                "missing",
                "wrong"
            ]
            .map(n),
            [8, 6, 3, 1, 1, 1]
        );
        assert_eq!(
            ["in_flight", "in_flight_present", "after_target_present"].map(n),
            [2, 1, 1]
        );
        assert_eq!(r["target_epoch"], 10.0);
        assert_eq!(r["missing_first_t_end"], 4.0);
        assert_eq!(r["last_acknowledged_t_end"], 15.0);
        assert_eq!(r["examples_missing"], json!(["b"]));
        assert_eq!(r["examples_after"], json!(["f"]));
        assert_eq!(
            r["examples_wrong"],
            json!(["c: database has 2000-03-01, acknowledged 2000-02-29"])
        );
        assert!(line.starts_with("3 writes acknowledged before the target (of 8 sent): 1 present, 1 missing (acknowledged between 1970-01-01T00:00:04.000Z"), "{line}");
        assert!(
            line.ends_with(
                "in flight at the target: 2 (1 kept); sent after the target yet present: 1"
            ),
            "{line}"
        );
        // The wrong value and the write from after the target fail even when
        // missing writes are allowed.
        assert_eq!(rows_problems(&r, true).len(), 2);
        assert_eq!(rows_problems(&r, false).len(), 3);
    }

    #[test]
    fn without_a_target_every_acknowledged_write_is_expected() {
        let record = writes(&[
            w("a", "1990-01-02", 1.0, 2.0, 204),
            w("b", "1990-01-03", 3.0, 7.5, 204),
            w("c", "1990-01-04", 4.0, 5.0, 204),
            w("d", "1990-01-05", 4.0, 9.0, 0),
        ]);
        let rows = parse_rows("a|1990-01-02\nd|1990-01-05\n");
        let (r, line) = compare_rows(&record, &rows, None).unwrap();
        assert_eq!(
            (r["expected"].as_u64(), r["missing"].as_u64()),
            (Some(3), Some(2))
        );
        assert_eq!(r["missing_span_seconds"], 2.5);
        assert_eq!(r["target_epoch"], serde_json::Value::Null);
        assert!(!line.contains("in flight"), "{line}");
        // The loss of a restore to the latest point is measured, not refused.
        assert!(rows_problems(&r, true).is_empty());
        assert_eq!(
            rows_problems(&r, false),
            [
                "b: acknowledged, not in the database",
                "c: acknowledged, not in the database"
            ]
        );
        let all = parse_rows("a|1990-01-02\nb|1990-01-03\nc|1990-01-04\n");
        let (r, _) = compare_rows(&record, &all, None).unwrap();
        assert_eq!(r["present"], 3);
        assert!(rows_problems(&r, false).is_empty());
        assert_eq!(r["missing_first_t_end"], serde_json::Value::Null);
    }

    #[test]
    fn a_record_that_writes_a_user_twice_is_refused() {
        // Were the second write of "a" lost, the row of the first would read
        // as present: the record cannot be judged.
        let record = writes(&[
            w("a", "1990-01-02", 1.0, 2.0, 204),
            w("b", "1990-01-03", 1.0, 2.0, 204),
            w("a", "1990-01-04", 3.0, 4.0, 204),
        ]);
        let err = compare_rows(&record, &parse_rows("a|1990-01-02\n"), None).unwrap_err();
        assert!(
            err.contains("writes user a twice (w.jsonl:1 and w.jsonl:3)"),
            "{err}"
        );
        // A target time needs each write's start.
        let no_start = parse_writes(
            "x",
            r#"{"user":"a","dob":"1990-01-02","t_end":2,"status":204}"#,
        )
        .unwrap();
        assert!(compare_rows(&no_start, &BTreeMap::new(), None).is_ok());
        assert!(
            compare_rows(&no_start, &BTreeMap::new(), Some(1.0))
                .unwrap_err()
                .contains("no t_start")
        );
    }

    #[test]
    fn times_print_in_utc() {
        assert_eq!(utc(0.0), "1970-01-01T00:00:00.000Z");
        assert_eq!(utc(1_796_650_245.123_4), "2026-12-07T13:30:45.123Z");
    }
}
