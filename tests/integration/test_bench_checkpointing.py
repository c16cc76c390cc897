"""`pitdist bench checkpointing` through the CLI in a tiny configuration (16x16 images, width 64, 4 layers)."""

import json

import pytest

TINY = ("bench", "checkpointing", "--model.dim", "64", "--model.depth", "4", "--sp", "1,2", "--side", "16")


@pytest.mark.slow
def test_tiny_bench_measures_what_each_policy_keeps_resends_and_fits(pitdist_cli, tmp_path):
    out = tmp_path / "ck.json"
    args = ("--probe-side", "16", "--parts", "compare,largest,confirm", "--confirm", "2:full:16", "--steps", "2")
    proc = pitdist_cli(*TINY, *args, "--out", str(out), timeout=900, check=True)
    report = json.loads(out.read_text())
    assert report["complete"] and out.with_suffix(".png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    rows = {(r["sp"], r["policy"]): r for r in report["compare"]}
    assert set(rows) == {(p, c) for p in (1, 2) for c in ("none", "full", "selective", "local")}
    for (p, policy), r in rows.items():
        # what autograd holds and one recomputed unit: as the memory model says, within 10%
        assert r["held_bytes"] == pytest.approx(r["model_held_bytes"], rel=0.10), (p, policy)
        assert r["recompute_bytes"] == pytest.approx(r["model_recompute_bytes"], rel=0.10, abs=1), (p, policy)
        assert len(r["steps_s"]) == 2 and r["peak_rss_delta_bytes"] is not None
        # same weights, same image: every policy computes the same loss
        assert r["losses"][0] == pytest.approx(rows[(p, "none")]["losses"][0], abs=1e-6)
    assert rows[(1, "full")]["peak_ratio"] < rows[(1, "local")]["peak_ratio"] < 1
    # P = 2: full re-sends the forward's all-to-alls (4 of the 8 per layer: +50% attention bytes);
    # local re-sends nothing, so its bytes per step are those of no checkpointing.
    attention = rows[(2, "none")]["by_category_rank0"]["attention_a2a"]["sent"]
    assert rows[(2, "full")]["recompute_sent_bytes"] == pytest.approx(attention / 2)
    assert rows[(2, "local")]["sent_bytes"] == rows[(2, "none")]["sent_bytes"]
    assert rows[(2, "local")]["recompute_sent_bytes"] == 0
    # largest: the extrapolation from the probes lands where the model does (within a few pixels)
    for r in report["largest"]:
        assert abs(r["largest_side"] - r["model_largest_side"]) <= 0.05 * r["model_largest_side"], r
    largest = {(r["sp"], r["policy"]): r["tokens"] for r in report["largest"]}
    assert largest[(1, "full")] > 3 * largest[(1, "none")]  # at 4 layers; at 12 it is ~7x
    (confirm,) = report["confirm"]
    assert (confirm["sp"], confirm["policy"], confirm["side"]) == (2, "full", 16)
    assert "Largest square image under" in proc.stdout


def test_a_policy_list_without_the_baseline_is_refused(pitdist_cli, tmp_path):
    proc = pitdist_cli(*TINY, "--policies", "full,local", "--out", str(tmp_path / "x.json"), timeout=120)
    assert proc.returncode == 2 and "--policies: must include none" in proc.stderr
    assert not (tmp_path / "x.json").exists()
    proc = pitdist_cli(*TINY, "--policies", "ful", "--out", str(tmp_path / "x.json"), timeout=120)
    assert proc.returncode == 2 and "choose from none,full,selective,local" in proc.stderr
