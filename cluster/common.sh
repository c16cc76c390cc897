# Shared by start-head.sh and start-worker.sh: turn PITDIST_* environment variables into
# `ray start` flags. Sourced, not run.
#
# Every setting is an environment variable so a docker image (or compose file, or KubeRay pod spec)
# configures a node without rewriting its command; anything else can be appended as extra
# `ray start` arguments. Unset variables leave Ray's defaults.

RAY_BIN="${PITDIST_RAY_BIN:-ray}"
ARGS=(--block --disable-usage-stats)

# opt FLAG VAR: append "FLAG $VAR" when VAR is set and not empty.
opt() {
    local value="${!2:-}"
    if [[ -n "$value" ]]; then ARGS+=("$1" "$value"); fi
}

# Settings every node has.
opt --node-ip-address        PITDIST_NODE_IP              # the address other nodes reach this one at
opt --num-cpus               PITDIST_NUM_CPUS             # logical CPUs: one per pitdist rank
opt --num-gpus               PITDIST_NUM_GPUS
opt --object-store-memory    PITDIST_OBJECT_STORE_MEMORY  # bytes
opt --temp-dir               PITDIST_TEMP_DIR             # own dir per node when nodes share a host;
                                                          # keep it short: socket paths max ~107 chars
opt --metrics-export-port    PITDIST_METRICS_EXPORT_PORT  # Prometheus endpoint of this node
opt --object-manager-port    PITDIST_OBJECT_MANAGER_PORT
opt --node-manager-port      PITDIST_NODE_MANAGER_PORT
opt --dashboard-agent-listen-port PITDIST_AGENT_LISTEN_PORT  # default 52365: clashes between nodes on one host
opt --dashboard-agent-grpc-port   PITDIST_AGENT_GRPC_PORT
opt --runtime-env-agent-port PITDIST_RUNTIME_ENV_AGENT_PORT
opt --min-worker-port        PITDIST_MIN_WORKER_PORT      # default range 10002-19999
opt --max-worker-port        PITDIST_MAX_WORKER_PORT

# Token authentication (Ray's own variables). A token given by file or value turns token mode on,
# so a node never starts unauthenticated by accident when the operator meant to use one.
if [[ -n "${RAY_AUTH_TOKEN_PATH:-}" ]]; then
    if [[ ! -s "$RAY_AUTH_TOKEN_PATH" ]]; then
        echo "$0: RAY_AUTH_TOKEN_PATH=$RAY_AUTH_TOKEN_PATH is missing or empty" >&2
        exit 2
    fi
    export RAY_AUTH_MODE="${RAY_AUTH_MODE:-token}"
elif [[ -n "${RAY_AUTH_TOKEN:-}" ]]; then
    export RAY_AUTH_MODE="${RAY_AUTH_MODE:-token}"
fi

describe_auth() {
    case "${RAY_AUTH_MODE:-}" in
        token) echo "token auth: on (${RAY_AUTH_TOKEN_PATH:-RAY_AUTH_TOKEN})" ;;
        disabled) echo "token auth: OFF (RAY_AUTH_MODE=disabled): anyone who reaches the ports can run code" ;;
        *) echo "token auth: Ray's default (on if ~/.ray/auth_token exists, else off)" ;;
    esac
}
