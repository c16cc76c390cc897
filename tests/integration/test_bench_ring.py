"""`pitdist bench ring` through the CLI in a tiny configuration (8x8 images, width 64, 2 layers)."""

import json

import pytest

MODEL = ("bench", "ring", "--model.dim", "64", "--model.depth", "2")
TINY = (
    *MODEL,
    "--sp",
    "2,4",
    "--side",
    "8",
    "--warmup",
    "1",
    "--steps",
    "2",
    "--project-sides",
    "224",
)


@pytest.mark.slow
def test_tiny_bench_writes_json_and_plot_with_every_scheme_measured_as_modelled(pitdist_cli, tmp_path):
    out = tmp_path / "ring.json"
    proc = pitdist_cli(*TINY, "--out", str(out), timeout=600, check=True)
    report = json.loads(out.read_text())
    png = out.with_suffix(".png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 5000

    rows = {(r["sp"], r["ring"]): r for r in report["rows"]}
    assert set(rows) == {(2, 1), (2, 2), (4, 1), (4, 2), (4, 4)}  # 4 heads: Ulysses, hybrid and ring
    for (p, ring), r in rows.items():
        assert r["ratio_to_model"] == pytest.approx(1.0, abs=0.01), (p, ring)
        assert r["attention_sent_bytes"] == pytest.approx(r["model_attention_sent_bytes"], rel=0.01)
        assert len(r["steps_s"]) == 2 and r["step_s"] > 0
        assert len(r["sent_bytes_per_rank"]) == p and len(set(r["sent_bytes_per_rank"])) == 1
        assert ("attention_ring" in r["by_category_rank0"]) == (ring > 1)
        assert ("attention_a2a" in r["by_category_rank0"]) == (ring < p)
    # The ring sends more than Ulysses at the same P: (3R-2) K+V blocks against 8 (U-1)/U^2 shards.
    assert (
        rows[(4, 4)]["attention_sent_bytes"]
        > rows[(4, 2)]["attention_sent_bytes"]
        > rows[(4, 1)]["attention_sent_bytes"]
    )
    # Same image, same weights: every scheme computes the same loss.
    losses = [r["losses_rank0"][0] for r in rows.values()]
    assert max(losses) - min(losses) < 1e-5

    proj = report["projection"]
    assert {r["side"] for r in proj} == {224} and all(r["world"] == 64 for r in proj)
    assert {(r["sp"], r["ulysses"], r["ring"]) for r in proj if r["sp"] == 64} == {
        (64, 4, 16),
        (64, 2, 32),
        (64, 1, 64),
    }
    assert "Projected (analytical model)" in proc.stdout and "ulysses 2 x ring 2" in proc.stdout


@pytest.mark.slow
def test_a_p_dividing_neither_heads_nor_tokens_runs_as_a_padded_ring_on_a_rectangle(pitdist_cli, tmp_path):
    # P = 3 used to be refused (3 divides neither the 4 heads nor 64 tokens). Now it runs as a ring of 3
    # (no Ulysses factor divides the heads); the 5x4 image's 20 tokens take S = 7 slots per rank.
    out = tmp_path / "ring.json"
    proc = pitdist_cli(
        *MODEL,
        *("--sp", "3", "--side", "5x4", "--warmup", "0", "--steps", "1"),
        *("--project-sides", "224x112", "--project-sp", "4"),
        "--out",
        str(out),
        timeout=300,
        check=True,
    )
    report = json.loads(out.read_text())
    assert (report["side"], report["height"], report["width"], report["tokens"]) == (None, 5, 4, 20)
    (row,) = report["rows"]
    assert (row["sp"], row["ulysses"], row["ring"]) == (3, 1, 3) and row["step_s"] > 0
    assert row["attention_sent_bytes"] > 0 and "attention_a2a" not in row["by_category_rank0"]
    assert len(set(row["sent_bytes_per_rank"])) == 1  # every rank sends its S slots, padded or not
    proj = report["projection"]
    assert {(r["side"], r["height"], r["width"], r["tokens"]) for r in proj} == {(None, 224, 112, 224 * 112)}
    assert "5x4x1 images (20 tokens)" in proc.stdout and "224x112" in proc.stdout


@pytest.mark.parametrize(
    "args, message",
    [
        (("--model.patch_size", "3", "--side", "8x6"), "--side 8x6: not divisible by model.patch_size = 3"),
        (("--side", "8x"), "'8x': write SIDE or HxW"),
        (("--project-sides", "224,0x5"), "'0x5': the height and width must be >= 1"),
    ],
)
def test_what_still_cannot_run_is_refused_before_any_rank_starts(pitdist_cli, tmp_path, args, message):
    out = tmp_path / "ring.json"
    proc = pitdist_cli("bench", "ring", "--sp", "3", *args, "--out", str(out), timeout=120)
    assert proc.returncode == 2 and message in proc.stderr, proc.stderr
    assert not out.exists()
