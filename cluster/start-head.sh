#!/usr/bin/env bash
# Start a Ray head node in the foreground (`ray start --head --block`): the entrypoint of the head
# container, or run it in a terminal. It returns when the node stops; Ctrl-C / SIGTERM stops it.
set -euo pipefail

usage() {
    cat <<'EOF'
usage: cluster/start-head.sh [EXTRA RAY START ARGS...]

Starts a Ray head node and blocks. Configure it with environment variables (unset = Ray's default):

  PITDIST_RAY_PORT             GCS port workers join at (6379)
  PITDIST_DASHBOARD_HOST       dashboard + job API bind address (127.0.0.1; 0.0.0.0 to accept
                               `pitdist submit` from other machines: then use token auth)
  PITDIST_DASHBOARD_PORT       dashboard + job submission port (8265)
  PITDIST_CLIENT_SERVER_PORT   Ray Client port (10001)
  PITDIST_NODE_IP              this node's address as other nodes see it
  PITDIST_NUM_CPUS             logical CPUs (one per pitdist rank scheduled here)
  PITDIST_NUM_GPUS, PITDIST_OBJECT_STORE_MEMORY
  PITDIST_TEMP_DIR             Ray's temp/log dir (/tmp/ray); one per node on a shared host
  PITDIST_METRICS_EXPORT_PORT  Prometheus endpoint (keep it outside the worker ports 10002-19999)
  PITDIST_OBJECT_MANAGER_PORT, PITDIST_NODE_MANAGER_PORT, PITDIST_AGENT_LISTEN_PORT,
  PITDIST_AGENT_GRPC_PORT, PITDIST_RUNTIME_ENV_AGENT_PORT, PITDIST_MIN_WORKER_PORT,
  PITDIST_MAX_WORKER_PORT      the other ports (needed when several nodes share one host)
  RAY_AUTH_TOKEN_PATH / RAY_AUTH_TOKEN   cluster token (turns on RAY_AUTH_MODE=token)
  PITDIST_RAY_BIN              the ray executable (ray on PATH)

Example
  RAY_AUTH_TOKEN_PATH=~/.ray/cluster_token PITDIST_NUM_CPUS=2 cluster/start-head.sh
EOF
}
if [[ "${1:-}" == "-h" || "${1:-}" == "--help" ]]; then usage; exit 0; fi

source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
ARGS+=(--head --port "${PITDIST_RAY_PORT:-6379}" --include-dashboard true
       --dashboard-host "${PITDIST_DASHBOARD_HOST:-127.0.0.1}")
opt --dashboard-port         PITDIST_DASHBOARD_PORT
opt --ray-client-server-port PITDIST_CLIENT_SERVER_PORT

echo "start-head: $(describe_auth)"
echo "start-head: $RAY_BIN start ${ARGS[*]} $*"
exec "$RAY_BIN" start "${ARGS[@]}" "$@"
