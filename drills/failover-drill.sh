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
    --concurrency) concurrency=${2:?}; shift 2 ;;
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
pg_create primary
pg_conf primary "synchronous_commit = on" "wal_level = replica" "max_wal_senders = 4"
pg_start primary
pg_app_db primary hb 'failover drill' hb

# 2. Standby: a base backup of the primary that streams from it. It names
# itself standby1 (cluster_name is the walreceiver's application_name) and,
# once promoted, must not wait for a standby of its own.
standby_port=$(free_port)
pg_set_port standby "$standby_port"
mkdir -p "$WORK/standby/sock"
[ "$(id -u)" -ne 0 ] || chown -R postgres:postgres "$WORK/standby"
as_postgres pg_basebackup -h "$WORK/primary/sock" -p "$(pg_port primary)" -U postgres \
  -D "$WORK/standby/data" -R -X stream --checkpoint=fast
pg_conf standby "port = $standby_port" "unix_socket_directories = '$WORK/standby/sock'" \
  "cluster_name = 'standby1'" "synchronous_standby_names = ''"
pg_start standby
# From now on a commit is acknowledged only once standby1 has flushed it.
pg_psql primary -d postgres -At -c "ALTER SYSTEM SET synchronous_standby_names = 'standby1'" -c "SELECT pg_reload_conf()" >/dev/null
sync_standby() {
  [ "$(pg_psql primary -d postgres -At -c \
    "SELECT count(*) FROM pg_stat_replication WHERE application_name = 'standby1' AND state = 'streaming' AND sync_state = 'sync'")" = 1 ]
}
wait_until 30 "standby1 to stream synchronously" sync_standby
log "primary :$(pg_port primary), synchronous standby :$standby_port streaming"

# 3. The address the service uses, pointing at the primary.
proxy_port=$(free_port)
echo "127.0.0.1:$(pg_port primary)" >"$WORK/db-target"
"$PY" "$DRILL_ROOT/drills/tcpproxy.py" --listen-port "$proxy_port" --target-file "$WORK/db-target" \
  >"$WORK/proxy.log" 2>&1 &
DRILL_PIDS+=("$!")
wait_until 10 "the database address :$proxy_port" grep -q listening "$WORK/proxy.log"

service_start api "postgres://hb:failover%20drill@127.0.0.1:$proxy_port/hb"
svc_pid=$(svc_pid api)
ready() { curl -fsS -m 2 "$(svc_url api)/readyz" >/dev/null; }
wait_until 30 "the service to be ready" ready
log "service at $(svc_url api), database via 127.0.0.1:$proxy_port"

# 4. Write load, then the failure.
"$PY" "$HBCLIENT" --timeout 3 load --base "$(svc_url api)" --concurrency "$concurrency" \
  --stop-file "$WORK/stop" --status "$WORK/load.status" --out "$WORK/load.jsonl" \
  --max-seconds 150 >"$WORK/load.log" 2>&1 &
load_pid=$!
DRILL_PIDS+=("$load_pid")
load_field() { jq -r ".$1" "$WORK/load.status" 2>/dev/null || echo 0; }
acked_at_least() { [ "$(load_field ok)" -ge "$1" ]; }
wait_until 30 "PUT traffic to start" acked_at_least 300

sync_standby || fail "standby1 is no longer synchronous"
t_fail=$(now)
pg_stop primary immediate
t_down=$(now)
log "primary stopped (immediate) after $(load_field ok) acknowledged PUTs"
as_postgres "$(pg_server_bin pg_ctl)" -D "$WORK/standby/data" -w -t 30 promote >/dev/null
t_promoted=$(now)
echo "127.0.0.1:$standby_port" >"$WORK/db-target.new"
mv "$WORK/db-target.new" "$WORK/db-target"
t_switched=$(now)
log "standby promoted in $(elapsed "$t_fail" "$t_promoted")s; database address flipped to :$standby_port"

# 5. The same service process must recover on its own: readiness back and
# another 300 writes acknowledged after the flip.
ok_at_switch=$(load_field ok)
wait_until 60 "the service to be ready again" ready
t_ready=$(now)
acked_after_flip() { acked_at_least $(( ok_at_switch + 300 )) && \
  awk -v a="$(load_field last_ok)" -v b="$t_switched" 'BEGIN { exit !(a > b) }'; }
wait_until 60 "300 more PUTs acknowledged after the flip" acked_after_flip
touch "$WORK/stop"
wait "$load_pid" || fail "load client: $(cat "$WORK/load.log")"
cat "$WORK/load.log"
kill -0 "$svc_pid" 2>/dev/null || fail "the service process died"

# 6. Every acknowledged PUT is on the new primary and reads back.
[ "$(pg_psql standby -d hb -At -c 'SELECT pg_is_in_recovery()')" = f ] || fail "standby not promoted"
pg_psql standby -d hb -At -c "SELECT username || '|' || date_of_birth FROM users" >"$WORK/new-primary.rows"
figures=$("$PY" "$HBCLIENT" window --load "$WORK/load.jsonl" --db-rows "$WORK/new-primary.rows" --failover-at "$t_fail" --down-at "$t_down")
echo "$figures"
"$PY" "$HBCLIENT" verify --base "$(svc_url api)" --load "$WORK/load.jsonl" --db-rows "$WORK/new-primary.rows"
db_up=$(curl -fsS "$(svc_metrics api)/metrics" | awk '$1 == "db_up" { print $2 }')
[ "$db_up" = 1 ] || fail "db_up is '$db_up' after the failover"
service_stop api

promote_s=$(elapsed "$t_fail" "$t_promoted")
ready_s=$(elapsed "$t_fail" "$t_ready")
log "PASS failover drill: $(jq -r '"\(.acknowledged) PUTs acknowledged (\(.acknowledged_before_failover) before the primary stopped), 0 missing on the new primary; \(.failed_requests) failed requests (\(.failed_statuses | join(","))), error window \(.error_window_seconds)s, first write on the new primary acknowledged \(.first_write_on_new_primary_seconds)s after the stop began"' <<<"$figures"); promote ${promote_s}s, ready again after ${ready_s}s"
if [ -n "${DRILL_RESULTS:-}" ]; then
  jq -c --argjson promote_s "$promote_s" --argjson ready_s "$ready_s" \
    '{drill: "failover"} + . + {promote_seconds: $promote_s, ready_after_seconds: $ready_s}' \
    <<<"$figures" >>"$DRILL_RESULTS"
fi
