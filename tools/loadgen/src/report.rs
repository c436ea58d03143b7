//! What a run's records add up to: the figures, the JSON summary, the CSV,
//! the `--writes` record, the `--status` file, and the verdict.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use crate::calendar::Date;
use crate::cli::RunArgs;
use crate::client::Failure;
use crate::verify::VerifyResult;

/// One load request, as written to the CSV.
#[derive(Clone, Debug)]
pub struct Record {
    pub start_unix: f64,
    pub latency: Duration,
    pub method: &'static str,
    pub status: u16,
    pub server: Arc<str>,
    pub failure: Option<Failure>,
    /// For a PUT: the user and the date sent (for --writes).
    pub write: Option<(String, Date)>,
}

/// Everything the workers bring back besides their records.
#[derive(Default, Debug)]
pub struct Totals {
    pub reconnects: u64,
    pub cleanup_left: u64,
    pub verify: VerifyResult,
}

/// The figures of one run.
#[derive(Debug)]
pub struct Report {
    pub requests: u64,
    pub failures: u64,
    pub mismatches: u64,
    pub by_kind: BTreeMap<&'static str, u64>,
    pub by_status: BTreeMap<u16, u64>,
    /// Server name: (requests, failures).
    pub by_server: BTreeMap<String, (u64, u64)>,
    pub by_method: BTreeMap<&'static str, u64>,
    pub first_failure: Option<f64>,
    pub last_failure: Option<f64>,
    pub started_unix: Option<f64>,
    pub end_unix: f64,
    pub load_seconds: f64,
    pub rate: f64,
    pub min_per_second: u64,
    /// Latencies of the requests that did not fail, sorted.
    pub latencies: Vec<Duration>,
    pub puts_acked: u64,
}

/// Adds up `records`, which must be sorted by start time; `started_unix` is
/// when the load began (the end when nothing was sent).
pub fn summarise(records: &[Record], started_unix: f64) -> Report {
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
    let mut rep = Report {
        requests,
        failures: 0,
        mismatches: 0,
        by_kind: BTreeMap::new(),
        by_status: BTreeMap::new(),
        by_server: BTreeMap::new(),
        by_method: BTreeMap::new(),
        first_failure: None,
        last_failure: None,
        started_unix: records.first().map(|r| r.start_unix),
        end_unix,
        load_seconds,
        rate: requests as f64 / load_seconds,
        min_per_second: 0,
        latencies: Vec::with_capacity(records.len()),
        puts_acked: 0,
    };
    let mut per_second: BTreeMap<i64, u64> = BTreeMap::new();
    for r in records {
        *rep.by_status.entry(r.status).or_default() += 1;
        *rep.by_method.entry(r.method).or_default() += 1;
        let e = rep.by_server.entry(r.server.to_string()).or_default();
        e.0 += 1;
        if let Some(f) = r.failure {
            e.1 += 1;
            *rep.by_kind.entry(f.as_str()).or_default() += 1;
            if f == Failure::Mismatch {
                rep.mismatches += 1;
            } else {
                rep.failures += 1;
            }
            rep.first_failure.get_or_insert(r.start_unix);
            rep.last_failure = Some(r.start_unix);
        } else {
            rep.latencies.push(r.latency);
            if r.method == "PUT" {
                rep.puts_acked += 1;
            }
        }
        if let Some(f) = records.first() {
            *per_second
                .entry((r.start_unix - f.start_unix) as i64)
                .or_default() += 1;
        }
    }
    rep.latencies.sort();
    // The last second is usually partial: leave it out of the minimum.
    let full_seconds = load_seconds.floor() as i64;
    rep.min_per_second = (0..full_seconds)
        .map(|s| per_second.get(&s).copied().unwrap_or(0))
        .min()
        .unwrap_or(0);
    rep
}

/// The `p`th percentile of sorted latencies, in milliseconds (0 if none).
pub fn percentile(sorted: &[Duration], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let idx = ((p / 100.0) * (sorted.len() - 1) as f64).round() as usize;
    sorted[idx.min(sorted.len() - 1)].as_secs_f64() * 1000.0
}

impl Report {
    fn p(&self, p: f64) -> f64 {
        percentile(&self.latencies, p)
    }

    pub fn json(&self, args: &RunArgs, t: &Totals) -> serde_json::Value {
        serde_json::json!({
            "url": args.client.url.join(" "),
            "connections": args.client.connections,
            "target_rate": args.rate,
            "requests": self.requests,
            "ok": self.requests - self.failures - self.mismatches,
            "failures": self.failures,
            "mismatches": self.mismatches,
            "failures_by_kind": self.by_kind,
            "by_status": self.by_status.iter().map(|(k, v)| (k.to_string(), *v)).collect::<BTreeMap<_, _>>(),
            "by_method": self.by_method,
            "by_server": self.by_server.iter().map(|(k, (n, f))| (k.clone(), serde_json::json!({"requests": n, "failures": f}))).collect::<BTreeMap<_, _>>(),
            "first_failure_unix": self.first_failure,
            "last_failure_unix": self.last_failure,
            "started_unix": self.started_unix,
            "ended_unix": self.end_unix,
            "duration_s": self.load_seconds,
            "rate": self.rate,
            "min_requests_in_a_second": self.min_per_second,
            "latency_ms": {
                "p50": self.p(50.0),
                "p90": self.p(90.0),
                "p99": self.p(99.0),
                "max": self.p(100.0),
            },
            "reconnects": t.reconnects,
            "cleanup": {"enabled": args.cleanup, "left": t.cleanup_left},
            "puts_acked": self.puts_acked,
            "verify": {
                "enabled": !args.no_verify,
                "users_checked": t.verify.users_checked,
                "verified": t.verify.verified,
                "lost": t.verify.lost,
                "errors": t.verify.errors,
                "examples": t.verify.examples,
            },
        })
    }

