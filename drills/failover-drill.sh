#!/usr/bin/env bash
# Database failover drill: a PostgreSQL primary with a synchronous streaming
# standby (as RDS Multi-AZ replicates: no acknowledged commit exists only on
# the primary), the service writing through a switchable loopback address
# (the stand-in for the RDS DNS name), PUT load, then: the primary is stopped
# (immediate: a crash), the standby promoted and the address flipped to it.
# Passes when every PUT acknowledged before and after the failover is on the
# new primary and readable through the API, and the same service process
# recovered by itself. Reports the error window.
set -euo pipefail

usage() {
  cat <<'USAGE'
Usage: drills/failover-drill.sh [--concurrency N]

  --concurrency N   parallel PUT clients during the failover (default 4)

Environment: HELLO_BIRTHDAY_BIN, DRILL_RESULTS, DRILL_KEEP as for
restore-drill.sh.
USAGE
}

# shellcheck source=drills/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

concurrency=4
while [ $# -gt 0 ]; do
  case "$1" in
    --concurrency) optarg concurrency "$@"; shift 2 ;;
    -h|--help) usage; exit 0 ;;
    *) usage >&2; exit 2 ;;
  esac
done

require jq curl psql pg_basebackup "$PY"
build_service
drill_workdir
trap drill_cleanup EXIT
log "failover drill in $WORK"

# 1. Primary (synchronous replication is switched on once the standby is
# attached: before that, every commit would wait for it).
PRIMARY=$WORK/primary STANDBY=$WORK/standby
pg_init "$PRIMARY" --auth-host scram-sha-256 || fail "initdb primary"
pg_conf "$PRIMARY" "synchronous_commit = on" "wal_level = replica" "max_wal_senders = 4"
pg_start "$PRIMARY" || fail "the primary did not start"
pg_app_db "$PRIMARY" hb 'failover drill' hb

# 2. Standby: a base backup of the primary that streams from it. It names
# itself standby1 (cluster_name is the walreceiver's application_name) and,
# once promoted, must not wait for a standby of its own.
pg_init_standby "$STANDBY" "$PRIMARY" || fail "pg_basebackup of the primary"
standby_port=$(pg_port "$STANDBY")
pg_conf "$STANDBY" "cluster_name = 'standby1'" "synchronous_standby_names = ''"
pg_start "$STANDBY" || fail "the standby did not start"
# From now on a commit is acknowledged only once standby1 has flushed it.
pg_psql "$PRIMARY" -d postgres -At -c "ALTER SYSTEM SET synchronous_standby_names = 'standby1'" -c "SELECT pg_reload_conf()" >/dev/null
sync_standby() {
  [ "$(pg_psql "$PRIMARY" -d postgres -At -c \
    "SELECT count(*) FROM pg_stat_replication WHERE application_name = 'standby1' AND state = 'streaming' AND sync_state = 'sync'")" = 1 ]
}
wait_until 30 sync_standby 2>/dev/null || fail "timed out after 30s waiting for standby1 to stream synchronously"
log "primary :$(pg_port "$PRIMARY"), synchronous standby :$standby_port streaming"

# 3. The address the service uses, pointing at the primary.
proxy_port=$(free_port)
echo "127.0.0.1:$(pg_port "$PRIMARY")" >"$WORK/db-target"
"$PY" "$DRILL_ROOT/drills/tcpproxy.py" --listen-port "$proxy_port" --target-file "$WORK/db-target" \
  >"$WORK/proxy.log" 2>&1 &
DRILL_PIDS+=("$!")
wait_until 10 grep -q listening "$WORK/proxy.log" || fail "timed out after 10s waiting for the database address :$proxy_port"

service_start api "postgres://hb:failover%20drill@127.0.0.1:$proxy_port/hb"
svc_pid=$(svc_pid api)
ready() { curl -fs -m 2 "$(svc_url api)/readyz" >/dev/null; }
wait_until 30 ready || fail "timed out after 30s waiting for the service to be ready"
log "service at $(svc_url api), database via 127.0.0.1:$proxy_port"

# 4. Write load, then the failure.
# Failures are expected while the database is away: the figures below judge
# them (none before the stop), so loadgen itself tolerates them.
"$LOADGEN" run --url "$(svc_url api)" --fresh-users --put-ratio 1 --prefix load --connections "$concurrency" \
  --rate $(( concurrency * 200 )) --timeout-ms 3000 --duration 150 --max-failures 1000000 \
  --stop-file "$WORK/stop" --status "$WORK/load.status" --writes "$WORK/load.jsonl" >"$WORK/load.log" 2>&1 &
load_pid=$!
DRILL_PIDS+=("$load_pid")
load_field() { jq -r ".$1" "$WORK/load.status" 2>/dev/null || echo 0; }
acked_at_least() { [ "$(load_field ok)" -ge "$1" ]; }
wait_until 30 acked_at_least 300 || fail "timed out after 30s waiting for PUT traffic to start"

