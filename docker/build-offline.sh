#!/usr/bin/env bash
# Build the pitdist images without an image registry (air-gapped, or a registry you may not use).
#
# 1. A Debian bookworm base with Python 3.11, made by debootstrap from Debian's package archive (or
#    your mirror), with this machine's local CA certificates, loaded by `docker import`.
# 2. docker/Dockerfile on that base: the pitdist image.
# 3. docker/prometheus.Dockerfile on that base: Prometheus from Debian's package, for the compose
#    cluster (Grafana has no Debian package: bring its image yourself, or run compose without it).
#
# pip inside the build uses this machine's settings: http(s) index URLs pass through, local
# find-links directories (PIP_FIND_LINKS, --wheels) are served to the build on 127.0.0.1, which is why
# the builds use the host's network (`docker build --network host`).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"

usage() {
    cat <<'EOF'
usage: docker/build-offline.sh [options]

  --tag NAME:TAG         the pitdist image (pitdist:latest); its build stage is kept as NAME-build:latest
  --base-tag NAME        the debootstrap base image (pitdist-base:bookworm)
  --prometheus-tag NAME  the Prometheus image (pitdist-prometheus:latest); --no-prometheus skips it
  --mirror URL           Debian mirror for debootstrap and apt (default: the first one this machine's
                         apt sources name)
  --wheels DIR           a directory of wheels pip may install from (repeatable); default: the local
                         directories in PIP_FIND_LINKS (else pip's find-links setting). Put a CPU
                         torch wheel here for a small image.
  --cache DIR            keeps the debootstrap tarball ($PITDIST_DOCKER_CACHE or ~/.cache/pitdist-docker)
  --rebuild-base         debootstrap again even when the tarball or base image exists

Needs root (debootstrap), debootstrap and a running Docker engine (DOCKER_HOST is honoured).
The wheels are served on 127.0.0.1:$PITDIST_WHEELS_PORT (47311; fixed, so rebuilds hit the cache).
Prints the build times and image sizes at the end.

Example
  sudo docker/build-offline.sh --wheels ~/wheelhouse && docker compose up -d   # see docker/README.md
EOF
}

TAG=pitdist:latest BASE_TAG=pitdist-base:bookworm PROM_TAG=pitdist-prometheus:latest
MIRROR=""
CACHE="${PITDIST_DOCKER_CACHE:-$HOME/.cache/pitdist-docker}"
REBUILD_BASE=0
WHEELS=()
while [[ $# -gt 0 ]]; do
    case "$1" in
        --tag) TAG="$2"; shift 2 ;;
        --base-tag) BASE_TAG="$2"; shift 2 ;;
        --prometheus-tag) PROM_TAG="$2"; shift 2 ;;
        --no-prometheus) PROM_TAG=""; shift ;;
        --mirror) MIRROR="$2"; shift 2 ;;
        --wheels) WHEELS+=("$2"); shift 2 ;;
        --cache) CACHE="$2"; shift 2 ;;
        --rebuild-base) REBUILD_BASE=1; shift ;;
        -h|--help) usage; exit 0 ;;
        *) echo "build-offline: unknown option '$1'" >&2; usage >&2; exit 2 ;;
    esac
done