    /// The human-readable lines, verdict excluded.
    pub fn lines(&self, args: &RunArgs, t: &Totals) -> Vec<String> {
        let mut out = vec![
            format!(
                "loadgen: {} requests in {:.1}s ({:.0} req/s, lowest second {}), \
                 {} failures {:?}, {} wrong values, p50 {:.1} ms p99 {:.1} ms max {:.1} ms",
                self.requests,
                self.load_seconds,
                self.rate,
                self.min_per_second,
                self.failures,
                self.by_kind,
                self.mismatches,
                self.p(50.0),
                self.p(99.0),
                self.p(100.0)
            ),
            format!(
                "loadgen: by server {:?}",
                self.by_server
                    .iter()
                    .map(|(k, (n, _))| format!("{k}={n}"))
                    .collect::<Vec<_>>()
            ),
            format!(
                "loadgen: by status {:?}",
                self.by_status
                    .iter()
                    .map(|(k, n)| format!("{k}={n}"))
                    .collect::<Vec<_>>()
            ),
        ];
        if !args.no_verify {
            let v = &t.verify;
            out.push(format!(
                "loadgen: {} acknowledged PUTs over {} users: {} read back intact, {} lost, {} unreadable",
                self.puts_acked, v.users_checked, v.verified, v.lost, v.errors
            ));
            out.extend(v.examples.iter().map(|e| format!("loadgen:   lost: {e}")));
        }
        if args.cleanup {
            out.push(format!(
                "loadgen: cleanup: {} users could not be deleted",
                t.cleanup_left
            ));
        }
        out
    }

    /// Why the run fails; empty when it passes.
    pub fn problems(&self, args: &RunArgs, t: &Totals) -> Vec<String> {
        let mut problems = Vec::new();
        if self.failures > args.max_failures {
            problems.push(format!(
                "{} failed requests (allowed {})",
                self.failures, args.max_failures
            ));
        }
        if self.mismatches > 0 {
            problems.push(format!(
                "{} GETs answered a value that was not written",
                self.mismatches
            ));
        }
        if t.verify.lost > 0 || t.verify.errors > 0 {
            problems.push(format!(
                "{} lost writes, {} unreadable users",
                t.verify.lost, t.verify.errors
            ));
        }
        if self.rate < args.min_rate {
            problems.push(format!(
                "achieved {:.0} req/s, below --min-rate {}",
                self.rate, args.min_rate
            ));
        }
        if args.cleanup && t.cleanup_left > 0 {
            problems.push(format!("{} users left behind", t.cleanup_left));
        }
        problems
    }
}

/// One CSV row per request (deploy/local/timeline.py reads it).
pub fn csv(records: &[Record]) -> String {
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
    out
}

/// One JSON line per PUT, in the order they were sent (`loadgen check`
/// and scripts/restore.sh read it).
pub fn writes(records: &[Record]) -> String {
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
    out
}

/// The `--status` body: counts so far and the Unix seconds of the last
/// answer of each kind.
pub fn status(completed: u64, failed: u64, last_ok_us: u64, last_err_us: u64) -> String {
    let body = serde_json::json!({
        "ok": completed - failed.min(completed),
        "err": failed,
        "last_ok": last_ok_us as f64 / 1e6,
        "last_err": last_err_us as f64 / 1e6,
    });
    format!("{body}\n")
}

