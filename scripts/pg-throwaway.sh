#!/usr/bin/env bash
# A throwaway PostgreSQL cluster on 127.0.0.1, for tests, drills and the
# benchmark written in other languages (shell callers source scripts/lib/pg.sh).
#   scripts/pg-throwaway.sh start DIR [--user U] [--password PW] [--auth-host METHOD]
#                                     [--port N] [--copy-of TEMPLATE] [--set NAME=VALUE]...
#       initdb into DIR (unless DIR/data exists), start (unless running);
#       prints the superuser URL
#   scripts/pg-throwaway.sh stop DIR [--mode fast|immediate]
#   scripts/pg-throwaway.sh destroy DIR    stop at once and delete DIR
#   scripts/pg-throwaway.sh url DIR [DB]   the superuser URL
#   scripts/pg-throwaway.sh pid DIR        the postmaster's pid
#   scripts/pg-throwaway.sh bin NAME       the path of a PostgreSQL program
#                                          (pg_bin: PG_BINDIR, PATH, Debian's)
# Durability settings stay at PostgreSQL's defaults unless --set changes them.
# As root the server runs as the postgres user: DIR's parents need o+x.
set -euo pipefail

# shellcheck source=scripts/lib/pg.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib/pg.sh"

usage() { usage_from_header; }

cmd_start() {
  local dir=$1 init=() conf=()
  shift
  while [ $# -gt 0 ]; do
    case $1 in
      --user|--password|--auth-host|--port|--copy-of) [ $# -ge 2 ] || usage_error "$1 needs a value"; init+=("$1" "$2"); shift 2 ;;
      --set) [[ ${2:-} == *=* ]] || usage_error "--set NAME=VALUE"; conf+=("${2%%=*} = '${2#*=}'"); shift 2 ;;
      *) usage_error "unknown option for start: $1" ;;
    esac
  done
  if [ ! -d "$dir/data" ]; then
    echo "pg-throwaway: initdb in $dir" >&2
    pg_init "$dir" "${init[@]}"
  fi
  [ ${#conf[@]} -eq 0 ] || pg_conf "$dir" "${conf[@]}"
  if as_pg "$(pg_bin pg_ctl)" -D "$dir/data" status >/dev/null 2>&1; then
    echo "pg-throwaway: already running on 127.0.0.1:$(pg_port "$dir")" >&2
    [ ${#conf[@]} -eq 0 ] || as_pg "$(pg_bin pg_ctl)" -D "$dir/data" reload >/dev/null
  else
    pg_start "$dir"
    echo "pg-throwaway: started on 127.0.0.1:$(pg_port "$dir")" >&2
  fi
  pg_url "$dir"
}

main() {
  local cmd=${1:-}
  case $cmd in
    -h|--help) usage; exit 0 ;;
    bin) [ $# -eq 2 ] || usage_error "usage: bin NAME"; pg_bin "$2"; exit ;;
    start|stop|destroy|url|pid) [ $# -ge 2 ] || usage_error "usage: $cmd DIR (see --help)" ;;
    *) usage >&2; exit 2 ;;
  esac
  local dir=$2
  shift 2
  case $cmd in
    start) cmd_start "$dir" "$@" ;;
    stop)
      local mode=fast
      if [ "${1:-}" = --mode ]; then optarg mode "$@"; fi
      echo "pg-throwaway: stop ($mode) $dir" >&2
      pg_stop "$dir" "$mode" ;;
    destroy) echo "pg-throwaway: destroy $dir" >&2; pg_destroy "$dir" ;;
    url) pg_url "$dir" "${1:-postgres}" ;;
    pid) pg_pid "$dir" ;;
  esac
}

main "$@"
