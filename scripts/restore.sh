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
       scripts/restore.sh --pitr --to-time TIME|--latest --pg-data DIR [--config FILE]
                          [--stanza NAME] [--set NAME=VALUE]... [--start [--log FILE]]
                          [--verify-writes FILE --database-url URL] [--report FILE]
       scripts/restore.sh --verify-writes FILE [--to-time TIME] [--report FILE] --database-url URL

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
  --database-url URL   target; default: DATABASE_URL, DATABASE_URL_FILE or
                       $CREDENTIALS_DIRECTORY/database-url, read as the service
                       reads them (prefer these: a password on the command
                       line is visible in ps)
  --force              replace a database that already holds users
  -h, --help           this text

Environment: as for backup.sh (DATABASE_URL, DATABASE_URL_FILE, PGPASSWORD, AWS_*,
PG_BINDIR, HELLO_BIRTHDAY_BIN).

Point in time (--pitr, PostgreSQL): restores the whole cluster from the
pgBackRest repository (base backup + WAL archive, see backup.sh --pitr) into
an empty or absent data directory, as the cluster's owner (PITR_OS_USER,
default postgres, when run as root). There is no manifest: verify against a
record of acknowledged writes (--verify-writes).
  --to-time TIME       replay up to TIME, 'YYYY-MM-DD HH:MM:SS[.ffffff]+00'
                       (a zone is required: Z or +HH[:MM]); every transaction
                       committed at or before TIME is kept. Refused: a time in
                       the future, or before the end of the oldest backup.
  --latest             replay every WAL segment in the archive (a Region loss)
  --pg-data DIR        the new data directory (must be empty or absent)
  --config, --stanza   as for backup.sh --pitr
  --set NAME=VALUE     a server setting for the restored cluster, appended to
                       postgresql.auto.conf (e.g. port, unix_socket_directories,
                       archive_command of the new host); repeatable
  --start              start PostgreSQL (pg_ctl) and wait until the replay has
                       ended and the cluster accepts writes
  --log FILE           the server log for --start (default DIR/pitr-start.log)
  --wait SECONDS       deadline for start and replay (default 3600)
  --report FILE        the measured steps (and verification) as JSON

Verification (--verify-writes FILE, with --database-url of the application
database): FILE holds one JSON line per PUT as tools/loadgen run --fresh-users
--writes records it (user, dob, t_start, t_end, status). Every write
acknowledged (2xx) before the target time (--to-time; with --latest, every
one) must be in the users table with its date of birth; a write sent after
the target time must not be there. Writes in flight at the target time may
or may not be. Prints what is missing and the time span it covers; fails on
a wrong value or a write from after the target, and with --to-time on any
missing write. With --latest the missing writes are the data loss (RPO).
A record that writes one user twice is refused. The comparison is
loadgen check --db-rows (tools/loadgen): LOADGEN_BIN, else this checkout's
target/{release,debug} build, else loadgen on PATH.
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
  # Each query captured first: set -e is off in here (the caller tests us
  # with ||), and a failed query (a file that is not a database, a server
  # that refuses) must not read as "no users table", which would let the
  # restore replace the target without --force.
  local has_table
  if [ "$DB_BACKEND" = sqlite ]; then
    [ -s "$SQLITE_PATH" ] || { echo 0; return; }
    has_table=$(sqlite_q -readonly "$SQLITE_PATH" \
      "SELECT count(*) FROM sqlite_schema WHERE type = 'table' AND name = 'users'") || return 1
    [ "$has_table" = 1 ] || { echo 0; return; }
    sqlite_q -readonly "$SQLITE_PATH" "SELECT count(*) FROM users"
  else
    has_table=$(echo "SELECT to_regclass('users') IS NOT NULL" | psql_q) || return 1
    if [ "$has_table" = t ]; then
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

# ------------------------------------------------- point in time (pgBackRest)

# pitr_time TIME: the epoch seconds of a time with an explicit zone; dies on
# anything else.
pitr_time() {
  local t=$1
  [[ "$t" =~ ^[0-9]{4}-[0-9]{2}-[0-9]{2}[\ T][0-9]{2}:[0-9]{2}:[0-9]{2}(\.[0-9]{1,6})?(Z|[+-][0-9]{2}(:?[0-9]{2})?)$ ]] \
    || die "--to-time '$t' is not 'YYYY-MM-DD HH:MM:SS[.ffffff]+00' (a zone is required)"
  date -u -d "$t" +%s.%6N 2>/dev/null || die "--to-time '$t' is not a valid time"
}

