#!/usr/bin/env bash
# Restore timing: how long backup.sh and restore.sh take for N users on each
# backend, the figures behind the RTO of the logical-backup and SQLite-file
# paths in docs/runbooks/backup-restore.md. The schema comes from the service
# (started once on the empty database); the rows are bulk-inserted in SQL,
# since the API would take far longer than the thing measured.
set -euo pipefail

usage() {
  cat <<'USAGE'
Usage: drills/restore-timing.sh [--rows N] [--backend sqlite|postgres|both]

  --rows N     users to generate (default 100000)
  --backend    which backend to time (default both)

Prints one line per backend: rows, backup size, backup and restore seconds
(restore includes the SHA-256 check and the content verification).
Environment: HELLO_BIRTHDAY_BIN, DRILL_RESULTS, DRILL_KEEP as for
restore-drill.sh.
USAGE
}

# shellcheck source=drills/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

rows=100000 backends=(sqlite postgres)
while [ $# -gt 0 ]; do
  case "$1" in
    --rows) optarg rows "$@"; shift 2 ;;
    --backend) case "${2:?}" in both) ;; sqlite|postgres) backends=("$2") ;; *) usage >&2; exit 2 ;; esac; shift 2 ;;
    -h|--help) usage; exit 0 ;;
    *) usage >&2; exit 2 ;;
  esac
done
[[ "$rows" =~ ^[1-9][0-9]*$ ]] || { usage >&2; exit 2; }

require jq sqlite3 psql pg_dump pg_restore "$PY"
build_service
drill_workdir
trap drill_cleanup EXIT

# schema URL: let the service create its schema, then stop it.
schema() {
  service_start "schema$1" "$2"
  service_stop "schema$1"
}

# Letters-only usernames from a number (the PostgreSQL schema checks them).
time_backend() {
  local backend=$1 src dst t0 manifest backup_s restore_out restore_s bytes
  if [ "$backend" = sqlite ]; then
    mkdir -p "$WORK/sqlite"
    src="sqlite://$WORK/sqlite/src.db" dst="sqlite://$WORK/sqlite/dst.db"
    schema 1 "$src"
    sqlite3 "${src#sqlite://}" "WITH RECURSIVE c(i) AS (SELECT 0 UNION ALL SELECT i + 1 FROM c WHERE i < $rows - 1)
      INSERT INTO users SELECT 'u' || char(97 + i % 26, 97 + i / 26 % 26, 97 + i / 676 % 26, 97 + i / 17576 % 26, 97 + i / 456976 % 26, 97 + i / 11881376 % 26),
        date('1940-01-01', '+' || (i * 7919 % 29000) || ' days'), strftime('%Y-%m-%dT%H:%M:%fZ'), strftime('%Y-%m-%dT%H:%M:%fZ') FROM c"
  else
    pg_init "$WORK/pg" --auth-host scram-sha-256 || fail "initdb"
    pg_start "$WORK/pg" || fail "PostgreSQL did not start"
    pg_app_db "$WORK/pg" hb timing hb
    pg_psql "$WORK/pg" -d postgres -c "CREATE DATABASE hb_restored OWNER hb" >/dev/null
    src="postgres://hb:timing@127.0.0.1:$(pg_port "$WORK/pg")/hb" dst="postgres://hb:timing@127.0.0.1:$(pg_port "$WORK/pg")/hb_restored"
    schema 2 "$src"
    pg_psql "$WORK/pg" -d hb -c "INSERT INTO users (username, date_of_birth)
      SELECT 'u' || translate(lpad(i::text, 8, '0'), '0123456789', 'abcdefghij'), date '1940-01-01' + (i::bigint * 7919 % 29000)::int
      FROM generate_series(0, $rows - 1) i" >/dev/null
  fi
  t0=$(now)
  manifest=$(DATABASE_URL=$src "$DRILL_ROOT/scripts/backup.sh" --to "$WORK/backups-$backend" 2>/dev/null)
  backup_s=$(elapsed "$t0")
  bytes=$(jq .bytes "$manifest")
  [ "$(jq .row_count "$manifest")" = "$rows" ] || fail "manifest row count $(jq .row_count "$manifest") != $rows"
  restore_out=$(DATABASE_URL=$dst "$DRILL_ROOT/scripts/restore.sh" --from "$manifest" 2>/dev/null)
  restore_s=$(sed -n 's/^restore time: \([0-9.]*\) s.*/\1/p' <<<"$restore_out")
  [ -n "$restore_s" ] || fail "restore.sh printed no restore time"
  log "$backend: $rows rows, backup ${bytes} bytes in ${backup_s}s, verified restore in ${restore_s}s"
  if [ -n "${DRILL_RESULTS:-}" ]; then
    jq -cn --arg backend "$backend" --argjson rows "$rows" --argjson bytes "$bytes" \
      --argjson backup_s "$backup_s" --argjson restore_s "$restore_s" \
      '{drill: "timing", backend: $backend, rows: $rows, backup_bytes: $bytes,
        backup_seconds: $backup_s, restore_seconds: $restore_s}' >>"$DRILL_RESULTS"
  fi
}

for b in "${backends[@]}"; do time_backend "$b"; done
