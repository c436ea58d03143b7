# shellcheck shell=bash
# PostgreSQL for the scripts: pg_bin, the one place that finds its programs,
# and throwaway clusters, the one place (with the Rust test support in
# tests/api/support.rs) that runs initdb; Python callers reach both through
# scripts/pg-throwaway.sh (scripts/lib/pg_throwaway.py wraps it). Everything about a cluster lives in
# its directory DIR, so any process can drive it through
# scripts/pg-throwaway.sh:
#   DIR/data/     the cluster (initdb), DIR/server.log, DIR/initdb.log
#   DIR/pg.env    PG_PORT, PG_USER, PG_PASSWORD (the superuser)
#   DIR/          also the unix socket directory (trust for the superuser)
# It listens on 127.0.0.1 only, on a free port. PostgreSQL refuses to run as
# root: as root its binaries run as the postgres user (runuser), who must be
# able to reach DIR (every parent directory needs o+x).

# shellcheck source=scripts/lib/common.sh
. "$(dirname "${BASH_SOURCE[0]}")/common.sh"

# pg_bin NAME: the path of a PostgreSQL program, server (initdb, pg_ctl,
# postgres, pg_basebackup, pg_controldata) or client (psql, pg_dump,
# pg_restore): the one place that looks for them. In $PG_BINDIR when that is
# set (and only there), else on PATH, else in Debian's
# /usr/lib/postgresql/N/bin (the newest N), where the server package keeps
# them. Python callers ask `scripts/pg-throwaway.sh bin NAME`.
pg_bin() {
  local p
  if [ -n "${PG_BINDIR:-}" ]; then
    [ -x "$PG_BINDIR/$1" ] || { echo "PostgreSQL program $1 not in PG_BINDIR=$PG_BINDIR" >&2; return 1; }
    printf '%s\n' "$PG_BINDIR/$1"; return
  fi
  if p=$(command -v "$1" 2>/dev/null); then printf '%s\n' "$p"; return; fi
  p=$(find /usr/lib/postgresql -path "*/bin/$1" 2>/dev/null | sort -V | tail -n1)
  [ -n "$p" ] || { echo "PostgreSQL program $1 not found (PG_BINDIR, PATH, /usr/lib/postgresql/*/bin; scripts/setup.sh dev installs it)" >&2; return 1; }
  printf '%s\n' "$p"
}

# as_pg CMD...: runs CMD as the postgres user when we are root.
as_pg() {
  if [ "$(id -u)" -eq 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi
}

# pg_init DIR [--user NAME] [--password PW] [--auth-host METHOD] [--port N] [--copy-of TEMPLATE]:
# a new cluster in DIR/data on port N (default: a free one). The superuser NAME (postgres) may
# connect over the socket without a password, over TCP with METHOD (trust, or
# scram-sha-256: then only roles with a password, PW for the superuser, may
# log in over TCP). --copy-of copies TEMPLATE/data (initdb'ed there with
# the same options on first use) instead of running initdb again.
pg_init() {
  local dir=$1 user=postgres password="" auth=trust template="" port="" pwfile=""
  shift
  while [ $# -gt 0 ]; do
    case $1 in
      --user) user=$2; shift 2 ;;
      --password) password=$2; shift 2 ;;
      --auth-host) auth=$2; shift 2 ;;
      --copy-of) template=$2; shift 2 ;;
      --port) port=$2; shift 2 ;;
      *) echo "pg_init: unknown option $1" >&2; return 2 ;;
    esac
  done
  [ ! -e "$dir/data" ] || { echo "pg_init: $dir/data already exists" >&2; return 1; }
  mkdir -p "$dir"
  chmod 0755 "$dir"
  [ "$(id -u)" -ne 0 ] || chown postgres: "$dir"
  if [ -n "$template" ]; then
    if [ ! -d "$template/data" ]; then
      pg_init "$template" --user "$user" --password "$password" --auth-host "$auth" || return 1
    fi
    as_pg cp -a "$template/data" "$dir/data" || return 1
  else
    if [ -n "$password" ]; then
      pwfile="$dir/pwfile"
      printf '%s\n' "$password" >"$pwfile"
      [ "$(id -u)" -ne 0 ] || chown postgres: "$pwfile"
    fi
    as_pg "$(pg_bin initdb)" -D "$dir/data" -U "$user" ${pwfile:+--pwfile="$pwfile"} \
      --auth-local=trust --auth-host="$auth" -E UTF8 --locale=C --no-sync --no-instructions \
      >"$dir/initdb.log" 2>&1 || { cat "$dir/initdb.log" >&2; rm -f "$pwfile"; return 1; }
    rm -f "$pwfile"
  fi
  [ -n "$port" ] || port=$(free_port)
  printf 'PG_PORT=%s\nPG_USER=%q\nPG_PASSWORD=%q\n' "$port" "$user" "$password" >"$dir/pg.env"
  pg_conf "$dir" "listen_addresses = '127.0.0.1'" "port = $port" "unix_socket_directories = '$dir'"
}