# verify_writes FILE TARGET_EPOCH|"": compares the users table (libpq
# variables from parse_db_url) with a loadgen run --writes record, through
# `loadgen check --db-rows` without a service (tools/loadgen/src/check.rs).
# Sets VERIFY_JSON (its figures); returns 1 when the rows contradict the
# record: a wrong value, a write from after the target, and with a target
# time a missing write (without one, the missing writes are the measured
# loss). Dies when the record cannot be judged (a user written twice).
verify_writes() {
  local file=$1 target=$2 bin rows report rc=0 opts=(--allow-missing)
  [ -f "$file" ] || die "no write record at $file"
  bin=$(checkout_binary loadgen LOADGEN_BIN) \
    || die "loadgen not found (set LOADGEN_BIN, or cargo build -p loadgen): it compares $file with the database"
  [ -z "$target" ] || opts=(--acked-before "$target")
  rows=$(mktemp "${TMPDIR:-/tmp}/hb-verify.XXXXXX")
  report=$(mktemp "${TMPDIR:-/tmp}/hb-verify.XXXXXX")
  echo "SELECT username || '|' || date_of_birth FROM users" | psql_q >"$rows" \
    || { rm -f -- "$rows" "$report"; die "cannot read the users table"; }
  "$bin" check "$file" --db-rows "$rows" --report "$report" "${opts[@]}" || rc=$?
  VERIFY_JSON=$(<"$report")
  rm -f -- "$rows" "$report"
  if [ "$rc" -gt 1 ] || [ -z "$VERIFY_JSON" ]; then die "cannot compare $file with the database (see above)"; fi
  return "$rc"
}

# pitr_wait_production DIR LOG DEADLINE_SECONDS: until pg_controldata says
# the replay is over ("in production", written after the promotion); dies
# when the server stops first (e.g. the target lies past the archive's end).
pitr_wait_production() {
  local dir=$1 log=$2 deadline state
  deadline=$(( EPOCHSECONDS + $3 ))
  while :; do
    state=$(as_owner "$(pg_tool pg_controldata)" "$dir" | sed -n 's/^Database cluster state: *//p')
    [ "$state" != "in production" ] || return 0
    if ! as_owner "$(pg_tool pg_ctl)" -D "$dir" status >/dev/null 2>&1; then
      tail -n 15 "$log" >&2
      die "PostgreSQL stopped during the replay (server log above: $log)"
    fi
    [ "$EPOCHSECONDS" -lt "$deadline" ] || die "the replay has not ended after $3 s (state: $state; log: $log)"
    sleep 0.1
  done
}

as_owner() {
  if [ "$(id -u)" -eq 0 ]; then runuser -u "${PITR_OS_USER:-postgres}" -- "$@"; else "$@"; fi
}

