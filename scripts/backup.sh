#!/usr/bin/env bash
# Back up the hello-birthday database (PostgreSQL or SQLite) with a manifest
# that lets restore.sh prove the restore: source, schema version, row count,
# a content checksum computed by the database over the rows in primary-key
# order, and the SHA-256 of the backup file.
#
# restore.sh sources this file for the parts both need (the database URL,
# read by the service binary; checksums; storage); sourced, it only defines
# functions.
set -euo pipefail

# A backup holds everyone's date of birth: whatever the caller's umask, the
# files and directories written here are for their owner only (0600, 0700),
# as the service keeps its own database. restore.sh sources this file, so a
# restored database is private too (the service refuses to start on one
# that others can read).
umask 077

# The shared vocabulary (step, die, usage_error, elapsed) and pg_bin. An
# installed copy keeps lib/ beside it (deploy/systemd/check.sh installs both).
# shellcheck source=scripts/lib/pg.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib/pg.sh"

HB_MANIFEST_FORMAT="hello-birthday-backup/1"
HB_NAME_PREFIX="hello-birthday-"

backup_usage() {
  cat <<'USAGE'
Usage: scripts/backup.sh [--database-url URL] [--to DEST] [--keep N]
       scripts/backup.sh --pitr [--type full|diff|incr] [--config FILE] [--stanza NAME]

Takes a consistent backup of the hello-birthday database while the service
keeps writing, and writes it next to a manifest:

  PostgreSQL  pg_dump -Fc inside a REPEATABLE READ snapshot; row count and
              content checksum come from the same snapshot.
  SQLite      VACUUM INTO (an online, transactionally consistent copy);
              row count and checksum are computed on that copy.

A backup is ID.pgdump or ID.sqlite3 plus ID.manifest.json, ID being
hello-birthday-<UTC timestamp>. Files are written under temporary names and
the manifest lands last, so a backup without a manifest is never complete.

Options:
  --database-url URL  postgres://user[:pass]@host:port/db or sqlite://PATH,
                      the forms the service accepts (README, DATABASE_URL)
                      (default: read as the service reads it, see below).
                      Prefer the environment: a password on the command
                      line is visible in ps.
  --to DEST           a directory or s3://bucket/prefix (default: $BACKUP_DEST)
  --keep N            afterwards keep only the N newest backups in DEST
                      (default: $BACKUP_KEEP; unset = keep all)
  -h, --help          this text

Environment:
  DATABASE_URL, BACKUP_DEST, BACKUP_KEEP   defaults for the options above
  DATABASE_URL_FILE   a file holding the URL instead of DATABASE_URL (not
                      both); without either, $CREDENTIALS_DIRECTORY/database-url
                      (the systemd credential the units load), as the service
  PGPASSWORD, ~/.pgpass                    used when the URL has no password
  AWS_PROFILE, AWS_* credentials           for s3:// (AWS CLI)
  AWS_ENDPOINT_URL                         another S3 endpoint (tests)
  BACKUP_S3_SSE        server-side encryption: aws:kms (default) or AES256
  BACKUP_S3_KMS_KEY_ID KMS key for aws:kms (default: the account's S3 key)
  PG_BINDIR            directory of pg_dump/pg_restore/psql (default: PATH)
  HELLO_BIRTHDAY_BIN   the service binary, which reads the URL (default: this
                       checkout's newer target/{release,debug} build, else PATH)
  DATABASE_CA_FILE     as for the service: becomes PGSSLROOTCERT

Prints the backup's manifest location on stdout; progress goes to stderr.

Point in time (--pitr, PostgreSQL only): a base backup into the pgBackRest
repository that the cluster's WAL archive (archive_command) already feeds,
see deploy/pgbackrest/. Runs, as the cluster's owner: stanza-create (a no-op
once done), check (archive_command works: a WAL switch reaches the
repository), backup --type (default diff; pgBackRest takes a full one when
none exists), then expires backups and WAL past the configured retention.
Prints the backup's label on stdout. Restore with restore.sh --pitr.
  --type T            full, diff or incr (default: diff)
  --config FILE       pgBackRest configuration (default: $PGBACKREST_CONFIG,
                      else pgBackRest's own default /etc/pgbackrest/pgbackrest.conf)
  --stanza NAME       default: $PGBACKREST_STANZA, else hello-birthday
  PITR_OS_USER        the cluster's owner that pgBackRest runs as when this
                      script runs as root (default: postgres)
USAGE
}

# ------------------------------------------------------------ database URL

# checkout_binary NAME VAR: the binary NAME of this project: $VAR, else the
# newer build of this checkout (target/release or target/debug), else NAME
# on PATH (/usr/local/bin on a host). Returns 1 when there is none.
checkout_binary() {
  local name=$1 var=$2 b found=""
  if [ -n "${!var:-}" ]; then printf '%s\n' "${!var}"; return; fi
  for b in "$(dirname "${BASH_SOURCE[0]}")"/../target/{release,debug}/"$name"; do
    if [ -x "$b" ] && { [ -z "$found" ] || [ "$b" -nt "$found" ]; }; then found=$b; fi
  done
  [ -n "$found" ] || found=$(command -v "$name") || return 1
  printf '%s\n' "$found"
}

# hb_binary: the service binary, which parses DATABASE_URL for these scripts
# exactly as the service does.
hb_binary() {
  checkout_binary hello-birthday HELLO_BIRTHDAY_BIN \
    || die "hello-birthday not found (set HELLO_BIRTHDAY_BIN, or put it on PATH): it reads the database URL"
}

# parse_db_url URL: what the URL names, as the service reads it
# (`hello-birthday database --env`, which refuses what the service refuses):
# sets DB_BACKEND (postgres|sqlite), DB_SOURCE (the URL without its
# password, for logs and manifests) and SQLITE_PATH (absolute), or exports
# the libpq variables (PGHOST, PGPORT, PGUSER, PGPASSWORD, PGDATABASE,
# PGSSLMODE, PGSSLROOTCERT from DATABASE_CA_FILE...) so no tool ever gets
# the password in its argv. The URL reaches the binary in its environment.
parse_db_url() {
  local url=$1 bin env DATABASE_BACKEND="" DATABASE_SOURCE="" DATABASE_PATH=""
  bin=$(hb_binary) || exit 1
  # DATABASE_URL alone is taken as given, credential or not: the backup
  # unit's ExecStartPost names its scratch database so, beside the credential.
  if [ -z "$url" ] && [ -z "${DATABASE_URL_FILE:-}" ]; then url=${DATABASE_URL:-}; fi
  if [ -n "$url" ]; then
    # Chosen: the binary is not to look for another.
    env=$(unset DATABASE_URL_FILE; CREDENTIALS_DIRECTORY='' DATABASE_URL=$url "$bin" database --env) \
      || die "the database URL was refused (see above)"
  elif [ -n "${DATABASE_URL_FILE:-}" ] \
    || { [ -n "${CREDENTIALS_DIRECTORY:-}" ] && [ -e "$CREDENTIALS_DIRECTORY/database-url" ]; }; then
    # Read by the binary as the service reads it: DATABASE_URL_FILE (refused
    # beside DATABASE_URL), else the systemd credential.
    env=$("$bin" database --env) || die "the database URL was refused (see above)"
  else
    die "no database URL: pass --database-url, or set DATABASE_URL or DATABASE_URL_FILE (or the credential database-url)"
  fi
  # Single-quoted assignments written by the binary (tested with every byte).
  eval "$env"
  DB_BACKEND=$DATABASE_BACKEND DB_SOURCE=$DATABASE_SOURCE
  case "$DB_BACKEND" in
    sqlite) SQLITE_PATH=$DATABASE_PATH ;;
    postgres)
      # Timestamps print the same whatever the server's or the host's zone.
      export PGTZ=UTC PGDATESTYLE="ISO, YMD"
      export PGCONNECT_TIMEOUT="${PGCONNECT_TIMEOUT:-10}"
      ;;
    *) die "unexpected answer from $bin database --env" ;;
  esac
}

