"""`pitdist train` straight from Parquet files of PNG images written by Hugging Face `datasets`: through
the local launcher and through real Ray Train workers fed by Ray Data tasks that decode the row groups,
with the data audit and the losses of the converted Arrow copy of the same images."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from parquet_files import png, write_digits_parquet, write_plain_parquet

from pitdist.data.audit import audit, read_logs
from pitdist.data.digits import load_digits_dataset

pytestmark = pytest.mark.slow


@pytest.fixture(autouse=True, scope="module")
def no_cloud_probe():
    # Ray probes a cloud metadata address at start unless this file exists (DESIGN.md section 7).
    bootstrap = Path.home() / "ray_bootstrap_config.yaml"
    if not bootstrap.exists():
        bootstrap.write_text("{}\n")


@pytest.fixture(autouse=True)
def own_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))  # the bad-row scans of these runs only


@pytest.fixture(scope="module")
def digits_parquet(tmp_path_factory):
    return write_digits_parquet(tmp_path_factory.mktemp("parquet") / "digits")


def run_dir(proc) -> Path:
    done = next(line for line in proc.stdout.splitlines() if line.startswith("done: "))
    return Path(done.split("| ")[-1])


def result(path: Path) -> dict:
    return json.loads((path / "result.json").read_text())


def test_local_ranks_train_on_parquet_exactly_as_on_the_same_images_in_memory(pitdist_cli, tmp_path, digits_parquet):
    args = ("train", "--launcher", "local", "--sp", "2", "--train.steps", "6", "--train.output_dir")
    parquet = run_dir(pitdist_cli(*args, str(tmp_path / "pq"), "--data.dataset", str(digits_parquet), check=True))
    memory = run_dir(pitdist_cli(*args, str(tmp_path / "mem"), "--data.dataset", "digits", check=True))
    assert result(parquet)["losses"] == result(memory)["losses"]  # bitwise: the same pixels, ids and labels
    assert result(parquet)["val_accuracy"] == result(memory)["val_accuracy"]


RAY_ARGS = ("train", "--launcher", "ray", "--dp", "2", "--sp", "2", "--train.evaluate", "false")


def test_ray_data_decodes_parquet_into_the_arrow_copys_stream_and_the_audit_passes(
    pitdist_cli, tmp_path, digits_parquet
):
    # The Arrow copy read in the row groups' units (shards of 1000 + 797 rows, block_rows 1000): every
    # epoch permutes the units and the equal split cuts a stream by blocks, so that is what "the same
    # images in the same order" means on this path.
    arrow = tmp_path / "arrow"
    pitdist_cli("data", "convert", "parquet", str(digits_parquet), "--out", str(arrow), "--rows-per-shard", "1000",
                "--no-progress", check=True)  # fmt: skip
    # 1438 training images; 4 workers of 8 images per step -> 44 steps per epoch: 46 crosses into epoch 1.
    steps = ("--train.steps", "46")
    pq_run = run_dir(pitdist_cli(*RAY_ARGS, *steps, "--data.dataset", str(digits_parquet),
                                 "--train.output_dir", str(tmp_path / "pq"), check=True))  # fmt: skip
    report = audit(pq_run, dp=2, sp=2)
    assert report.ok, report.problems
    dropped = result(pq_run)["dropped_per_epoch"]
    assert dropped == 1438 - 44 * 32 and report.images_per_epoch[0] == 1438 - dropped
    logs = read_logs(pq_run)
    assert all(not set(logs[0][s][0]["ids"]) & set(logs[2][s][0]["ids"]) for s in range(46))  # DP shares disjoint
    arrow_args = ("--train.steps", "6", "--data.dataset", str(arrow), "--data.block_rows", "1000")
    arrow_run = run_dir(pitdist_cli(*RAY_ARGS, *arrow_args, "--train.output_dir", str(tmp_path / "arrow-run"),
                                    check=True))  # fmt: skip
    assert result(pq_run)["losses"][:6] == pytest.approx(result(arrow_run)["losses"], abs=1e-6)
    for rank in range(4):
        assert [read_logs(pq_run)[rank][s][0]["ids"] for s in range(6)] == [
            read_logs(arrow_run)[rank][s][0]["ids"] for s in range(6)
        ]


def test_skipped_rows_never_reach_a_ray_worker_and_the_run_lists_them(pitdist_cli, tmp_path):
    digits = load_digits_dataset()
    pixels = np.asarray(digits.pixels)
    cells = [png(p) for p in pixels[:400]]
    bad = {17: b"not a png", 250: png(np.zeros((9, 8, 1), np.uint8))}
    for i, cell in bad.items():
        cells[i] = cell
    write_plain_parquet(tmp_path / "d.parquet", cells, digits.labels[:400].tolist())
    options = ("--data.bad_rows", "skip", "--train.steps", "12", "--data.val_fraction", "0.05")
    proc = pitdist_cli(*RAY_ARGS, *options, "--data.dataset", str(tmp_path / "d.parquet"),
                       "--train.output_dir", str(tmp_path / "runs"), check=True)  # fmt: skip
    path = run_dir(proc)
    assert "skipped 2 bad rows" in proc.stdout
    skipped = json.loads((path / "data" / "skipped.json").read_text())
    assert skipped["count"] == 2 and [r["id"] for r in skipped["rows"]] == [17, 250]
    assert "undecodable" in skipped["rows"][0]["reason"] and "9x8, not 8x8" in skipped["rows"][1]["reason"]
    report = audit(path, dp=2, sp=2)
    assert report.ok, report.problems
    trained = {i for steps in read_logs(path).values() for records in steps.values() for i in records[0]["ids"]}
    assert trained and not trained & set(bad)
    assert result(path)["skipped_rows"] == 2


def test_a_bad_image_under_fail_stops_the_ray_run_naming_file_and_row(pitdist_cli, tmp_path):
    digits = load_digits_dataset()
    cells = [png(p) for p in np.asarray(digits.pixels)[:200]]
    cells[123] = b"garbage"
    write_plain_parquet(tmp_path / "d.parquet", cells, digits.labels[:200].tolist())
    proc = pitdist_cli(*RAY_ARGS, "--train.steps", "20", "--data.dataset", str(tmp_path / "d.parquet"),
                       "--train.output_dir", str(tmp_path / "runs"))  # fmt: skip
    assert proc.returncode != 0
    assert "d.parquet: row 123 (id 123): undecodable image bytes" in proc.stdout + proc.stderr
