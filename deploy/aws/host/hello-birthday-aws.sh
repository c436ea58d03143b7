#!/usr/bin/env bash
# Instance side of the AWS deployment: runs on Amazon Linux 2023, shipped in
# host.tar.gz and started by the launch template's user data, which first
# writes /etc/hello-birthday/aws.conf (KEY=VALUE lines from the stack).
set -euo pipefail

usage() {
  cat <<'USAGE'
Usage: hello-birthday-aws.sh bootstrap|render-env|refresh [--help]

  bootstrap   First boot: install the release (scripts/setup.sh host), wire
              the unit to AWS (database credentials, logs, stop timeout),
              start it, and wait until /readyz answers 200 and the load
              balancer reports this instance healthy. Exit 0 only then;
              the user data passes the exit code to cfn-signal.
  render-env  Write the database URL from the secret (Secrets Manager) to
              /etc/hello-birthday/database-url, the unit's LoadCredential=
              (root, 0600), and the other settings from aws.conf to
              /etc/hello-birthday/env, which no longer holds the URL. Runs
              before every start of the unit, so a restart always picks up
              the current password.
  refresh     Timer job: when the secret has rotated, restart the service
              to take the new login. The previous login stays valid until
              the next rotation (alternating users), so there is no hurry:
              each instance restarts only in its own 15-minute slot (its
              rank among the group's targets) and only while every other
              target is healthy, so no two restart together. A login that
              no longer works restarts at once while another is healthy.

Environment (tests): HB_AWS_CONF, HB_ENV_FILE, HB_DATABASE_URL_FILE,
HB_STATE_DIR, HB_RDS_CA_FILE override paths; HB_INSTANCE_ID and HB_NOW (epoch seconds) the instance id
and the clock.
USAGE
}

CONF=${HB_AWS_CONF:-/etc/hello-birthday/aws.conf}
ENV_FILE=${HB_ENV_FILE:-/etc/hello-birthday/env}
# The unit's LoadCredential=database-url:... source (deploy/systemd).
DATABASE_URL_FILE=${HB_DATABASE_URL_FILE:-/etc/hello-birthday/database-url}
STATE_DIR=${HB_STATE_DIR:-/var/lib/hello-birthday-aws}
RDS_CA_FILE=${HB_RDS_CA_FILE:-/etc/hello-birthday/rds-ca.pem}
SELF_INSTALLED=/opt/hello-birthday/bin/hello-birthday-aws
UNIT=hello-birthday.service

log() { printf 'hello-birthday-aws: %s\n' "$*"; }
die() { printf 'hello-birthday-aws: %s\n' "$*" >&2; exit 1; }

# aws.conf is data, not code: only KEY=VALUE lines with upper-case keys are
# read, nothing is evaluated.
load_conf() {
  [ -r "$CONF" ] || die "$CONF missing (written by the launch template's user data)"
  local line key
  while IFS= read -r line || [ -n "$line" ]; do
    [[ "$line" =~ ^[[:space:]]*(#|$) ]] && continue
    [[ "$line" =~ ^([A-Z][A-Z0-9_]*)=(.*)$ ]] || die "$CONF: bad line: $line"
    key=${BASH_REMATCH[1]}
    printf -v "CONF_$key" '%s' "${BASH_REMATCH[2]}"
  done <"$CONF"
  local required=(REGION DB_SECRET_ARN DB_HOST DB_PORT DB_NAME APP_VERSION DRAIN_SECONDS SHUTDOWN_TIMEOUT_SECONDS SERVICE_PORT METRICS_PORT)
  for key in "${required[@]}"; do
    local var="CONF_$key"
    [ -n "${!var:-}" ] || die "$CONF: $key is missing"
  done
  export AWS_DEFAULT_REGION=$CONF_REGION
}

# postgres://user:password@host:port/db?sslmode=require, with user and
# password percent-encoded (generated passwords contain URL syntax).
database_url() {
  local secret stage=${1:-AWSCURRENT}
  secret=$(aws secretsmanager get-secret-value --secret-id "$CONF_DB_SECRET_ARN" --version-stage "$stage" \
    --query SecretString --output text) || die "cannot read the database secret ($stage)"
  SECRET_JSON=$secret python3 - "$CONF_DB_HOST" "$CONF_DB_PORT" "$CONF_DB_NAME" <<'PY'
import json, os, sys
from urllib.parse import quote
s = json.loads(os.environ["SECRET_JSON"])
host, port, db = sys.argv[1:4]
print(f"postgres://{quote(s['username'], safe='')}:{quote(s['password'], safe='')}@{host}:{port}/{db}?sslmode=require")
PY
}

# The RDS CA bundle: the service verifies the database's certificate (rustls,
# sslmode=require), and RDS certificates chain to Amazon's RDS CA, which is
# not a public root. It ships in the release's host bundle (checksummed by
# the stack's HostBundleSha256; deploy/aws/rds-ca-bundle.py makes it), so
# nothing is downloaded at boot; installed again when a release changes it.
ensure_rds_ca() {
  local src=${CONF_RELEASE_DIR:-}/deploy/aws/host/rds-ca-bundle.pem tmp
  if [ -z "${CONF_RELEASE_DIR:-}" ] || [ ! -r "$src" ]; then
    die "RDS CA bundle missing from the release ($src)"
  fi
  grep -q 'BEGIN CERTIFICATE' "$src" || die "$src is not a PEM bundle"
  if cmp -s "$src" "$RDS_CA_FILE"; then
    return 0
  fi
  tmp=$(mktemp "$RDS_CA_FILE.XXXXXX")
  cp "$src" "$tmp"
  chmod 0644 "$tmp"
  mv -f "$tmp" "$RDS_CA_FILE"
  log "installed the RDS CA bundle of release $CONF_APP_VERSION at $RDS_CA_FILE"
}

# write_private FILE: standard input to FILE, mode 0600, atomically (a
# reader sees the old file or the new one, never a partial secret).
write_private() {
  local tmp
  mkdir -p "$(dirname "$1")"
  tmp=$(mktemp "$1.XXXXXX")
  chmod 0600 "$tmp"
  cat >"$tmp"
  mv -f "$tmp" "$1"
}

# Writes the database URL to the unit's credential and the variables this
# deployment owns into the env file, keeping any other line already there
# (setup.sh host writes the file first). A DATABASE_URL line left in the env
# file by an earlier release is dropped: it would win over the credential.
# This runs as ExecStartPre, and systemd loads LoadCredential= files for
# ExecStart after it, so the service starts with the URL written here.
render_env() {
  load_conf
  local url tmp key
  url=$(database_url)
  mkdir -p "$(dirname "$RDS_CA_FILE")"
  ensure_rds_ca
  local -A want=(
    [PORT]=$CONF_SERVICE_PORT
    [METRICS_PORT]=$CONF_METRICS_PORT
    [BIND_ADDR]=0.0.0.0
    # Prometheus scrapes instances from its own hosts; the group's security
    # group admits the metrics port from them only.
    [METRICS_BIND_ADDR]=0.0.0.0
    [DATABASE_CA_FILE]=$RDS_CA_FILE
    [DB_POOL_SIZE]=${CONF_DB_POOL_SIZE:-16}
    [LOG_FORMAT]=json
    [LOG_LEVEL]=info
    [RELEASE]=$CONF_APP_VERSION
    [DRAIN_SECONDS]=$CONF_DRAIN_SECONDS
    [SHUTDOWN_TIMEOUT_SECONDS]=$CONF_SHUTDOWN_TIMEOUT_SECONDS
    [REQUEST_TIMEOUT_SECONDS]=${CONF_REQUEST_TIMEOUT_SECONDS:-5}
  )
  mkdir -p "$(dirname "$ENV_FILE")"
  tmp=$(mktemp "$ENV_FILE.XXXXXX")
  chmod 0600 "$tmp"
  if [ -f "$ENV_FILE" ]; then
    local line
    while IFS= read -r line || [ -n "$line" ]; do
      key=${line%%=*}
      [ -n "${want[$key]+set}" ] && continue
      [ "$key" = DATABASE_URL ] && continue
      printf '%s\n' "$line" >>"$tmp"
    done <"$ENV_FILE"
  fi
  for key in $(printf '%s\n' "${!want[@]}" | sort); do
    printf '%s=%s\n' "$key" "${want[$key]}" >>"$tmp"
  done
  printf '%s\n' "$url" | write_private "$DATABASE_URL_FILE"
  mv -f "$tmp" "$ENV_FILE"
  mkdir -p "$STATE_DIR"
  printf '%s\n' "$url" | sha256sum | cut -d' ' -f1 >"$STATE_DIR/database-url.sha256"
  log "wrote $DATABASE_URL_FILE and $ENV_FILE (release $CONF_APP_VERSION)"
}

imds() {
  if [ "$1" = instance-id ] && [ -n "${HB_INSTANCE_ID:-}" ]; then echo "$HB_INSTANCE_ID"; return 0; fi
  local token
  token=$(curl -fsS -X PUT http://169.254.169.254/latest/api/token -H 'X-aws-ec2-metadata-token-ttl-seconds: 60')
  curl -fsS -H "X-aws-ec2-metadata-token: $token" "http://169.254.169.254/latest/meta-data/$1"
}

target_state() {
  aws elbv2 describe-target-health --target-group-arn "$CONF_TARGET_GROUP_ARN" \
    --targets "Id=$1,Port=$CONF_SERVICE_PORT" \
    --query 'TargetHealthDescriptions[0].TargetHealth.State' --output text
}

# poll DESCRIPTION DEADLINE_EPOCH COMMAND...: until COMMAND succeeds.
poll() {
  local what=$1 deadline=$2; shift 2
  until "$@"; do
    [ "$(date +%s)" -lt "$deadline" ] || die "timed out waiting for $what"
    sleep 3
  done
  log "$what: ok"
}

ready_locally() { curl -fsS -o /dev/null --max-time 2 "http://127.0.0.1:$CONF_SERVICE_PORT/readyz"; }
healthy_in_target_group() { [ "$(target_state "$INSTANCE_ID")" = healthy ]; }

install_unit_wiring() {
  local stop_timeout=$((CONF_DRAIN_SECONDS + CONF_SHUTDOWN_TIMEOUT_SECONDS + 5))
  install -D -m 0755 "${BASH_SOURCE[0]}" "$SELF_INSTALLED"
  install -d -m 0755 /etc/systemd/system/$UNIT.d /var/log/hello-birthday
  # '+' runs render-env as root (the env and URL files are root's, 0600) even
  # though the service itself runs as its own user; '-' lets the service
  # start with the last good env file if Secrets Manager cannot be reached
  # at that moment. TimeoutStopSec covers
  # the whole drain plus the shutdown deadline, so systemd never SIGKILLs a
  # draining service. stdout goes to a file the CloudWatch agent ships.
  cat >/etc/systemd/system/$UNIT.d/50-aws.conf <<EOF
[Service]
ExecStartPre=-+$SELF_INSTALLED render-env
TimeoutStopSec=$stop_timeout
StandardOutput=append:/var/log/hello-birthday/service.log
StandardError=inherit
EOF
  cat >/etc/logrotate.d/hello-birthday <<'EOF'
/var/log/hello-birthday/service.log {
  daily
  rotate 3
  maxsize 200M
  missingok
  notifempty
  compress
  copytruncate
}
EOF
  cat >/etc/systemd/system/hello-birthday-secret-refresh.service <<EOF
[Unit]
Description=Restart hello-birthday when its database secret has rotated
[Service]
Type=oneshot
ExecStart=$SELF_INSTALLED refresh
EOF
  cat >/etc/systemd/system/hello-birthday-secret-refresh.timer <<'EOF'
[Unit]
Description=Check the hello-birthday database secret for rotation
[Timer]
OnBootSec=10min
OnUnitActiveSec=10min
RandomizedDelaySec=5min
[Install]
WantedBy=timers.target
EOF
}

configure_cloudwatch_agent() {
  [ -n "${CONF_LOG_GROUP:-}" ] || { log "no LOG_GROUP: CloudWatch agent not configured"; return 0; }
  local cfg=/opt/aws/amazon-cloudwatch-agent/etc/amazon-cloudwatch-agent.json
  install -d "$(dirname "$cfg")"
  cat >"$cfg" <<EOF
{
  "agent": {"metrics_collection_interval": 60},
  "logs": {"logs_collected": {"files": {"collect_list": [
    {"file_path": "/var/log/hello-birthday/service.log", "log_group_name": "$CONF_LOG_GROUP", "log_stream_name": "{instance_id}/service"},
    {"file_path": "/var/log/hello-birthday-bootstrap.log", "log_group_name": "$CONF_LOG_GROUP", "log_stream_name": "{instance_id}/bootstrap"}
  ]}}},
  "metrics": {"namespace": "HelloBirthday/Host",
    "append_dimensions": {"InstanceId": "\${aws:InstanceId}", "AutoScalingGroupName": "\${aws:AutoScalingGroupName}"},
    "aggregation_dimensions": [["AutoScalingGroupName"]],
    "metrics_collected": {"mem": {"measurement": ["mem_used_percent"]}, "disk": {"measurement": ["used_percent"], "resources": ["/"]}}}
}
EOF
  /opt/aws/amazon-cloudwatch-agent/bin/amazon-cloudwatch-agent-ctl -a fetch-config -m ec2 -s -c "file:$cfg"
}

bootstrap() {
  load_conf
  local release=${CONF_RELEASE_DIR:?RELEASE_DIR missing in $CONF} deadline
  log "installing release $CONF_APP_VERSION from $release"
  install_unit_wiring
  # The env file and the database URL exist before the unit is installed,
  # so setup.sh keeps them and the service never starts with the template's
  # local SQLite database
  # (a healthy target on SQLite would take writes that PostgreSQL never sees).
  render_env
  "$release/scripts/setup.sh" host --binary "$release/hello-birthday" --no-start
  configure_cloudwatch_agent
  systemctl daemon-reload
  systemctl enable --now hello-birthday-secret-refresh.timer
  systemctl enable $UNIT
  systemctl restart $UNIT
  INSTANCE_ID=$(imds instance-id)
  deadline=$(( $(date +%s) + ${CONF_READY_TIMEOUT_SECONDS:-600} ))
  poll "local /readyz" "$deadline" ready_locally
  poll "target $INSTANCE_ID healthy in the load balancer" "$deadline" healthy_in_target_group
  log "release $CONF_APP_VERSION is serving"
}

# After a rotation the credential file still holds the previous login, which the
# alternating-users rotation keeps valid until the next one: each instance
# restarts in its own slot, SLOT_MINUTES long, by its rank among the target
# group's instance ids, and only while every other target is healthy; no
# two instances restart at once. A login that is neither the current nor
# the previous one no longer works: restart now, while another is healthy.
SLOT_MINUTES=15
refresh() {
  load_conf
  local now_hash old_hash prev_hash="" previous healthy all ids rank n slot others
  now_hash=$(database_url AWSCURRENT | sha256sum | cut -d' ' -f1)
  old_hash=$(cat "$STATE_DIR/database-url.sha256" 2>/dev/null || true)
  if [ "$now_hash" = "$old_hash" ]; then
    log "database secret unchanged"
    return 0
  fi
  if previous=$(database_url AWSPREVIOUS 2>/dev/null); then
    prev_hash=$(printf '%s\n' "$previous" | sha256sum | cut -d' ' -f1)
  fi
  INSTANCE_ID=$(imds instance-id)
  healthy=$(aws elbv2 describe-target-health --target-group-arn "$CONF_TARGET_GROUP_ARN" \
    --query "TargetHealthDescriptions[?TargetHealth.State=='healthy'].Target.Id" --output text)
  all=$(aws elbv2 describe-target-health --target-group-arn "$CONF_TARGET_GROUP_ARN" \
    --query "TargetHealthDescriptions[].Target.Id" --output text)
  others=$(tr -s '[:space:]' '\n' <<<"$healthy" | grep -v '^$' | grep -cvx "$INSTANCE_ID" || true)
  ids=$(printf '%s\n%s\n' "$all" "$INSTANCE_ID" | tr -s '[:space:]' '\n' | grep -v '^$' | sort -u)
  if [ -n "$prev_hash" ] && [ "$old_hash" = "$prev_hash" ]; then
    n=$(grep -c . <<<"$ids")
    rank=$(grep -nx "$INSTANCE_ID" <<<"$ids" | cut -d: -f1)
    slot=$(( ( ${HB_NOW:-$(date +%s)} / 60 / SLOT_MINUTES ) % n + 1 ))
    if [ "$slot" != "$rank" ]; then
      log "database secret rotated; the previous login still works: restart in slot $rank of $n (now $slot)"
      return 0
    fi
    if [ "$others" -lt $((n - 1)) ]; then
      log "database secret rotated; not every other target is healthy: restart postponed"
      return 0
    fi
  elif [ "${others:-0}" -lt 1 ]; then
    log "database secret rotated, the login in use is no longer valid, but no other healthy target: restart postponed"
    return 0
  fi
  log "database secret rotated: restarting (drains first)"
  systemctl restart $UNIT
}

main() {
  case "${1:-}" in
    -h|--help) usage ;;
    bootstrap) bootstrap ;;
    render-env) render_env ;;
    refresh) refresh ;;
    *) usage >&2; exit 2 ;;
  esac
}

main "$@"