pg_tool() { pg_bin "$1" || die "$1 not found (install postgresql-client, or set PG_BINDIR)"; }

# psql_q: run the SQL on stdin; unaligned, tuples only, stop at the first error.
psql_q() { "$(pg_tool psql)" -X -q -A -t -v ON_ERROR_STOP=1; }
sqlite_q() { sqlite3 -batch -bail -noheader -list "$@"; }

# ------------------------------------------------------------- checksums
# The checksum is computed by the database over every row in primary-key
# (byte) order, so a restore is compared with what was backed up, not with
# the file that carried it. Each backend has its own formula, named in the
# manifest; restore.sh refuses a formula it does not know.

PG_CHECKSUM_ALGORITHM="postgres-sha256-rows-v1"
PG_CHECKSUM_SQL="SELECT encode(sha256(convert_to(coalesce(string_agg(username || ':' || date_of_birth::text || ':' || created_at::text || ':' || updated_at::text, E'\\n' ORDER BY username COLLATE \"C\"), ''), 'UTF8')), 'hex') FROM users"
SQLITE_CHECKSUM_ALGORITHM="sqlite-sha3_query-rows-v1"
SQLITE_CHECKSUM_SQL="SELECT lower(hex(sha3_query('SELECT username, date_of_birth, created_at, updated_at FROM users ORDER BY username', 256)))"

