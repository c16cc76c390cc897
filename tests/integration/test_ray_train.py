"""`pitdist train --launcher ray`: Ray Train workers, Ray Data feeding, checkpoints and a lost worker.

Every run here starts its own embedded Ray cluster (stopped by ``ray.shutdown()`` in the launcher).
"""

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pitdist.data.audit import audit, read_logs
from pitdist.report.comm_report import load_run, summarize

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(autouse=True, scope="module")
def no_cloud_probe():
    # Ray probes a cloud metadata address at start unless this file exists (DESIGN.md section 7).
    bootstrap = Path.home() / "ray_bootstrap_config.yaml"
    if not bootstrap.exists():
        bootstrap.write_text("{}\n")


def run_dir(proc) -> Path:
    done = next(line for line in proc.stdout.splitlines() if line.startswith("done: "))
    return Path(done.split("| ")[-1])


def result(path: Path) -> dict:
    return json.loads((path / "result.json").read_text())


def step_ids(path: Path, rank: int = 0) -> dict[int, list[int]]:
    return {step: records[-1]["ids"] for step, records in read_logs(path)[rank].items()}


@pytest.mark.parametrize("dp, sp", [(1, 2), (2, 2)], ids=["1x2", "2x2"])
def test_ray_run_gives_the_local_launchers_losses(pitdist_cli, tmp_path, dp, sp):
    # Same loader (memory-mapped, batches indexed by step) on both launchers: the same numbers.
    args = (
        "train",
        "--dp",
        str(dp),
        "--sp",
        str(sp),
        "--train.steps",
        "8",
        "--model.pos_embed",
        "learned",
        "--model.shard_pos_embed",
        "true",
        "--data.loader",
        "memory",
        "--train.output_dir",
    )
    # On 2 x 2 the Ray workers also checkpoint every block's activations: the same losses again.
    policy = ["--train.activation_checkpointing", "full" if dp > 1 else "none"]
    ray = run_dir(pitdist_cli(*args, str(tmp_path / "ray"), "--launcher", "ray", *policy, check=True))
    local = run_dir(pitdist_cli(*args, str(tmp_path / "local"), "--launcher", "local", check=True))
    assert len(result(ray)["losses"]) == 8
    assert result(ray)["losses"] == pytest.approx(result(local)["losses"], abs=1e-6)
    ledger = ray / "comm" / f"rank{dp * sp - 1}.json"
    assert ledger.exists()  # every Ray worker's ledger reached the run dir
    recomputed = [r for r in json.loads(ledger.read_text())["rows"] if r["phase"] == "recompute"]
    assert bool(recomputed) == (dp > 1)


def test_ray_data_q2_p2_epoch_gives_every_image_once_and_sp_ranks_agree(pitdist_cli, tmp_path):
    # digits: 1438 training images; 4 workers of 8 images per step -> 359 rows each -> 44 steps per epoch.
    proc = pitdist_cli(
        "train",
        "--launcher",
        "ray",
        "--dp",
        "2",
        "--sp",
        "2",
        "--train.steps",
        "46",
        "--train.evaluate",
        "false",
        "--data.block_rows",
        "128",
        "--train.output_dir",
        str(tmp_path),
        check=True,
    )
    path = run_dir(proc)
    report = audit(path, dp=2, sp=2)
    assert report.ok, report.problems
    dropped = result(path)["dropped_per_epoch"]
    assert dropped == 1438 - 44 * 32
    assert report.images_per_epoch[0] == 1438 - dropped  # a full epoch: all but the reported remainder
    assert report.images_per_epoch[1] == 2 * 32  # two steps into the next one
    logs = read_logs(path)
    for step in range(46):  # the two DP groups take disjoint images
        assert not set(logs[0][step][0]["ids"]) & set(logs[2][step][0]["ids"])
    # Every epoch a new order and new DP shares: epoch 1 starts elsewhere, and DP group 0 now trains
    # on images that were DP group 1's in epoch 0.
    share = {q: {i for s in range(44) for i in logs[2 * q][s][0]["ids"]} for q in (0, 1)}
    assert logs[0][44][0]["ids"] != logs[0][0][0]["ids"]
    assert {i for s in (44, 45) for i in logs[0][s][0]["ids"]} & share[1]
    # The SP groups' gathers are ledger category "data", on every rank exactly as the model counts them.
    for rows in summarize(load_run(path))["rows"]:
        data = next(r for r in rows if r.category == "data")
        assert data.count == 2 and data.sent > 0 and data.ratio == 1.0, data


