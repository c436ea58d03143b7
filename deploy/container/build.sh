#!/usr/bin/env bash
# Build the FROM scratch container image around the release binary with
# podman, and check it: size budget, non-root user, ports, no HEALTHCHECK,
# exactly the expected files, and the image's own filesystem and settings
# serving in a chroot.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
IMAGE_UID=65532
CA_BUNDLE=/etc/ssl/certs/ca-certificates.crt

usage() {
  cat <<'USAGE'
Usage: deploy/container/build.sh [--binary PATH] [--tag NAME] [--save FILE]
                                 [--max-bytes N]

Stages a build context (the static binary, the host's CA bundle, an empty
data directory owned by uid 65532) and runs `podman build` with
deploy/container/Containerfile, with timestamps pinned to the commit time so
the same binary gives the same image. Then checks:
  - the image is smaller than --max-bytes (default 20000000, i.e. 20 MB);
  - its config: user 65532:65532, ports 5000 and 9464, no HEALTHCHECK,
    the binary as entrypoint;
  - its filesystem holds exactly the binary, the CA bundle and /data;
  - that filesystem, exported and run in a chroot with the image's
    environment and user (containers cannot be started on this machine),
    serves /healthz, a PUT/GET and /metrics, and exits 0 on SIGTERM.

Options:
  --binary PATH   the static binary (default target/dist/hello-birthday, from
                  scripts/release.sh; release.env beside it names the release)
  --tag NAME      image name (default hello-birthday:<release>)
  --save FILE     also write the image as an OCI archive (for the pipeline)
  --max-bytes N   size budget in bytes
  -h, --help      this text
USAGE
}

# shellcheck source=deploy/container/chroot-check.sh
. "$HERE/chroot-check.sh"

BINARY="$ROOT/target/dist/hello-birthday"
TAG=""
SAVE=""
MAX_BYTES=20000000
while [ $# -gt 0 ]; do
  case "$1" in
    --binary) optarg BINARY "$@"; shift 2 ;;
    --tag) optarg TAG "$@"; shift 2 ;;
    --save) optarg SAVE "$@"; shift 2 ;;
    --max-bytes) optarg MAX_BYTES "$@"; shift 2 ;;
    -h|--help) usage; exit 0 ;;
    *) usage >&2; exit 2 ;;
  esac
done

for tool in podman jq tar chroot curl git; do
  command -v "$tool" >/dev/null 2>&1 || die "$tool is missing (scripts/setup.sh dev installs it)"
done
[ "$(id -u)" -eq 0 ] || die "needs root (podman build of a root-owned layer, chroot)"
[ -x "$BINARY" ] || die "$BINARY is missing: run scripts/release.sh first"
[ -s "$CA_BUNDLE" ] || die "$CA_BUNDLE is missing (Debian package ca-certificates)"
release_env="$(dirname "$BINARY")/release.env"
[ -s "$release_env" ] || die "$release_env is missing: run scripts/release.sh first"
VERSION=$(sed -n 's/^VERSION=//p' "$release_env")
REVISION=$(sed -n 's/^REVISION=//p' "$release_env")
RELEASE=$(sed -n 's/^RELEASE=//p' "$release_env")
TAG=${TAG:-hello-birthday:$RELEASE}
# Reproducible layers: every timestamp is the commit's.
EPOCH=${SOURCE_DATE_EPOCH:-$(git -C "$ROOT" log -1 --format=%ct)}

work=$(mktemp -d)
cid=""
cleanup() {
  if [ -n "$cid" ]; then podman rm -f "$cid" >/dev/null 2>&1 || true; fi
  rm -rf "$work"
}
trap cleanup EXIT

step "staging the build context"
ctx="$work/context"
install -d "$ctx/etc/ssl/certs" "$ctx/data"
install -m 0644 "$CA_BUNDLE" "$ctx/etc/ssl/certs/ca-certificates.crt"
install -m 0755 "$BINARY" "$ctx/hello-birthday"
install -m 0644 "$HERE/Containerfile" "$ctx/Containerfile"
find "$ctx" -exec touch -h -d "@$EPOCH" {} +