# The statements that print row_count, schema_version and checksum, one per
# line, in that order.
pg_stats_sql() {
  cat <<SQL
SET TIME ZONE 'UTC';
SET DateStyle = 'ISO, YMD';
SELECT count(*) FROM users;
SELECT coalesce(max(version), 0) FROM schema_migrations;
$PG_CHECKSUM_SQL;
SQL
}

sqlite_stats_sql() {
  cat <<SQL
SELECT count(*) FROM users;
SELECT coalesce(max(version), 0) FROM schema_migrations;
$SQLITE_CHECKSUM_SQL;
SQL
}

# read_stats: parse the three lines into STAT_ROWS, STAT_SCHEMA, STAT_SUM.
read_stats() {
  local lines=()
  mapfile -t lines
  [ "${#lines[@]}" -eq 3 ] || die "unexpected statistics output: ${lines[*]}"
  STAT_ROWS=${lines[0]} STAT_SCHEMA=${lines[1]} STAT_SUM=${lines[2]}
  [[ "$STAT_ROWS" =~ ^[0-9]+$ && "$STAT_SCHEMA" =~ ^[0-9]+$ && "$STAT_SUM" =~ ^[0-9a-f]{64}$ ]] \
    || die "unexpected statistics: rows=$STAT_ROWS schema=$STAT_SCHEMA checksum=$STAT_SUM"
}

# sqlite_stats FILE / pg_stats: statistics of a database (STAT_*).
sqlite_stats() { read_stats < <(sqlite_q -readonly "$1" "$(sqlite_stats_sql)"); }
pg_stats() { read_stats < <(pg_stats_sql | psql_q); }

# --------------------------------------------------------------- storage
# DEST is a local directory or s3://bucket/prefix. Objects are named
# ID.manifest.json and ID.<ext>; only IDs with a manifest are backups.

