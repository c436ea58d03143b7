#!/usr/bin/env bash
# Load benchmark: hello-birthday (SQLite, SQLite with many users, PostgreSQL)
# against a bare hyper ceiling and a Flask anchor, each server pinned to one
# core and wrk to another. Builds the binaries, then runs bench/bench.py.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
PY="$ROOT/.venv/bin/python"
# shellcheck source=scripts/lib/common.sh
. "$ROOT/scripts/lib/common.sh"

usage() {
  cat <<'USAGE'
Usage: bench/run.sh [--quick] [--profile release|debug] [options]

Builds hello-birthday and the ceiling server, starts each server (and a
throwaway PostgreSQL cluster) pinned to CPU 0, seeds users, and loads GET and
PUT phases with wrk pinned to CPU 1 (32 connections, warm-up then a measured
window, interleaved runs, medians). Prints req/s, p50, p99, max, errors,
server CPU time per request, ratios to the ceiling, peak RSS and time from
start to ready; writes bench/results/<timestamp>.json and .md, the chart
bench/results/latest.png, and the latest table into bench/README.md.

  --quick              seconds-long smoke for CI: 1 run of 1 s per phase,
                       100,000 users in the scale phase, debug build, results
                       in a temp dir; fails only if a phase saw an error or a
                       server failed to start or stop. No timing assertions.
  --profile P          cargo profile to build and run: release (default) or
                       debug (default with --quick)
  --runs N             interleaved runs per phase (5)
  --duration S         measured seconds per phase (10)
  --warmup S           warm-up seconds per phase (3)
  --connections N      wrk connections (32)
  --users N            seeded users (1000)
  --scale-users N      users in the scale phase (1000000)
  --targets LIST       comma list of ceiling,ceiling-sqlite,ceiling-postgres,
                       sqlite,sqlite-1m,postgres,flask (all by default)
  --server-cpu C       CPU list for the servers and PostgreSQL (0)
  --load-cpu C         CPU list for wrk (1)
  --out DIR            results directory (bench/results)
  --log-level L        service LOG_LEVEL (info)
  --request-log R      service REQUEST_LOG: errors (default), all (a line per
                       request) or off
  --traces             export OpenTelemetry traces from hello-birthday (every
                       request sampled, OTLP http/protobuf) to a sink the
                       benchmark runs on loopback; compare with a run without
  --nice N             niceness of the servers, PostgreSQL and wrk (0); a
                       negative value (root only) shields the figures from
                       other work on a shared machine
  --max-interference P re-measure a window in which other processes used
                       more than P% of a core (5; --quick: never)
  --retries N          extra attempts for such a window (3)
  --keep               keep the temp work directory (logs, databases)
  --no-readme          do not rewrite the table in bench/README.md
  --render FILE        only redraw the .md table, the chart and the README
                       table from an existing results JSON (no build, no load)
  -h, --help           this help

Environment: BENCH_TMPDIR (/var/tmp) parent of the work directory; it must be
disk-backed, since fsync on tmpfs is free and would flatter PUT.
USAGE
}

main() {
  # shellcheck disable=SC2034 # v: optarg checks a value that bench.py reads
  local quick=0 render=0 profile="" v targets="ceiling,ceiling-sqlite,ceiling-postgres,sqlite,sqlite-1m,postgres,flask" pass=()
  while [ $# -gt 0 ]; do
    case "$1" in
      -h|--help) usage; exit 0 ;;
      --quick) quick=1; pass+=("$1") ;;
      --profile) optarg profile "$@"; shift ;;
      --targets) optarg targets "$@"; pass+=("$1" "$2"); shift ;;
      --render) optarg v "$@"; render=1; pass+=("$1" "$2"); shift ;;
      # bench.py's own options, checked here so a typo fails before the build.
      --runs|--duration|--warmup|--connections|--users|--scale-users|--server-cpu|--load-cpu|\
      --out|--log-level|--request-log|--nice|--max-interference|--retries|--ready-deadline)
        optarg v "$@"; pass+=("$1" "$2"); shift ;;
      --keep|--no-readme|--traces) pass+=("$1") ;;
      *) usage_error "unknown option $1" ;;
    esac
    shift
  done
  if [ "$render" = 1 ]; then
    step "redrawing table, chart and README from ${pass[*]}"
    exec "$PY" "$ROOT/bench/bench.py" "${pass[@]}"
  fi
  # Quick mode checks plumbing, not speed: the debug build is the cheap one
  # after the test stage has compiled the dependencies.
  [ -n "$profile" ] || { [ "$quick" = 1 ] && profile=debug || profile=release; }
  case "$profile" in
    release) local cargo_profile=(--release) ;;
    debug) local cargo_profile=() ;;
    *) usage_error "--profile must be release or debug" ;;
  esac

  require cargo wrk taskset sqlite3 psql
  [ -x "$PY" ] || die "$PY not found (run scripts/setup.sh dev)"
  "$PY" -c 'import flask, matplotlib' 2>/dev/null || die "Flask or matplotlib missing in .venv (run scripts/setup.sh dev)"
  [ "$(nproc)" -ge 2 ] || echo "bench/run.sh: warning: fewer than 2 CPUs, server and wrk share one" >&2

  local bins=() pkgs=()
  if [[ ",$targets," == *,ceiling,* ]]; then pkgs+=(-p ceiling); bins+=(--bin ceiling); fi
  if [[ ",$targets," =~ ,ceiling-(sqlite|postgres), ]]; then
    pkgs+=(-p ceiling); bins+=(--bin ceiling-store)
  fi
  if [[ ",$targets," =~ ,(sqlite|sqlite-1m|postgres), ]]; then
    pkgs+=(-p hello-birthday); bins+=(--bin hello-birthday)
  fi
  if [ ${#bins[@]} -gt 0 ]; then
    step "cargo build ($profile): ${bins[*]}"
    (cd "$ROOT" && cargo build "${cargo_profile[@]}" "${pkgs[@]}" "${bins[@]}")
  fi

  step "running the benchmark"
  exec "$PY" "$ROOT/bench/bench.py" --bin-dir "$ROOT/target/$profile" --profile "$profile" \
    ${pass[@]+"${pass[@]}"}
}

main "$@"
