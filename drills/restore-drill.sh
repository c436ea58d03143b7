#!/usr/bin/env bash
# Restore drill for one backend: seed users through the API, back up while PUT
# traffic continues, restore into a fresh database, start the service on it
# and check through the API and in the database that every user acknowledged
# before the backup started reads back identically. Also: a backup with one
# flipped byte is refused, a non-empty target is refused without --force,
# an unreadable SQLite target is refused without --force, and --keep
# prunes old backups.
set -euo pipefail

usage() {
  cat <<'USAGE'
Usage: drills/restore-drill.sh --backend sqlite|postgres [--users N]

  --backend   sqlite: database files in a temp dir; postgres: a throwaway
              cluster on 127.0.0.1 (run as the postgres user)
  --users N   users to seed through the API first (default 3000)

Environment: HELLO_BIRTHDAY_BIN (default target/debug/hello-birthday, built
if needed), DRILL_RESULTS (append a JSON line of figures), DRILL_KEEP=1
(keep the temp dir).
USAGE
}

# shellcheck source=drills/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

backend="" users=3000
while [ $# -gt 0 ]; do
  case "$1" in
    --backend) optarg backend "$@"; shift 2 ;;
    --users) optarg users "$@"; shift 2 ;;
    -h|--help) usage; exit 0 ;;
    *) usage >&2; exit 2 ;;
  esac
done
case "$backend" in sqlite|postgres) ;; *) usage >&2; exit 2 ;; esac

require jq sqlite3 curl psql pg_dump pg_restore "$PY"
build_service
drill_workdir
trap drill_cleanup EXIT
log "restore drill ($backend, $users users) in $WORK"

# db_url WHICH: the source, the restore target, or a target for the
# corrupted backup. Each is a fresh, empty database.
PGPASS_APP='drill pw:/@%'   # characters a URL must escape
PGPASS_URL='drill%20pw%3A%2F%40%25'
if [ "$backend" = postgres ]; then
  pg_init "$WORK/pg" --auth-host scram-sha-256 || fail "initdb"
  pg_start "$WORK/pg" || fail "PostgreSQL did not start"
  pg_app_db "$WORK/pg" hb "$PGPASS_APP" hb
  for d in hb_restored hb_corrupt; do pg_psql "$WORK/pg" -d postgres -c "CREATE DATABASE $d OWNER hb" >/dev/null; done
fi
db_url() {
  if [ "$backend" = sqlite ]; then
    printf 'sqlite://%s/%s/hb.db\n' "$WORK" "$1"
  else
    printf 'postgres://hb:%s@127.0.0.1:%s/%s\n' "$PGPASS_URL" "$(pg_port "$WORK/pg")" "$2"
  fi
}
SRC_URL=$(db_url src hb)
DST_URL=$(db_url restored hb_restored)
BAD_URL=$(db_url corrupt hb_corrupt)
mkdir -p "$WORK/src" "$WORK/restored" "$WORK/corrupt"

# query URL SQL: run SQL on a database, rows as a|b lines.
query() {
  if [ "$backend" = sqlite ]; then
    sqlite3 -readonly "${1#sqlite://}" "$2"
  else
    (parse_db_url "$1" >/dev/null; psql -X -A -t -v ON_ERROR_STOP=1 -c "$2")
  fi
}
# db_stats URL: "rows schema checksum", computed with backup.sh's formulas.
db_stats() {
  (
    parse_db_url "$1"
    if [ "$backend" = sqlite ]; then sqlite_stats "$SQLITE_PATH"; else pg_stats; fi
    echo "$STAT_ROWS $STAT_SCHEMA $STAT_SUM"
  )
}
# backup.sh as a library: the URL parser and the checksum formulas.
# shellcheck source=scripts/backup.sh
source "$DRILL_ROOT/scripts/backup.sh"

# 1. The service on the source database, seeded through the API.
service_start src "$SRC_URL"
log "service on ${SRC_URL/:$PGPASS_URL@/:***@} at $(svc_url src)"
seed "$(svc_url src)" "$users" seed "$WORK/seed.jsonl"

# 2. PUT traffic that keeps going while the backup runs.
"$LOADGEN" run --url "$(svc_url src)" --fresh-users --put-ratio 1 --prefix load --connections 2 --rate 400 \
  --duration 120 --stop-file "$WORK/stop" --status "$WORK/load.status" --writes "$WORK/load.jsonl" \
  >"$WORK/load.log" 2>&1 &