step "podman build -t $TAG (release $RELEASE)"
start=$(date +%s)
podman build --quiet --format oci --timestamp "$EPOCH" \
  --build-arg "VERSION=$VERSION" --build-arg "REVISION=$REVISION" --build-arg "RELEASE=$RELEASE" \
  -f "$ctx/Containerfile" -t "$TAG" "$ctx" >/dev/null
image_id=$(podman image inspect --format '{{.Id}}' "$TAG")
echo "  built $image_id in $(( $(date +%s) - start ))s"

step "checking size and configuration"
size=$(podman image inspect --format '{{.Size}}' "$TAG")
binary_bytes=$(stat -c %s "$BINARY")
echo "  image size: $size bytes (binary $binary_bytes bytes), budget $MAX_BYTES"
[ "$size" -lt "$MAX_BYTES" ] || die "image is $size bytes, over the $MAX_BYTES budget"
config=$(podman image inspect "$TAG" | jq '.[0].Config')
check() { # check DESCRIPTION JQ-EXPRESSION: the image config must satisfy it
  jq -e "$2" >/dev/null <<<"$config" || die "image config: $1 (config: $(jq -c . <<<"$config"))"
  echo "  ok: $1"
}
check "runs as $IMAGE_UID:$IMAGE_UID" ".User == \"$IMAGE_UID:$IMAGE_UID\""
check "exposes exactly 5000/tcp and 9464/tcp" '(.ExposedPorts | keys) == ["5000/tcp", "9464/tcp"]'
check "has no HEALTHCHECK" '(.Healthcheck // null) == null'
check "entrypoint is the binary" '.Entrypoint == ["/usr/local/bin/hello-birthday"]'
check "stops with SIGTERM" '.StopSignal == "SIGTERM"'
check "reports release $RELEASE" "any(.Env[]; . == \"RELEASE=$RELEASE\")"

step "checking the image's files"
cid=$(podman create "$TAG")
rootfs="$work/rootfs"
mkdir "$rootfs"
podman export "$cid" | tar -x -C "$rootfs" --numeric-owner
# podman create adds empty mount points for /dev, /proc, /sys and
# /etc/{hosts,resolv.conf,hostname} to the container (not to the image);
# everything else must be what the Containerfile put there.
files=$(cd "$rootfs" && find . -mindepth 1 \( -type f -o -type l \) -printf '%P %U:%G %m %s\n' | sort)
while IFS= read -r line; do echo "  $line"; done <<<"$files"
unexpected=$(grep -vE '^(usr/local/bin/hello-birthday 0:0 755|etc/ssl/certs/ca-certificates.crt 0:0 644|etc/(hosts|resolv.conf|hostname|passwd|group) [0-9:]+ [0-9]+ 0|run/\.containerenv [0-9:]+ [0-9]+ 0) ' <<<"$files" || true)
[ -z "$unexpected" ] || die "unexpected files in the image: $unexpected"
cmp -s "$BINARY" "$rootfs/usr/local/bin/hello-birthday" || die "the image's binary differs from $BINARY"
[ "$(stat -c %u:%g "$rootfs/data")" = "$IMAGE_UID:$IMAGE_UID" ] || die "/data is not owned by $IMAGE_UID"
echo "  ok: binary (identical to $BINARY), CA bundle, /data owned by $IMAGE_UID, nothing else"

step "running the image's filesystem in a chroot, with its user and environment"
mapfile -t image_env < <(jq -r '.Env[]' <<<"$config")
chroot_serve_check "$rootfs" /usr/local/bin/hello-birthday "$(jq -r .User <<<"$config")" \
  "$REVISION" "$RELEASE" "${image_env[@]}"
[ -s "$rootfs/data/hello-birthday.db" ] || die "the default SQLite file was not written under /data"

if [ -n "$SAVE" ]; then
  step "saving $TAG as an OCI archive to $SAVE"
  rm -f "$SAVE"
  podman save --quiet --format oci-archive -o "$SAVE" "$TAG"
  echo "  $(stat -c %s "$SAVE") bytes"
fi

step "image $TAG ok: $size bytes"
