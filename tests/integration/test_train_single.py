"""Training through the CLI, as the README's first command runs it."""

import json
from pathlib import Path

import pytest


def result_of(proc) -> dict:
    done = next(line for line in proc.stdout.splitlines() if line.startswith("done: "))
    return json.loads((Path(done.split("| ")[-1]) / "result.json").read_text())


@pytest.mark.slow
def test_the_default_job_learns_digits_and_reports_its_communication(pitdist_cli, tmp_path):
    # The README's default job (SP = 2). Measured: 86.6% validation accuracy after 300 steps; chance is 10%.
    proc = pitdist_cli("train", "--train.output_dir", str(tmp_path), check=True)
    assert "dp=1 x sp=2" in proc.stdout
    table = proc.stdout.split("communication (measured")[1]
    assert "attention_a2a" in table and "1.000" in table
    result = result_of(proc)
    assert result["val_accuracy"] > 0.6, result["val_accuracy"]
    assert result["losses"][-1] < 0.5 * result["losses"][0]
    assert (Path(result["run_dir"]) / "model.pt").exists()
    lines = (Path(result["run_dir"]) / "metrics.jsonl").read_text().splitlines()
    assert {"step", "loss", "images_per_s", "tokens_per_s", "tflops"} <= set(json.loads(lines[-1]))


def test_same_seed_same_losses_other_seed_other_losses(pitdist_cli, tmp_path):
    args = (
        "train",
        "--sp",
        "1",
        "--launcher",
        "single",
        "--train.output_dir",
        str(tmp_path),
        "--train.steps",
        "12",
        "--model.pos_embed",
        "learned",
    )
    first = result_of(pitdist_cli(*args, check=True))["losses"]
    second = result_of(pitdist_cli(*args, check=True))["losses"]
    other = result_of(pitdist_cli(*args, "--train.seed", "1", check=True))["losses"]
    assert first == second
    assert first != other


def test_bad_config_exits_2_and_writes_nothing(pitdist_cli, tmp_path):
    out = tmp_path / "runs"
    proc = pitdist_cli("train", "--train.output_dir", str(out), "--model.pos_embed", "rope")
    assert proc.returncode == 2
    assert "model.pos_embed: 'rope' is not allowed" in proc.stderr
    assert not out.exists()


@pytest.mark.parametrize(
    "args, message",
    [
        (
            ["--sp", "3", "--train.batch_size", "30"],
            "parallel.sp = 3 does not divide the model's 4 attention heads (Ulysses gives each SP rank "
            "whole heads); valid sp for this model: [1, 2, 4]",
        ),
        (
            ["--model.patch_size", "3"],
            "model.patch_size: 3 does not divide the dataset's 8x8 images; choose a patch size that divides "
            "both 8 and 8",
        ),
        (["--sp", "2", "--launcher", "single"], "parallel.launcher: 'single' runs one process but dp * sp = 2"),
        (["--resume", "/nonexistent/checkpoints"], "train.resume: /nonexistent/checkpoints holds no checkpoint"),
    ],
    ids=["heads", "patch", "world", "resume"],
)
def test_a_setup_that_cannot_work_is_refused_before_any_process_starts(pitdist_cli, tmp_path, args, message):
    out = tmp_path / "runs"
    proc = pitdist_cli("train", "--train.output_dir", str(out), *args)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert message in proc.stderr
    assert not out.exists()  # no run directory, no process spawned


def test_a_rank_failing_mid_run_stops_the_others_and_reports_its_traceback(pitdist_cli, tmp_path):
    # cuda is requested but this machine has none: every rank fails inside training, none hangs.
    proc = pitdist_cli(
        "train",
        "--sp",
        "2",
        "--launcher",
        "local",
        "--train.output_dir",
        str(tmp_path),
        "--train.device",
        "cuda",
        timeout=300,
    )
    assert proc.returncode == 1
    assert "a rank failed" in proc.stderr and "train.device = 'cuda'" in proc.stderr