load_pid=$!
DRILL_PIDS+=("$load_pid")
load_ok() { jq -r .ok "$WORK/load.status" 2>/dev/null || echo 0; }
load_ok_over() { [ "$(load_ok)" -ge "$1" ]; }
wait_until 30 load_ok_over 50 || fail "timed out after 30s waiting for PUT traffic to start"

# 3. Back up under load.
ok_before=$(load_ok)
t_backup=$(now)
manifest=$(DATABASE_URL=$SRC_URL "$DRILL_ROOT/scripts/backup.sh" --to "$WORK/backups")
backup_seconds=$(elapsed "$t_backup")
ok_after=$(load_ok)
log "backup took ${backup_seconds}s; PUTs acknowledged meanwhile: $(( ok_after - ok_before ))"
[ "$ok_after" -gt "$ok_before" ] || fail "no PUT was acknowledged while the backup ran"
wait_until 30 load_ok_over $(( ok_after + 20 )) || fail "timed out after 30s waiting for more PUT traffic after the backup"
touch "$WORK/stop"
wait "$load_pid" || fail "load client failed: $(tail -n 20 "$WORK/load.log")"
grep '^loadgen: [0-9]' "$WORK/load.log"
m_rows=$(jq -r .row_count "$manifest")
m_sum=$(jq -r .checksum "$manifest")
m_schema=$(jq -r .schema_version "$manifest")
m_bytes=$(jq -r .bytes "$manifest")
[ "$m_rows" -ge "$users" ] || fail "manifest counts $m_rows rows, fewer than the $users seeded"

# 4. Restore into a fresh database.
restore_out=$(DATABASE_URL=$DST_URL "$DRILL_ROOT/scripts/restore.sh" --from "$manifest")
echo "$restore_out"
restore_seconds=$(sed -n 's/^restore time: \([0-9.]*\) s.*/\1/p' <<<"$restore_out")
[ -n "$restore_seconds" ] || fail "restore.sh printed no restore time"

# 5. The service starts on the restored database: its migrations must find
# themselves applied (schema_migrations unchanged, applied_at included).
migrations_before=$(query "$SRC_URL" "SELECT version || '|' || description || '|' || applied_at FROM schema_migrations ORDER BY version")
service_start restored "$DST_URL"
migrations_after=$(query "$DST_URL" "SELECT version || '|' || description || '|' || applied_at FROM schema_migrations ORDER BY version")
[ "$migrations_before" = "$migrations_after" ] \
  || fail "schema_migrations changed on start-up: '$migrations_before' -> '$migrations_after'"
read -r r_rows r_schema r_sum <<<"$(db_stats "$DST_URL")"
[ "$r_rows $r_schema $r_sum" = "$m_rows $m_schema $m_sum" ] \
  || fail "restored database ($r_rows $r_schema $r_sum) differs from the manifest ($m_rows $m_schema $m_sum)"
log "restored database matches the manifest after the service started: $r_rows rows, checksum ${r_sum:0:16}..."

# 6. Every user acknowledged before the backup started: same body through the
# API as from the source service, exact date in the restored rows.
query "$DST_URL" "SELECT username || '|' || date_of_birth FROM users" >"$WORK/restored.rows"
acked_load=$(jq -s --argjson t "$t_backup" '[.[] | select(.status == 204 and .t_end < $t)] | length' "$WORK/load.jsonl")
"$LOADGEN" check --url "$(svc_url restored)" --reference "$(svc_url src)" \
  "$WORK/seed.jsonl" "$WORK/load.jsonl" --acked-before "$t_backup" \
  --db-rows "$WORK/restored.rows"

# 7. A non-empty target is refused without --force.
if DATABASE_URL=$DST_URL "$DRILL_ROOT/scripts/restore.sh" --from "$manifest" 2>"$WORK/refuse.err"; then
  fail "restore.sh restored over a non-empty database without --force"
