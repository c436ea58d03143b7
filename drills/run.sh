#!/usr/bin/env bash
# The backup, restore, failover and Region-loss drills, in the order CI runs them (the
# `drills` stage of scripts/ci.sh). Every drill starts its own throwaway
# servers on 127.0.0.1 and removes them, pass or fail. Ends with a table of
# the measured figures; exits non-zero if any drill failed.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# shellcheck source=scripts/lib/common.sh
. "$ROOT/scripts/lib/common.sh"
# shellcheck source=scripts/lib/runner.sh
. "$ROOT/scripts/lib/runner.sh"

# The drills table, run by the one runner (scripts/lib/runner.sh).
RUN_NAMES=(restore-sqlite restore-postgres s3 failover region-loss timing)
RUN_CMDS=(
  "drills/restore-drill.sh --backend sqlite"
  "drills/restore-drill.sh --backend postgres"
  "drills/s3-drill.sh"
  "drills/failover-drill.sh"
  "drills/region-loss-drill.sh"
  "drills/restore-timing.sh --rows 100000"
)

usage() {
  cat <<'USAGE'
Usage: drills/run.sh [--list] [NAME...]

Runs every drill (or only the NAMEs given), then prints the figures:
  restore-sqlite    seed through the API, back up under load, restore, verify
  restore-postgres  the same on a throwaway PostgreSQL cluster
  s3                backup.sh/restore.sh against s3:// on a local moto server
  failover          synchronous standby promoted under write load
  region-loss       Region A destroyed under write load, Region B restored
                    from the pgBackRest WAL archive (RPO, RTO measured)
  timing            backup and restore time for 100,000 users per backend
(The scheduled-backup systemd units are checked by deploy/systemd/check.sh.)

Environment: DRILL_RESULTS (JSON lines of figures; default
target/drills/results.jsonl), HELLO_BIRTHDAY_BIN and LOADGEN_BIN (default:
build target/debug/hello-birthday and target/debug/loadgen), DRILL_KEEP=1
(keep temp dirs).
USAGE
}

main() {
  local want=() rc=0
  while [ $# -gt 0 ]; do
    case "$1" in
      -h|--help) usage; exit 0 ;;
      --list) run_list; exit 0 ;;
      -*) usage_error "unknown option $1" ;;
      *) want+=("$1"); shift ;;
    esac
  done
  # An unknown drill is a usage error, not a run of nothing that "passed".
  run_check_names drill "${want[@]}"
  cd "$ROOT"
  export DRILL_RESULTS=${DRILL_RESULTS:-$ROOT/target/drills/results.jsonl}
  mkdir -p "$(dirname "$DRILL_RESULTS")"
  : >"$DRILL_RESULTS"
  if [ -z "${HELLO_BIRTHDAY_BIN:-}" ] || [ -z "${LOADGEN_BIN:-}" ]; then
    step "cargo build --bin hello-birthday --bin loadgen (a no-op after the test stage)"
    cargo build --quiet --locked -p hello-birthday -p loadgen --bin hello-birthday --bin loadgen
    export HELLO_BIRTHDAY_BIN=${HELLO_BIRTHDAY_BIN:-$ROOT/target/debug/hello-birthday}
    export LOADGEN_BIN=${LOADGEN_BIN:-$ROOT/target/debug/loadgen}
  fi

  run_table drill "${want[@]}" || rc=1

  echo
  echo "Figures (from $DRILL_RESULTS):"
  jq -r '
    if .drill == "restore" then
      "  restore \(.backend): \(.seeded) seeded + \(.load_acked_before_backup) load users acknowledged before the backup read back; \(.manifest_rows) rows, \(.backup_bytes) bytes; backup \(.backup_seconds) s, restore \(.restore_seconds) s; corrupt refused, non-empty refused, retention ok"
    elif .drill == "s3" then
      "  s3: \(.backups) backups (SSE \(.sse)), \(.kept) kept; \(.users_verified) users verified after restore in \(.restore_seconds) s; corrupt object refused; manifest-less object ignored"
    elif .drill == "failover" then
      "  failover: \(.acknowledged) PUTs acknowledged (\(.acknowledged_before_failover) before the stop), \(.acknowledged_missing) missing; \(.failed_requests) failed (\(.failed_statuses | join(","))); error window \(.error_window_seconds) s; promote \(.promote_seconds) s; first write on the new primary after \(.first_write_on_new_primary_seconds) s; ready after \(.ready_after_seconds) s"
    elif .drill == "region-loss" then
      "  region-loss: RPO \(.rpo_seconds) s (\(.acknowledged_missing) of \(.acknowledged) acknowledged writes missing, spanning \(.missing_span_seconds) s; archive_timeout \(.archive_timeout_seconds) s); RTO \(.rto_seconds) s (restore \(.rto_steps.restore) s, start \(.rto_steps.start) s, replay \(.rto_steps.replay) s, service ready \(.rto_steps.ready) s, set-up \(.rto_steps.setup) s); --to-time: \(.to_time_expected) writes before the target present, none after"
    elif .drill == "timing" then
      "  timing \(.backend): \(.rows) rows, \(.backup_bytes) bytes; backup \(.backup_seconds) s, verified restore \(.restore_seconds) s"
    else tostring end' "$DRILL_RESULTS"
  if [ "$rc" -ne 0 ]; then
    echo "FAILED drills: ${RUN_FAILED[*]}" >&2
    exit 1
  fi
  echo "all drills passed"
}

main "$@"