is_s3() { [[ "$1" == s3://* ]]; }
aws_cli() { command -v aws >/dev/null 2>&1 || die "aws CLI not found (pip install awscli)"; aws "$@"; }
# s3_split s3://bucket/prefix: S3_BUCKET, S3_PREFIX ("" or "prefix/").
s3_split() {
  local rest=${1#s3://}
  S3_BUCKET=${rest%%/*}
  S3_PREFIX=""
  [[ "$rest" != */* ]] || S3_PREFIX=${rest#*/}
  S3_PREFIX=${S3_PREFIX%/}
  [ -z "$S3_PREFIX" ] || S3_PREFIX="$S3_PREFIX/"
  [ -n "$S3_BUCKET" ] || die "no bucket in $1"
}

# store_names DEST: every object name directly in DEST.
store_names() {
  if is_s3 "$1"; then
    s3_split "$1"
    aws_cli s3api list-objects-v2 --bucket "$S3_BUCKET" --prefix "$S3_PREFIX" --output json \
      | jq -r --arg p "$S3_PREFIX" '.Contents[]?.Key | ltrimstr($p) | select(contains("/") | not)'
  else
    [ -d "$1" ] || return 0
    find "$1" -mindepth 1 -maxdepth 1 -type f -printf '%f\n'
  fi
}

# manifest_ids: the IDs of the manifests among the names on stdin, oldest
# first: the one place that knows what a backup ID looks like.
manifest_ids() {
  sed -n "s/^\\(${HB_NAME_PREFIX}[0-9TZ.]*\\)\\.manifest\\.json\$/\\1/p" | LC_ALL=C sort
}

# store_ids DEST: IDs of complete backups (with a manifest), oldest first.
store_ids() { store_names "$1" | manifest_ids; }

# store_put FILE DEST NAME: upload, encrypted at rest on S3.
store_put() {
  if is_s3 "$2"; then
    s3_split "$2"
    local sse=${BACKUP_S3_SSE:-aws:kms} args=()
    args=(--only-show-errors --sse "$sse")
    if [ "$sse" = aws:kms ] && [ -n "${BACKUP_S3_KMS_KEY_ID:-}" ]; then
      args+=(--sse-kms-key-id "$BACKUP_S3_KMS_KEY_ID")
    fi
    aws_cli s3 cp "${args[@]}" "$1" "s3://$S3_BUCKET/$S3_PREFIX$3"
  else
    # Same directory, so the rename is atomic; fsync before it is visible.
    cp -- "$1" "$2/.$3.partial"
    sync -- "$2/.$3.partial"
    mv -- "$2/.$3.partial" "$2/$3"
  fi
}

# store_get DEST NAME FILE
store_get() {
  if is_s3 "$1"; then
    s3_split "$1"
    aws_cli s3 cp --only-show-errors "s3://$S3_BUCKET/$S3_PREFIX$2" "$3"
  else
    cp -- "$1/$2" "$3"
  fi
}

# store_rm DEST NAME...: delete; no error for names already gone. On S3 one
# DeleteObjects call per 1000 names.
store_rm() {
  local dest=$1; shift
  [ $# -gt 0 ] || return 0
  if is_s3 "$dest"; then
    s3_split "$dest"
    local batch
    while [ $# -gt 0 ]; do
      batch=$(printf '%s\n' "${@:1:1000}" | jq -R --arg p "$S3_PREFIX" -s \
        '{Objects: [split("\n")[] | select(length > 0) | {Key: ($p + .)}], Quiet: true}')
      aws_cli s3api delete-objects --bucket "$S3_BUCKET" --delete "$batch" --output json \
        | jq -e '(.Errors // []) | length == 0' >/dev/null || die "S3 delete failed in $dest"
      shift $(( $# < 1000 ? $# : 1000 ))
    done
  else
    local n
    for n in "$@"; do rm -f -- "${dest:?}/$n"; done
  fi
}

# prune DEST KEEP: delete all but the KEEP newest backups (manifests first,
# so a backup is never half deleted yet complete-looking), then leftovers of
# failed runs older than the oldest backup kept.
prune() {
  local dest=$1 keep=$2 names=() ids=() old=() data=() n i name id oldest
  mapfile -t names < <(store_names "$dest")
  mapfile -t ids < <(printf '%s\n' "${names[@]}" | manifest_ids)
  n=${#ids[@]}
  [ "$n" -gt 0 ] || return 0
  for (( i = 0; i < n - keep; i++ )); do old+=("${ids[$i]}"); done
  oldest=${ids[$(( n > keep ? n - keep : 0 ))]}
  for name in "${names[@]}"; do
    id=${name#.}; id=${id%.partial}; id=${id%.ok}; id=${id%.partial}
    id=${id%.manifest.json}; id=${id%.pgdump}; id=${id%.sqlite3}
    [[ "$id" == "$HB_NAME_PREFIX"* && "$name" != *.manifest.json ]] || continue
    if [[ "$id" < "$oldest" ]]; then data+=("$name"); fi
  done
  if [ ${#old[@]} -gt 0 ]; then
    step "retention: deleting ${old[*]} (keeping the $keep newest of $n)"
    store_rm "$dest" "${old[@]/%/.manifest.json}"
  fi
  if [ ${#data[@]} -gt 0 ]; then
    step "retention: deleting data files ${data[*]}"
    store_rm "$dest" "${data[@]}"
  fi
}

# --------------------------------------------------------------- backup

# dump_postgres FILE: pg_dump in a REPEATABLE READ transaction whose snapshot
# pg_dump shares, so the row count and checksum describe exactly the dump.
# Sets STAT_* and SNAPSHOT_AT.
dump_postgres() {
  local file=$1 out=() ok="$1.ok"
  rm -f -- "$ok"
  export HB_PG_DUMP HB_DUMP_FILE="$file" HB_DUMP_OK="$ok"
  HB_PG_DUMP=$(pg_tool pg_dump)
  # psql 15 cannot see the exit status of \!, hence the marker file.
  mapfile -t out < <(psql_q <<SQL
BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY;
SELECT pg_export_snapshot() AS snap \\gset
\\setenv HB_SNAPSHOT :snap
\\! "\$HB_PG_DUMP" --format=custom --snapshot="\$HB_SNAPSHOT" --file="\$HB_DUMP_FILE" && touch "\$HB_DUMP_OK"
SELECT to_char(now() AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.MS"Z"');
SELECT current_setting('server_version');
$(pg_stats_sql)
COMMIT;
SQL
  )
  [ -f "$ok" ] || die "no dump: the database could not be read or pg_dump failed (see above)"
  rm -f -- "$ok"
  [ "${#out[@]}" -eq 5 ] || die "unexpected psql output: ${out[*]}"
  SNAPSHOT_AT=${out[0]}
  SERVER_VERSION=${out[1]}
  read_stats < <(printf '%s\n' "${out[@]:2}")
  # A dump pg_restore cannot read is no backup.
  "$(pg_tool pg_restore)" --list "$file" >/dev/null || die "pg_restore cannot read the new dump"
  TOOL_VERSION=$("$HB_PG_DUMP" --version)
}

# dump_sqlite FILE: VACUUM INTO reads one snapshot of the live database (WAL
# readers do not block the service's writer) into a new compact file.
dump_sqlite() {
  local file=$1 src=$SQLITE_PATH check
  command -v sqlite3 >/dev/null 2>&1 || die "sqlite3 not found (apt-get install sqlite3)"
  [ -f "$src" ] || die "no SQLite database at $src"
  SNAPSHOT_AT=$(date -u +%Y-%m-%dT%H:%M:%S.%3NZ)
  sqlite_q -readonly -cmd ".timeout 10000" "$src" "VACUUM INTO '${file//\'/\'\'}'"
  sync -- "$file"
  check=$(sqlite_q -readonly "$file" "PRAGMA integrity_check")
  [ "$check" = ok ] || die "integrity check of the copy failed: $check"
  sqlite_stats "$file"
  SERVER_VERSION=$(sqlite_q "$file" "SELECT sqlite_version()")
  TOOL_VERSION="sqlite3 $(sqlite3 -version | cut -d' ' -f1) VACUUM INTO"
}

# ------------------------------------------------- point in time (pgBackRest)
# The WAL archive and the base backups live in a pgBackRest repository in
# another Region (locally: another directory). Config and stanza come from
# --config/--stanza, set by pitr_options in both scripts.
PITR_CONFIG=${PGBACKREST_CONFIG:-}
PITR_STANZA=${PGBACKREST_STANZA:-hello-birthday}

# pgbr ARGS...: pgBackRest as the cluster's owner (it reads the data
# directory and writes the repository with that user's rights).
pgbr() {
  command -v pgbackrest >/dev/null 2>&1 || die "pgbackrest not found (apt-get install pgbackrest, or scripts/setup.sh dev)"
  local args=(--stanza="$PITR_STANZA")
  [ -z "$PITR_CONFIG" ] || args=(--config="$PITR_CONFIG" "${args[@]}")
  if [ "$(id -u)" -eq 0 ]; then
    runuser -u "${PITR_OS_USER:-postgres}" -- pgbackrest "${args[@]}" "$@"
  else
    pgbackrest "${args[@]}" "$@"
  fi
}

# pitr_config_check: a named configuration file must be readable, so that a
# typo is not mistaken for an empty repository.
pitr_config_check() {
  [ -z "$PITR_CONFIG" ] || [ -f "$PITR_CONFIG" ] || die "no pgBackRest configuration at $PITR_CONFIG"
}

# pitr_info: the stanza's `pgbackrest info` as JSON (one object). Dies with
# pgBackRest's reason when the repository or the stanza is missing.
pitr_info() {
  local out code msg
  out=$(pgbr --output=json info) || die "pgbackrest info failed (see above)"
  code=$(jq -r '.[0].status.code' <<<"$out")
  msg=$(jq -r '.[0].status.message' <<<"$out")
  [ "$code" = 0 ] || die "no usable pgBackRest repository for stanza $PITR_STANZA: $msg (check repo1-path in ${PITR_CONFIG:-the default configuration})"
  jq '.[0]' <<<"$out"
}

backup_pitr() {
  local type=diff started label info
  while [ $# -gt 0 ]; do
    case "$1" in
      --type) optarg type "$@"; shift 2 ;;
      --config) optarg PITR_CONFIG "$@"; shift 2 ;;
      --stanza) optarg PITR_STANZA "$@"; shift 2 ;;
      *) usage_error "unknown argument with --pitr: $1" ;;
    esac
  done
  case "$type" in full|diff|incr) ;; *) usage_error "--type must be full, diff or incr" ;; esac
  command -v jq >/dev/null 2>&1 || die "jq not found (apt-get install jq)"
  pitr_config_check
  started=$EPOCHREALTIME
  step "pgbackrest stanza-create (stanza $PITR_STANZA; a no-op when it exists)"
  pgbr --log-level-console=warn stanza-create || die "stanza-create failed (see above)"
  step "pgbackrest check: archive_command delivers WAL to the repository"
  pgbr --log-level-console=warn check || die "check failed: WAL does not reach the repository (archive_mode, archive_command?)"
  step "pgbackrest backup --type=$type"
  pgbr --log-level-console=warn backup --type="$type" || die "backup failed (see above)"
  info=$(pitr_info)
  label=$(jq -r '.backup[-1].label' <<<"$info")
  jq -r --arg s "$(elapsed "$started")" '.backup[-1] as $b
    | "==> backup \($b.label) (\($b.type)): \($b.info.size) bytes in the cluster, \($b.info.repository.delta) bytes added to the repository; WAL \($b.archive.start)..\($b.archive.stop); \(.backup | length) backups kept, WAL archive \(.archive[-1].min)..\(.archive[-1].max); \($s) s"' \
    <<<"$info" >&2
  printf '%s\n' "$label"
}

backup_main() {
  # Without --database-url, parse_db_url has the binary read the URL from
  # the environment (under systemd: the credential, LoadCredential=).
  local url="" dest=${BACKUP_DEST:-} keep=${BACKUP_KEEP:-}
  local a rest=()
  for a in "$@"; do [ "$a" = --pitr ] || rest+=("$a"); done
  if [ ${#rest[@]} -lt $# ]; then backup_pitr "${rest[@]}"; return; fi
  while [ $# -gt 0 ]; do
    case "$1" in
      --database-url) optarg url "$@"; shift 2 ;;
      --database-url=*) url=${1#*=}; shift ;;
      --to) optarg dest "$@"; shift 2 ;;
      --to=*) dest=${1#*=}; shift ;;
      --keep) optarg keep "$@"; shift 2 ;;
      --keep=*) keep=${1#*=}; shift ;;
      -h|--help) backup_usage; exit 0 ;;
      *) usage_error "unknown argument: $1" ;;
    esac
  done
  [ -n "$dest" ] || die "no destination: pass --to DIR|s3://bucket/prefix or set BACKUP_DEST"
  [ -z "$keep" ] || [[ "$keep" =~ ^[1-9][0-9]*$ ]] || usage_error "--keep must be a positive number"
  command -v jq >/dev/null 2>&1 || die "jq not found (apt-get install jq)"
  parse_db_url "$url"

  local started stamp id ext stage data manifest sha bytes seconds
  started=$EPOCHREALTIME
  stamp=$(date -u +%Y%m%dT%H%M%S.%3NZ)
  id="$HB_NAME_PREFIX$stamp"
  ext=pgdump
  [ "$DB_BACKEND" = postgres ] || ext=sqlite3

  # Local backups are written in place under a hidden temporary name (no
  # second copy of a large file); S3 backups are staged in TMPDIR.
  if is_s3 "$dest"; then
    stage=$(mktemp -d "${TMPDIR:-/tmp}/hb-backup.XXXXXX")
  else
    mkdir -p -- "$dest"
    stage=$dest
  fi
  data="$stage/.$id.$ext.partial"
  manifest="$stage/.$id.manifest.json.partial"
  BACKUP_CLEAN=("$data" "$manifest" "$data.ok")
  [ "$stage" = "$dest" ] || BACKUP_CLEAN+=("$stage")
  trap 'rm -rf -- "${BACKUP_CLEAN[@]}"' EXIT

  step "backing up $DB_SOURCE ($DB_BACKEND) to $dest as $id"
  if [ "$DB_BACKEND" = postgres ]; then dump_postgres "$data"; else dump_sqlite "$data"; fi
  sha=$(sha256sum -- "$data" | cut -d' ' -f1)
  bytes=$(stat -c %s -- "$data")
  seconds=$(elapsed "$started")

  local algorithm=$PG_CHECKSUM_ALGORITHM formula=$PG_CHECKSUM_SQL
  if [ "$DB_BACKEND" = sqlite ]; then algorithm=$SQLITE_CHECKSUM_ALGORITHM; formula=$SQLITE_CHECKSUM_SQL; fi
  jq -n \
    --arg format "$HB_MANIFEST_FORMAT" --arg id "$id" --arg created_at "$SNAPSHOT_AT" \
    --arg backend "$DB_BACKEND" --arg source "$DB_SOURCE" --arg host "$(hostname)" \
    --arg tool "$TOOL_VERSION" --arg server_version "$SERVER_VERSION" \
    --argjson schema_version "$STAT_SCHEMA" --argjson row_count "$STAT_ROWS" \
    --arg checksum_algorithm "$algorithm" --arg checksum_sql "$formula" --arg checksum "$STAT_SUM" \
    --arg file "$id.$ext" --argjson bytes "$bytes" --arg sha256 "$sha" \
    --argjson dump_seconds "$seconds" \
    '{format: $format, id: $id, created_at: $created_at, backend: $backend,
      source: $source, host: $host, tool: $tool, server_version: $server_version,
      schema_version: $schema_version, row_count: $row_count,
      checksum_algorithm: $checksum_algorithm, checksum_sql: $checksum_sql,
      checksum: $checksum, file: $file, bytes: $bytes, sha256: $sha256,
      dump_seconds: $dump_seconds}' >"$manifest"

  # The data first, the manifest last: a backup is complete only once its
  # manifest is visible.
  if is_s3 "$dest"; then
    step "uploading $id.$ext ($bytes bytes) and its manifest"
    store_put "$data" "$dest" "$id.$ext"
    store_put "$manifest" "$dest" "$id.manifest.json"
  else
    sync -- "$data" "$manifest"
    mv -- "$data" "$dest/$id.$ext"
    mv -- "$manifest" "$dest/$id.manifest.json"
    sync -- "$dest"
  fi
  step "backup $id: $STAT_ROWS rows, schema v$STAT_SCHEMA, checksum ${STAT_SUM:0:16}..., $bytes bytes in $(elapsed "$started") s"

  if [ -n "$keep" ]; then prune "$dest" "$keep"; fi
  if is_s3 "$dest"; then
    s3_split "$dest"
    printf 's3://%s/%s%s.manifest.json\n' "$S3_BUCKET" "$S3_PREFIX" "$id"
  else
    printf '%s/%s.manifest.json\n' "${dest%/}" "$id"
  fi
}

if [ "${BASH_SOURCE[0]}" = "$0" ]; then
  backup_main "$@"
fi
