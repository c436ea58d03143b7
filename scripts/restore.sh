#!/usr/bin/env bash
# Restore a backup made by backup.sh and prove it: the file's SHA-256 must
# match the manifest before anything is touched, and afterwards the restored
# database must report the manifest's row count, schema version and content
# checksum, or the restore fails.
set -euo pipefail

# shellcheck source=scripts/backup.sh
source "$(dirname "${BASH_SOURCE[0]}")/backup.sh"

restore_usage() {
  cat <<'USAGE'
Usage: scripts/restore.sh --from BACKUP [--database-url URL] [--force]

BACKUP is one of
  DIR or s3://bucket/prefix          the newest complete backup there
  .../ID.manifest.json, .../ID       that backup (local or s3://)
  .../ID.pgdump, .../ID.sqlite3      that backup (its manifest is beside it)

Steps: fetch the manifest and the file, check the file's SHA-256 against the
manifest, refuse a target database that holds users (unless --force),
restore, then recompute row count, schema version and content checksum in
the restored database and fail unless all three match the manifest. Prints
the measured restore time.

  PostgreSQL  pg_restore --clean --if-exists --single-transaction into an
              existing database (all or nothing); objects are owned by the
              restoring role (the service's role, from its DATABASE_URL).
  SQLite      the copy is checked (integrity_check, checksum) beside the
              target, switched to WAL, then renamed over it. Stop the service
              that uses the file first.

Options:
  --from BACKUP        what to restore (see above)
  --database-url URL   target; default $DATABASE_URL (prefer the env variable:
                       a password on the command line is visible in ps)
  --force              replace a database that already holds users
  -h, --help           this text

Environment: as for backup.sh (DATABASE_URL, PGPASSWORD, AWS_*, PG_BINDIR).
USAGE
}

# resolve_backup FROM: sets SRC_DEST (directory or s3:// prefix) and SRC_ID.
resolve_backup() {
  local from=$1 base id=""
  if [ -d "$from" ]; then from=${from%/}/; fi
  case "$from" in
    */) ;;
    *.manifest.json) id=${from##*/}; id=${id%.manifest.json} ;;
    *.pgdump|*.sqlite3) id=${from##*/}; id=${id%.*} ;;
    "$HB_NAME_PREFIX"*|*/"$HB_NAME_PREFIX"*) id=${from##*/} ;;
  esac
  if [ -n "$id" ]; then
    base=${from%/*}
    [ "$base" != "$from" ] || base=.
    SRC_DEST=$base SRC_ID=$id
    return
  fi
  [ -d "$from" ] || is_s3 "$from" || die "no backup at $from"
  from=${from%/}
  SRC_DEST=$from
  SRC_ID=$(store_ids "$SRC_DEST" | tail -n1)
  [ -n "$SRC_ID" ] || die "no complete backup (no manifest) in $from"
}

# target_rows: number of users in the target, 0 when it has no schema yet.
target_rows() {
  if [ "$DB_BACKEND" = sqlite ]; then
    [ -s "$SQLITE_PATH" ] || { echo 0; return; }
    sqlite_q -readonly "$SQLITE_PATH" \
      "SELECT count(*) FROM sqlite_schema WHERE type = 'table' AND name = 'users'" | grep -qx 1 \
      || { echo 0; return; }
    sqlite_q -readonly "$SQLITE_PATH" "SELECT count(*) FROM users"
  else
    if [ "$(echo "SELECT to_regclass('users') IS NOT NULL" | psql_q)" = t ]; then
      echo "SELECT count(*) FROM users" | psql_q
    else
      echo 0
    fi
  fi
}

# check_stats WHERE: STAT_* must equal the manifest's figures.
check_stats() {
  local where=$1 bad=()
  [ "$STAT_ROWS" = "$M_ROWS" ] || bad+=("row count $STAT_ROWS != $M_ROWS")
  [ "$STAT_SCHEMA" = "$M_SCHEMA" ] || bad+=("schema version $STAT_SCHEMA != $M_SCHEMA")
  [ "$STAT_SUM" = "$M_SUM" ] || bad+=("checksum $STAT_SUM != $M_SUM")
  [ ${#bad[@]} -eq 0 ] || die "$where does not match the manifest: ${bad[*]}"
}

restore_sqlite() {
  local file=$1 dir tmp check
  command -v sqlite3 >/dev/null 2>&1 || die "sqlite3 not found (apt-get install sqlite3)"
  dir=$(dirname -- "$SQLITE_PATH")
  mkdir -p -- "$dir"
  # Beside the target, so the final rename is atomic.
  tmp="$dir/.$(basename -- "$SQLITE_PATH").restore-$$"
  RESTORE_CLEAN+=("$tmp" "$tmp-wal" "$tmp-shm" "$tmp-journal")
  cp -- "$file" "$tmp"
  check=$(sqlite_q "$tmp" "PRAGMA integrity_check")
  [ "$check" = ok ] || die "integrity check of the restored copy failed: $check"
  sqlite_stats "$tmp"
  check_stats "the restored copy"
  # The service runs in WAL mode; the backup copy is in rollback mode.
  [ "$(sqlite_q "$tmp" "PRAGMA journal_mode = WAL")" = wal ] || die "cannot switch the copy to WAL"
  sync -- "$tmp"
  # A WAL or shared-memory file left from the old database must not be
  # replayed into the new one.
  rm -f -- "$SQLITE_PATH-wal" "$SQLITE_PATH-shm" "$SQLITE_PATH-journal"
  mv -- "$tmp" "$SQLITE_PATH"
  sync -- "$dir"
  sqlite_stats "$SQLITE_PATH"
}

restore_postgres() {
  local file=$1
  # One transaction: a failed restore leaves the target as it was. --clean
  # drops the (empty, or --force'd) tables of the same names first.
  "$(pg_tool pg_restore)" --clean --if-exists --single-transaction --exit-on-error \
    --no-owner --no-privileges --dbname="${PGDATABASE:?the database URL names no database}" "$file"
  # pg_restore does not carry planner statistics.
  echo "ANALYZE users" | psql_q
  pg_stats
}

restore_main() {
  local from="" url=${DATABASE_URL:-} force=0
  while [ $# -gt 0 ]; do
    case "$1" in
      --from) from=${2:?--from needs a value}; shift 2 ;;
      --from=*) from=${1#*=}; shift ;;
      --database-url) url=${2:?--database-url needs a value}; shift 2 ;;
      --database-url=*) url=${1#*=}; shift ;;
      --force) force=1; shift ;;
      -h|--help) restore_usage; exit 0 ;;
      *) restore_usage >&2; die "unknown argument: $1" ;;
    esac
  done
  [ -n "$from" ] || { restore_usage >&2; die "--from is required"; }
  command -v jq >/dev/null 2>&1 || die "jq not found (apt-get install jq)"
  parse_db_url "$url"

  local t0 t1 t2 t3 stage manifest file sha rows
  t0=$EPOCHREALTIME
  resolve_backup "$from"
  stage=$(mktemp -d "${TMPDIR:-/tmp}/hb-restore.XXXXXX")
  RESTORE_CLEAN=("$stage")
  trap 'rm -rf -- "${RESTORE_CLEAN[@]}"' EXIT

  say "restoring $SRC_ID from $SRC_DEST into $DB_SOURCE"
  manifest="$stage/$SRC_ID.manifest.json"
  store_get "$SRC_DEST" "$SRC_ID.manifest.json" "$manifest" || die "cannot read the manifest of $SRC_ID"
  local m_backend m_file m_sha m_algo fields
  fields=$(jq -r --arg f "$HB_MANIFEST_FORMAT" 'select(.format == $f)
      | [.backend, .file, .sha256, .checksum_algorithm, .row_count, .schema_version, .checksum]
      | map(tostring) | join(" ")' "$manifest") || true
  read -r m_backend m_file m_sha m_algo M_ROWS M_SCHEMA M_SUM <<<"$fields"
  [ -n "${M_SUM:-}" ] || die "$SRC_ID.manifest.json is not a $HB_MANIFEST_FORMAT manifest"
  [ "$m_backend" = "$DB_BACKEND" ] || die "backup is $m_backend, target is $DB_BACKEND"
  local want_algo=$PG_CHECKSUM_ALGORITHM
  [ "$DB_BACKEND" = postgres ] || want_algo=$SQLITE_CHECKSUM_ALGORITHM
  [ "$m_algo" = "$want_algo" ] || die "unknown checksum algorithm $m_algo (this script computes $want_algo)"
  [[ "$m_file" == "$SRC_ID".* && "$m_file" != */* ]] || die "manifest names an unexpected file: $m_file"

  # A local file is verified where it lies; S3 objects are downloaded first.
  if is_s3 "$SRC_DEST"; then
    file="$stage/$m_file"
    store_get "$SRC_DEST" "$m_file" "$file" || die "cannot download $m_file"
  else
    file="$SRC_DEST/$m_file"
    [ -f "$file" ] || die "$file is missing"
  fi
  t1=$EPOCHREALTIME
  sha=$(sha256sum -- "$file" | cut -d' ' -f1)
  [ "$sha" = "$m_sha" ] || die "REFUSED: $m_file is corrupt (sha256 $sha, manifest says $m_sha)"
  say "sha256 of $m_file matches the manifest; expecting $M_ROWS rows, schema v$M_SCHEMA"

  rows=$(target_rows) || die "cannot inspect the target database"
  if [ "$rows" != 0 ] && [ "$force" != 1 ]; then
    die "REFUSED: the target holds $rows users; pass --force to replace them"
  fi
  [ "$rows" = 0 ] || say "--force: replacing $rows users"

  t2=$EPOCHREALTIME
  if [ "$DB_BACKEND" = postgres ]; then restore_postgres "$file"; else restore_sqlite "$file"; fi
  check_stats "the restored database"
  t3=$EPOCHREALTIME

  say "verified: $STAT_ROWS rows, schema v$STAT_SCHEMA, checksum $STAT_SUM"
  printf 'restore time: %s s (fetch %s s, sha256 and target checks %s s, load and verify %s s) for %s rows from %s\n' \
    "$(elapsed_since "$t0" "$t3")" "$(elapsed_since "$t0" "$t1")" "$(elapsed_since "$t1" "$t2")" \
    "$(elapsed_since "$t2" "$t3")" "$STAT_ROWS" "$SRC_ID"
}

restore_main "$@"
