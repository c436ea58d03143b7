# shellcheck shell=bash
# Scenario db-restart, sourced by deploy/local/tests/run.sh (it uses its
# stack, helpers and variables: STATE, WORK, REPORT, start_load, stop_load,
# summary, assert_fleet, check, RESULTS; step, fail and pg_bin from the
# shell library).
#
# PostgreSQL is shared by every instance, so its restart must not take any
# instance out of HAProxy (their readiness ignores a shared outage once they
# have connected): under load, stop PostgreSQL, keep it down for
# DB_RESTART_DOWN_SECONDS, start it again, and check that
#   - HAProxy marked no instance DOWN (no UP->DOWN transition, chkdown),
#   - every failed request was a 503 answered by an instance (x-served-by
#     set), never HAProxy's own "no server available",
#   - the client error window lies within the database's own window (from
#     the stop command to PostgreSQL accepting connections again), plus at
#     most DB_RESTART_SLACK_MS for the pools to reconnect,
#   - no acknowledged write was lost, and the load went on afterwards.
# With readiness that followed the database, every instance would go DOWN
# after 2 failed checks (0.5 s) and come back only after 2 passing ones
# plus slow start: the window would outlast the database's.

db_restart_scenario() {
  local down_s=${DB_RESTART_DOWN_SECONDS:-2} slack_ms=${DB_RESTART_SLACK_MS:-500}
  local pg_ctl slot before_down after_down t_stop t_up rel
  step "db-restart: PostgreSQL stopped for ${down_s}s and restarted under $RATE req/s through HAProxy"
  pg_ctl=$(pg_bin pg_ctl) || fail "pg_ctl not found"
  pg() { as_pg "$pg_ctl" "$@"; }
  db_accepts() { pg_isready -q -h 127.0.0.1 -p "$PG_PORT"; }
  db_accepts || fail "PostgreSQL is not up before the scenario"
  rel=$(instance_field "$STATE" s1 release)

  before_down=""
  while read -r slot _; do before_down+="$slot=$(haproxy_stat "$STATE" "$slot" chkdown) "; done < <(instances "$STATE")
  start_load db-restart --max-failures 1000000
  t_stop=$(date +%s.%N)
  pg -D "$PG_DATA" -m fast -w stop >/dev/null || fail "pg_ctl stop failed"
  # The outage itself: the database stays away for a fixed time.
  sleep "$down_s"
  pg -D "$PG_DATA" -l "$STATE/pg/postgres.log" -w -t 30 \
    -o "-p $PG_PORT -k $STATE/pg -c listen_addresses=127.0.0.1 -c max_connections=60 -c shared_buffers=32MB" \
    start >/dev/null 9>&- || fail "PostgreSQL did not start again"
  wait_until 30 db_accepts || fail "PostgreSQL does not accept connections after the restart"
  t_up=$(date +%s.%N)
  # Steady load after the restart, so a slow recovery would show.
  sleep 3
  stop_load db-restart || fail "loadgen: lost writes or wrong answers across the database restart"

  after_down=""
  while read -r slot _; do after_down+="$slot=$(haproxy_stat "$STATE" "$slot" chkdown) "; done < <(instances "$STATE")
  [ "$before_down" = "$after_down" ] \
    || fail "HAProxy marked instances DOWN during the database restart: chkdown $before_down-> $after_down"
  check "no instance marked DOWN by HAProxy (chkdown $after_down)"

  local csv="$REPORT/db-restart.csv" verdict
  verdict=$(awk -F, -v a="$t_stop" -v b="$t_up" -v slack="$slack_ms" '
    NR == 1 { next }
    { total++ }
    $6 == 1 {
      n++
      end = $1 + $2 / 1000
      if (first == "" || $1 < first) first = $1
      if (end > last) last = end
      if ($4 != 503) bad_status++
      if ($5 == "") unserved++
    }
    $6 == 0 && $1 > b + 1 { after++ }
    END {
      db = b - a
      if (n == 0) { printf "ok db_window=%.2fs errors=0 of %d (no request failed)", db, total; exit }
      win = last - first
      ok = (first >= a - 0.05 && last <= b + slack / 1000 && bad_status == 0 && unserved == 0 && after > 0)
      printf "%s db_window=%.2fs error_window=%.2fs (first %+.2fs, last %+.2fs after the database was back) errors=%d of %d, non-503 %d, answered by HAProxy itself %d, successes after %d",
        ok ? "ok" : "FAIL", db, win, first - a, last - b, n, total, bad_status + 0, unserved + 0, after + 0
    }' "$csv")
  echo "  $verdict"
  [ "${verdict%% *}" = ok ] || fail "db-restart: $verdict"
  check "client errors only 503 from instances, within the database's own window (+${slack_ms} ms)"
  assert_fleet "$rel"
  RESULTS+=("db-restart: ${verdict#ok }; HAProxy DOWN transitions 0")
}

db_restart_scenario