# What a successful run must not print: error- or warning-level lines (Ray's C++ "[... E pid tid]" and
# Python "ERROR"/"WARNING" lines) and deprecation warnings, which a newcomer reads as something broken.
NOISE = re.compile(r"\d [EWF] \d+ \d+\]|\bERROR\b|\bWARNING\b|Warning:|deprecat|built successfully", re.I)


def test_the_default_job_reads_clean_through_an_epoch_boundary(pitdist_cli, tmp_path):
    # The default job (Ray launcher, embedded cluster, Ray Data, SP = 2), past its first epoch of 44 steps.
    proc = pitdist_cli("train", "--train.steps", "50", "--train.output_dir", str(tmp_path), check=True)
    output = proc.stdout + proc.stderr
    assert "done: 50 steps" in output and "communication (measured by the ledger" in output
    noise = [line for line in output.splitlines() if NOISE.search(line)]
    assert noise == [], "\n".join(noise)


def test_a_device_the_cluster_lacks_is_refused_instead_of_waiting_forever(pitdist_cli, tmp_path):
    proc = pitdist_cli("train", "--train.device", "cuda", "--train.output_dir", str(tmp_path / "runs"), timeout=300)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "train.device = 'cuda' needs 2 GPUs (one per rank) but the Ray cluster has 0" in proc.stderr
    assert not any((tmp_path / "runs").iterdir())  # no run directory left behind


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    """A 1 x 2 Ray Data run of 40 steps (22 per epoch) with checkpoints every 5 steps."""
    out = tmp_path_factory.mktemp("uninterrupted")
    proc = cli(*FAULT_ARGS, "--train.output_dir", str(out))
    assert proc.returncode == 0, proc.stderr[-3000:]
    return run_dir(proc), out


FAULT_ARGS = (
    "train",
    "--launcher",
    "ray",
    "--sp",
    "2",
    "--train.steps",
    "40",
    "--train.batch_size",
    "64",
    "--train.checkpoint_every",
    "5",
    "--train.keep_checkpoints",
    "0",
    "--train.evaluate",
    "false",
)


def cli(*args, timeout=900):
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    return subprocess.run(
        [sys.executable, "-m", "pitdist.cli", *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout
    )


def ray_checkpoint(out: Path, step: int) -> Path:
    return next((out / "ray").glob(f"*/step-{step}"))


@pytest.mark.parametrize("at", [10, 25], ids=["mid-epoch-0", "mid-epoch-1"])
def test_resumed_ray_run_continues_mid_epoch_with_the_same_images_and_losses(uninterrupted, tmp_path, at):
    first, out = uninterrupted
    proc = cli(*FAULT_ARGS, "--train.output_dir", str(tmp_path), "--resume", str(ray_checkpoint(out, at)))
    assert proc.returncode == 0, proc.stderr[-3000:]
    resumed = run_dir(proc)
    expected = step_ids(first)
    assert sorted(step_ids(resumed)) == list(range(at, 40))  # through step 17 of epoch 1 (22 steps each)
    for step in range(at, 40):
        assert step_ids(resumed)[step] == expected[step], f"step {step}"
    assert result(resumed)["losses"] == pytest.approx(result(first)["losses"], abs=1e-5)


def test_killed_worker_is_restored_from_its_checkpoint_and_finishes_the_same(uninterrupted, tmp_path):
    first, _ = uninterrupted
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "pitdist.cli",
            *FAULT_ARGS,
            "--train.output_dir",
            str(tmp_path),
            "--train.max_failures",
            "1",
        ],
        cwd=ROOT,
        env=env,
        text=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        # Wait until rank 1 is past the checkpoint of step 25 (epoch 1 began at step 22), then kill it.
        deadline = time.monotonic() + 600
        victim = None
        while time.monotonic() < deadline and victim is None:
            time.sleep(0.5)
            logs = list(tmp_path.glob("*/data/rank1.jsonl"))
            if logs and len(logs[0].read_text().splitlines()) >= 27:
                victim = json.loads((logs[0].parent.parent / "workers" / "rank1.json").read_text())["pid"]
        assert victim is not None, "the run never reached step 27"
        os.kill(victim, signal.SIGKILL)
        out, _ = proc.communicate(timeout=900)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, out[-3000:]
    path = Path(next(line for line in out.splitlines() if line.startswith("done: ")).split("| ")[-1])
    report = audit(path, dp=1, sp=2)
    assert report.ok, report.problems
    assert report.replayed_steps > 0  # the restarted group replayed steps after the restored checkpoint
    assert report.steps == 40
    assert step_ids(path) == step_ids(first)  # no image skipped, repeated or reordered
    assert json.loads((path / "workers" / "rank1.json").read_text())["pid"] != victim
    assert result(path)["losses"][-1] == pytest.approx(result(first)["losses"][-1], abs=1e-4)
