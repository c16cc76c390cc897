"""`pitdist bench padding` through the CLI in a tiny configuration (width 48, 1 layer, 3 heads)."""

import json

import pytest

from pitdist.bench.padding import compared_sizes

TINY = ("bench", "padding", "--model.dim", "48", "--model.depth", "1", "--warmup", "1", "--steps", "2")


def test_the_compared_images_fill_the_same_slots_or_are_the_widest_divisible_crop():
    # 28x28 on P = 3: 784 tokens in 262-slot shards (2 padded); 786 = 6 x 131 fills them exactly.
    assert compared_sizes((28, 28), 1, 3, cls=False) == {
        "padded": (28, 28),
        "same slots": (6, 131),
        "cropped": (28, 27),
    }
    # with CLS: 785 tokens, 262-slot shards, 1 padded; 785 pixels + CLS = 786; 28 x 26 + 1 = 729 divides.
    assert compared_sizes((28, 28), 1, 3, cls=True) == {"padded": (28, 28), "same slots": (5, 157), "cropped": (28, 26)}
    assert compared_sizes((8, 8), 2, 3, cls=False)["same slots"] == (6, 12)  # in 2x2 patches: 18 = 3 x 6


@pytest.mark.slow
def test_padding_costs_only_its_slots_bytes_and_saves_what_the_same_slots_save(pitdist_cli, tmp_path):
    out = tmp_path / "padding.json"
    proc = pitdist_cli(*TINY, "--size", "7x7", "--out", str(out), timeout=600, check=True)
    report = json.loads(out.read_text())
    rows = {r["image"]: r for r in report["rows"]}
    assert set(rows) == {"padded", "same slots", "cropped"}
    padded, same, cropped = rows["padded"], rows["same slots"], rows["cropped"]
    assert (padded["tokens"], padded["slots_per_rank"], padded["padded_slots"]) == (49, 17, 2)
    assert (same["tokens"], same["slots_per_rank"], same["padded_slots"]) == (51, 17, 0)
    assert (cropped["height"], cropped["width"], cropped["slots_per_rank"]) == (7, 6, 14)
    for r in rows.values():
        assert r["sent_bytes"] == pytest.approx(r["model_sent_bytes"], rel=0.01), r["image"]  # ledger = model
        assert len(r["sent_bytes_per_rank"]) == 3 and r["step_s"] > 0
    assert padded["sent_bytes"] == pytest.approx(same["sent_bytes"], rel=0.01)  # the same shards travel
    assert 0 < padded["model_padding_sent_bytes"] < 0.01 * padded["model_sent_bytes"]
    assert same["model_padding_sent_bytes"] == cropped["model_padding_sent_bytes"] == 0
    assert max(padded["saved_bytes_per_rank"]) == pytest.approx(max(same["saved_bytes_per_rank"]), rel=0.05)
    assert max(cropped["saved_bytes_per_rank"]) < max(padded["saved_bytes_per_rank"])
    assert "same slots" in proc.stdout and "3x17" in proc.stdout


@pytest.mark.parametrize(
    "args, message",
    [
        (("--size", "28x27"), "--size 28x27: P = 3 divides its 756 tokens, so nothing is padded"),
        (("--sp", "4"), "parallel.sp = 4 does not divide the model's 3 attention heads"),
        (("--sp", "1"), "--sp must be >= 2"),
        (("--train.steps", "3"), "takes only --model.KEY VALUE settings"),
    ],
)
def test_a_comparison_that_cannot_be_made_is_refused(pitdist_cli, args, message):
    proc = pitdist_cli(*TINY, *args)
    assert proc.returncode == 2 and message in proc.stderr, proc.stderr
