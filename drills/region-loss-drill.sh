#!/usr/bin/env bash
# Region-loss drill: "Region A" is a PostgreSQL cluster archiving its WAL
# with pgBackRest (deploy/pgbackrest/) to a repository that stands for
# another Region, the service on it, and steady write load recording every
# acknowledged write with its time. Region A is destroyed at once (kill -9
# of PostgreSQL, its archiver and the service; data directory deleted).
# "Region B" is built from nothing: restore.sh --pitr --latest from the
# repository alone, PostgreSQL started, the service started, load sent to
# it. Measures the RPO (acknowledged writes missing in B, and the time they
# cover) and the RTO (loss to the first 2xx from B's /readyz, by step), and
# fails beyond RPO 60 s or RTO 300 s. Then restores once more to a time in
# the middle of the load (--to-time) and checks that exactly the writes
# acknowledged before it are there, and refuses bad input.
set -euo pipefail

usage() {
  cat <<'USAGE'
Usage: drills/region-loss-drill.sh [--load-seconds N] [--rate N] [--archive-timeout S]
                                   [--save-example]

  --load-seconds N     write load on Region A before the loss (default 16),
                       plus a random 0 to archive_timeout seconds: the loss
                       falls anywhere between two WAL switches
  --rate N             PUTs per second (default 100)
  --archive-timeout S  PostgreSQL archive_timeout in seconds (default: the
                       10 s of deploy/pgbackrest/postgresql.archive.conf)
  --save-example       copy the timeline picture and the figures to
                       drills/examples/region-loss.{png,json}

Environment: HELLO_BIRTHDAY_BIN, LOADGEN_BIN (built if unset), DRILL_RESULTS
(append a JSON line of figures), DRILL_KEEP=1 (keep the temp dir).
USAGE
}

# shellcheck source=drills/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

load_seconds=16 rate=100 archive_timeout="" save_example=0
while [ $# -gt 0 ]; do
  case "$1" in
    --load-seconds) optarg load_seconds "$@"; shift 2 ;;
    --rate) optarg rate "$@"; shift 2 ;;
    --archive-timeout) optarg archive_timeout "$@"; shift 2 ;;
    --save-example) save_example=1; shift ;;
    -h|--help) usage; exit 0 ;;
    *) usage >&2; exit 2 ;;
  esac
done
[[ "$load_seconds" =~ ^[0-9]+$ && "$load_seconds" -ge 10 ]] || fail "--load-seconds must be 10 or more"
archive_timeout=${archive_timeout:-$(sed -n 's/^archive_timeout = \([0-9]*\)s$/\1/p' "$DRILL_ROOT/deploy/pgbackrest/postgresql.archive.conf")}
[[ "$archive_timeout" =~ ^[1-9][0-9]*$ ]] || fail "archive_timeout must be whole seconds"

# The targets, and what archive_timeout promises: a restore that lost more
# than archive_timeout + 5 s of writes means the archive lags or stopped.
RPO_MAX=60 RTO_MAX=300 RPO_ARCHIVE_MAX=$(( archive_timeout + 5 ))
[ "$load_seconds" -gt "$RPO_ARCHIVE_MAX" ] || fail "--load-seconds must exceed archive_timeout + 5 s, or a restore of the base backup alone would pass"
STANZA=hello-birthday
PW='region pw'
PW_URL='region%20pw'
require pgbackrest jq curl psql "$PY"
"$PY" -c 'import matplotlib' 2>/dev/null || fail "matplotlib missing in .venv (scripts/setup.sh dev)"
build_service
drill_workdir
trap drill_cleanup EXIT
log "region-loss drill in $WORK: load ${load_seconds}s at ${rate}/s, archive_timeout ${archive_timeout}s"

# The repository: Region B's store, the only thing that outlives Region A.
REPO=$WORK/repo
mkdir -p "$REPO"
chown postgres: "$REPO"