/// Replaces `path` atomically, so a reader never sees half a file.
pub fn replace_file(path: &Path, body: &str) {
    let tmp = path.with_extension("tmp");
    if std::fs::write(&tmp, body).is_ok() {
        let _ = std::fs::rename(&tmp, path);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    fn rec(
        start: f64,
        ms: u64,
        method: &'static str,
        status: u16,
        failure: Option<Failure>,
    ) -> Record {
        Record {
            start_unix: start,
            latency: Duration::from_millis(ms),
            method,
            status,
            server: Arc::from(if status == 0 { "-" } else { "a,b" }),
            failure,
            write: (method == "PUT").then(|| ("ann".to_string(), Date::new(2000, 2, 29))),
        }
    }

    fn args(extra: &[&str]) -> RunArgs {
        let mut v = vec!["loadgen", "run", "--url", "http://127.0.0.1:1"];
        v.extend_from_slice(extra);
        match crate::cli::Cli::parse_from(v).command {
            crate::cli::Command::Run(r) => r,
            _ => unreachable!(),
        }
    }

    /// Three seconds of load: 2 requests in second 0, none in second 1,
    /// 2 in second 2, one failure, one mismatch.
    fn sample() -> Vec<Record> {
        vec![
            rec(100.0, 10, "PUT", 204, None),
            rec(100.5, 20, "GET", 200, None),
            rec(102.0, 30, "PUT", 0, Some(Failure::Connect)),
            rec(102.5, 40, "GET", 200, Some(Failure::Mismatch)),
            rec(102.9, 100, "GET", 200, None),
        ]
    }

    #[test]
    fn figures_add_up() {
        let r = summarise(&sample(), 99.0);
        assert_eq!(
            (r.requests, r.failures, r.mismatches, r.puts_acked),
            (5, 1, 1, 1)
        );
        assert_eq!(
            (r.first_failure, r.last_failure),
            (Some(102.0), Some(102.5))
        );
        assert_eq!(r.by_kind, BTreeMap::from([("connect", 1), ("mismatch", 1)]));
        assert_eq!(r.by_server["a,b"], (4, 1));
        assert_eq!(r.by_server["-"], (1, 1));
        assert!((r.load_seconds - 3.0).abs() < 1e-9, "{}", r.load_seconds);
        assert!((r.rate - 5.0 / 3.0).abs() < 1e-9);
        // Second 1 had no request: a stall shows as a zero.
        assert_eq!(r.min_per_second, 0);
        assert_eq!(r.latencies.len(), 3);
        assert_eq!(percentile(&r.latencies, 50.0), 20.0);
        assert_eq!(percentile(&r.latencies, 100.0), 100.0);
        assert_eq!(percentile(&[], 99.0), 0.0);
    }

    #[test]
    fn an_empty_run_has_no_rate() {
        let r = summarise(&[], 50.0);
        assert_eq!((r.requests, r.rate, r.min_per_second), (0, 0.0, 0));
        assert_eq!(r.end_unix, 50.0);
    }

    #[test]
    fn the_verdict_names_every_problem() {
        let r = summarise(&sample(), 99.0);
        let mut t = Totals::default();
        let p = r.problems(&args(&[]), &t);
        assert_eq!(p.len(), 1 + 1, "{p:?}"); // one failure over 0, one mismatch
        assert!(p[0].starts_with("1 failed requests (allowed 0)"));
        assert!(p[1].starts_with("1 GETs answered"));
        t.verify.lost = 2;
        t.cleanup_left = 3;
        let p = r.problems(
            &args(&["--max-failures", "1", "--min-rate", "2", "--cleanup"]),
            &t,
        );
        assert_eq!(
            p,
            [
                "1 GETs answered a value that was not written",
                "2 lost writes, 0 unreadable users",
                "achieved 2 req/s, below --min-rate 2",
                "3 users left behind",
            ]
        );
        let good = summarise(&sample()[..2], 99.0);
        assert!(good.problems(&args(&[]), &Totals::default()).is_empty());
    }

    #[test]
    fn summary_and_lines_carry_the_figures() {
        let r = summarise(&sample(), 99.0);
        let t = Totals::default();
        let j = r.json(&args(&["--cleanup"]), &t);
        assert_eq!(j["ok"], 3);
        assert_eq!(j["by_status"]["204"], 1);
        assert_eq!(j["by_server"]["-"]["failures"], 1);
        assert_eq!(j["latency_ms"]["max"], 100.0);
        assert_eq!(j["cleanup"]["enabled"], true);
        let lines = r.lines(&args(&["--no-verify"]), &t);
        assert_eq!(lines.len(), 3);
        assert!(
            lines[0]
                .starts_with("loadgen: 5 requests in 3.0s (2 req/s, lowest second 0), 1 failures")
        );
        assert_eq!(
            lines[2],
            "loadgen: by status [\"0=1\", \"200=3\", \"204=1\"]"
        );
        assert_eq!(r.lines(&args(&[]), &t).len(), 4);
    }

    #[test]
    fn csv_and_writes_files() {
        let recs = sample();
        let text = csv(&recs);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(
            lines[0],
            "start_unix_s,latency_ms,method,status,server,error,kind"
        );
        assert_eq!(lines[1], "100.000000,10.000,PUT,204,a;b,0,");
        assert_eq!(lines[3], "102.000000,30.000,PUT,0,-,1,connect");
        let w: Vec<serde_json::Value> = writes(&recs)
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(w.len(), 2);
        assert_eq!(w[0]["dob"], "2000-02-29");
        assert_eq!(w[0]["t_end"], 100.01);
        assert_eq!(w[1]["status"], 0);
    }

    #[test]
    fn status_counts_never_go_negative() {
        let v: serde_json::Value = serde_json::from_str(&status(5, 7, 1_500_000, 0)).unwrap();
        assert_eq!((v["ok"].as_u64(), v["err"].as_u64()), (Some(0), Some(7)));
        assert_eq!(v["last_ok"], 1.5);
    }
}
