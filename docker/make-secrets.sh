#!/usr/bin/env bash
# Create the two secrets docker-compose.yml mounts, once: secrets/ray_token (the Ray cluster token;
# `pitdist submit --token-file secrets/ray_token`) and secrets/grafana_admin_password. Existing files
# are kept. The directory is private to you; the files are world-readable so that the containers'
# users (ray, uid 1000; grafana, uid 472) can read their bind mounts.
set -euo pipefail
dir="${1:-$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)/secrets}"
mkdir -p "$dir"
chmod 700 "$dir"
for name in ray_token grafana_admin_password; do
    if [[ ! -s "$dir/$name" ]]; then
        python3 -c 'import secrets; print(secrets.token_hex(32))' > "$dir/$name"
        echo "make-secrets: wrote $dir/$name"
    fi
    chmod 644 "$dir/$name"
done
echo "make-secrets: Grafana user admin, password in $dir/grafana_admin_password; Ray token in $dir/ray_token"