# pgbr_conf REGION PORT: deploy/pgbackrest/pgbackrest.conf with this drill's
# paths, written to $WORK/REGION/pgbackrest.conf (printed).
pgbr_conf() {
  local dir=$WORK/$1 f=$WORK/$1/pgbackrest.conf
  mkdir -p "$dir/pgbackrest"
  chown postgres: "$dir" "$dir/pgbackrest"
  sed -e "s|^repo1-path=.*|repo1-path=$REPO|" \
    -e "s|^\(log\|lock\|spool\)-path=.*|\1-path=$dir/pgbackrest|" \
    -e "s|^pg1-path=.*|pg1-path=$dir/data|" -e "s|^pg1-port=.*|pg1-port=$2|" \
    -e "s|^pg1-socket-path=.*|pg1-socket-path=$dir|" \
    "$DRILL_ROOT/deploy/pgbackrest/pgbackrest.conf" >"$f"
  chmod 0644 "$f"
  printf '%s\n' "$f"
}
app_url() { printf 'postgres://hb:%s@127.0.0.1:%s/hb\n' "$PW_URL" "$1"; }
load_ok() { jq -r .ok "$1" 2>/dev/null || echo 0; }
load_ok_over() { [ "$(load_ok "$1")" -ge "$2" ]; }

# ------------------------------------------------------------- Region A
pg_init "$WORK/a" --auth-host scram-sha-256 || fail "initdb"
PORT_A=$(pg_port "$WORK/a")
CONF_A=$(pgbr_conf a "$PORT_A")
pg_archiving "$WORK/a" "$CONF_A" "${archive_timeout}s"
pg_start "$WORK/a" || fail "PostgreSQL (Region A) did not start"
pg_app_db "$WORK/a" hb "$PW" hb
t_backup=$(now)
label=$("$DRILL_ROOT/scripts/backup.sh" --pitr --type full --config "$CONF_A") || fail "backup.sh --pitr"
t_backup_done=$(now)
log "base backup $label in $(elapsed "$t_backup" "$t_backup_done")s"
# A second call finds the stanza and takes an incremental: idempotent.
"$DRILL_ROOT/scripts/backup.sh" --pitr --type incr --config "$CONF_A" >/dev/null || fail "second backup.sh --pitr"
service_start a "$(app_url "$PORT_A")"
log "Region A: PostgreSQL 127.0.0.1:$PORT_A, service $(svc_url a)"

"$LOADGEN" run --url "$(svc_url a)" --fresh-users --put-ratio 1 --prefix rega --connections 4 --rate "$rate" \
  --timeout-ms 3000 --duration $(( load_seconds + 60 )) --max-failures 1000000 --no-verify \
  --stop-file "$WORK/stop-a" --status "$WORK/load-a.status" --writes "$WORK/load-a.jsonl" \
  >"$WORK/load-a.log" 2>&1 &
load_a=$!
DRILL_PIDS+=("$load_a")
t_load=$(now)
wait_until 30 load_ok_over "$WORK/load-a.status" 20 || fail "timed out after 30s waiting for writes on Region A"

# The --to-time target: a moment in the first half of the load. Its WAL
# segment must be archived before the loss, or no restore can reach it.
sleep_until() { awk -v t="$1" -v n="$EPOCHREALTIME" 'BEGIN { exit !(n >= t) }'; }
wait_until 60 sleep_until "$(awk -v t="$t_load" -v l="$load_seconds" 'BEGIN { printf "%.6f", t + l * 0.4 }')"
t_mid=$(now)
seg_mid=$(pg_psql "$WORK/a" -d postgres -At -c "SELECT pg_walfile_name(pg_current_wal_lsn())")
archived() { [ -n "$(find "$REPO/archive" -name "$seg_mid-*" -print -quit)" ]; }
wait_until $(( archive_timeout * 3 + 10 )) archived || fail "segment $seg_mid (at the --to-time target) was not archived within $(( archive_timeout * 3 + 10 ))s"
log "target for --to-time: $(date -u -d "@$t_mid" '+%H:%M:%S.%3N') (segment $seg_mid, archived)"
jitter=$(awk -v r="$RANDOM" -v a="$archive_timeout" 'BEGIN { printf "%.3f", r / 32768 * a }')
log "the loss comes ${load_seconds}s + ${jitter}s after the load started"
wait_until 120 sleep_until "$(awk -v t="$t_load" -v l="$load_seconds" -v j="$jitter" 'BEGIN { printf "%.6f", t + l + j }')"

