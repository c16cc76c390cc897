"""A two-node Ray cluster on this host, started with cluster/start-head.sh and start-worker.sh (token
auth on), driven only through `pitdist submit` / `pitdist job`.

Each node gets its own ports and temp dir; both are stopped by the PIDs started here (stop-node.sh
for the worker, signals for the head, then SIGKILL for anything of either tree still alive), never
with `ray stop`, which would stop other clusters on the host. The peak RSS of each node's process tree
(Ray's daemons, the job driver, the Ray Train workers) is sampled and printed at the end.
"""

import json
import os
import re
import secrets
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil
import pytest
from ports import free_ports

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[2]


def ray_ports(n: int) -> list[int]:
    """Ephemeral ports (above Ray's worker range 10002-19999), all distinct."""
    ports = free_ports(n)
    assert all(p > 19999 for p in ports)
    return ports


def label(p: psutil.Process) -> str:
    """ray::RayTrainWorker, raylet, or the script a python process runs (dashboard.py, pitdist.cli, ...)."""
    if not p.name().startswith("python"):
        return p.name()
    args = [a for a in p.cmdline()[1:] if not a.startswith("-")]
    return Path(args[0]).name if args else p.name()


class Node:
    """A start-*.sh process, its log, and every process of its tree ever seen (pid -> create time)."""

    def __init__(self, name: str, argv: list[str], env: dict, log: Path):
        self.name, self.log = name, log
        self.proc = subprocess.Popen(
            argv, env=env, stdout=log.open("w"), stderr=subprocess.STDOUT, start_new_session=True, cwd=ROOT
        )
        self.seen: dict[int, float] = {}
        self.peak = {"rss": 0, "pss": 0}
        self.peak_procs: list[tuple[int, str]] = []  # (PSS, what) at the tree's peak PSS

    def tree(self) -> list[psutil.Process]:
        try:
            root = psutil.Process(self.proc.pid)
            return [root, *root.children(recursive=True)]
        except psutil.NoSuchProcess:
            return []

    def sample(self) -> dict[str, int]:
        """Memory of the whole tree now. RSS counts shared pages (libraries, the object store) once per
        process; PSS splits them among the processes sharing them, so its sum is the tree's real share."""
        now, procs = {"rss": 0, "pss": 0}, []
        for p in self.tree():
            try:
                mem = p.memory_full_info()
                now["rss"] += mem.rss
                now["pss"] += mem.pss
                self.seen.setdefault(p.pid, p.create_time())
                procs.append((mem.pss, label(p)))
            except (psutil.NoSuchProcess, psutil.ZombieProcess):
                pass
        if now["pss"] > self.peak["pss"]:
            self.peak_procs = sorted(procs, reverse=True)
        self.peak = {k: max(v, now[k]) for k, v in self.peak.items()}
        return now

    def wait_started(self, timeout: float = 180) -> None:
        deadline = time.monotonic() + timeout
        while "Ray runtime started" not in self.log.read_text():
            assert self.proc.poll() is None, f"{self.name} exited:\n{self.log.read_text()}"
            assert time.monotonic() < deadline, f"{self.name} not up after {timeout} s:\n{self.log.read_text()}"
            time.sleep(0.5)

    def kill_leftovers(self) -> list[int]:
        """SIGKILL every process of this node still alive (same pid and create time as when seen)."""
        killed = []
        for pid, created in self.seen.items():
            try:
                p = psutil.Process(pid)
                if p.create_time() == created and p.status() != psutil.STATUS_ZOMBIE:
                    p.kill()
                    killed.append(pid)
            except psutil.NoSuchProcess:
                pass
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)  # the script's own process group (start_new_session)
        except ProcessLookupError:
            pass
        return killed


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    # Ray probes a cloud metadata address at start unless this file exists (DESIGN.md section 7).
    bootstrap = Path.home() / "ray_bootstrap_config.yaml"
    if not bootstrap.exists():
        bootstrap.write_text("{}\n")
    base = tmp_path_factory.mktemp("rc")
    assert len(str(base)) < 45, f"{base}: too long for Ray's unix socket paths (~107 chars with the session)"
    token = base / "token"
    token.write_text(secrets.token_hex(32))
    head_ports = dict(
        zip(
            [
                "RAY_PORT",
                "DASHBOARD_PORT",
                "CLIENT_SERVER_PORT",
                "METRICS_EXPORT_PORT",
                "AGENT_LISTEN_PORT",
                "AGENT_GRPC_PORT",
                "RUNTIME_ENV_AGENT_PORT",
                "OBJECT_MANAGER_PORT",
                "NODE_MANAGER_PORT",
            ],
            ray_ports(9),
        )
    )
    worker_ports = dict(
        zip(
            [
                "METRICS_EXPORT_PORT",
                "AGENT_LISTEN_PORT",
                "AGENT_GRPC_PORT",
                "RUNTIME_ENV_AGENT_PORT",
                "OBJECT_MANAGER_PORT",
                "NODE_MANAGER_PORT",
            ],
            ray_ports(6),
        )
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_", "PITDIST_"))}
    # Like a CPU cluster image: pitdist on PATH, DeepSpeed told it is on CPU, one token for all nodes.
    # (Every pitdist process puts its interpreter's directory first on PATH itself, so DeepSpeed's op
    # build always uses the venv's ninja: see pitdist.distributed.comm.use_interpreter_tools.)
    env.update(
        PATH=f"{Path(sys.executable).parent}:{env['PATH']}",
        DS_ACCELERATOR="cpu",
        RAY_AUTH_TOKEN_PATH=str(token),
        PITDIST_NODE_IP="127.0.0.1",
        # One logical CPU per node: the two ranks of an SP=2 job cannot both fit on one node.
        PITDIST_NUM_CPUS="1",
        PITDIST_OBJECT_STORE_MEMORY=str(200 * 2**20),
    )
    head_env = dict(env, PITDIST_TEMP_DIR=str(base / "h"), **{f"PITDIST_{k}": str(v) for k, v in head_ports.items()})
    worker_env = dict(
        env, PITDIST_TEMP_DIR=str(base / "w"), **{f"PITDIST_{k}": str(v) for k, v in worker_ports.items()}
    )
    start = time.monotonic()
    head = Node("head", [str(ROOT / "cluster/start-head.sh")], head_env, base / "head.log")
    worker = Node(
        "worker",
        [str(ROOT / "cluster/start-worker.sh"), f"127.0.0.1:{head_ports['RAY_PORT']}"],
        worker_env,
        base / "worker.log",
    )
    stop = threading.Event()
    peak_total = {"rss": 0, "pss": 0}

    def sampler():
        while not stop.is_set():
            h, w = head.sample(), worker.sample()
            peak_total.update({k: max(v, h[k] + w[k]) for k, v in peak_total.items()})
            stop.wait(0.5)

    thread = threading.Thread(target=sampler, daemon=True)
    thread.start()
    try:
        head.wait_started()
        worker.wait_started()
        print(f"\ncluster up in {time.monotonic() - start:.1f} s", flush=True)
        yield {
            "address": f"http://127.0.0.1:{head_ports['DASHBOARD_PORT']}",
            "token": token,
            "head": head,
            "worker": worker,
            "base": base,
        }
    finally:
        stop.set()
        thread.join()
        try:  # the worker through the stop helper (it SIGKILLs what ignores SIGTERM), the head by hand
            subprocess.run([str(ROOT / "cluster/stop-node.sh"), str(worker.proc.pid), "10"], timeout=60)
            head.proc.send_signal(signal.SIGTERM)
            head.proc.wait(10)
        except subprocess.TimeoutExpired:
            pass
        finally:
            left = {n.name: n.kill_leftovers() for n in (head, worker)}
            for n in (head, worker):
                n.proc.wait(10)
        gib = 2**30
        for k in ("pss", "rss"):
            print(
                f"\npeak {k.upper()}: head tree {head.peak[k] / gib:.2f} GiB, worker tree "
                f"{worker.peak[k] / gib:.2f} GiB, both at once {peak_total[k] / gib:.2f} GiB",
                end="",
            )
        for n in (head, worker):
            top = ", ".join(f"{what} {pss / 2**20:.0f}" for pss, what in n.peak_procs[:10])
            more = f" (+{len(n.peak_procs) - 10} more)" if len(n.peak_procs) > 10 else ""
            print(f"\n{n.name} at its peak, MiB PSS: {top}{more}", end="")
        print(
            f"\nalive after the stop, SIGKILLed: head {len(left['head'])}, worker {len(left['worker'])} "
            f"processes (worker ones escaped stop-node.sh); cluster lifetime {time.monotonic() - start:.0f} s",
            flush=True,
        )


def pitdist(cluster, *args, token: bool = True, timeout: float = 600, **env_overrides):
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    env.update(DS_ACCELERATOR="cpu", PYTHONUNBUFFERED="1", **env_overrides)
    argv = [sys.executable, "-m", "pitdist.cli", *args, "--address", cluster["address"]]
    if token:
        argv += ["--token-file", str(cluster["token"])]
    return subprocess.run(argv, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)


def job_id(proc) -> str:
    match = re.search(r"submitted job (\S+)", proc.stdout)
    assert match, proc.stdout + proc.stderr
    return match.group(1)


def test_submit_follow_runs_on_both_nodes(cluster, tmp_path):
    start = time.monotonic()
    # The token through Ray's own variable this time (no --token-file): submit turns token mode on.
    proc = pitdist(
        cluster,
        "submit",
        "jobs/digits.toml",
        "--follow",
        "--dp",
        "1",
        "--sp",
        "2",
        "--train.steps",
        "5",
        "--train.evaluate",
        "false",
        "--train.output_dir",
        str(tmp_path / "runs"),
        token=False,
        RAY_AUTH_TOKEN_PATH=str(cluster["token"]),
    )
    print(f"\nsubmit --follow: exit {proc.returncode} after {time.monotonic() - start:.1f} s")
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    jid = job_id(proc)
    assert f"job {jid} SUCCEEDED" in proc.stdout
    logs = pitdist(cluster, "job", "logs", jid)
    assert logs.returncode == 0, logs.stderr
    assert re.search(r"^done: 5 steps in ", logs.stdout, re.M), logs.stdout[-4000:]
    status = pitdist(cluster, "job", "status", jid)
    assert status.returncode == 0 and "SUCCEEDED" in status.stdout
    assert jid in pitdist(cluster, "job", "list").stdout

    # Where the two ranks ran: each rank records its PID in the run directory, and the PIDs must belong
    # to different nodes' process trees (one logical CPU per node forces the spread).
    run_dir = Path(logs.stdout.split("done: ")[1].splitlines()[0].split("| ")[-1])
    assert (run_dir / "result.json").is_file() and len(list((run_dir / "comm").glob("rank*.json"))) == 2
    pids = {rank: json.loads((run_dir / "workers" / f"rank{rank}.json").read_text())["pid"] for rank in (0, 1)}
    owners = {
        rank: [n.name for n in (cluster["head"], cluster["worker"]) if pid in n.seen] for rank, pid in pids.items()
    }
    print(f"ranks by node: {owners}")
    assert sorted(sum(owners.values(), [])) == ["head", "worker"]


def test_bad_config_fails_on_the_cluster_with_the_config_error(cluster, tmp_path):
    # --no-validate: the cluster, not this machine, has to find the mistake and say so in the logs.
    proc = pitdist(
        cluster,
        "submit",
        "jobs/digits.toml",
        "--no-validate",
        "--follow",
        "--model.pos_embed",
        "bogus",
        "--train.output_dir",
        str(tmp_path / "runs"),
    )
    assert proc.returncode == 1, proc.stdout[-4000:] + proc.stderr[-4000:]
    jid = job_id(proc)
    assert f"job {jid} FAILED" in proc.stdout
    logs = pitdist(cluster, "job", "logs", jid)
    assert "pitdist train: error: model.pos_embed: 'bogus' is not allowed" in logs.stdout, logs.stdout[-4000:]
    status = pitdist(cluster, "job", "status", jid)
    assert status.returncode == 1 and "FAILED" in status.stdout


def test_stop_a_running_job(cluster, tmp_path):
    proc = pitdist(
        cluster, "submit", "jobs/digits.toml", "--train.steps", "100000", "--train.output_dir", str(tmp_path / "runs")
    )
    assert proc.returncode == 0, proc.stderr
    jid = job_id(proc)
    deadline = time.monotonic() + 300
    while "RUNNING" not in pitdist(cluster, "job", "status", jid).stdout:
        assert time.monotonic() < deadline, "the job never started running"
        time.sleep(2)
    stop = pitdist(cluster, "job", "stop", jid)
    assert stop.returncode == 0 and "stop requested" in stop.stdout, stop.stdout + stop.stderr
    while (status := pitdist(cluster, "job", "status", jid)).returncode == 3:
        assert time.monotonic() < deadline, "the job did not stop"
        time.sleep(2)
    assert "STOPPED" in status.stdout and status.returncode == 1


def test_wrong_or_missing_token_is_refused_clearly(cluster, tmp_path):
    wrong = tmp_path / "wrong"
    wrong.write_text(secrets.token_hex(32))
    for proc in (
        pitdist(cluster, "job", "list", "--token-file", str(wrong), token=False),
        pitdist(cluster, "job", "list", token=False),
    ):
        assert proc.returncode == 1, proc.stdout
        assert f"the Ray cluster at {cluster['address']} refused the request" in proc.stderr, proc.stderr
        assert "token" in proc.stderr
