#!/usr/bin/env bash
# Smoke test of a running hello-birthday: readiness, a synthetic user's
# PUT/GET/update/DELETE round trip, and the main error answers. Stops at the
# first failure with a clear message; removes the synthetic user on exit.
set -euo pipefail

usage() {
  cat <<'USAGE'
Usage: scripts/smoke.sh BASE_URL

Checks against BASE_URL (e.g. http://127.0.0.1:5000):
  /healthz 200 and /readyz 200
  PUT /hello/<random letters> 204, GET 200 with the right day count, update, GET again
  bad username 400, impossible date 400, future date 400, wrong Content-Type 415,
  unknown user 404 (all application/problem+json)
  DELETE 204, then GET 404 and DELETE 404
Exit status: 0 when every check passed, 1 on the first failure.

Environment: SMOKE_TIMEOUT  seconds per request (default 5)
USAGE
}

# shellcheck source=scripts/lib/common.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib/common.sh"

case ${1:-} in
  -h|--help) usage; exit 0 ;;
  "") usage >&2; exit 2 ;;
  -*) usage_error "unknown option $1" ;;
esac
BASE=${1%/}
TIMEOUT=${SMOKE_TIMEOUT:-5}
require curl jq

# Letters only (the username rule), random so parallel runs never collide.
LETTERS=abcdefghijklmnopqrstuvwxyz
USERNAME=smoke
for _ in 1 2 3 4 5 6 7 8 9 10 11 12; do USERNAME+=${LETTERS:RANDOM % 26:1}; done
BODY=$(mktemp)
CREATED=0
cleanup() {
  if [ "$CREATED" = 1 ]; then
    curl -s -o /dev/null -m "$TIMEOUT" -X DELETE "$BASE/hello/$USERNAME" || true
  fi
  rm -f "$BODY"
}
trap cleanup EXIT

N=0
pass() { N=$((N + 1)); printf 'smoke: ok   %s\n' "$*"; }

# req METHOD PATH [CONTENT_TYPE BODY]: sets STATUS and CTYPE, body in $BODY.
req() {
  local method=$1 path=$2 out
  local args=(-s -o "$BODY" -m "$TIMEOUT" -X "$method" -w '%{http_code} %{content_type}')
  if [ $# -ge 4 ]; then args+=(-H "Content-Type: $3" --data-binary "$4"); fi
  out=$(curl "${args[@]}" "$BASE$path") || fail "$method $path: no answer from $BASE (curl exit $?)"
  STATUS=${out%% *}
  CTYPE=${out#* }
}

expect() {
  local what=$1 want=$2
  [ "$STATUS" = "$want" ] || fail "$what: HTTP $STATUS, expected $want; body: $(head -c 300 "$BODY")"
}

expect_problem() {
  local what=$1 want=$2
  expect "$what" "$want"
  [[ $CTYPE == application/problem+json* ]] || fail "$what: Content-Type '$CTYPE', expected application/problem+json"
  [ "$(jq -r '.status' "$BODY" 2>/dev/null)" = "$want" ] || fail "$what: problem body without status $want: $(head -c 300 "$BODY")"
  pass "$what -> $want problem+json"
}

echo "smoke: testing $BASE with user $USERNAME"

req GET /healthz
expect "GET /healthz" 200
[ "$(jq -r .status "$BODY" 2>/dev/null)" = ok ] || fail "GET /healthz: body $(head -c 300 "$BODY")"
pass "GET /healthz -> 200 (release $(jq -r '.release // "?"' "$BODY"))"

req GET /readyz
expect "GET /readyz" 200
pass "GET /readyz -> 200"

req GET "/hello/$USERNAME"
expect_problem "GET unknown user" 404

# A birthday 10 days from today (UTC), in 1992 so that Feb 29 exists: the
# greeting must count exactly 10 days.
DOB="1992-$(date -u -d '+10 days' +%m-%d)"
CREATED=1
req PUT "/hello/$USERNAME" application/json "{\"dateOfBirth\":\"$DOB\"}"
expect "PUT /hello/$USERNAME" 204
[ ! -s "$BODY" ] || fail "PUT: 204 with a body: $(head -c 300 "$BODY")"
pass "PUT /hello/$USERNAME $DOB -> 204"

req GET "/hello/$USERNAME"
expect "GET /hello/$USERNAME" 200
want="Hello, $USERNAME! Your birthday is in 10 days"
got=$(jq -r .message "$BODY" 2>/dev/null || true)
[ "$got" = "$want" ] || fail "GET: message '$got', expected '$want'"
pass "GET /hello/$USERNAME -> 200 '$got'"

# Update: tomorrow's birthday, singular "day".
DOB="1992-$(date -u -d '+1 day' +%m-%d)"
req PUT "/hello/$USERNAME" application/json "{\"dateOfBirth\":\"$DOB\"}"
expect "PUT (update)" 204
req GET "/hello/$USERNAME"
want="Hello, $USERNAME! Your birthday is in 1 day"
got=$(jq -r .message "$BODY" 2>/dev/null || true)
[ "$STATUS" = 200 ] || fail "GET after update: HTTP $STATUS"
[ "$got" = "$want" ] || fail "GET after update: $STATUS '$got', expected '$want'"
pass "update -> '$got'"

req GET /hello/abc123
expect_problem "GET bad username" 400
req PUT "/hello/$USERNAME" application/json '{"dateOfBirth":"2001-02-30"}'
expect_problem "PUT impossible date" 400
req PUT "/hello/$USERNAME" application/json "{\"dateOfBirth\":\"$(date -u -d '+1 day' +%F)\"}"
expect_problem "PUT future date" 400
req PUT "/hello/$USERNAME" text/plain "{\"dateOfBirth\":\"1990-01-01\"}"
expect_problem "PUT wrong Content-Type" 415

# The rejected PUTs must not have changed the stored value.
req GET "/hello/$USERNAME"
got=$(jq -r .message "$BODY" 2>/dev/null || true)
[ "$got" = "$want" ] || fail "a rejected PUT changed the user: '$got'"
pass "rejected PUTs stored nothing"

req DELETE "/hello/$USERNAME"
expect "DELETE /hello/$USERNAME" 204
CREATED=0
pass "DELETE /hello/$USERNAME -> 204"
req GET "/hello/$USERNAME"
expect_problem "GET after DELETE" 404
req DELETE "/hello/$USERNAME"
expect_problem "DELETE again" 404

echo "smoke: PASS ($N checks against $BASE)"
