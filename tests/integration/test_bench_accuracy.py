"""`pitdist bench accuracy` through the CLI in a tiny configuration (random 8x8 images, 2 steps)."""

import json

import pytest

PNG = b"\x89PNG\r\n\x1a\n"


@pytest.mark.slow
def test_tiny_grid_trains_every_cell_for_every_seed_at_the_same_budget(pitdist_cli, tmp_path):
    out = tmp_path / "acc.json"
    proc = pitdist_cli(
        "bench",
        "accuracy",
        "--dataset",
        "synthetic:8x8x1:96",
        "--patches",
        "1,2,4",
        "--pe",
        "none,learned",
        "--seeds",
        "0,1",
        "--steps",
        "2",
        "--batch-size",
        "8",
        "--model.depth",
        "1",
        "--val-fraction",
        "0.25",
        "--out",
        str(out),
        timeout=300,
        check=True,
    )
    report = json.loads(out.read_text())
    assert report["complete"] and out.with_suffix(".png").read_bytes()[:8] == PNG
    assert report["budget"]["images"] == 16 and report["val_images"] == 24
    # PiT gets every PE variant, each ViT the --vit-pe one; every cell runs once per seed.
    cells = {(r["model"], r["patch"], r["pos_embed"]): r for r in report["summary"]}
    assert set(cells) == {("PiT", 1, "none"), ("PiT", 1, "learned"), ("ViT", 2, "sincos"), ("ViT", 4, "sincos")}
    assert [cells[("ViT", 2, "sincos")]["tokens"], cells[("PiT", 1, "none")]["tokens"]] == [16, 64]
    assert len(report["runs"]) == 8
    for row in cells.values():
        assert row["seeds"] == [0, 1] and len(row["accuracies"]) == 2
        assert all(0.0 <= a <= 1.0 for a in row["accuracies"])
        assert row["min"] <= row["mean"] <= row["max"] and row["std"] >= 0
    # Each run is a real training run: its own result.json holds the accuracy reported here.
    for run in report["runs"]:
        result = json.loads((tmp_path / "acc" / run["run_dir"].split("/")[-1] / "result.json").read_text())
        assert result["val_accuracy"] == run["val_accuracy"] and result["steps"] == 2
    # Different seeds give different weights, hence different training losses.
    none = [r for r in report["runs"] if r["key"] == "PiT p=1 none"]
    assert none[0]["final_loss"] != none[1]["final_loss"]
    assert "PiT p=1 learned" in proc.stdout and "mean acc" in proc.stdout
    # --from-json redraws a run's table and plot without training (for a run cut short).
    again = pitdist_cli(
        "bench", "accuracy", "--from-json", str(out), "--plot", str(tmp_path / "again.png"), timeout=120, check=True
    )

    def table(text):  # training runs print DeepSpeed's messages first
        lines = text.splitlines()
        start = next(i for i, line in enumerate(lines) if line.startswith("pitdist bench accuracy:"))
        return lines[start : start + 6]

    assert table(again.stdout) == table(proc.stdout)
    assert (tmp_path / "again.png").read_bytes()[:8] == PNG


@pytest.mark.slow
def test_a_cut_grid_resumes_keeping_its_finished_runs_and_every_cell_scores_on_the_val_dataset(pitdist_cli, tmp_path):
    out = tmp_path / "acc.json"
    common = ["--dataset", "synthetic:8x8x1:64", "--val-dataset", "synthetic:8x8x1:40", "--patches", "1,4"]
    common += ["--pe", "none", "--batch-size", "8", "--model.depth", "1", "--out", str(out)]
    pitdist_cli("bench", "accuracy", *common, "--steps", "2", "--seeds", "0", timeout=300, check=True)
    first = json.loads(out.read_text())
    # All 64 images train; all 40 of the val dataset score, the same images for every seed.
    assert first["train_images_available"] == 64 and first["val_images"] == 40
    assert first["val_dataset"] == "synthetic:8x8x1:40" and len(first["runs"]) == 2

    proc = pitdist_cli(
        "bench", "accuracy", *common, "--steps", "2", "--seeds", "0,1", "--resume", timeout=300, check=True
    )
    resumed = json.loads(out.read_text())
    assert "2 kept from the earlier grid" in proc.stderr
    assert resumed["complete"] and len(resumed["runs"]) == 4
    assert resumed["runs"][:2] == first["runs"]  # kept as they were, not trained again
    assert [r["seed"] for r in resumed["runs"]] == [0, 0, 1, 1]

    refused = pitdist_cli("bench", "accuracy", *common, "--steps", "3", "--seeds", "0,1", "--resume", timeout=120)
    assert refused.returncode == 2 and "measured budget" in refused.stderr
    assert json.loads(out.read_text()) == resumed  # nothing lost or rewritten


def test_a_val_dataset_of_other_images_is_refused_before_training(pitdist_cli, tmp_path):
    out = tmp_path / "acc.json"
    proc = pitdist_cli(
        "bench", "accuracy", "--dataset", "synthetic:8x8x1:32", "--val-dataset", "synthetic:4x4x1:8",
        "--out", str(out), timeout=120,
    )  # fmt: skip
    assert proc.returncode == 2 and "data.val_dataset" in proc.stderr and "do not match" in proc.stderr
    assert not out.exists()


def test_resuming_a_grid_that_does_not_exist_is_refused(pitdist_cli, tmp_path):
    out = tmp_path / "none.json"
    args = ["--dataset", "synthetic:8x8x1:64", "--patches", "1,2", "--batch-size", "8", "--resume"]
    proc = pitdist_cli("bench", "accuracy", *args, "--out", str(out), timeout=120)
    assert proc.returncode == 2 and "does not exist" in proc.stderr and not out.exists()


def test_a_patch_that_does_not_divide_the_image_is_refused_before_training(pitdist_cli, tmp_path):
    out = tmp_path / "acc.json"
    proc = pitdist_cli(
        "bench", "accuracy", "--dataset", "synthetic:8x8x1:32", "--patches", "1,3", "--out", str(out), timeout=120
    )
    assert proc.returncode == 2 and "ViT p=3" in proc.stderr
    assert not out.exists()


def test_a_missing_dataset_names_the_command_that_makes_it(pitdist_cli, tmp_path):
    proc = pitdist_cli("bench", "accuracy", "--dataset", str(tmp_path / "nowhere"), timeout=120)
    assert proc.returncode == 2 and "pitdist data convert fashion-mnist" in proc.stderr
