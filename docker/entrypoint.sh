#!/usr/bin/env bash
# Entrypoint of the pitdist image:
#   head [RAY START ARGS...]              a Ray head node (cluster/start-head.sh, PITDIST_* settings)
#   worker [HEAD:PORT] [RAY START ARGS]   a Ray worker node (cluster/start-worker.sh)
#   anything else                         run as a command: pitdist ..., bash, ray status ...
set -euo pipefail
case "${1:-head}" in
    head) shift || true; exec /opt/pitdist/cluster/start-head.sh "$@" ;;
    worker) shift; exec /opt/pitdist/cluster/start-worker.sh "$@" ;;
    *) exec "$@" ;;
esac