restore_pitr() {
  local mode="" latest=0 to_time="" target="" pgdata="" start=0 log="" wait_s=3600 report="" writes="" sets=() url=$1
  shift
  while [ $# -gt 0 ]; do
    case "$1" in
      --pitr) shift ;;
      --to-time) optarg to_time "$@"; mode="time"; shift 2 ;;
      --latest) latest=1; mode=latest; shift ;;
      --pg-data) optarg pgdata "$@"; shift 2 ;;
      --config) optarg PITR_CONFIG "$@"; shift 2 ;;
      --stanza) optarg PITR_STANZA "$@"; shift 2 ;;
      --set) [[ "${2:-}" == ?*=* ]] || usage_error "--set NAME=VALUE"; sets+=("$2"); shift 2 ;;
      --start) start=1; shift ;;
      --log) optarg log "$@"; shift 2 ;;
      --wait) optarg wait_s "$@"; shift 2 ;;
      --report) optarg report "$@"; shift 2 ;;
      --verify-writes) optarg writes "$@"; shift 2 ;;
      *) usage_error "unknown argument with --pitr: $1" ;;
    esac
  done
  command -v jq >/dev/null 2>&1 || die "jq not found (apt-get install jq)"
  [ -n "$mode" ] || usage_error "--pitr needs --to-time TIME or --latest"
  [ "$latest" = 0 ] || [ -z "$to_time" ] || usage_error "--to-time and --latest exclude each other"
  [ -z "$to_time" ] || target=$(pitr_time "$to_time")
  [ -n "$pgdata" ] || usage_error "--pitr needs --pg-data DIR (the new data directory)"
  [[ "$wait_s" =~ ^[1-9][0-9]*$ ]] || usage_error "--wait must be a positive number of seconds"
  [ -z "$writes" ] || [ "$start" = 1 ] || usage_error "--verify-writes needs --start (the database must run)"
  [ -z "$writes" ] || [ -f "$writes" ] || die "no write record at $writes"
  [ -z "$writes" ] || parse_db_url "$url"
  pitr_config_check
  if [ -e "$pgdata" ] && [ -n "$(ls -A -- "$pgdata" 2>/dev/null)" ]; then
    die "REFUSED: $pgdata is not empty (a point-in-time restore needs an empty data directory)"
  fi

  local info now_s oldest oldest_label opts=() t0
  t0=$EPOCHREALTIME
  info=$(pitr_info)
  [ "$(jq '.backup | length' <<<"$info")" -gt 0 ] || die "the repository holds no backup of stanza $PITR_STANZA (run backup.sh --pitr)"
  oldest=$(jq -r '.backup[0].timestamp.stop' <<<"$info")
  oldest_label=$(jq -r '.backup[0].label' <<<"$info")
  if [ "$mode" = time ]; then
    now_s=$EPOCHREALTIME
    awk -v t="$target" -v n="$now_s" 'BEGIN { exit !(t <= n) }' \
      || die "--to-time $to_time is in the future (now: $(date -u '+%Y-%m-%d %H:%M:%S+00'))"
    awk -v t="$target" -v o="$oldest" 'BEGIN { exit !(t >= o) }' \
      || die "--to-time $to_time is before the end of the oldest backup $oldest_label ($(date -u -d "@$oldest" '+%Y-%m-%d %H:%M:%S+00')): the repository cannot reach it"
    # Normalised to UTC with microseconds, as PostgreSQL reads it.
    to_time=$(date -u -d "@$target" '+%Y-%m-%d %H:%M:%S.%6N+00')
    opts=(--type=time --target="$to_time" --target-action=promote)
    step "restoring stanza $PITR_STANZA into $pgdata up to $to_time"
  else
    opts=(--type=default)
    step "restoring stanza $PITR_STANZA into $pgdata up to the end of the WAL archive ($(jq -r '.archive[-1].max' <<<"$info"))"
  fi

  local t1 t2 t3 set
  mkdir -p -- "$pgdata"
  [ "$(id -u)" -ne 0 ] || chown "${PITR_OS_USER:-postgres}:" "$pgdata"
  chmod 0700 "$pgdata"
  pgbr --log-level-console=warn restore --pg1-path="$pgdata" "${opts[@]}" || die "pgbackrest restore failed (see above)"
  for set in "${sets[@]}"; do
    printf "%s = '%s'\n" "${set%%=*}" "$(printf '%s' "${set#*=}" | sed "s/'/''/g")"
  done | as_owner tee -a "$pgdata/postgresql.auto.conf" >/dev/null
  t1=$EPOCHREALTIME
  step "files restored in $(elapsed "$t0" "$t1") s (repository checks included)"
  t2=$t1 t3=$t1
  if [ "$start" = 1 ]; then
    log=${log:-$pgdata/pitr-start.log}
    as_owner "$(pg_tool pg_ctl)" -D "$pgdata" -l "$log" -w -t "$wait_s" start </dev/null >/dev/null \
      || { tail -n 15 "$log" >&2; die "PostgreSQL did not start on the restored data (log: $log)"; }
    t2=$EPOCHREALTIME
    step "PostgreSQL up (consistent, replaying) in $(elapsed "$t1" "$t2") s"
    pitr_wait_production "$pgdata" "$log" "$wait_s"
    t3=$EPOCHREALTIME
    step "replay done, promoted, accepting writes after $(elapsed "$t2" "$t3") s more"
  fi
  printf 'pitr restore time: %s s (restore %s s, start %s s, replay %s s)\n' "$(elapsed "$t0" "$t3")" \
    "$(elapsed "$t0" "$t1")" "$(elapsed "$t1" "$t2")" "$(elapsed "$t2" "$t3")"

  local rc=0
  VERIFY_JSON=null
  if [ -n "$writes" ]; then
    verify_writes "$writes" "$target" || rc=1
  fi
  if [ -n "$report" ]; then
    jq -n --arg mode "$mode" --arg target "$to_time" --argjson restore "$(elapsed "$t0" "$t1")" \
      --argjson start "$(elapsed "$t1" "$t2")" --argjson replay "$(elapsed "$t2" "$t3")" \
      --argjson t0 "$t0" --argjson t1 "$t1" --argjson t2 "$t2" --argjson t3 "$t3" --argjson verify "$VERIFY_JSON" \
      '{mode: $mode, target: (if $mode == "time" then $target else null end),
        seconds: {restore: $restore, start: $start, replay: $replay},
        at: {begin: $t0, restored: $t1, started: $t2, promoted: $t3}, verify: $verify}' >"$report"
  fi
  [ "$rc" = 0 ] || die "FAILED: the restored database contradicts $writes (see above)"
}

