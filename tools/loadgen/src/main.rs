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
//! `loadgen run` holds `--connections` keep-alive HTTP/1.1 connections to
//! one or more loopback addresses (`--url`, repeatable; connection i goes to
//! URL i mod n) and sends GET and PUT requests on them at a fixed total
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
//! a JSON summary (`--summary`). The exit code is 1 when failures exceed
//! `--max-failures`, any write is lost, any GET answered a wrong value, or
//! the achieved rate is below `--min-rate`; 2 for a usage error or an output
//! that cannot be written.
//!
//! For the monitoring checks, `--invalid-ratio` mixes in requests whose answer
//! the contract fixes whatever is stored (404 for a user never written, 400
//! for an invalid username) and `--accept-status 503` lets a deliberate
//! database outage answer 503. For the drills, `--fresh-users` writes every
//! PUT to a new user and `--writes` logs each one with the time it was
//! acknowledged, so a backup or a failover can be judged against that time;
//! `loadgen check FILE...` (no load) later reads those users back from
//! another service (a restored one, a new primary) and compares them with
//! the calendar, a reference service and the database rows; without `--url`
//! it compares database rows alone with the record, as of a target time
//! (scripts/restore.sh --verify-writes after a point-in-time restore).
//!
//! Modules: `cli` (flags and their ranges), `client` (one connection),
//! `load` (the workers), `verify` (what each user may hold, the read-back),
//! `report` (figures, files, verdict), `check`, and `calendar` (the oracle).

use clap::Parser;

mod calendar;
mod check;
mod cli;
mod client;
mod load;
mod report;
mod verify;

use cli::{Cli, Command};

fn usage_error(msg: impl std::fmt::Display) -> ! {
    eprintln!("loadgen: {msg}");
    std::process::exit(2);
}

#[tokio::main]
async fn main() {
    let code = match Cli::parse().command {
        Command::Run(args) => {
            let targets = args.client.targets().unwrap_or_else(|e| usage_error(e));
            args.validate().unwrap_or_else(|e| usage_error(e));
            load::run(args, targets).await
        }
        Command::Check(args) => {
            args.validate().unwrap_or_else(|e| usage_error(e));
            if args.rows_only() {
                std::process::exit(check::run_rows(&args));
            }
            let targets = args.client.targets().unwrap_or_else(|e| usage_error(e));
            check::run(args, targets[0].clone()).await
        }
    };
    std::process::exit(code);
}