# --------------------------------------------------------------- the loss
# Every process of Region A at once: the postmaster and all its children
# (archiver, an archive-push in flight), and the service.
descendants() {
  local p
  for p in $(ps -o pid= --ppid "$1"); do printf '%s\n' "$p"; descendants "$p"; done
}
pm=$(pg_pid "$WORK/a")
mapfile -t victims < <(printf '%s\n' "$pm" "$(svc_pid a)"; descendants "$pm")
# (disowned first: bash would report the service's "Killed" as an error)
disown "$(svc_pid a)"
t_loss=$(now)
kill -9 "${victims[@]}" 2>/dev/null || true
rm -rf "$WORK/a"
touch "$WORK/stop-a"
log "LOSS: killed ${#victims[@]} processes of Region A (PostgreSQL $pm, service $(svc_pid a)), deleted its data directory"

# ------------------------------------------------------------- Region B
PORT_B=$(free_port)
CONF_B=$(pgbr_conf b "$PORT_B")
printf 'PG_PORT=%s\nPG_USER=postgres\nPG_PASSWORD=\n' "$PORT_B" >"$WORK/b/pg.env"
"$DRILL_ROOT/scripts/restore.sh" --pitr --latest --config "$CONF_B" --pg-data "$WORK/b/data" \
  --set "port=$PORT_B" --set "unix_socket_directories=$WORK/b" \
  --set "archive_command=pgbackrest --config=$CONF_B --stanza=$STANZA archive-push %p" \
  --start --log "$WORK/b/server.log" --report "$WORK/restore-b.json" || fail "restore.sh --pitr --latest"
t_db=$(now)
service_start b "$(app_url "$PORT_B")"
readyz() { curl -fsS -m 2 -o /dev/null "$(svc_url b)/readyz"; }
wait_until 60 readyz || fail "Region B's service never answered /readyz with 2xx"
t_first_2xx=$(now)
rto=$(elapsed "$t_loss" "$t_first_2xx")
log "Region B answers: first 2xx from /readyz $rto s after the loss"
# Region A's load client ends with its last requests failed (after the RTO:
# it is not part of the recovery).
wait "$load_a" || fail "load client of Region A failed: $(tail -n 5 "$WORK/load-a.log")"

"$LOADGEN" run --url "$(svc_url b)" --fresh-users --put-ratio 1 --prefix regb --connections 4 --rate "$rate" \
  --duration 3 --status "$WORK/load-b.status" --writes "$WORK/load-b.jsonl" >"$WORK/load-b.log" 2>&1 \
  || fail "load on Region B failed: $(tail -n 5 "$WORK/load-b.log")"
acked_b=$(load_ok "$WORK/load-b.status")
[ "$acked_b" -gt 0 ] || fail "no write acknowledged by Region B"
log "Region B took $acked_b writes, all read back"

# RPO: what Region B lacks of what Region A acknowledged.
DATABASE_URL=$(app_url "$PORT_B") "$DRILL_ROOT/scripts/restore.sh" --verify-writes "$WORK/load-a.jsonl" \
  --report "$WORK/verify-b.json" || fail "Region B contradicts Region A's acknowledged writes"
read -r acked missing span first_missing last_acked < <(jq -r \
  '[.acknowledged, .missing, .missing_span_seconds, (.missing_first_t_end // "none"), .last_acknowledged_t_end] | map(tostring) | join(" ")' \
  "$WORK/verify-b.json")
