# shellcheck shell=bash
# Helpers shared by the drills (sourced, not run): the work dir, service
# instances and cleanup. Waiting with a deadline, free ports and throwaway
# PostgreSQL clusters (pg_init "$WORK/NAME", pg_start, pg_psql...) come from
# scripts/lib/. Everything binds to 127.0.0.1 and lives under one temp dir
# that the caller removes in its EXIT trap (drill_cleanup).

DRILL_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# shellcheck source=scripts/lib/pg.sh
. "$DRILL_ROOT/scripts/lib/pg.sh"
export PATH="$DRILL_ROOT/.venv/bin:$PATH"
# shellcheck disable=SC2034 # used by the drills that source this file
PY=${PYTHON:-python3}

log() { printf '[%s] %s\n' "$(date -u +%H:%M:%S)" "$*"; }

# now: wall-clock seconds with microseconds, the same clock loadgen stamps
# its requests with (--writes, --status).
now() { printf '%s\n' "$EPOCHREALTIME"; }


# drill_workdir: a temp dir readable by the postgres user (its clusters live
# below it); sets WORK. The caller's EXIT trap calls drill_cleanup.
drill_workdir() {
  WORK=$(mktemp -d "${TMPDIR:-/tmp}/hb-drill.XXXXXX")
  chmod 755 "$WORK"
  DRILL_PIDS=()
  # Turn signals into an exit, so the caller's EXIT trap cleans up.
  trap 'exit 130' INT
  trap 'exit 143' TERM
}

# ------------------------------------------------------------------- service

HB_BIN=${HELLO_BIRTHDAY_BIN:-$DRILL_ROOT/target/debug/hello-birthday}
# The load generator (tools/loadgen): seeds, keeps PUT traffic going, and
# checks what a restored or failed-over service returns.
LOADGEN=${LOADGEN_BIN:-$DRILL_ROOT/target/debug/loadgen}

# build_service: the service and loadgen; after the `test` stage a no-op.
build_service() {
  if [ -z "${HELLO_BIRTHDAY_BIN:-}" ] || [ -z "${LOADGEN_BIN:-}" ]; then
    log "cargo build --bin hello-birthday --bin loadgen"
    (cd "$DRILL_ROOT" && cargo build --quiet --locked -p hello-birthday -p loadgen --bin hello-birthday --bin loadgen) \
      || fail "cargo build"
  fi
  [ -x "$HB_BIN" ] || fail "service binary $HB_BIN missing"
  [ -x "$LOADGEN" ] || fail "load generator $LOADGEN missing"
}

# seed URL COUNT PREFIX OUT: PUT COUNT new users; every one must be
# acknowledged and read back. OUT gets one JSON line per write (--writes).
seed() {
  "$LOADGEN" run --url "$1" --fresh-users --put-ratio 1 --max-requests "$2" --prefix "$3" \
    --rate 1000 --connections 8 --duration 120 --writes "$4" 2>/dev/null \
    || fail "seeding $2 users through $1"
}

# service_start NAME DATABASE_URL: run an instance on free loopback ports
# (PORT=0, METRICS_PORT=0) and wait until its log reports "listening".
# Sets SVC_PID_<NAME>, SVC_URL_<NAME> (API) and SVC_METRICS_<NAME>.
service_start() {
  local name=$1 url=$2 logf="$WORK/svc-$1.log" pid line addrs a api="" metrics=""
  : >"$logf"
  PORT=0 METRICS_PORT=0 BIND_ADDR=127.0.0.1 DATABASE_URL="$url" LOG_FORMAT=text \
    LOG_LEVEL="${SVC_LOG_LEVEL:-warn,hello_birthday=info}" DRAIN_SECONDS=0 \
    DB_TIMEOUT_MS="${SVC_DB_TIMEOUT_MS:-2000}" "$HB_BIN" >>"$logf" 2>&1 &
  pid=$!
  DRILL_PIDS+=("$pid")
  printf -v "SVC_PID_$name" '%s' "$pid"
  wait_until 60 grep -q listening "$logf" || fail "timed out after 60s waiting for service $name to log 'listening'"
  kill -0 "$pid" 2>/dev/null || { cat "$logf" >&2; fail "service $name exited"; }
  line=$(grep -m1 listening "$logf")
  # The line names both bound addresses; tell them apart by asking.
  addrs=$(grep -oE '127\.0\.0\.1:[0-9]+' <<<"$line" | sort -u)
  for a in $addrs; do
    if curl -fsS -m 2 "http://$a/healthz" >/dev/null 2>&1; then api=$a
    elif curl -fsS -m 2 "http://$a/metrics" >/dev/null 2>&1; then metrics=$a
    fi
  done
  [ -n "$api" ] || { cat "$logf" >&2; fail "service $name: no API address in: $line"; }
  printf -v "SVC_URL_$name" 'http://%s' "$api"
  printf -v "SVC_METRICS_$name" 'http://%s' "$metrics"
}

# service_stop NAME: SIGTERM and wait for a clean exit (status 0).
service_stop() {
  local v="SVC_PID_$1" pid rc=0
  pid=${!v}
  kill -TERM "$pid" 2>/dev/null || return 0
  wait "$pid" || rc=$?
  [ "$rc" -eq 0 ] || fail "service $1 exited with status $rc after SIGTERM"
}

svc_url() { local v="SVC_URL_$1"; printf '%s\n' "${!v}"; }
svc_metrics() { local v="SVC_METRICS_$1"; printf '%s\n' "${!v}"; }
svc_pid() { local v="SVC_PID_$1"; printf '%s\n' "${!v}"; }

# drill_cleanup: stop what the drill started, even after a failure.
drill_cleanup() {
  local p d
  for p in "${DRILL_PIDS[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
  for p in "${DRILL_PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
  for d in "$WORK"/*/data/postmaster.pid; do
    if [ -f "$d" ]; then pg_stop "${d%/data/postmaster.pid}" immediate >/dev/null 2>&1 || true; fi
  done
  if [ "${DRILL_KEEP:-0}" = 1 ]; then log "kept $WORK"; else rm -rf "$WORK"; fi
}
