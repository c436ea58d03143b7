#!/usr/bin/env bash
# S3 drill: backup.sh and restore.sh against s3:// on a local S3 emulator
# (moto_server on 127.0.0.1, dummy credentials) to prove the upload with
# server-side encryption, the listing, retention (old backups and leftovers
# of failed runs deleted), the download, and that a corrupted object or a
# backup without its manifest is never restored.
set -euo pipefail

usage() {
  cat <<'USAGE'
Usage: drills/s3-drill.sh [--users N]

  --users N   users to seed through the API (default 500)

Needs moto_server and aws from .venv (scripts/setup.sh dev). Environment:
HELLO_BIRTHDAY_BIN, DRILL_RESULTS, DRILL_KEEP as for restore-drill.sh.
USAGE
}

# shellcheck source=drills/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

users=500
while [ $# -gt 0 ]; do
  case "$1" in
    --users) optarg users "$@"; shift 2 ;;
    -h|--help) usage; exit 0 ;;
    *) usage >&2; exit 2 ;;
  esac
done

require moto_server aws jq sqlite3 curl "$PY"
build_service
drill_workdir
trap drill_cleanup EXIT

# Only the emulator, with credentials that exist nowhere else: no profile or
# config of the machine is read.
moto_port=$(free_port)
export AWS_ACCESS_KEY_ID=drill AWS_SECRET_ACCESS_KEY=drill AWS_DEFAULT_REGION=eu-west-1
export AWS_ENDPOINT_URL="http://127.0.0.1:$moto_port"
export AWS_CONFIG_FILE="$WORK/aws-config" AWS_SHARED_CREDENTIALS_FILE="$WORK/aws-credentials"
unset AWS_PROFILE AWS_SESSION_TOKEN
moto_server -H 127.0.0.1 -p "$moto_port" >"$WORK/moto.log" 2>&1 &
DRILL_PIDS+=("$!")
wait_until 30 curl -fs -o /dev/null "$AWS_ENDPOINT_URL/" || fail "timed out after 30s waiting for moto_server on $AWS_ENDPOINT_URL"
log "S3 emulator at $AWS_ENDPOINT_URL"

bucket=hb-drill-backups
dest="s3://$bucket/prod/db"
aws s3api create-bucket --bucket "$bucket" \
  --create-bucket-configuration LocationConstraint="$AWS_DEFAULT_REGION" >/dev/null
s3_keys() { aws s3api list-objects-v2 --bucket "$bucket" --prefix prod/db/ --output json | jq -r '.Contents[]?.Key' | sort; }

SRC_URL="sqlite://$WORK/src/hb.db"
mkdir -p "$WORK/src" "$WORK/restored" "$WORK/bad"
service_start src "$SRC_URL"
seed "$(svc_url src)" "$users" seed "$WORK/seed.jsonl"

# Three backups with --keep 2, after a leftover of a failed run (a data file
# without its manifest, older than anything kept) was planted.
echo stale | aws s3 cp --only-show-errors - "$dest/hello-birthday-20000101T000000.000Z.sqlite3"
manifests=()
for i in a b c; do
  seed "$(svc_url src)" 20 "more$i" "$WORK/more$i.jsonl" >/dev/null
  manifests+=("$(DATABASE_URL=$SRC_URL "$DRILL_ROOT/scripts/backup.sh" --to "$dest" --keep 2)")
done
mapfile -t keys < <(s3_keys)
log "objects after three backups with --keep 2: ${keys[*]##*/}"
[ "${#keys[@]}" -eq 4 ] || fail "expected 2 backups (4 objects), found ${#keys[@]}"
for m in "${manifests[1]}" "${manifests[2]}"; do
  printf '%s\n' "${keys[@]}" | grep -qx "prod/db/${m##*/}" || fail "newest backup ${m##*/} missing"
done

# Every object was stored with server-side encryption.
for k in "${keys[@]}"; do
  sse=$(aws s3api head-object --bucket "$bucket" --key "$k" --output json | jq -r '.ServerSideEncryption // "none"')
  [ "$sse" = aws:kms ] || fail "$k stored with ServerSideEncryption=$sse"
done
log "all ${#keys[@]} objects report ServerSideEncryption=aws:kms"

# A newer data object without a manifest (an interrupted upload) must not be
# taken for the latest backup.
echo partial | aws s3 cp --only-show-errors - "$dest/hello-birthday-29991231T235959.999Z.sqlite3"

# Restore the newest from the prefix, then start the service on it.
t0=$(now)
out=$(DATABASE_URL="sqlite://$WORK/restored/hb.db" "$DRILL_ROOT/scripts/restore.sh" --from "$dest")
echo "$out"
restore_seconds=$(elapsed "$t0")
newest=${manifests[2]##*/}
grep -q "from ${newest%.manifest.json}\$" <<<"$out" || fail "did not restore the newest complete backup"
service_start restored "sqlite://$WORK/restored/hb.db"
"$LOADGEN" check --url "$(svc_url restored)" --reference "$(svc_url src)" \
  "$WORK/seed.jsonl" "$WORK/morea.jsonl" "$WORK/moreb.jsonl" "$WORK/morec.jsonl"

# The older kept backup, named by its manifest URL.
DATABASE_URL="sqlite://$WORK/restored2.db" "$DRILL_ROOT/scripts/restore.sh" --from "${manifests[1]}" >/dev/null
log "restored the older kept backup by its manifest URL"

# A corrupted object (one flipped byte) is refused after download.
id=${manifests[2]##*/}; id=${id%.manifest.json}
aws s3 cp --only-show-errors "$dest/$id.sqlite3" "$WORK/bad/$id.sqlite3"
"$PY" -c 'import sys; p = sys.argv[1]; b = bytearray(open(p, "rb").read()); b[len(b) // 2] ^= 1; open(p, "wb").write(b)' "$WORK/bad/$id.sqlite3"
aws s3 cp --only-show-errors "$WORK/bad/$id.sqlite3" "$dest/$id.sqlite3"
if DATABASE_URL="sqlite://$WORK/bad/hb.db" "$DRILL_ROOT/scripts/restore.sh" --from "$dest" 2>"$WORK/bad.err"; then
  fail "restore.sh restored a corrupted S3 object"
fi
grep -q "is corrupt" "$WORK/bad.err" || fail "corrupted object failed for another reason: $(cat "$WORK/bad.err")"
[ ! -e "$WORK/bad/hb.db" ] || fail "the refused restore created a database"
log "corrupted S3 object refused"

service_stop restored
service_stop src
log "PASS S3 drill: 3 backups uploaded with SSE, --keep 2 left 2 (leftover pruned), newest restored and verified ($(( users + 60 )) users) in ${restore_seconds}s, corrupted object refused"
if [ -n "${DRILL_RESULTS:-}" ]; then
  jq -cn --argjson users "$(( users + 60 ))" --argjson restore_s "$restore_seconds" \
    '{drill: "s3", users_verified: $users, backups: 3, kept: 2, sse: "aws:kms",
      restore_seconds: $restore_s, corrupt_refused: true, manifestless_ignored: true}' >>"$DRILL_RESULTS"
fi
