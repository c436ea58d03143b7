#!/usr/bin/env bash
# Print the parameter file of an environment rebuilt in its DR Region after a
# Region loss (docs/runbooks/region-loss.md, "AWS"), derived from the
# environment's own file so the two never drift apart:
#   region    <- drRegion (the DR Region becomes the environment's Region)
#   drRegion  <- "" (no dr-vault stack, no backup replication: the other
#                Region is the one that was lost)
#   database  + RestoreFromAutomatedBackupsArn, and RestoreTime if given
#               (else the latest restorable time)
#   edge      + CertificateArn of the DR Region, DnsFailover=secondary
#
# Usage: deploy/aws/dr-params.sh --env production --automated-backups ARN
#          --certificate ARN [--restore-time 2026-11-30T23:45:00Z]
#          [--from deploy/aws/parameters/production.json] > production-dr.json
# Then: scripts/deploy.sh --target aws --env production --aws-params production-dr.json ...
# It reads and prints only: nothing is deployed.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
ENV_NAME="" FROM="" BACKUPS="" CERT="" RESTORE_TIME=""

# shellcheck source=scripts/lib/common.sh
. "$ROOT/scripts/lib/common.sh"

usage() { usage_from_header; }

while [ $# -gt 0 ]; do
  case "$1" in
    -h|--help) usage; exit 0 ;;
    --env) optarg ENV_NAME "$@"; shift 2 ;;
    --from) optarg FROM "$@"; shift 2 ;;
    --automated-backups) optarg BACKUPS "$@"; shift 2 ;;
    --certificate) optarg CERT "$@"; shift 2 ;;
    --restore-time) optarg RESTORE_TIME "$@"; shift 2 ;;
    *) usage_error "unknown option $1" ;;
  esac
done

command -v jq >/dev/null || die "jq is required (scripts/setup.sh dev)"
case "$ENV_NAME" in staging|production) ;; *) usage_error "--env staging|production is required" ;; esac
FROM=${FROM:-$ROOT/deploy/aws/parameters/$ENV_NAME.json}
[ -r "$FROM" ] || usage_error "parameter file $FROM not found"
DR_REGION=$(jq -r '.drRegion // ""' "$FROM")
[ -n "$DR_REGION" ] || usage_error "$FROM has no drRegion: this environment has no DR Region to rebuild in"
# The backups and the certificate must be the DR Region's: a restore reads
# backups of its own Region only, and an ALB takes certificates of its own.
[[ "$BACKUPS" =~ ^arn:aws[a-z-]*:rds:${DR_REGION}:[0-9]{12}:auto-backup:ab-[A-Za-z0-9]+$ ]] \
  || usage_error "--automated-backups must be the ARN of replicated automated backups in $DR_REGION (arn:aws:rds:$DR_REGION:<account>:auto-backup:ab-...), not '$BACKUPS'"
[[ "$CERT" =~ ^arn:aws[a-z-]*:acm:${DR_REGION}:[0-9]{12}:certificate/[0-9a-f-]+$ ]] \
  || usage_error "--certificate must be an ACM certificate in $DR_REGION, not '$CERT'"
if [ -n "$RESTORE_TIME" ]; then
  [[ "$RESTORE_TIME" =~ ^[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}Z$ ]] \
    || usage_error "--restore-time must look like 2026-11-30T23:45:00Z (UTC), not '$RESTORE_TIME'"
fi

jq --arg arn "$BACKUPS" --arg cert "$CERT" --arg t "$RESTORE_TIME" '
  .region = .drRegion
  | .drRegion = ""
  | del(.stacks["dr-vault"])
  | .stacks.database += ({RestoreFromAutomatedBackupsArn: $arn} + (if $t == "" then {} else {RestoreTime: $t} end))
  | .stacks.edge += {CertificateArn: $cert, DnsFailover: "secondary"}' "$FROM"
