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
#   canary-share   HAProxy gives a canary the share of traffic its weight asks
#   canary-errors  a release failing 10 % of /hello/ (gray failure): the
#                  canary verdict fails it, it goes back, <= 1 % of requests fail
#   canary-latency a release adding 300 ms: same, <= 3 % of requests > 250 ms
#   canary-inconclusive  no traffic: no verdict, the canary goes back
#   lb-unreachable HAProxy's runtime API unreachable: the deploy stops before
#                  it stops any instance
# zero-downtime is also the good-release canary (promoted at the end of its
# window) and checks that redeploying the previous release skips the canary.
#   db-restart     PostgreSQL restarted under load: no instance marked DOWN,
#                  errors only within the database's own window (db-restart.sh)
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../../.." && pwd)
# The stack's helpers, and through them scripts/lib/common.sh (step, die,
# fail, usage_error, optarg, require, wait_until...).
# shellcheck source=deploy/local/lib.sh
. "$ROOT/deploy/local/lib.sh"

usage() {
  cat <<'USAGE'
Usage: deploy/local/tests/run.sh [--binary PATH] [--report-dir DIR] [SCENARIO...]

Scenarios: smoke canary-share zero-downtime canary-errors canary-latency
           canary-inconclusive lb-unreachable bad-release crash db-restart
           (default: all, in that order)

  --binary PATH      service binary (default: target/debug/hello-birthday, built if needed)
  --report-dir DIR   per-request CSVs, deploy events, summaries and timeline PNGs
                     (default: target/deploy-tests)
  --keep             leave the stack running at the end (prints its state dir)
  --save-examples    copy the timeline charts and load summaries to deploy/local/examples/

Load: 300 req/s over 24 connections (LOADGEN_RATE, LOADGEN_CONNECTIONS).
Canary window of the deploys: 12 s (CANARY_TEST_WINDOW).
USAGE
}

BINARY="" REPORT="$ROOT/target/deploy-tests" KEEP=0 EXAMPLES=0 SCENARIOS=()
while [ $# -gt 0 ]; do
  case $1 in
    --binary) optarg BINARY "$@"; shift 2 ;;
    --report-dir) optarg REPORT "$@"; shift 2 ;;
    --keep) KEEP=1; shift ;;
    --save-examples) EXAMPLES=1; shift ;;
    -h|--help) usage; exit 0 ;;
    smoke|zero-downtime|bad-release|crash|canary-share|canary-errors|canary-latency|canary-inconclusive|lb-unreachable|db-restart)
      SCENARIOS+=("$1"); shift ;;
    *) usage_error "unknown argument: $1" ;;
  esac
done
[ ${#SCENARIOS[@]} -gt 0 ] || SCENARIOS=(smoke canary-share zero-downtime canary-errors canary-latency
  canary-inconclusive lb-unreachable bad-release crash db-restart)
RATE=${LOADGEN_RATE:-300}
CONNS=${LOADGEN_CONNECTIONS:-24}
WINDOW=${CANARY_TEST_WINDOW:-12}

# A passed check of a scenario (the library's step begins one, fail ends the run).
check() { printf '  ok  %s\n' "$*"; }

require haproxy socat curl jq psql python3 prometheus
PYTHON="$ROOT/.venv/bin/python"
[ -x "$PYTHON" ] && "$PYTHON" -c 'import matplotlib' 2>/dev/null || PYTHON=""
if [ -z "$PYTHON" ] && [ "${CI:-}" = true ]; then
  fail "matplotlib in .venv is needed for the timeline charts (scripts/setup.sh dev)"
fi

step "canary verdict unit tests (deploy/canary, plain python3)"
verdict_log=$(mktemp)
if ! python3 -m unittest discover -s "$ROOT/deploy/canary" >"$verdict_log" 2>&1; then
  cat "$verdict_log" >&2
  fail "deploy/canary unit tests"
fi
tail -n 3 "$verdict_log"
rm -f "$verdict_log"

if [ -z "$BINARY" ]; then
  step "building hello-birthday and loadgen (debug)"
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
  "$LOADGEN" run --url "$(stack_url)" --rate "$RATE" --connections "$CONNS" --duration 120 \
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

# A deploy that must fail: deploy_fails LOG WHY DEPLOY_ARGS... runs deploy.sh
# --target local on the stack, shows its output (also in $WORK/LOG.log) and
# fails the test with WHY when it exits 0; DEPLOY_RC is its exit status.
deploy_fails() {
  local log=$1 why=$2; shift 2
  DEPLOY_RC=0
  "$ROOT/scripts/deploy.sh" --target local --state-dir "$STATE" "$@" >"$WORK/$log.log" 2>&1 || DEPLOY_RC=$?
  sed 's/^/  | /' "$WORK/$log.log"
  [ "$DEPLOY_RC" -ne 0 ] || fail "$why"
}

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
  local name=$1 title=$2 errors_ok=${3:-}
  [ -n "$PYTHON" ] || { echo "  (no matplotlib: timeline chart skipped)"; return 0; }
  "$PYTHON" "$ROOT/deploy/local/timeline.py" --requests "$REPORT/$name.csv" \
    --events "$REPORT/$name.events.csv" --title "$title" --out "$REPORT/$name.png"
  # A real PNG, from a CSV whose error column sums to zero.
  [ "$(head -c 8 "$REPORT/$name.png" | od -An -tx1 | tr -d ' \n')" = 89504e470d0a1a0a ] \
    || fail "$REPORT/$name.png is not a PNG"
  [ -n "$errors_ok" ] || [ "$(awk -F, 'NR > 1 { s += $6 } END { print s + 0 }' "$REPORT/$name.csv")" = 0 ] \
    || fail "$REPORT/$name.csv has errors"
  check "timeline $REPORT/$name.png"
}