rpo_window=0
[ "$first_missing" = none ] || rpo_window=$(elapsed "$first_missing" "$t_loss")
span=$(awk -v s="$span" 'BEGIN { printf "%.3f", s }')
read -r s_restore s_start s_replay < <(jq -r '.seconds | "\(.restore) \(.start) \(.replay)"' "$WORK/restore-b.json")
s_ready=$(elapsed "$t_db" "$t_first_2xx")
s_setup=$(awk -v r="$rto" -v a="$s_restore" -v b="$s_start" -v c="$s_replay" -v d="$s_ready" 'BEGIN { printf "%.3f", r - a - b - c - d }')
log "RPO: $missing of $acked acknowledged writes missing in Region B, spanning ${span}s; first missing write acknowledged ${rpo_window}s before the loss (archive_timeout ${archive_timeout}s)"
log "RTO: ${rto}s from the loss to the first 2xx (restore ${s_restore}s, start ${s_start}s, replay ${s_replay}s, service ready ${s_ready}s, set-up of Region B (incl. deleting A) ${s_setup}s)"
awk -v w="$rpo_window" -v m="$RPO_MAX" 'BEGIN { exit !(w <= m) }' || fail "RPO ${rpo_window}s is over ${RPO_MAX}s"
awk -v r="$rto" -v m="$RTO_MAX" 'BEGIN { exit !(r <= m) }' || fail "RTO ${rto}s is over ${RTO_MAX}s"
awk -v w="$rpo_window" -v m="$RPO_ARCHIVE_MAX" 'BEGIN { exit !(w <= m) }' \
  || fail "RPO ${rpo_window}s is over archive_timeout + 5 s (${RPO_ARCHIVE_MAX}s): the WAL archive lags or stopped"

# ------------------------------------------------- a point in the middle
PORT_C=$(free_port)
mkdir -p "$WORK/c"
chown postgres: "$WORK/c"
printf 'PG_PORT=%s\nPG_USER=postgres\nPG_PASSWORD=\n' "$PORT_C" >"$WORK/c/pg.env"
to_time=$(date -u -d "@$t_mid" '+%Y-%m-%d %H:%M:%S.%6N+00')
"$DRILL_ROOT/scripts/restore.sh" --pitr --to-time "$to_time" --config "$CONF_B" --pg-data "$WORK/c/data" \
  --set "port=$PORT_C" --set "unix_socket_directories=$WORK/c" --set archive_mode=off \
  --start --log "$WORK/c/server.log" --verify-writes "$WORK/load-a.jsonl" --database-url "$(app_url "$PORT_C")" \
  --report "$WORK/restore-c.json" || fail "restore.sh --pitr --to-time '$to_time'"
read -r c_expected c_flight c_flight_kept c_after < <(jq -r '.verify | "\(.expected) \(.in_flight) \(.in_flight_present) \(.after_target_present)"' "$WORK/restore-c.json")
[ "$c_expected" -gt 0 ] || fail "no write acknowledged before the --to-time target"
[ "$c_after" = 0 ] || fail "$c_after writes sent after the --to-time target are in the restore"
pg_stop "$WORK/c" immediate
log "--to-time $to_time: all $c_expected writes acknowledged before it present, none sent after it; $c_flight in flight ($c_flight_kept kept)"

# ------------------------------------------------------------ bad input
# refused HOW PATTERN ARGS...: restore.sh --pitr must fail with PATTERN.
refused() {
  local how=$1 pattern=$2 err="$WORK/refused.err"
  shift 2
  if "$DRILL_ROOT/scripts/restore.sh" --pitr "$@" 2>"$err" >/dev/null; then fail "restore.sh accepted $how"; fi
  grep -q -- "$pattern" "$err" || fail "restore.sh refused $how for another reason: $(cat "$err")"
  [ ! -e "$WORK/x" ] || fail "restore.sh wrote to $WORK/x while refusing $how"
  log "refused $how: $(tail -n1 "$err")"
}
sed "s|^repo1-path=.*|repo1-path=$WORK/no-such-repo|" "$CONF_B" >"$WORK/missing-repo.conf"
refused "a time in the future" "is in the future" --to-time "$(date -u -d '+1 hour' '+%Y-%m-%d %H:%M:%S+00')" --config "$CONF_B" --pg-data "$WORK/x"
refused "a time before the oldest backup" "before the end of the oldest backup" \
  --to-time "$(date -u -d "@$(awk -v t="$t_backup" 'BEGIN { printf "%d", t - 60 }')" '+%Y-%m-%d %H:%M:%S+00')" --config "$CONF_B" --pg-data "$WORK/x"