# verify_only FILE: --verify-writes without a restore.
verify_only() {
  local url=$1 writes="" to_time="" target="" report=""
  shift
  while [ $# -gt 0 ]; do
    case "$1" in
      --verify-writes) optarg writes "$@"; shift 2 ;;
      --report) optarg report "$@"; shift 2 ;;
      --to-time) optarg to_time "$@"; shift 2 ;;
      *) usage_error "unknown argument with --verify-writes: $1" ;;
    esac
  done
  parse_db_url "$url"
  [ "$DB_BACKEND" = postgres ] || die "--verify-writes reads PostgreSQL"
  [ -z "$to_time" ] || target=$(pitr_time "$to_time")
  local rc=0
  verify_writes "$writes" "$target" || rc=$?
  [ -z "$report" ] || printf '%s\n' "$VERIFY_JSON" >"$report"
  [ "$rc" = 0 ] || die "FAILED: the database contradicts $writes (see above)"
}

restore_main() {
  # Empty: parse_db_url reads the URL as the service does (DATABASE_URL,
  # DATABASE_URL_FILE or the credential database-url).
  local from="" url="" force=0 a rest=() pitr=0 verify=0
  # The point-in-time and verification paths take their own options.
  for a in "$@"; do
    case "$a" in
      --pitr) pitr=1 ;;
      --verify-writes) verify=1 ;;
      -h|--help) restore_usage; exit 0 ;;
    esac
  done
  if [ "$pitr" = 1 ] || [ "$verify" = 1 ]; then
    while [ $# -gt 0 ]; do
      case "$1" in
        --database-url) optarg url "$@"; shift 2 ;;
        --database-url=*) url=${1#*=}; shift ;;
        *) rest+=("$1"); shift ;;
      esac
    done
    if [ "$pitr" = 1 ]; then restore_pitr "$url" "${rest[@]}"; else verify_only "$url" "${rest[@]}"; fi
    return
  fi
  while [ $# -gt 0 ]; do
    case "$1" in
      --from) optarg from "$@"; shift 2 ;;
      --from=*) from=${1#*=}; shift ;;
      --database-url) optarg url "$@"; shift 2 ;;
      --database-url=*) url=${1#*=}; shift ;;
      --force) force=1; shift ;;
      -h|--help) restore_usage; exit 0 ;;
      *) usage_error "unknown argument: $1" ;;
    esac
  done
  [ -n "$from" ] || usage_error "--from is required"
  command -v jq >/dev/null 2>&1 || die "jq not found (apt-get install jq)"
  parse_db_url "$url"

  local t0 t1 t2 t3 stage manifest file sha rows
  t0=$EPOCHREALTIME
  resolve_backup "$from"
  stage=$(mktemp -d "${TMPDIR:-/tmp}/hb-restore.XXXXXX")
  RESTORE_CLEAN=("$stage")
  trap 'rm -rf -- "${RESTORE_CLEAN[@]}"' EXIT

  step "restoring $SRC_ID from $SRC_DEST into $DB_SOURCE"
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
  step "sha256 of $m_file matches the manifest; expecting $M_ROWS rows, schema v$M_SCHEMA"

  rows=$(target_rows) || die "cannot inspect the target database"
  if [ "$rows" != 0 ] && [ "$force" != 1 ]; then
    die "REFUSED: the target holds $rows users; pass --force to replace them"
  fi
  [ "$rows" = 0 ] || step "--force: replacing $rows users"

  t2=$EPOCHREALTIME
  if [ "$DB_BACKEND" = postgres ]; then restore_postgres "$file"; else restore_sqlite "$file"; fi
  check_stats "the restored database"
  t3=$EPOCHREALTIME

  step "verified: $STAT_ROWS rows, schema v$STAT_SCHEMA, checksum $STAT_SUM"
  printf 'restore time: %s s (fetch %s s, sha256 and target checks %s s, load and verify %s s) for %s rows from %s\n' \
    "$(elapsed "$t0" "$t3")" "$(elapsed "$t0" "$t1")" "$(elapsed "$t1" "$t2")" \
    "$(elapsed "$t2" "$t3")" "$STAT_ROWS" "$SRC_ID"
}

restore_main "$@"