# Events of a deploy: column F of the rows whose event is E (events.csv).
ev() { awk -F, -v e="$2" -v f="$3" '$3 == e { print $f }' "$REPORT/$1.events.csv"; }
# Seconds between the first event A and the first event B (events.csv).
ev_gap() {
  awk -F, -v a="$2" -v b="$3" '$3 == a && !ta { ta = $1 } $3 == b && !tb { tb = $1 }
    END { if (!ta || !tb) exit 1; printf "%.1f", tb - ta }' "$REPORT/$1.events.csv"
}
# Requests of NAME.csv started between unix times A and B: "total failed slow(>MS)".
window_counts() {
  awk -F, -v a="$2" -v b="$3" -v ms="$4" 'NR > 1 && $1 >= a && $1 <= b { n++; f += $6; if ($2 > ms) s++ }
    END { printf "%d %d %d\n", n, f, s }' "$REPORT/$1.csv"
}
# The slot "ready" event that put the canary in rotation.
canary_ready_gap() {
  awk -F, -v b="$2" '$3 == "canary-start" { c = 1 } c && $3 == "ready" && !ta { ta = $1 } $3 == b && !tb { tb = $1 }
    END { if (!ta || !tb) exit 1; printf "%.1f", tb - ta }' "$REPORT/$1.events.csv"
}

# A gray-failure release: the real binary behind deploy/local/tests/faultproxy.py.
gray_release() {
  local dir=$1 ratio=$2 delay=$3
  mkdir -p "$dir"
  printf '#!/bin/sh\n# Gray-failure release: fails %s of /hello/, adds %s ms.\nexec python3 %q --fail-ratio %s --delay-ms %s -- %q "$@"\n' \
    "$ratio" "$delay" "$ROOT/deploy/local/tests/faultproxy.py" "$ratio" "$delay" "$BINARY" >"$dir/hello-birthday"
  chmod +x "$dir/hello-birthday"
}