if [[ -z "$MIRROR" ]]; then
    # The mirror this machine's apt already uses (first URIs line of its deb822 or one-line sources).
    MIRROR=$(grep -hoE '^(URIs:|deb) +https?://[^ ]+' /etc/apt/sources.list.d/*.sources /etc/apt/sources.list \
                 2>/dev/null | head -1 | awk '{print $2}') || true
    [[ -n "$MIRROR" ]] || { echo "build-offline: no Debian mirror in /etc/apt/sources.list{,.d/*.sources}: name one with --mirror URL" >&2; exit 2; }
fi
BUILD_TAG="${TAG%:*}-build:latest"   # the build stage, kept: the layer cache of torch, Ray and DeepSpeed
DOCKER="${DOCKER:-docker}"
say() { printf '\033[1m[build-offline]\033[0m %s\n' "$*"; }
die() { echo "build-offline: $*" >&2; exit 1; }
"$DOCKER" version --format '{{.Server.Version}}' >/dev/null 2>&1 \
    || die "no Docker engine at ${DOCKER_HOST:-the default socket}: start dockerd (or set DOCKER_HOST)"
mkdir -p "$CACHE"
TMP="$(mktemp -d)"
SERVER_PID=""
cleanup() {
    if [[ -n "$SERVER_PID" ]]; then kill "$SERVER_PID" 2>/dev/null || true; fi
    # An interrupted debootstrap can leave /proc or /sys mounted in the rootfs: never delete through them.
    awk -v dir="$TMP/" 'index($2, dir) == 1 {print $2}' /proc/mounts | sort -r | xargs -r umount -l
    rm -rf --one-file-system "$TMP"
}
trap cleanup EXIT

# --- 1. base image ------------------------------------------------------------------------------
# The tarball is named after everything that goes into it, so a change of mirror or CAs makes a new one.
INCLUDE=python3,python3-venv,ca-certificates
CAS=(/usr/local/share/ca-certificates/*.crt)
[[ -e "${CAS[0]}" ]] || CAS=()
key="$( (echo "bookworm $INCLUDE $MIRROR"; cat "${CAS[@]}" /dev/null) | sha256sum | cut -c1-12)"
TARBALL="$CACHE/bookworm-minbase-$key.tar"
t0=$SECONDS
if [[ $REBUILD_BASE == 1 ]] || ! "$DOCKER" image inspect "$BASE_TAG" >/dev/null 2>&1; then
    if [[ $REBUILD_BASE == 1 || ! -s "$TARBALL" ]]; then
        command -v debootstrap >/dev/null || die "debootstrap is missing (apt-get install debootstrap)"
        [[ $(id -u) == 0 ]] || die "debootstrap needs root"
        say "debootstrap bookworm ($INCLUDE) from $MIRROR (about a minute)"
        rootfs="$TMP/rootfs"
        debootstrap --variant=minbase --include="$INCLUDE" bookworm "$rootfs" "$MIRROR" > "$TMP/debootstrap.log" 2>&1 \
            || { tail -20 "$TMP/debootstrap.log" >&2; die "debootstrap failed (log above)"; }
        # This machine's local CAs (a proxy's, a company's): pip inside the builds must trust them.
        if [[ ${#CAS[@]} -gt 0 ]]; then
            cp "${CAS[@]}" "$rootfs/usr/local/share/ca-certificates/"
            chroot "$rootfs" update-ca-certificates >/dev/null
        fi
        rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/*
        tar -C "$rootfs" -c . > "$TARBALL.partial" && mv "$TARBALL.partial" "$TARBALL"
    else
        say "base tarball from the cache: $TARBALL"
    fi
    "$DOCKER" import --change 'CMD ["/bin/bash"]' --change 'ENV LANG=C.UTF-8' "$TARBALL" "$BASE_TAG" >/dev/null
fi
base_s=$((SECONDS - t0))

# --- pip settings for the builds ----------------------------------------------------------------
if [[ ${#WHEELS[@]} -eq 0 ]]; then
    links="${PIP_FIND_LINKS:-$(python3 -m pip config get global.find-links 2>/dev/null || true)}"
    for link in $links; do [[ -d "$link" ]] && WHEELS+=("$link"); done
fi
PIP_ARGS=(--build-arg PIP_CERT=/etc/ssl/certs/ca-certificates.crt)
for var in PIP_INDEX_URL PIP_EXTRA_INDEX_URL PIP_TRUSTED_HOST; do
    # file:// indexes name this machine's disk, which the build cannot see.
    if [[ -n "${!var:-}" && "${!var}" != *file:* ]]; then PIP_ARGS+=(--build-arg "$var=${!var}"); fi
done
if [[ ${#WHEELS[@]} -gt 0 ]]; then
    mkdir "$TMP/wheels"
    for dir in "${WHEELS[@]}"; do
        [[ -d "$dir" ]] || die "--wheels $dir: not a directory"
        find "$(cd "$dir" && pwd)" -maxdepth 1 -name '*.whl' -exec ln -sf {} "$TMP/wheels/" \;
    done
    # A fixed port: the URL is a build argument, so a new port would invalidate every cached pip layer.
    port="${PITDIST_WHEELS_PORT:-47311}"
    if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
        port="$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
        say "port ${PITDIST_WHEELS_PORT:-47311} is taken: serving wheels on $port (no cached pip layers this time)"
    fi
    python3 -m http.server --bind 127.0.0.1 --directory "$TMP/wheels" "$port" > "$TMP/http.log" 2>&1 &
    SERVER_PID=$!
    for _ in $(seq 50); do (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && break; sleep 0.1; done
    kill -0 "$SERVER_PID" 2>/dev/null || die "cannot serve the wheels on 127.0.0.1:$port: $(cat "$TMP/http.log")"
    PIP_ARGS+=(--build-arg "PIP_FIND_LINKS=http://127.0.0.1:$port/")
    say "serving $(ls "$TMP/wheels" | wc -l) wheels from ${WHEELS[*]} to pip at 127.0.0.1:$port"
fi
ls "$TMP"/wheels/torch-*+cpu-*.whl >/dev/null 2>&1 \
    || say "note: no CPU torch wheel among the local wheels: pip may download the large CUDA build"

# --- 2. the pitdist image -----------------------------------------------------------------------
t0=$SECONDS
say "docker build $TAG on $BASE_TAG"
# TORCH_INDEX_URL empty: the torch wheel comes from the served wheels or the index, not PyTorch's site.
# The build stage gets a tag of its own (BUILD_TAG): untagged, `docker image prune` would delete it
# and the next build would install torch, Ray and DeepSpeed again instead of using the cache.
BUILD_ARGS=(--network host -f "$ROOT/docker/Dockerfile" --build-arg BASE_IMAGE="$BASE_TAG"
            --build-arg TORCH_INDEX_URL= "${PIP_ARGS[@]}")
"$DOCKER" build "${BUILD_ARGS[@]}" --target build -t "$BUILD_TAG" "$ROOT"
"$DOCKER" build "${BUILD_ARGS[@]}" -t "$TAG" "$ROOT"
pitdist_s=$((SECONDS - t0))

# --- 3. Prometheus --------------------------------------------------------------------------------
prom_s=0
if [[ -n "$PROM_TAG" ]]; then
    t0=$SECONDS
    say "docker build $PROM_TAG (Debian's prometheus) on $BASE_TAG"
    "$DOCKER" build --network host -f "$ROOT/docker/prometheus.Dockerfile" -t "$PROM_TAG" \
        --build-arg BASE_IMAGE="$BASE_TAG" "$ROOT/docker"
    prom_s=$((SECONDS - t0))
fi

size() { "$DOCKER" image inspect --format '{{.Size}}' "$1" | awk '{printf "%.2f GB", $1 / 1e9}'; }
say "base $BASE_TAG: ${base_s} s, $(size "$BASE_TAG")"
say "pitdist $TAG: ${pitdist_s} s, $(size "$TAG")"
if [[ -n "$PROM_TAG" ]]; then say "prometheus $PROM_TAG: ${prom_s} s, $(size "$PROM_TAG")"; fi
