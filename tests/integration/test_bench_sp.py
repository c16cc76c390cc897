"""`pitdist bench sp` through the CLI, in a tiny configuration (8x8 images, width 64, 2 layers, P in {1, 2})."""

import json

import pytest

MODEL = ("bench", "sp", "--model.dim", "64", "--model.depth", "2", "--model.heads", "4")
TINY = (
    *MODEL,
    "--sp",
    "1,2",
    "--image-size",
    "8",
    "--time-sizes",
    "8",
    "--warmup",
    "1",
    "--steps",
    "2",
    "--cap-gib",
    "0.001",
    "--search-start",
    "8",
    "--search-max-side",
    "32",
    "--big-side",
    "16",
    "--big-sp",
    "2",
    "--train-side",
    "8",
    "--train-sp",
    "2",
    "--train-steps",
    "2",
)


@pytest.mark.slow
def test_tiny_bench_writes_json_and_plot_and_sp2_halves_saved_activations(pitdist_cli, tmp_path):
    out = tmp_path / "bench.json"
    proc = pitdist_cli(*TINY, "--out", str(out), timeout=300, check=True)
    report = json.loads(out.read_text())
    assert report["complete"] is True
    png = out.with_suffix(".png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 5000

    mem = {r["sp"]: r for r in report["memory"]["rows"]}
    assert set(mem) == {1, 2}
    assert all(b > 0 for r in mem.values() for b in r["saved_bytes_per_rank"])
    assert len(mem[2]["saved_bytes_per_rank"]) == 2
    # Measured: 0.53 (each rank saves the activations of its 32 of the 64 tokens, plus the pooled
    # vector and logits that every rank keeps whole).
    ratio = mem[2]["saved_bytes_max"] / mem[1]["saved_bytes_max"]
    assert 0.4 <= ratio <= 0.7, ratio
    assert mem[2]["ratio_to_p1"] == pytest.approx(ratio)
    assert mem[1]["naive_bytes_max"] >= mem[1]["saved_bytes_max"] * 0.9

    times = {(r["side"], r["sp"]): r for r in report["time"]["rows"]}
    assert set(times) == {(8, 1), (8, 2)}
    assert times[(8, 1)]["ratio_to_p1"] == pytest.approx(1.0)
    assert all(r["total_s"] > 0 and len(r["steps_total_s"]) == 2 for r in times.values())
    assert report["threads_per_rank"] == {"1": report["machine"]["cores"], "2": max(1, report["machine"]["cores"] // 2)}

    cap = report["search"]["cap_bytes"]
    for row in report["search"]["rows"]:
        best = row["largest_side"]
        assert best  # any side, padded where P does not divide its tokens
        assert row["confirm"]["saved_bytes_max"] <= cap  # the confirming full step stayed under the cap
        assert row["smallest_over_side"] is None or row["smallest_over_side"] > best
    sides = {r["sp"]: r["largest_side"] for r in report["search"]["rows"]}
    assert sides[2] > sides[1]

    for part, side, steps in (("big", 16, 1), ("train", 8, 2)):
        r = report[part]
        assert (r["side"], r["sp"], r["steps"]) == (side, 2, steps)
        assert len(r["saved_bytes_per_rank"]) == 2 and all(t > 0 for t in r["step_s"])
    assert "Activation memory per rank" in proc.stdout and "ratio to P=1" in proc.stdout


@pytest.mark.slow
def test_tokens_p_does_not_divide_run_padded_and_sizes_may_be_rectangles(pitdist_cli, tmp_path):
    # 9x9 = 81 tokens on P = 2 (S = 41 slots, one padded) used to be refused; 5x3 = 15 tokens (S = 8).
    out = tmp_path / "bench.json"
    args = ("--sp", "1,2", "--parts", "memory,time", "--image-size", "9", "--time-sizes", "5x3")
    proc = pitdist_cli(*MODEL, *args, "--warmup", "0", "--steps", "1", "--out", str(out), timeout=300, check=True)
    report = json.loads(out.read_text())
    mem = {r["sp"]: r for r in report["memory"]["rows"]}
    assert (report["memory"]["side"], report["memory"]["height"], report["memory"]["width"]) == (9, 9, 9)
    assert {p: (r["tokens"], r["tokens_per_rank"]) for p, r in mem.items()} == {1: (81, 81), 2: (81, 41)}
    assert all(b > 0 for r in mem.values() for b in r["saved_bytes_per_rank"])
    times = {r["sp"]: r for r in report["time"]["rows"]}
    assert set(times) == {1, 2}
    for r in times.values():
        assert (r["side"], r["height"], r["width"], r["tokens"]) == (None, 5, 3, 15) and r["total_s"] > 0
    assert "9x9 image (81 tokens)" in proc.stdout and "5x3" in proc.stdout


@pytest.mark.parametrize(
    "args, message",
    [
        (("--sp", "1,3"), "does not divide the model's 4 attention heads"),
        (("--sp", "1,2", "--image-size", "30x", "--parts", "memory"), "'30x': write SIDE or HxW"),
        (("--sp", "1,2", "--time-sizes", "8,0x5"), "'0x5': the height and width must be >= 1"),
        (("--sp", "1,2", "--model.patch_size", "2", "--image-size", "6x5"), "6x5: not divisible by model.patch_size"),
        (("--sp", "2,4"), "must include 1"),
        (("--train.steps", "3"), "takes only --model.KEY"),
    ],
)
def test_bad_options_fail_clearly_before_any_rank_starts(pitdist_cli, tmp_path, args, message):
    out = tmp_path / "bench.json"
    proc = pitdist_cli("bench", "sp", "--model.dim", "64", "--model.depth", "2", *args, "--out", str(out), timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert message in proc.stderr
    assert not out.exists()