# pg_init_standby DIR PRIMARY_DIR: a streaming standby of the running cluster
# in PRIMARY_DIR (pg_basebackup -R over its socket), on a free port.
pg_init_standby() {
  local dir=$1 primary=$2 port
  mkdir -p "$dir"
  chmod 0755 "$dir"
  [ "$(id -u)" -ne 0 ] || chown postgres: "$dir"
  (
    pg_env "$primary" || exit 1
    as_pg "$(pg_bin pg_basebackup)" -h "$primary" -p "$PG_PORT" -U "$PG_USER" \
      -D "$dir/data" -R -X stream --checkpoint=fast
  ) || return 1
  port=$(free_port)
  sed "s/^PG_PORT=.*/PG_PORT=$port/" "$primary/pg.env" >"$dir/pg.env"
  pg_conf "$dir" "port = $port" "unix_socket_directories = '$dir'"
}

# pg_conf DIR LINE...: appends settings to the cluster's postgresql.conf
# (later lines win), e.g. pg_conf "$dir" "max_connections = 200".
pg_conf() {
  local dir=$1; shift
  printf '%s\n' "$@" | as_pg tee -a "$dir/data/postgresql.conf" >/dev/null
}

# pg_archiving DIR PGBACKREST_CONF [ARCHIVE_TIMEOUT]: continuous WAL archiving
# with pgBackRest, the settings of deploy/pgbackrest/postgresql.archive.conf
# with archive_command pointed at PGBACKREST_CONF (its stanza is the same).
# Takes effect at the next start.
pg_archiving() {
  local dir=$1 conf=$2 timeout=${3:-} src
  src="$(dirname "${BASH_SOURCE[0]}")/../../deploy/pgbackrest/postgresql.archive.conf"
  [ -f "$src" ] || { echo "pg_archiving: $src missing" >&2; return 1; }
  sed -e "s|pgbackrest --stanza=|pgbackrest --config=$conf --stanza=|" \
    ${timeout:+-e "s|^archive_timeout = .*|archive_timeout = $timeout|"} "$src" \
    | as_pg tee -a "$dir/data/postgresql.conf" >/dev/null
}

# pg_start DIR [POSTGRES_OPTIONS]: starts the server and waits until it accepts
# connections (60 s at most). A wrapper such as `taskset -c 1 nice -n 5` in
# front of the caller is inherited by the server.
pg_start() {
  local dir=$1 opts=${2:-}
  as_pg "$(pg_bin pg_ctl)" -D "$dir/data" -l "$dir/server.log" ${opts:+-o "$opts"} -w -t 60 start \
    </dev/null >/dev/null 9>&- || { tail -n 20 "$dir/server.log" >&2; return 1; }
}

# pg_stop DIR [MODE]: fast by default; "immediate" is a crash. Nothing to do
# when the server is not running.
pg_stop() {
  local dir=$1 mode=${2:-fast}
  [ -f "$dir/data/postmaster.pid" ] || return 0
  as_pg "$(pg_bin pg_ctl)" -D "$dir/data" -m "$mode" -w -t 60 stop >/dev/null
}

# pg_destroy DIR: stops the server at once and deletes DIR.
pg_destroy() {
  pg_stop "$1" immediate 2>/dev/null || true
  rm -rf "$1"
}

# pg_env DIR: loads DIR/pg.env (PG_PORT, PG_USER, PG_PASSWORD).
pg_env() {
  [ -f "$1/pg.env" ] || { echo "no cluster in $1" >&2; return 1; }
  # shellcheck disable=SC1091
  . "$1/pg.env"
}
pg_port() { (pg_env "$1" && printf '%s\n' "$PG_PORT"); }

# pg_url DIR [DB]: the superuser's TCP URL (database postgres by default).
pg_url() {
  (
    pg_env "$1" || exit 1
    printf 'postgres://%s%s@127.0.0.1:%s/%s\n' "$PG_USER" "${PG_PASSWORD:+:$PG_PASSWORD}" "$PG_PORT" "${2:-postgres}"
  )
}

# pg_pid DIR: the postmaster's pid.
pg_pid() { as_pg head -n1 "$1/data/postmaster.pid"; }

# pg_psql DIR [PSQL_ARGS...]: psql as the superuser over the socket.
pg_psql() {
  local dir=$1; shift
  (
    pg_env "$dir" || exit 1
    "$(pg_bin psql)" -X -q -v ON_ERROR_STOP=1 -h "$dir" -p "$PG_PORT" -U "$PG_USER" "$@"
  )
}

# pg_app_db DIR USER PASSWORD DB: an application role owning its database.
# The values travel on stdin, not in psql's argv (visible in ps).
pg_app_db() {
  {
    printf "\\set u '%s'\n\\set p '%s'\n\\set d '%s'\n" "${2//\'/\'\'}" "${3//\'/\'\'}" "${4//\'/\'\'}"
    cat <<'SQL'
CREATE ROLE :"u" LOGIN PASSWORD :'p';
CREATE DATABASE :"d" OWNER :"u";
SQL
  } | pg_psql "$1" -d postgres
}
