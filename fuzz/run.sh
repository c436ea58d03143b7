#!/usr/bin/env bash
# Runs each libFuzzer target for a bounded time, starting from the seed corpus
# in fuzz/corpus/TARGET, and prints the executions per target.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=scripts/lib/common.sh
. "$HERE/../scripts/lib/common.sh"
TARGETS=(username date_of_birth put_body)

usage() {
  cat <<'USAGE'
Usage: fuzz/run.sh [--seconds N] [--sanitizer address|none] [TARGET ...]

Builds the cargo-fuzz targets (username, date_of_birth, put_body) and runs
each for N seconds (default 60). The seed corpus fuzz/corpus/TARGET is read
but never written: new inputs go to fuzz/work/TARGET (git-ignored), crashes to
fuzz/artifacts/TARGET. Exits non-zero if any target finds a failing input;
minimise it (cargo fuzz tmin TARGET FILE), add it to fuzz/corpus/TARGET so
every later run replays it first, and fix the code.

Needs cargo-fuzz (cargo install cargo-fuzz --locked). The address sanitizer
needs unstable rustc flags; on a stable toolchain this script sets
RUSTC_BOOTSTRAP=1 for the fuzz build only. --sanitizer none builds without.
USAGE
}

seconds=60
sanitizer=address
targets=()
while [ $# -gt 0 ]; do
  case "$1" in
    -h|--help) usage; exit 0 ;;
    --seconds) optarg seconds "$@"; shift 2 ;;
    --sanitizer) optarg sanitizer "$@"; shift 2 ;;
    -*) echo "unknown option $1" >&2; usage >&2; exit 2 ;;
    *) targets+=("$1"); shift ;;
  esac
done
[ ${#targets[@]} -gt 0 ] || targets=("${TARGETS[@]}")

cargo fuzz --version >/dev/null 2>&1 || die "cargo-fuzz is not installed: cargo install cargo-fuzz --locked"

# -Zsanitizer and friends are nightly flags; stable rustc accepts them with
# RUSTC_BOOTSTRAP=1. Scoped to this process: nothing else is built this way.
export RUSTC_BOOTSTRAP=1
cd "$HERE/.."

step "cargo fuzz build (sanitizer=$sanitizer, debug assertions on)"
# One build for all targets (the library is compiled once, instrumented).
if [ ${#targets[@]} -eq ${#TARGETS[@]} ]; then
  cargo fuzz build --sanitizer "$sanitizer" --debug-assertions
else
  for t in "${targets[@]}"; do
    cargo fuzz build --sanitizer "$sanitizer" --debug-assertions "$t"
  done
fi

declare -A execs
failed=()
for t in "${targets[@]}"; do
  [ -d "$HERE/corpus/$t" ] || { echo "no seed corpus fuzz/corpus/$t" >&2; exit 1; }
  mkdir -p "$HERE/work/$t" "$HERE/artifacts/$t"
  log="$HERE/work/$t.log"
  step "fuzz $t for ${seconds}s ($(find "$HERE/corpus/$t" -type f | wc -l) seeds)"
  set +e
  # The first corpus dir receives new inputs; the seeds dir is only read.
  cargo fuzz run --sanitizer "$sanitizer" --debug-assertions "$t" \
    "$HERE/work/$t" "$HERE/corpus/$t" -- \
    -max_total_time="$seconds" -print_final_stats=1 -max_len=4096 \
    -artifact_prefix="$HERE/artifacts/$t/" >"$log" 2>&1
  rc=$?
  set -e
  execs[$t]=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -n1)
  if [ "$rc" -ne 0 ]; then
    failed+=("$t")
    echo "!! $t failed (exit $rc); last lines of $log:" >&2
    tail -n 30 "$log" >&2
  fi
done

step "summary (${seconds}s per target)"
for t in "${targets[@]}"; do
  printf '  %-14s %12s executions\n' "$t" "${execs[$t]:-?}"
done
if [ ${#failed[@]} -gt 0 ]; then
  echo "failing inputs found by: ${failed[*]} (see fuzz/artifacts/)" >&2
  exit 1
fi
echo "no failing input found"
