"""`pitdist data convert | inspect` and `pitdist train --data.dataset DIR`, as a user runs them."""

import gzip
import json
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from pitdist.data.arrow import DataError
from pitdist.data.registry import load_dataset


@pytest.fixture(scope="module")
def digits_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("cli") / "digits"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "pitdist.cli",
            "data",
            "convert",
            "digits",
            "--out",
            str(out),
            "--rows-per-shard",
            "600",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    assert f"wrote {out}: 1797 images of 8x8x1 (HxWxC), 10 classes" in proc.stdout
    assert "1797/1797" in proc.stderr  # the tqdm progress bar
    return out


def test_inspect_prints_schema_counts_histogram_and_writes_a_grid(pitdist_cli, digits_dir, tmp_path):
    grid = tmp_path / "grid.png"
    proc = pitdist_cli("data", "inspect", str(digits_dir), "--grid", str(grid), "--count", "12", check=True)
    out = proc.stdout
    assert "1797 images of 8x8x1 (HxWxC) uint8, 10 classes, 3 shards (checksums verified)" in out
    assert "pixels: fixed_size_binary[64]" in out and "pitdist.class_names=" in out
    assert "shard-00002.arrow: 597 rows" in out
    assert "      0 0      178 " in out  # label histogram: 178 zeros in sklearn's digits
    assert grid.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and grid.stat().st_size > 2000


def test_rectangular_images_convert_and_inspect_as_h_x_w_x_c(pitdist_cli, tmp_path):
    """30 rows x 20 columns from an idx source: printed 30x20x1 (HxWxC), never 20x30."""
    src = tmp_path / "idx"
    src.mkdir()
    rng = np.random.default_rng(0)
    for name, array in (
        ("train-images-idx3-ubyte.gz", rng.integers(0, 256, (15, 30, 20), np.uint8)),
        ("train-labels-idx1-ubyte.gz", rng.integers(0, 3, 15).astype(np.uint8)),
    ):
        header = (2051 if array.ndim == 3 else 2049).to_bytes(4, "big")
        header += b"".join(int(d).to_bytes(4, "big") for d in array.shape)
        with gzip.open(src / name, "wb") as f:
            f.write(header + array.tobytes())
    out, grid = tmp_path / "rect", tmp_path / "rect.png"
    proc = pitdist_cli("data", "convert", "idx", str(src), "--out", str(out), "--rows-per-shard", "8", check=True)
    assert f"wrote {out}: 15 images of 30x20x1 (HxWxC), 3 classes" in proc.stdout
    out_text = pitdist_cli("data", "inspect", str(out), "--grid", str(grid), check=True).stdout
    assert "15 images of 30x20x1 (HxWxC) uint8, 3 classes, 2 shards (checksums verified)" in out_text
    assert "pixels: fixed_size_binary[600]" in out_text
    assert "pitdist.height=30, pitdist.width=20, pitdist.channels=1" in out_text
    assert grid.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_convert_refuses_a_missing_source_and_an_existing_output(pitdist_cli, digits_dir, tmp_path):
    proc = pitdist_cli("data", "convert", "idx", str(tmp_path / "nope"), "--out", str(tmp_path / "o"))
    assert (
        proc.returncode == 2
        and "pitdist data convert: error:" in proc.stderr
        and "nope: no such directory" in proc.stderr
    )
    proc = pitdist_cli("data", "convert", "digits", "--out", str(digits_dir))
    assert proc.returncode == 2 and "already exists; choose another --out or pass --overwrite" in proc.stderr
    assert not (tmp_path / "o").exists()


@pytest.mark.slow
def test_train_on_a_converted_directory_with_sp2(pitdist_cli, digits_dir, tmp_path):
    proc = pitdist_cli(
        "train",
        "--data.dataset",
        str(digits_dir),
        "--train.steps",
        "5",
        "--sp",
        "2",
        "--train.output_dir",
        str(tmp_path),
        check=True,
    )
    assert f"on {digits_dir}" in proc.stdout and "dp=1 x sp=2" in proc.stdout
    done = next(line for line in proc.stdout.splitlines() if line.startswith("done: "))
    result = json.loads((Path(done.split("| ")[-1]) / "result.json").read_text())
    assert result["steps"] == 5 and len(result["losses"]) == 5
    assert result["dropped_per_epoch"] == 1438 % 32 == 30  # 1797 - 359 validation images


def test_training_on_a_corrupt_shard_stops_before_any_step(pitdist_cli, digits_dir, tmp_path):
    import shutil

    bad = tmp_path / "bad"
    shutil.copytree(digits_dir, bad)
    shard = bad / "shard-00001.arrow"
    data = bytearray(shard.read_bytes())
    data[1000] ^= 1
    shard.write_bytes(bytes(data))
    runs = tmp_path / "runs"
    proc = pitdist_cli("train", "--data.dataset", str(bad), "--sp", "2", "--train.output_dir", str(runs))
    assert proc.returncode == 2
    assert f"pitdist train: error: {shard}: sha256" in proc.stderr and "corrupt shard" in proc.stderr
    assert not runs.exists()  # no run directory, no step
    proc = pitdist_cli("data", "inspect", str(bad))
    assert proc.returncode == 2 and str(shard) in proc.stderr


def test_a_killed_conversion_leaves_nothing_that_loads(pitdist_cli, tmp_path):
    out = tmp_path / "ds"
    script = textwrap.dedent(f"""
        import sys, time, numpy as np
        from pitdist.data.arrow import DatasetWriter
        with DatasetWriter({str(out)!r}, (4, 4, 1), ["a", "b"], rows_per_shard=10) as w:
            w.write(np.zeros(25, np.int64), np.ones((25, 4, 4, 1), np.uint8))  # 2 complete shards + 5 rows
            print("written", flush=True)
            time.sleep(60)
            w.close()
    """)
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "written"
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait(timeout=30)
    assert not out.exists()
    (partial,) = tmp_path.glob(".ds.partial-*")
    assert sorted(p.name for p in partial.iterdir()) == [
        "shard-00000.arrow",
        "shard-00001.arrow",
        "shard-00002.arrow.partial",
    ]
    with pytest.raises(DataError, match="no manifest.json; not a pitdist dataset, or its conversion did not finish"):
        load_dataset(str(partial))
    with pytest.raises(DataError, match="no such directory"):
        load_dataset(str(out))
    proc = pitdist_cli("train", "--data.dataset", str(partial), "--train.output_dir", str(tmp_path / "runs"))
    assert proc.returncode == 2 and "no manifest.json" in proc.stderr
