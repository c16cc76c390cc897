#!/usr/bin/env bash
# Start a Ray worker node that joins a head, in the foreground (`ray start --address ... --block`):
# the entrypoint of worker containers. Waits for the head's GCS port first, so containers may start
# in any order.
set -euo pipefail

usage() {
    cat <<'EOF'
usage: cluster/start-worker.sh [HEAD_HOST:PORT] [EXTRA RAY START ARGS...]

Joins the head at HEAD_HOST:PORT (or $PITDIST_HEAD_ADDRESS) and blocks. Waits up to
$PITDIST_HEAD_WAIT_S seconds (60) for the head to accept connections. The other settings are the
environment variables of start-head.sh (see cluster/start-head.sh --help): PITDIST_NODE_IP,
PITDIST_NUM_CPUS, PITDIST_TEMP_DIR, PITDIST_METRICS_EXPORT_PORT, the port variables, and the same
RAY_AUTH_TOKEN_PATH / RAY_AUTH_TOKEN as the head.

Example
  RAY_AUTH_TOKEN_PATH=~/.ray/cluster_token PITDIST_NUM_CPUS=2 cluster/start-worker.sh head:6379
EOF
}
if [[ "${1:-}" == "-h" || "${1:-}" == "--help" ]]; then usage; exit 0; fi

HEAD="${PITDIST_HEAD_ADDRESS:-}"
if [[ $# -gt 0 && "$1" != -* ]]; then HEAD="$1"; shift; fi
if [[ -z "$HEAD" || "$HEAD" != *:* ]]; then
    echo "start-worker: need the head as HOST:PORT (argument or PITDIST_HEAD_ADDRESS), got '${HEAD}'" >&2
    usage >&2
    exit 2
fi

source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
ARGS+=(--address "$HEAD")

# bash's /dev/tcp: no extra tools needed in the image.
deadline=$((SECONDS + ${PITDIST_HEAD_WAIT_S:-60}))
until (exec 3<>"/dev/tcp/${HEAD%:*}/${HEAD##*:}") 2>/dev/null; do
    if (( SECONDS >= deadline )); then
        echo "start-worker: head $HEAD not reachable after ${PITDIST_HEAD_WAIT_S:-60} s" >&2
        exit 1
    fi
    sleep 1
done

echo "start-worker: $(describe_auth)"
echo "start-worker: $RAY_BIN start ${ARGS[*]} $*"
exec "$RAY_BIN" start "${ARGS[@]}" "$@"