# Deploys a gray-failure release under load and checks the canary stopped it:
# canary_bad NAME LABEL RATIO DELAY_MS VERDICT_WORD
canary_bad() {
  local name=$1 label=$2 ratio=$3 delay=$4 word=$5 good before after d0 d1 verdict n f sl gap
  good=$(instance_field "$STATE" s1 release)
  gray_release "$WORK/rel-$label" "$ratio" "$delay"
  before=$(pids)
  # Failures are expected here (bounded below); lost writes never.
  start_load "$name" --max-failures 1000000000
  d0=$(date +%s.%N)
  deploy_fails "$name" "deploy.sh promoted $label" --release "$WORK/rel-$label/hello-birthday" \
    --write-checksum --version "$label" --canary-window "$WINDOW" --events "$REPORT/$name.events.csv"
  d1=$(date +%s.%N)
  verdict=$(ev "$name" canary-fail 5)
  [[ $verdict == *"$word"* ]] || fail "no canary-fail verdict on $word in the events (got '${verdict:-none}')"
  check "canary verdict: fail ($verdict)"
  grep -q "canary verdict FAIL" "$WORK/$name.log" || fail "deploy.sh did not print the verdict"
  sleep 1
  stop_load "$name" || fail "the load lost writes or saw wrong values"
  assert_fleet "$good"
  after=$(pids)
  for s in s2 s3; do
    [ "$(grep -o "$s=[0-9]*" <<<"$before")" = "$(grep -o "$s=[0-9]*" <<<"$after")" ] || fail "$s was touched"
  done
  check "only the canary s1 ran $label; s2 and s3 kept their processes"
  [ "$(summary "$name" .verify.lost)" = 0 ] || fail "lost writes"
  read -r n f sl <<<"$(window_counts "$name" "$d0" "$d1" 250)"
  gap=$(canary_ready_gap "$name" canary-fail) || fail "no canary ready/verdict events"
  DEPLOY_FIGURES="$n requests during the deploy ($(awk -v a="$d0" -v b="$d1" 'BEGIN { printf "%.1f", b - a }') s), $f failed ($(awk -v f="$f" -v n="$n" 'BEGIN { printf "%.2f", 100 * f / n }')%), $sl slower than 250 ms ($(awk -v s="$sl" -v n="$n" 'BEGIN { printf "%.2f", 100 * s / n }')%), verdict ${gap}s after the canary took traffic, $(summary "$name" .puts_acked) acknowledged PUTs, 0 lost"
  check "$DEPLOY_FIGURES"
  DEPLOY_N=$n DEPLOY_F=$f DEPLOY_SLOW=$sl
}

RESULTS=()

# ---- the stack -------------------------------------------------------------

