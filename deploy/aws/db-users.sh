#!/usr/bin/env bash
# Creates (or resets) the service's database users from the app secret:
# deploy/aws/sql/app-users.sql run with the master login. Once per
# database: after the database stack's first creation, after a restore
# (the DR Region's database stack makes a new app secret), or to put the
# passwords back in line with the secret. Run by an administrator from
# inside the VPC (CloudShell VPC environment or Session Manager port
# forwarding, docs/runbooks/aws-bootstrap.md): the master secret is for
# people, and the database is reachable only there.
set -euo pipefail

usage() {
  cat <<'USAGE'
Usage: deploy/aws/db-users.sh --env staging|production [--region R] [--host H] [--port P] [--dry-run]

  --env      environment (its parameter file names the Region and prefix)
  --region   Region of the database stack (default: the parameter file's)
  --host     connect here instead of the stack's endpoint (port forwarding)
  --port     with --host (default 5432)
  --dry-run  print what it would do, connect nowhere
Needs: aws (rights to read both secrets and the database stack), psql, jq.
USAGE
}

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
# shellcheck source=scripts/lib/common.sh
. "$ROOT/scripts/lib/common.sh"
ENV_NAME="" REGION="" HOST="" PORT=5432 DRY=0
while [ $# -gt 0 ]; do
  case $1 in
    --env) optarg ENV_NAME "$@"; shift 2 ;;
    --region) optarg REGION "$@"; shift 2 ;;
    --host) optarg HOST "$@"; shift 2 ;;
    --port) optarg PORT "$@"; shift 2 ;;
    --dry-run) DRY=1; shift ;;
    -h|--help) usage; exit 0 ;;
    *) usage_error "unknown option $1" ;;
  esac
done
[ -n "$ENV_NAME" ] || usage_error "--env is required"
params="$ROOT/deploy/aws/parameters/$ENV_NAME.json"
[ -r "$params" ] || usage_error "no parameter file $params (--env staging|production)"
REGION=${REGION:-$(jq -r .region "$params")}
prefix=$(jq -r .stackPrefix "$params")
stack="$prefix-$ENV_NAME-database"
AWS=${AWS_CLI:-aws}

output() {
  "$AWS" --region "$REGION" cloudformation describe-stacks --stack-name "$stack" \
    --query "Stacks[0].Outputs[?OutputKey=='$1'].OutputValue | [0]" --output text
}
secret() { # ARN STAGE: the secret's JSON, or nothing when that stage does not exist
  "$AWS" --region "$REGION" secretsmanager get-secret-value --secret-id "$1" --version-stage "$2" \
    --query SecretString --output text 2>/dev/null || true
}

step "stack $stack in $REGION"
if [ "$DRY" = 1 ]; then
  echo "would read MasterUserSecretArn, AppUserSecretArn, EndpointAddress, DatabaseName of $stack,"
  echo "then run deploy/aws/sql/app-users.sql as the master user"
  exit 0
fi
master_arn=$(output MasterUserSecretArn)
app_arn=$(output AppUserSecretArn)
db=$(output DatabaseName)
HOST=${HOST:-$(output EndpointAddress)}
master=$(secret "$master_arn" AWSCURRENT)
[ -n "$master" ] || die "cannot read the master secret $master_arn"
current=$(secret "$app_arn" AWSCURRENT)
[ -n "$current" ] || die "cannot read the app secret $app_arn"
previous=$(secret "$app_arn" AWSPREVIOUS)

# The secret names one of the two logins; its alternate is <app>_clone.
user=$(jq -r .username <<<"$current")
app=${user%_clone}
clone="${app}_clone"
password_of() { # LOGIN: its password from the current or the previous version, else a random one
  local v
  for v in "$current" "$previous"; do
    [ -n "$v" ] || continue
    if [ "$(jq -r .username <<<"$v")" = "$1" ]; then jq -r .password <<<"$v"; return 0; fi
  done
  # Unknown until the first rotation sets it: nobody can log in with this one.
  od -An -N24 -tx1 /dev/urandom | tr -d ' \n'
}

step "owner ${app}_owner, logins $app and $clone on database $db at $HOST:$PORT"
# Passwords through the environment (\getenv in the SQL), never argv.
HB_APP_PASSWORD=$(password_of "$app") HB_CLONE_PASSWORD=$(password_of "$clone") \
PGPASSWORD=$(jq -r .password <<<"$master") PGSSLMODE=${PGSSLMODE:-require} \
  psql -X -q -h "$HOST" -p "$PORT" -U "$(jq -r .username <<<"$master")" -d "$db" \
  -v db="$db" -v owner="${app}_owner" -v app="$app" -v clone="$clone" \
  -f "$ROOT/deploy/aws/sql/app-users.sql"
# The deploy stops before a first app stack until this tag is on the app
# secret (it reads the secret's metadata, never its value).
"$AWS" --region "$REGION" secretsmanager tag-resource --secret-id "$app_arn" \
  --tags "Key=db-users,Value=$(date -u +%Y-%m-%dT%H:%M:%SZ)"
step "done (app secret tagged db-users)"
