"""Container health check of a Ray node: `healthcheck.py head` or `healthcheck.py worker`; exit 0 = healthy.

Asks Ray's own health endpoints (the ones KubeRay probes; they need no token): the head's GCS through
the dashboard, and the node's raylet through its dashboard agent. The ports are the PITDIST_* settings
of cluster/start-head.sh, or Ray's defaults. Plain Python, no Ray import: it runs every few seconds.
"""

import os
import sys
import urllib.request


def healthy(port_var: str, default: int, path: str) -> bool:
    url = f"http://127.0.0.1:{os.environ.get(port_var) or default}{path}"
    try:
        with urllib.request.urlopen(url, timeout=3) as response:
            body = response.read().decode(errors="replace")
    except OSError as exc:
        print(f"{url}: {exc}", file=sys.stderr)
        return False
    ok = response.status == 200 and "success" in body
    if not ok:
        print(f"{url}: {response.status} {body[:200]}", file=sys.stderr)
    return ok


def main(role: str) -> int:
    checks = [("PITDIST_AGENT_LISTEN_PORT", 52365, "/api/local_raylet_healthz")]
    if role == "head":
        checks.insert(0, ("PITDIST_DASHBOARD_PORT", 8265, "/api/gcs_healthz"))
    elif role != "worker":
        print("usage: healthcheck.py head|worker", file=sys.stderr)
        return 2
    return 0 if all(healthy(*check) for check in checks) else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1] if len(sys.argv) > 1 else ""))