fi
grep -q "REFUSED: the target holds" "$WORK/refuse.err" || fail "unexpected refusal: $(cat "$WORK/refuse.err")"
log "restore over a non-empty database refused without --force"
if [ "$backend" = sqlite ]; then
  # A target that cannot be read is not an empty one: refused, left as it was.
  mkdir -p "$WORK/garbage"
  printf 'not a database\n%.0s' {1..64} >"$WORK/garbage/hb.db"
  before=$(sha256sum <"$WORK/garbage/hb.db")
  if DATABASE_URL="sqlite://$WORK/garbage/hb.db" "$DRILL_ROOT/scripts/restore.sh" --from "$manifest" \
    2>"$WORK/garbage.err"; then
    fail "restore.sh replaced an unreadable target without --force"
  fi
  grep -q "cannot inspect the target database" "$WORK/garbage.err" \
    || fail "unexpected refusal: $(cat "$WORK/garbage.err")"
  [ "$(sha256sum <"$WORK/garbage/hb.db")" = "$before" ] || fail "the unreadable target was changed"
  log "restore over an unreadable SQLite target refused without --force, file unchanged"
fi
service_stop restored
DATABASE_URL=$DST_URL "$DRILL_ROOT/scripts/restore.sh" --from "$manifest" --force >/dev/null
log "restore --force over the same database passed its verification"

# 8. One flipped byte in the middle of a copy of the backup: refused, and
# the target stays empty.
mkdir -p "$WORK/bad"
id=$(jq -r .id "$manifest")
file=$(jq -r .file "$manifest")
cp "$manifest" "$WORK/backups/$file" "$WORK/bad/"
"$PY" - "$WORK/bad/$file" <<'PY'
import os, sys
path = sys.argv[1]
with open(path, "r+b") as f:
    f.seek(os.path.getsize(path) // 2)
    b = f.read(1)
    f.seek(-1, 1)
    f.write(bytes([b[0] ^ 0x01]))
PY
if DATABASE_URL=$BAD_URL "$DRILL_ROOT/scripts/restore.sh" --from "$WORK/bad/$id.manifest.json" 2>"$WORK/bad.err"; then
  fail "restore.sh accepted a backup with a flipped byte"
fi
grep -q "is corrupt" "$WORK/bad.err" || fail "corrupt backup failed for another reason: $(cat "$WORK/bad.err")"
if [ "$backend" = sqlite ]; then
  [ ! -e "${BAD_URL#sqlite://}" ] || fail "the refused restore created ${BAD_URL#sqlite://}"
else
  [ "$(query "$BAD_URL" "SELECT count(*) FROM pg_tables WHERE schemaname = 'public'")" = 0 ] \
    || fail "the refused restore wrote tables"
fi
log "backup with one flipped byte refused: $(grep -o 'REFUSED.*is corrupt' "$WORK/bad.err")"

# 9. Retention: two more backups with --keep 2 leave exactly two, nothing else.
for _ in 1 2; do DATABASE_URL=$SRC_URL "$DRILL_ROOT/scripts/backup.sh" --to "$WORK/backups" --keep 2 >/dev/null; done
left=$(find "$WORK/backups" -type f | wc -l)
if [ "$(find "$WORK/backups" -name '*.manifest.json' | wc -l)" != 2 ] || [ "$left" != 4 ]; then
  fail "--keep 2 left: $(ls -A "$WORK/backups")"
fi
[ ! -e "$WORK/backups/$id.manifest.json" ] || fail "--keep 2 kept the oldest backup"
log "retention --keep 2 left 2 backups (4 files)"

service_stop src
log "PASS restore drill ($backend): $users seeded + $acked_load load users acknowledged before the backup read back identically; manifest $m_rows rows; backup ${backup_seconds}s; restore ${restore_seconds}s"
if [ -n "${DRILL_RESULTS:-}" ]; then
  jq -cn --arg backend "$backend" --argjson seeded "$users" --argjson acked_load "$acked_load" \
    --argjson rows "$m_rows" --argjson backup_s "$backup_seconds" --argjson restore_s "$restore_seconds" \
    --argjson bytes "$m_bytes" \
    '{drill: "restore", backend: $backend, seeded: $seeded, load_acked_before_backup: $acked_load,
      manifest_rows: $rows, backup_bytes: $bytes, backup_seconds: $backup_s, restore_seconds: $restore_s,
      corrupt_refused: true, nonempty_refused: true, retention_ok: true}' >>"$DRILL_RESULTS"
fi
