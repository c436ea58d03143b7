#!/usr/bin/env bash
# Deploy tests on a throwaway local stack (PostgreSQL, 3 instances, HAProxy,
# Prometheus on random loopback ports), each under steady load from
# tools/loadgen (GET + PUT, every acknowledged PUT read back at the end):
#   zero-downtime  roll release A -> B; 0 failures, every process replaced
#   bad-release    a release that cannot start, one that never gets ready,
#                  one whose smoke test fails: deploy.sh rolls back and
#                  exits non-zero each time, 0 failures
#   crash          kill -9 one instance: failures <= requests in flight on
#                  it, HAProxy takes it out, the stack heals on restart
#   db-restart     PostgreSQL restarted under load: no instance marked DOWN,
#                  errors only within the database's own window (db-restart.sh)
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../../.." && pwd)

usage() {
  cat <<'USAGE'
Usage: deploy/local/tests/run.sh [--binary PATH] [--report-dir DIR] [SCENARIO...]

Scenarios: smoke zero-downtime bad-release crash db-restart (default: all, in that order)

  --binary PATH      service binary (default: target/debug/hello-birthday, built if needed)
  --report-dir DIR   per-request CSVs, deploy events, summaries and timeline PNGs
                     (default: target/deploy-tests)
  --keep             leave the stack running at the end (prints its state dir)
  --save-examples    copy the timeline charts and load summaries to deploy/local/examples/

Load: 300 req/s over 24 connections (LOADGEN_RATE, LOADGEN_CONNECTIONS).
USAGE
}

BINARY="" REPORT="$ROOT/target/deploy-tests" KEEP=0 EXAMPLES=0 SCENARIOS=()
while [ $# -gt 0 ]; do
  case $1 in
    --binary) BINARY=$2; shift 2 ;;
    --report-dir) REPORT=$2; shift 2 ;;
    --keep) KEEP=1; shift ;;
    --save-examples) EXAMPLES=1; shift ;;
    -h|--help) usage; exit 0 ;;
    smoke|zero-downtime|bad-release|crash|db-restart) SCENARIOS+=("$1"); shift ;;
    *) usage >&2; exit 2 ;;
  esac
