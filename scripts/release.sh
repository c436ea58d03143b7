#!/usr/bin/env bash
# Build the release artifact: a static, reproducible hello-birthday binary, its
# SHA-256 and a CycloneDX SBOM, then prove the binary needs nothing from the
# filesystem by running it in an empty chroot.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
TARGET=x86_64-unknown-linux-gnu
BIN=hello-birthday
MAX_BINARY_BYTES=15000000   # 15 MB: the artifact budget
RUNTIME_UID=65532           # the image's non-root user, tried here too

usage() {
  cat <<'USAGE'
Usage: scripts/release.sh [--out DIR] [--release LABEL] [--skip-build]
                          [--check-reproducible]

Builds the static release binary
  RUSTFLAGS="-C target-feature=+crt-static ..." cargo build --release --locked
      --target x86_64-unknown-linux-gnu
(--target keeps proc-macros and build scripts dynamically linked for the
host, while the service itself links glibc statically), with the version and
git revision embedded (GIT_REVISION, read at compile time), and writes to DIR
(default target/dist):

  hello-birthday           the binary
  hello-birthday.sha256    its checksum, `sha256sum -c` format
  hello-birthday.cdx.json  CycloneDX 1.5 SBOM (crates linked in, SQLite, glibc)
  release.env              VERSION, REVISION, RELEASE, SHA256, BYTES

Then proves it: `file` and `ldd` report a static binary with no interpreter
and no shared libraries, it is under 15 MB, and in an empty chroot (nothing
but the binary and an empty data directory) it prints --version and, as an
unprivileged user, serves /healthz, a PUT and GET against SQLite, /metrics,
and exits 0 on SIGTERM.

Options:
  --out DIR              where to write the artifact (default target/dist)
  --release LABEL        release label recorded in release.env (default
                         <version>-<revision>); the service reports the label
                         it is started with (RELEASE), so one binary can carry
                         any label
  --skip-build           reuse the binary already built (proofs still run)
  --check-reproducible   build a second time in a fresh target dir and require
                         a bit-identical binary (a full extra build: minutes)
  -h, --help             this text

Environment: GIT_REVISION overrides the revision (e.g. a source tarball has
no .git). Needs root for the chroot proof.
USAGE
}

# shellcheck source=deploy/container/chroot-check.sh
. "$ROOT/deploy/container/chroot-check.sh"

OUT="$ROOT/target/dist"
LABEL=""
SKIP_BUILD=0
CHECK_REPRO=0
while [ $# -gt 0 ]; do
  case "$1" in
    --out) optarg OUT "$@"; shift 2 ;;
    --release) optarg LABEL "$@"; shift 2 ;;
    --skip-build) SKIP_BUILD=1; shift ;;
    --check-reproducible) CHECK_REPRO=1; shift ;;
    -h|--help) usage; exit 0 ;;
    *) usage >&2; exit 2 ;;
  esac
done

for tool in cargo jq file ldd readelf sha256sum chroot curl python3 git; do
  command -v "$tool" >/dev/null 2>&1 || die "$tool is missing (scripts/setup.sh dev installs it)"
done
[ "$(id -u)" -eq 0 ] || die "the empty-chroot proof needs root"

cd "$ROOT"
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)

VERSION=$(cargo metadata --no-deps --format-version 1 --locked \
  | jq -r --arg n "$BIN" '.packages[] | select(.name == $n) | .version')
[ -n "$VERSION" ] || die "cannot read the crate version"
if [ -n "${GIT_REVISION:-}" ]; then
  REVISION=$GIT_REVISION
else
  REVISION=$(git rev-parse --short=12 HEAD)
  # Say so when the binary does not match the commit it names.
  git diff --quiet HEAD -- 2>/dev/null || REVISION="$REVISION-dirty"
fi
RELEASE=${LABEL:-$VERSION-$REVISION}
CARGO_HOME_DIR=${CARGO_HOME:-$HOME/.cargo}

# Same source, same compiler, same flags -> same bytes, wherever the checkout
# and the cargo home are: absolute paths that end up in panic locations are
# rewritten (Rust: --remap-path-prefix; the bundled SQLite C code:
# -ffile-prefix-map).
build() { # build TARGET_DIR
  local target_dir=$1
  env GIT_REVISION="$REVISION" \
    CARGO_TARGET_DIR="$target_dir" \
    RUSTFLAGS="-C target-feature=+crt-static --remap-path-prefix=$ROOT=/build --remap-path-prefix=$CARGO_HOME_DIR=/cargo --remap-path-prefix=$target_dir=/target" \
    CFLAGS_x86_64_unknown_linux_gnu="-ffile-prefix-map=$ROOT=/build -ffile-prefix-map=$CARGO_HOME_DIR=/cargo -ffile-prefix-map=$target_dir=/target" \
    cargo build --release --locked --target "$TARGET" -p "$BIN" --bin "$BIN"
}

TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
BUILT="$TARGET_DIR/$TARGET/release/$BIN"
if [ "$SKIP_BUILD" = 1 ]; then
  step "reusing $BUILT (--skip-build)"
  if [ ! -x "$BUILT" ] || [ ! -s "$BUILT.revision" ]; then
    die "$BUILT (and its .revision) missing: build without --skip-build first"
  fi
  # The revision it was built from, which HEAD may have moved past since.
  REVISION=$(cat "$BUILT.revision")
  RELEASE=${LABEL:-$VERSION-$REVISION}
else
  step "cargo build --release --locked --target $TARGET (static, revision $REVISION)"
  start=$(date +%s)
  build "$TARGET_DIR"
  echo "$REVISION" > "$BUILT.revision"
  step "built in $(( $(date +%s) - start ))s"
fi

step "writing the artifact to $OUT"
install -m 0755 "$BUILT" "$OUT/$BIN"
(cd "$OUT" && sha256sum "$BIN" > "$BIN.sha256")
SHA256=$(cut -d' ' -f1 "$OUT/$BIN.sha256")
BYTES=$(stat -c %s "$OUT/$BIN")
python3 "$ROOT/deploy/container/sbom.py" --binary "$OUT/$BIN" --revision "$REVISION" \
  --target "$TARGET" --output "$OUT/$BIN.cdx.json"
cat > "$OUT/release.env" <<EOF
VERSION=$VERSION
REVISION=$REVISION
RELEASE=$RELEASE
SHA256=$SHA256
BYTES=$BYTES
EOF
printf '  %-24s %s\n' "$BIN" "$BYTES bytes" "$BIN.sha256" "$SHA256" \
  "$BIN.cdx.json" "$(jq '.components | length' "$OUT/$BIN.cdx.json") components" "release" "$RELEASE"

step "proving the binary is static"
file_out=$(file -b "$OUT/$BIN")
echo "  file: $file_out"
case "$file_out" in
  *"statically linked"*|*"static-pie linked"*) ;;
  *) die "file does not report a static binary" ;;
esac
ldd_out=$(ldd "$OUT/$BIN" 2>&1 || true)
echo "  ldd: $ldd_out"
case "$ldd_out" in
  *"=>"*) die "ldd lists shared libraries" ;;
  *"not a dynamic executable"*|*"statically linked"*) ;;
  *) die "unexpected ldd output" ;;
esac
if readelf -lW "$OUT/$BIN" | grep -q 'INTERP'; then die "the binary asks for a dynamic loader (PT_INTERP)"; fi
if readelf -dW "$OUT/$BIN" | grep -q '(NEEDED)'; then die "the binary has NEEDED shared libraries"; fi
echo "  readelf: no PT_INTERP, no NEEDED entries"
[ "$BYTES" -lt "$MAX_BINARY_BYTES" ] || die "binary is $BYTES bytes, over the $MAX_BINARY_BYTES budget"
echo "  size: $BYTES bytes < $MAX_BINARY_BYTES"

step "running it in an empty chroot"
jail=$(mktemp -d)
chmod 0755 "$jail"   # mktemp's 0700 would keep the unprivileged user out of /
second=""
cleanup() { rm -rf "$jail" ${second:+"$second"}; }
trap cleanup EXIT
install -m 0755 "$OUT/$BIN" "$jail/$BIN"
install -d -o "$RUNTIME_UID" -g "$RUNTIME_UID" "$jail/data"
echo "  chroot contents: $(cd "$jail" && find . -mindepth 1 | sort | tr '\n' ' ')"
version_out=$(chroot "$jail" "/$BIN" --version)
echo "  --version: $version_out"
[[ "$version_out" == *"$VERSION"* && "$version_out" == *"$REVISION"* ]] \
  || die "--version does not name version $VERSION and revision $REVISION"
chroot_serve_check "$jail" "/$BIN" "$RUNTIME_UID:$RUNTIME_UID" "$REVISION" "$RELEASE" \
  DATABASE_URL=sqlite:///data/release-check.db
[ -s "$jail/data/release-check.db" ] || die "the SQLite file was not written in the chroot"

if [ "$CHECK_REPRO" = 1 ]; then
  step "rebuilding in a fresh target dir to check reproducibility"
  second=$(mktemp -d)
  build "$second"
  other=$(sha256sum "$second/$TARGET/release/$BIN" | cut -d' ' -f1)
  rm -rf "$second"; second=""
  echo "  first:  $SHA256"
  echo "  second: $other"
  [ "$other" = "$SHA256" ] || die "the two builds differ: not reproducible"
  echo "  bit-identical"
fi

step "release $RELEASE ready in $OUT"
