#!/usr/bin/env bash
# Stop one node started with start-head.sh / start-worker.sh, by the PID of that script (`ray stop`
# would stop every Ray node on the host, other people's included). SIGTERM first; whatever of the
# node's process tree is still alive after the grace period gets SIGKILL (Ray's head can ignore
# SIGTERM for a long time).
set -euo pipefail

if [[ $# -lt 1 || "$1" == -h || "$1" == --help ]]; then
    echo "usage: cluster/stop-node.sh PID [GRACE_SECONDS=10]"
    echo "  e.g. cluster/start-head.sh > head.log 2>&1 & echo \$! > head.pid; ...; cluster/stop-node.sh \$(cat head.pid)"
    exit $(( $# < 1 ? 2 : 0 ))
fi
root="$1"
grace="${2:-10}"
kill -0 "$root" 2>/dev/null || { echo "stop-node: no process $root" >&2; exit 1; }

# The tree as it is now, from /proc (no procps needed in the image).
tree() {
    echo "$1"
    local child
    for child in $(cat /proc/"$1"/task/*/children 2>/dev/null); do tree "$child"; done
}
mapfile -t pids < <(tree "$root")

kill -TERM "$root" 2>/dev/null || true
for ((i = 0; i < grace * 2; i++)); do
    alive=()
    for p in "${pids[@]}"; do kill -0 "$p" 2>/dev/null && alive+=("$p"); done
    if [[ ${#alive[@]} -eq 0 ]]; then echo "stop-node: $root stopped"; exit 0; fi
    sleep 0.5
done
echo "stop-node: ${#alive[@]} processes of $root still alive after ${grace} s: SIGKILL"
kill -KILL "${alive[@]}" 2>/dev/null || true