sync_standby || fail "standby1 is no longer synchronous"
t_fail=$(now)
pg_stop "$PRIMARY" immediate
t_down=$(now)
log "primary stopped (immediate) after $(load_field ok) acknowledged PUTs"
as_pg "$(pg_bin pg_ctl)" -D "$STANDBY/data" -w -t 30 promote >/dev/null
t_promoted=$(now)
echo "127.0.0.1:$standby_port" >"$WORK/db-target.new"
mv "$WORK/db-target.new" "$WORK/db-target"
t_switched=$(now)
log "standby promoted in $(elapsed "$t_fail" "$t_promoted")s; database address flipped to :$standby_port"

# 5. The same service process must recover on its own: readiness back and
# another 300 writes acknowledged after the flip.
ok_at_switch=$(load_field ok)
wait_until 60 ready || fail "timed out after 60s waiting for the service to be ready again"
t_ready=$(now)
acked_after_flip() { acked_at_least $(( ok_at_switch + 300 )) && \
  awk -v a="$(load_field last_ok)" -v b="$t_switched" 'BEGIN { exit !(a > b) }'; }
wait_until 60 acked_after_flip || fail "timed out after 60s waiting for 300 more PUTs acknowledged after the flip"
touch "$WORK/stop"
wait "$load_pid" || fail "load client: $(tail -n 20 "$WORK/load.log")"
grep '^loadgen: [0-9]' "$WORK/load.log"
kill -0 "$svc_pid" 2>/dev/null || fail "the service process died"

# 6. Every acknowledged PUT is on the new primary and reads back.
[ "$(pg_psql "$STANDBY" -d hb -At -c 'SELECT pg_is_in_recovery()')" = f ] || fail "standby not promoted"
pg_psql "$STANDBY" -d hb -At -c "SELECT username || '|' || date_of_birth FROM users" >"$WORK/new-primary.rows"
# The failover figures from loadgen's record of every PUT (one JSON line each).
figures=$(jq -sc --argjson fail "$t_fail" --argjson down "$t_down" --rawfile rows "$WORK/new-primary.rows" '
  ($rows | split("\n") | map(select(. != "") | split("|") | {(.[0]): .[1]}) | add // {}) as $db
  | (map(select(.status == 204))) as $acked
  | (map(select(.status != 204))) as $failed
  | ($acked | map(select(.t_start > $down))) as $on_new
  | def r3: . * 1000 | round / 1000;
  {requests: length,
   acknowledged: ($acked | length),
   acknowledged_before_failover: ($acked | map(select(.t_end < $fail)) | length),
   acknowledged_by_new_primary: ($on_new | length),
   acknowledged_missing: ($acked | map(select($db[.user] != .dob)) | length),
   failed_requests: ($failed | length),
   failed_before_failover: ($failed | map(select(.t_end < $fail)) | length),
   failed_statuses: ($failed | map(.status | tostring) | unique),
   error_window_seconds: (if $failed == [] then 0 else (($failed | map(.t_end) | max) - ($failed | map(.t_start) | min)) | r3 end),
   first_failure_after_stop_seconds: (if $failed == [] then null else (($failed | map(.t_start) | min) - $fail) | r3 end),
   last_failure_after_stop_seconds: (if $failed == [] then null else (($failed | map(.t_end) | max) - $fail) | r3 end),
   first_write_on_new_primary_seconds: (if $on_new == [] then null else (($on_new | map(.t_end) | min) - $fail) | r3 end)}
' "$WORK/load.jsonl")
echo "$figures"
[ "$(jq .acknowledged_missing <<<"$figures")" = 0 ] || fail "acknowledged PUTs are missing on the new primary"
[ "$(jq .failed_before_failover <<<"$figures")" = 0 ] || fail "PUTs failed before the primary was stopped"
[ "$(jq '.acknowledged_before_failover > 0 and .acknowledged_by_new_primary > 0' <<<"$figures")" = true ] \
  || fail "need acknowledged writes both before and after the failover"
"$LOADGEN" check "$WORK/load.jsonl" --url "$(svc_url api)" --db-rows "$WORK/new-primary.rows"
up=$(curl -fsS "$(svc_metrics api)/metrics" | awk '$1 == "hello_birthday_db_up" { print $2 }')
[ "$up" = 1 ] || fail "hello_birthday_db_up is '$up' after the failover"
service_stop api

promote_s=$(elapsed "$t_fail" "$t_promoted")
ready_s=$(elapsed "$t_fail" "$t_ready")
log "PASS failover drill: $(jq -r '"\(.acknowledged) PUTs acknowledged (\(.acknowledged_before_failover) before the primary stopped), 0 missing on the new primary; \(.failed_requests) failed requests (\(.failed_statuses | join(","))), error window \(.error_window_seconds)s, first write on the new primary acknowledged \(.first_write_on_new_primary_seconds)s after the stop began"' <<<"$figures"); promote ${promote_s}s, ready again after ${ready_s}s"
if [ -n "${DRILL_RESULTS:-}" ]; then
  jq -c --argjson promote_s "$promote_s" --argjson ready_s "$ready_s" \
    '{drill: "failover"} + . + {promote_seconds: $promote_s, ready_after_seconds: $ready_s}' \
    <<<"$figures" >>"$DRILL_RESULTS"
fi