step "stack: PostgreSQL + 3 instances (release A) + HAProxy + Prometheus"
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
    step "smoke: scripts/smoke.sh against HAProxy (PostgreSQL)"
    "$ROOT/scripts/smoke.sh" "$(stack_url)"
    step "smoke: scripts/smoke.sh against one instance on SQLite"
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
    step "zero-downtime: rolling $cur -> $next under $RATE req/s over $CONNS connections"
    mkdir -p "$WORK/rel-$next"
    cp "$BINARY" "$WORK/rel-$next/hello-birthday"
    before=$(pids)
    start_load zero-downtime --min-rate 200
    d0=$(date +%s%N)
    "$ROOT/scripts/deploy.sh" --target local --state-dir "$STATE" --release "$WORK/rel-$next/hello-birthday" \
      --write-checksum --version "$next" --canary-window "$WINDOW" --events "$REPORT/zero-downtime.events.csv" \
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
    # The good release went through the canary: promoted at the end of its
    # window, which added no more than the window plus a few seconds.
    verdict=$(ev zero-downtime canary-pass 5)
    [ -n "$verdict" ] || fail "no canary-pass event"
    gap=$(canary_ready_gap zero-downtime canary-pass) || fail "no canary ready/pass events"
    awk -v g="$gap" -v w="$WINDOW" 'BEGIN { exit !(g >= w && g <= w + 3) }' \
      || fail "canary step took ${gap}s with a ${WINDOW}s window"
    check "canary passed after ${gap}s (window ${WINDOW}s): $verdict"
    chart zero-downtime "Rolling deploy $cur -> $next under load (canary passed)"
    RESULTS+=("zero-downtime (good release, canary): $(summary zero-downtime .requests) requests at $(summary zero-downtime '.rate | floor') req/s over ${CONNS} connections, $(summary zero-downtime .failures) failures, $(summary zero-downtime .puts_acked) acknowledged PUTs, $(summary zero-downtime .verify.lost) lost; deploy ${deploy_s}s, canary promoted ${gap}s after it took traffic (window ${WINDOW}s): $verdict")

    step "zero-downtime: redeploying the previous release $cur is a rollback: no canary"
    rm -f "$REPORT/rollback.events.csv"
    "$ROOT/scripts/deploy.sh" --target local --state-dir "$STATE" --version "$cur" \
      --events "$REPORT/rollback.events.csv" >"$WORK/rollback.log" 2>&1 || { cat "$WORK/rollback.log"; fail "rollback deploy failed"; }
    [ "$(awk -F, '$3 == "canary-skipped" { print $5 }' "$REPORT/rollback.events.csv")" = "rollback to the previous release" ] \
      || fail "the rollback to $cur ran a canary"
    ! grep -q canary-start "$REPORT/rollback.events.csv" || fail "the rollback to $cur ran a canary"
    assert_fleet "$cur"
    check "back on $cur without a canary step"
    ;;

  bad-release)
    good=$(instance_field "$STATE" s1 release)
    step "bad-release: releases that never get ready, rolled back under load (fleet on $good)"
    # 1. Cannot start: pointed at a database that does not exist.
    mkdir -p "$WORK/bad"
    printf '#!/bin/sh\n# Misconfigured release: wrong database.\nDATABASE_URL=postgres://hello:hello@127.0.0.1:1/nowhere exec %q "$@"\n' \
      "$BINARY" >"$WORK/bad/hello-birthday"
    # 2. Starts, never answers (hangs at start-up): the ready deadline path.
    printf '#!/bin/sh\n# Release that hangs at start-up.\nexec sleep 300\n' >"$WORK/bad/hang"
    chmod +x "$WORK/bad/hello-birthday" "$WORK/bad/hang"
    before=$(pids)
    start_load bad-release
    deploy_fails bad1 "deploy.sh succeeded with a release that cannot start" --release "$WORK/bad/hello-birthday" \
      --write-checksum --version C-wrong-db --ready-timeout 10 --events "$REPORT/bad-release.events.csv"
    grep -q "is back on $good" "$WORK/bad1.log" || fail "deploy.sh did not report the rollback"
    after1=$(pids)
    t_hang=$(date +%s)
    deploy_fails bad2 "deploy.sh succeeded with a release that never gets ready" --release "$WORK/bad/hang" \
      --write-checksum --version D-hangs --ready-timeout 3 --events "$REPORT/bad-release.events.csv"
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
    DEPLOY_SMOKE=false deploy_fails bad3 "deploy.sh succeeded although the smoke test failed" \
      --release "$WORK/rel-E/hello-birthday" --write-checksum --version E-smoke-fails --canary-window 8 \
      --events "$REPORT/bad-release.events.csv"
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

  canary-share)
    step "canary-share: a canary weight gives the canary its share of sequential requests"
    # The case leastconn got wrong: an idle backend, one request at a time.
    w=$(awk 'BEGIN { print int(100 * 2 * 10 / 90 + 0.5) }')
    haproxy_cmd "$STATE" "set weight be/s1 $w" >/dev/null
    "$LOADGEN" run --url "$(stack_url)" --rate 200 --connections 1 --max-requests 600 --duration 30 --no-verify \
      --summary "$REPORT/canary-share.summary.json" >"$REPORT/canary-share.loadgen.log" 2>&1 \
      || { cat "$REPORT/canary-share.loadgen.log"; fail "load failed"; }
    haproxy_cmd "$STATE" "set weight be/s1 100" >/dev/null
    n=$(summary canary-share .requests); c=$(summary canary-share '.by_server.s1.requests // 0')
    share=$(awk -v c="$c" -v n="$n" 'BEGIN { printf "%.1f", 100 * c / n }')
    awk -v s="$share" 'BEGIN { exit !(s >= 7 && s <= 13) }' || fail "canary weight $w for 10%: s1 got $share% of $n requests"
    check "weight $w vs 100+100: s1 served $c of $n sequential requests ($share%, asked 10%)"
    RESULTS+=("canary-share: weight $w (10% asked) vs 2 x 100, $n sequential requests: the canary served $c ($share%)")
    ;;

  canary-errors)
    step "canary-errors: a release failing 10% of /hello/ requests, under load"
    canary_bad canary-errors G-fails-10pc 0.1 0 errors
    awk -v f="$DEPLOY_F" -v n="$DEPLOY_N" 'BEGIN { exit !(f <= 0.01 * n) }' || fail "more than 1% of the requests failed"
    chart canary-errors "Canary of a release failing 10% of /hello/ requests, rolled back" allow-errors
    RESULTS+=("canary-errors: $DEPLOY_FIGURES")
    ;;

  canary-latency)
    step "canary-latency: a release adding 300 ms to every /hello/ request, under load"
    canary_bad canary-latency H-slow-300ms 0 300 latency
    awk -v s="$DEPLOY_SLOW" -v n="$DEPLOY_N" 'BEGIN { exit !(s <= 0.03 * n) }' || fail "more than 3% of the requests slower than 250 ms"
    [ "$DEPLOY_F" = 0 ] || fail "$DEPLOY_F requests failed"
    chart canary-latency "Canary of a release adding 300 ms, rolled back"
    RESULTS+=("canary-latency: $DEPLOY_FIGURES")
    ;;

  canary-inconclusive)
    good=$(instance_field "$STATE" s1 release)
    step "canary-inconclusive: no traffic during the window: no verdict, the canary goes back"
    mkdir -p "$WORK/rel-I"; cp "$BINARY" "$WORK/rel-I/hello-birthday"
    rm -f "$REPORT/canary-inconclusive.events.csv"
    deploy_fails inconclusive "deploy.sh promoted a release nobody used" --release "$WORK/rel-I/hello-birthday" \
      --write-checksum --version I-no-traffic --canary-window 3 --events "$REPORT/canary-inconclusive.events.csv"
    verdict=$(ev canary-inconclusive canary-inconclusive 5)
    [[ $verdict == *"too little traffic"* ]] || fail "no inconclusive verdict event (got '${verdict:-none}')"
    assert_fleet "$good"
    check "inconclusive ($verdict): exit $DEPLOY_RC, every instance on $good"
    # The operator's way on: --canary-allow-inconclusive promotes without a verdict, and says so.
    "$ROOT/scripts/deploy.sh" --target local --state-dir "$STATE" --version I-no-traffic --canary-window 2 \
      --canary-allow-inconclusive --events "$REPORT/canary-inconclusive.events.csv" >"$WORK/inconclusive2.log" 2>&1 \
      || { cat "$WORK/inconclusive2.log"; fail "deploy.sh --canary-allow-inconclusive failed"; }
    grep -q "INCONCLUSIVE, going on" "$WORK/inconclusive2.log" || fail "deploy.sh did not say it went on without a verdict"
    [[ $(ev canary-inconclusive canary-inconclusive 5 | tail -n 1) == "going on: "* ]] || fail "no 'going on' event"
    assert_fleet I-no-traffic
    check "--canary-allow-inconclusive: promoted I-no-traffic without a verdict, and said so"
    RESULTS+=("canary-inconclusive: no load, 3 s window: exit $DEPLOY_RC, canary back on $good ($verdict); with --canary-allow-inconclusive: promoted, exit 0")
    ;;

  lb-unreachable)
    good=$(instance_field "$STATE" s1 release)
    step "lb-unreachable: HAProxy's runtime API unreachable: no instance may be stopped"
    mkdir -p "$WORK/rel-F"; cp "$BINARY" "$WORK/rel-F/hello-birthday"
    before=$(pids)
    start_load lb-unreachable
    sock="$STATE/haproxy/admin.sock"
    # HAProxy keeps listening on the renamed socket; nothing reaches it by name.
    mv "$sock" "$sock.away"
    deploy_fails lb "deploy.sh succeeded without HAProxy's runtime API" --release "$WORK/rel-F/hello-birthday" \
      --write-checksum --version F-no-lb --drain-timeout 3
    mv "$sock.away" "$sock"
    after=$(pids)
    [ "$before" = "$after" ] || fail "an instance was stopped or restarted ($before-> $after)"
    grep -q "runtime API unreachable" "$WORK/lb.log" || fail "deploy.sh did not say why it stopped"
    check "deploy.sh exit $DEPLOY_RC before touching anything: same processes ($after)"
    sleep 1
    stop_load lb-unreachable || fail "the load saw failures"
    assert_fleet "$good"
    RESULTS+=("lb-unreachable: runtime API unreachable: exit $DEPLOY_RC, no instance stopped, $(summary lb-unreachable .requests) requests, $(summary lb-unreachable .failures) failures")
    ;;

  crash)
    step "crash: kill -9 one instance under load"
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

step "results"
printf '  %s\n' "${RESULTS[@]}" | tee "$REPORT/results.txt"
if [ "$EXAMPLES" = 1 ]; then
  mkdir -p "$ROOT/deploy/local/examples"
  for f in zero-downtime.png zero-downtime.summary.json bad-release.png bad-release.summary.json \
    canary-errors.png canary-errors.summary.json canary-latency.png canary-latency.summary.json results.txt; do
    [ ! -f "$REPORT/$f" ] || cp "$REPORT/$f" "$ROOT/deploy/local/examples/$f"
  done
  echo "examples updated in deploy/local/examples/"
fi
echo "deploy tests: ${#RESULTS[@]} passed, 0 failed"