refused "a time without a zone" "a zone is required" --to-time "$(date -u '+%Y-%m-%d %H:%M:%S')" --config "$CONF_B" --pg-data "$WORK/x"
refused "a missing repository" "no usable pgBackRest repository" --latest --config "$WORK/missing-repo.conf" --pg-data "$WORK/x"
refused "a non-empty data directory" "is not empty" --latest --config "$CONF_B" --pg-data "$WORK/b/data"

# -------------------------------------------------------------- figures
summary="$WORK/region-loss.json"
jq -n --argjson archive_timeout "$archive_timeout" --argjson rate "$rate" \
  --argjson t_load "$t_load" --argjson t_mid "$t_mid" --argjson t_loss "$t_loss" \
  --argjson t_db "$t_db" --argjson t_first_2xx "$t_first_2xx" --argjson backup_done "$t_backup_done" \
  --argjson acked "$acked" --argjson missing "$missing" --argjson span "$span" --argjson window "$rpo_window" \
  --argjson last_acked "$last_acked" --argjson rto "$rto" --argjson acked_b "$acked_b" \
  --argjson s_ready "$s_ready" --argjson s_setup "$s_setup" \
  --argjson c_expected "$c_expected" --argjson c_flight "$c_flight" --argjson c_flight_kept "$c_flight_kept" \
  --slurpfile b "$WORK/restore-b.json" \
  '{drill: "region-loss", archive_timeout_seconds: $archive_timeout, rate: $rate,
    acknowledged: $acked, acknowledged_missing: $missing, missing_span_seconds: $span,
    rpo_seconds: $window, rto_seconds: $rto,
    rto_steps: ($b[0].seconds + {ready: $s_ready, setup: $s_setup}),
    region_b_acknowledged: $acked_b,
    to_time_expected: $c_expected, to_time_in_flight: $c_flight, to_time_in_flight_kept: $c_flight_kept,
    at: {backup_done: $backup_done, load: $t_load, to_time: $t_mid, loss: $t_loss,
         restore_begin: $b[0].at.begin, restored: $b[0].at.restored, started: $b[0].at.started, promoted: $b[0].at.promoted,
         db_ready: $t_db, first_2xx: $t_first_2xx, last_acknowledged: $last_acked}}' >"$summary"
"$PY" "$DRILL_ROOT/drills/region-loss-plot.py" --summary "$summary" --writes-a "$WORK/load-a.jsonl" \
  --writes-b "$WORK/load-b.jsonl" --out "$WORK/region-loss.png" || fail "timeline picture"
[ "$(head -c 8 "$WORK/region-loss.png" | od -An -tx1 | tr -d ' \n')" = 89504e470d0a1a0a ] || fail "region-loss.png is not a PNG"
if [ "$save_example" = 1 ]; then
  mkdir -p "$DRILL_ROOT/drills/examples"
  cp "$WORK/region-loss.png" "$DRILL_ROOT/drills/examples/region-loss.png"
  jq 'del(.at)' "$summary" >"$DRILL_ROOT/drills/examples/region-loss.json"
  log "example saved to drills/examples/region-loss.{png,json}"
fi

if [ -n "${DRILL_RESULTS:-}" ]; then jq -c 'del(.at)' "$summary" >>"$DRILL_RESULTS"; fi
service_stop b
log "PASS region-loss drill: RPO ${rpo_window}s ($missing writes), RTO ${rto}s"