done
[ ${#SCENARIOS[@]} -gt 0 ] || SCENARIOS=(smoke zero-downtime bad-release crash db-restart)
RATE=${LOADGEN_RATE:-300}
CONNS=${LOADGEN_CONNECTIONS:-24}

# shellcheck source=deploy/local/lib.sh
. "$ROOT/deploy/local/lib.sh"

say() { printf '\n=== %s\n' "$*"; }
fail() { printf 'FAIL: %s\n' "$*" >&2; exit 1; }
check() { printf '  ok  %s\n' "$*"; }

for t in haproxy socat curl jq psql python3 prometheus; do
  command -v "$t" >/dev/null || fail "$t is not installed (scripts/setup.sh dev)"
done
PYTHON="$ROOT/.venv/bin/python"
[ -x "$PYTHON" ] && "$PYTHON" -c 'import matplotlib' 2>/dev/null || PYTHON=""
if [ -z "$PYTHON" ] && [ "${CI:-}" = true ]; then
  fail "matplotlib in .venv is needed for the timeline charts (scripts/setup.sh dev)"
fi

if [ -z "$BINARY" ]; then
  say "building hello-birthday and loadgen (debug)"
  (cd "$ROOT" && cargo build --locked -q --bin hello-birthday && cargo build --locked -q -p loadgen)
  BINARY="$ROOT/target/debug/hello-birthday"
else
  (cd "$ROOT" && cargo build --locked -q -p loadgen)
fi
[ -x "$BINARY" ] || fail "no service binary at $BINARY"
BINARY=$(cd "$(dirname "$BINARY")" && pwd)/$(basename "$BINARY")
LOADGEN="$ROOT/target/debug/loadgen"

WORK=$(mktemp -d)
chmod 0755 "$WORK"   # PostgreSQL runs as the postgres user when we are root
STATE="$WORK/stack"
LG_PID=""
cleanup() {
  local rc=$?
  if pid_alive "$LG_PID"; then kill "$LG_PID" 2>/dev/null || true; fi
  if [ "$KEEP" = 1 ]; then
    echo "stack kept: deploy/local/stack.sh status --state-dir $STATE"
  else
    if [ "$rc" -ne 0 ] && [ -d "$STATE/logs" ]; then
      mkdir -p "$REPORT/logs"
      cp "$STATE"/logs/* "$REPORT/logs/" 2>/dev/null || true
      echo "instance and HAProxy logs copied to $REPORT/logs" >&2
    fi
    "$ROOT/deploy/local/stack.sh" down --state-dir "$STATE" >/dev/null 2>&1 || true
    rm -rf "$WORK"
  fi
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM
mkdir -p "$REPORT"

# ---- helpers ----------------------------------------------------------------

# Starts the load in the background; waits until every connection has been
# answered once. Files: $REPORT/NAME.csv, NAME.summary.json, NAME.loadgen.log.
start_load() {
  local name=$1; shift
  rm -f "$WORK/ready" "$REPORT/$name".*
  "$LOADGEN" --url "$(stack_url)" --rate "$RATE" --connections "$CONNS" --duration 120 \
    --ready-file "$WORK/ready" --csv "$REPORT/$name.csv" --summary "$REPORT/$name.summary.json" \
    "$@" >"$REPORT/$name.loadgen.log" 2>&1 &
  LG_PID=$!
  wait_until 15 test -e "$WORK/ready" || { cat "$REPORT/$name.loadgen.log" >&2; fail "load did not start"; }
  # A second of steady load before anything happens, for the timeline.
  sleep 1
}

# Stops the load; its exit status is loadgen's verdict.
stop_load() {
  local name=$1 rc=0
  kill -INT "$LG_PID"
  wait "$LG_PID" || rc=$?
  LG_PID=""
  grep -v '^loadgen: t=' "$REPORT/$name.loadgen.log" | sed 's/^/  /'
  return "$rc"
}

stack_url() { (load_stack_env "$STATE"; echo "$HAPROXY_URL"); }
summary() { jq -r "$2" "$REPORT/$1.summary.json"; }
pids() { instances "$STATE" | awk '{ print $1 "=" $4 }' | tr '\n' ' '; }

# Every slot alive, reporting RELEASE on /healthz, UP in HAProxy.
assert_fleet() {
  local want=$1 slot port pid got
  while read -r slot port _ pid _; do
    instance_alive "$pid" "$port" || fail "$slot (pid $pid) is not running"
    got=$(instance_release "$port")
    [ "$got" = "$want" ] || fail "$slot reports release '$got', expected $want"
    wait_until 10 haproxy_status_is "$STATE" "$slot" UP || fail "HAProxy: $slot is $(haproxy_stat "$STATE" "$slot" status)"
  done < <(instances "$STATE")
  check "every instance alive, on release $want, UP in HAProxy"
}

chart() {
  local name=$1 title=$2
  [ -n "$PYTHON" ] || { echo "  (no matplotlib: timeline chart skipped)"; return 0; }
  "$PYTHON" "$ROOT/deploy/local/timeline.py" --requests "$REPORT/$name.csv" \
    --events "$REPORT/$name.events.csv" --title "$title" --out "$REPORT/$name.png"
  # A real PNG, from a CSV whose error column sums to zero.
  [ "$(head -c 8 "$REPORT/$name.png" | od -An -tx1 | tr -d ' \n')" = 89504e470d0a1a0a ] \
    || fail "$REPORT/$name.png is not a PNG"
  [ "$(awk -F, 'NR > 1 { s += $6 } END { print s + 0 }' "$REPORT/$name.csv")" = 0 ] \
    || fail "$REPORT/$name.csv has errors"
  check "timeline $REPORT/$name.png"
}

RESULTS=()

# ---- the stack -------------------------------------------------------------

say "stack: PostgreSQL + 3 instances (release A) + HAProxy + Prometheus"
t0=$(date +%s)
"$ROOT/deploy/local/stack.sh" up --state-dir "$STATE" --instances 3 --binary "$BINARY" --release A
load_stack_env "$STATE"
[ "$(instances "$STATE" | wc -l)" = 3 ] || fail "instances file does not list 3 instances"
assert_fleet A
# Prometheus scrapes every instance's metrics port (config from the instance list).
prom_up() {
  [ "$(curl -fs "$PROMETHEUS_URL/api/v1/query?query=sum(up)" | jq -r '.data.result[0].value[1] // 0')" = 3 ]
}
wait_until 30 prom_up || fail "Prometheus does not see 3 instances up"
check "Prometheus scrapes 3 instances (up == 3), stack up in $(( $(date +%s) - t0 ))s"

for scenario in "${SCENARIOS[@]}"; do
  case $scenario in

  smoke)
    say "smoke: scripts/smoke.sh against HAProxy (PostgreSQL)"
    "$ROOT/scripts/smoke.sh" "$(stack_url)"
    say "smoke: scripts/smoke.sh against one instance on SQLite"
    mkdir -p "$WORK/sqlite"
    sq_pid=$(spawn "$WORK/sqlite/log" env PORT=0 METRICS_PORT=0 BIND_ADDR=127.0.0.1 \
      DATABASE_URL="sqlite://$WORK/sqlite/smoke.db" DRAIN_SECONDS=0 RELEASE=smoke "$BINARY")
    sq_addr() { grep -o 'listening addr=127.0.0.1:[0-9]*' "$WORK/sqlite/log" | head -n1 | cut -d= -f2; }
    sq_listening() { [ -n "$(sq_addr)" ]; }
    wait_until 15 sq_listening || { cat "$WORK/sqlite/log" >&2; fail "SQLite instance did not start"; }
    sq_url="http://$(sq_addr)"
    "$ROOT/scripts/smoke.sh" "$sq_url"
    # The smoke test must also fail when it should: nothing listening, and a
    # server that is not hello-birthday (the instance's metrics listener).
    sq_metrics=$(grep -o 'metrics_addr=127.0.0.1:[0-9]*' "$WORK/sqlite/log" | head -n1 | cut -d= -f2)
    if "$ROOT/scripts/smoke.sh" "http://127.0.0.1:$(free_ports 1)" >/dev/null 2>&1; then fail "smoke.sh passed with nothing listening"; fi
    if "$ROOT/scripts/smoke.sh" "http://$sq_metrics" >/dev/null 2>&1; then fail "smoke.sh passed against a metrics endpoint"; fi
    check "smoke.sh fails with nothing listening and against a server that is not the API"
    stop_pid "$sq_pid" 10
    RESULTS+=("smoke: pass through HAProxy on PostgreSQL and on a single SQLite instance; fails when it should")
    ;;

  zero-downtime)
    cur=$(instance_field "$STATE" s1 release)
    [ "$cur" = B ] && next=B2 || next=B
    say "zero-downtime: rolling $cur -> $next under $RATE req/s over $CONNS connections"
    mkdir -p "$WORK/rel-$next"
    cp "$BINARY" "$WORK/rel-$next/hello-birthday"
    before=$(pids)
    start_load zero-downtime --min-rate 200
    d0=$(date +%s%N)
    "$ROOT/scripts/deploy.sh" --target local --state-dir "$STATE" --release "$WORK/rel-$next/hello-birthday" \
      --write-checksum --version "$next" --events "$REPORT/zero-downtime.events.csv" \
      || fail "deploy.sh failed"
    d1=$(date +%s%N)
    sleep 1
    stop_load zero-downtime || fail "the load saw failures or lost writes during the deploy"
    deploy_s=$(awk -v a="$d0" -v b="$d1" 'BEGIN { printf "%.1f", (b - a) / 1e9 }')
    after=$(pids)
    for s in s1 s2 s3; do
      b=$(grep -o "$s=[0-9]*" <<<"$before"); a=$(grep -o "$s=[0-9]*" <<<"$after")
      [ "$b" != "$a" ] || fail "$s was not replaced ($b)"
    done
    check "every process replaced: $before-> $after"
    assert_fleet "$next"
    [ "$(summary zero-downtime .failures)" = 0 ] || fail "failures during the deploy"
    awk -v r="$(summary zero-downtime .rate)" 'BEGIN { exit !(r >= 200) }' || fail "load below 200 req/s"
    # The load covered the whole deploy.
    awk -v s="$(summary zero-downtime .started_unix)" -v e="$(summary zero-downtime .ended_unix)" \
      -v a="$d0" -v b="$d1" 'BEGIN { exit !(s * 1e9 < a && e * 1e9 > b) }' || fail "the load did not span the deploy"
    check "$(summary zero-downtime .requests) requests, 0 failures, $(summary zero-downtime '.verify.verified') users read back intact, deploy ${deploy_s}s"
    chart zero-downtime "Rolling deploy $cur -> $next under load"
    RESULTS+=("zero-downtime: $(summary zero-downtime .requests) requests at $(summary zero-downtime '.rate | floor') req/s over ${CONNS} connections, $(summary zero-downtime .failures) failures, $(summary zero-downtime .puts_acked) acknowledged PUTs, $(summary zero-downtime .verify.lost) lost; deploy ${deploy_s}s")
    ;;

  bad-release)
    good=$(instance_field "$STATE" s1 release)
    say "bad-release: releases that never get ready, rolled back under load (fleet on $good)"
    # 1. Cannot start: pointed at a database that does not exist.
    mkdir -p "$WORK/bad"
    printf '#!/bin/sh\n# Misconfigured release: wrong database.\nDATABASE_URL=postgres://hello:hello@127.0.0.1:1/nowhere exec %q "$@"\n' \
      "$BINARY" >"$WORK/bad/hello-birthday"
    # 2. Starts, never answers (hangs at start-up): the ready deadline path.
    printf '#!/bin/sh\n# Release that hangs at start-up.\nexec sleep 300\n' >"$WORK/bad/hang"
    chmod +x "$WORK/bad/hello-birthday" "$WORK/bad/hang"
    before=$(pids)
    start_load bad-release
    rc=0
    "$ROOT/scripts/deploy.sh" --target local --state-dir "$STATE" --release "$WORK/bad/hello-birthday" \
      --write-checksum --version C-wrong-db --ready-timeout 10 --events "$REPORT/bad-release.events.csv" \
      >"$WORK/bad1.log" 2>&1 || rc=$?
    sed 's/^/  | /' "$WORK/bad1.log"
    [ "$rc" -ne 0 ] || fail "deploy.sh succeeded with a release that cannot start"
    grep -q "is back on $good" "$WORK/bad1.log" || fail "deploy.sh did not report the rollback"
    after1=$(pids)
    t_hang=$(date +%s)
    rc=0
    "$ROOT/scripts/deploy.sh" --target local --state-dir "$STATE" --release "$WORK/bad/hang" \
      --write-checksum --version D-hangs --ready-timeout 3 --events "$REPORT/bad-release.events.csv" \
      >"$WORK/bad2.log" 2>&1 || rc=$?
    sed 's/^/  | /' "$WORK/bad2.log"
    [ "$rc" -ne 0 ] || fail "deploy.sh succeeded with a release that never gets ready"
    grep -q "not ready within 3s" "$WORK/bad2.log" || fail "deploy.sh did not report the ready deadline"
    [ $(( $(date +%s) - t_hang )) -lt 30 ] || fail "the rollback of a hanging release took too long"
    after2=$(pids)
    # Only s1 was touched (restored twice); s2 and s3 kept their processes.
    for s in s2 s3; do
      [ "$(grep -o "$s=[0-9]*" <<<"$before")" = "$(grep -o "$s=[0-9]*" <<<"$after2")" ] || fail "$s was touched"
    done
    [ "$(grep -o "s1=[0-9]*" <<<"$before")" != "$(grep -o "s1=[0-9]*" <<<"$after1")" ] || fail "s1 was not restarted"
    check "only s1 was touched, s2 and s3 kept their processes ($before-> $after2)"
    # No process of the bad releases is left behind.
    if pgrep -f "$STATE/releases/D-hangs/" >/dev/null; then fail "a process of the hanging release is still running"; fi
    # 3. Healthy, but its smoke test fails: the whole fleet goes back.
    mkdir -p "$WORK/rel-E"
    cp "$BINARY" "$WORK/rel-E/hello-birthday"
    rc=0
    DEPLOY_SMOKE=false "$ROOT/scripts/deploy.sh" --target local --state-dir "$STATE" \
      --release "$WORK/rel-E/hello-birthday" --write-checksum --version E-smoke-fails \
      --events "$REPORT/bad-release.events.csv" >"$WORK/bad3.log" 2>&1 || rc=$?
    sed 's/^/  | /' "$WORK/bad3.log"
    [ "$rc" -ne 0 ] || fail "deploy.sh succeeded although the smoke test failed"
    grep -q "rolled back" "$WORK/bad3.log" || fail "deploy.sh did not report the fleet rollback"
    after=$(pids)
    for s in s1 s2 s3; do
      [ "$(grep -o "$s=[0-9]*" <<<"$after2")" != "$(grep -o "$s=[0-9]*" <<<"$after")" ] || fail "$s was not rolled"
    done
    check "failed smoke test: all 3 slots rolled to E-smoke-fails and back ($after2-> $after)"
    sleep 1
    stop_load bad-release || fail "the load saw failures or lost writes during the failed deploys"
    assert_fleet "$good"
    check "deploy.sh exited non-zero 3 times and rolled back; $(summary bad-release .requests) requests, $(summary bad-release .failures) failures"
    chart bad-release "Bad releases rolled back under load"
    RESULTS+=("bad-release: 3 failed deploys (wrong database, hangs at start-up, failing smoke test) rolled back with exit non-zero; $(summary bad-release .requests) requests, $(summary bad-release .failures) failures, $(summary bad-release .verify.lost) lost writes")
    ;;

  crash)
    say "crash: kill -9 one instance under load"
    # Each connection has at most one request in flight: the bound on failures.
    start_load crash --max-failures "$CONNS"
    victim=s2
    vpid=$(instance_field "$STATE" "$victim" pid)
    inflight=$(haproxy_stat "$STATE" "$victim" scur)
    retr0=$(haproxy_stat "$STATE" "$victim" wretr); redis0=$(haproxy_stat "$STATE" "$victim" wredis)
    k0=$(date +%s%N)
    kill -KILL "$vpid"
    echo "  killed $victim (pid $vpid), HAProxy saw $inflight request(s) in flight on it"
    wait_until 5 haproxy_status_is "$STATE" "$victim" DOWN || fail "HAProxy did not take $victim out"
    k1=$(date +%s%N)
    check "HAProxy marked $victim DOWN after $(( (k1 - k0) / 1000000 )) ms"
    sleep 2
    "$ROOT/deploy/local/stack.sh" start "$victim" --state-dir "$STATE"
    stot0=$(haproxy_stat "$STATE" "$victim" stot)
    served_since() { [ "$(haproxy_stat "$STATE" "$victim" stot)" -gt "$1" ]; }
    wait_until 10 served_since "$stot0" \
      || fail "$victim takes no traffic after the restart"
    check "$victim restarted and serving again"
    sleep 1
    retries=$(( $(haproxy_stat "$STATE" "$victim" wretr) - retr0 ))
    redisp=$(( $(haproxy_stat "$STATE" "$victim" wredis) - redis0 ))
    stop_load crash || fail "the load saw more failures than connections, or lost writes"
    failures=$(summary crash .failures)
    [ "$failures" -le "$CONNS" ] || fail "$failures failures"
    if [ "$failures" -gt 0 ]; then
      # Failures may only come from the moment of the crash.
      awk -v f="$(summary crash .first_failure_unix)" -v l="$(summary crash .last_failure_unix)" \
        -v a="$k0" -v b="$k1" 'BEGIN { exit !(f * 1e9 >= a - 1e8 && l * 1e9 <= b + 1e9) }' \
        || fail "failures outside the crash window"
    fi
    assert_fleet "$(instance_field "$STATE" s1 release)"
    check "$failures client failures (in flight on $victim at the kill: $inflight); HAProxy retried $retries, redispatched $redisp"
    RESULTS+=("crash: kill -9 of $victim with $inflight request(s) in flight: $failures client failures of $(summary crash .requests) requests (bound: $CONNS), HAProxy retries $retries, redispatches $redisp, DOWN after $(( (k1 - k0) / 1000000 )) ms, healed")
    ;;

  db-restart)
    # shellcheck source=deploy/local/tests/db-restart.sh
    . "$ROOT/deploy/local/tests/db-restart.sh"
    ;;
  esac
done

say "results"
printf '  %s\n' "${RESULTS[@]}" | tee "$REPORT/results.txt"
if [ "$EXAMPLES" = 1 ]; then
  mkdir -p "$ROOT/deploy/local/examples"
  for f in zero-downtime.png zero-downtime.summary.json bad-release.png bad-release.summary.json results.txt; do
    [ ! -f "$REPORT/$f" ] || cp "$REPORT/$f" "$ROOT/deploy/local/examples/$f"
  done
  echo "examples updated in deploy/local/examples/"
fi
echo "deploy tests: ${#RESULTS[@]} passed, 0 failed"
