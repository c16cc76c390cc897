"""`pitdist bench projection`: the comm/memory model at GPU-cluster scale (pure computation)."""

import json

import pytest

from pitdist.config import ModelConfig
from pitdist.report.comm_model import step_traffic
from pitdist.report.memory_model import activation_memory


def test_projection_writes_json_and_plot_and_matches_the_comm_model(pitdist_cli, tmp_path):
    out = tmp_path / "proj.json"
    proc = pitdist_cli("bench", "projection", "--gpus", "8,64", "--out", str(out), timeout=120, check=True)
    report = json.loads(out.read_text())
    assert out.with_suffix(".png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    rows = {(r["size"], r["gpus"], r["sp"]): r for r in report["traffic"]}
    assert {s for s, _, _ in rows} == {"tiny", "small", "base"} and {w for _, w, _ in rows} == {8, 64}
    # PiT-B, 224x224, P = 4 on 64 GPUs (Q = 16): Ulysses 4 sends 8 L b N D e (P-1)/P^2 = 18 N*D*e
    # (DESIGN.md section 5's worked example); the replicated table's gradient 2 N D e (W-1)/W.
    b = rows[("base", 64, 4)]
    nde = 50176 * 768 * 2
    assert (b["scheme"], b["dp"]) == ("ulysses 4", 16)
    assert b["attention_bytes"] == pytest.approx(18 * nde)
    assert b["pe_replicated_bytes"] == pytest.approx(2 * nde * 63 / 64)
    # Sharded with the tokens, the table's gradient goes over the 16 DP ranks only, (N/4) rows each.
    direct = step_traffic(
        ModelConfig(size="base", pos_embed="learned", shard_pos_embed=True), (224, 224, 3), 1000, 16, 16, 4, 2, 0.0, 2
    )
    assert b["pe_sharded_bytes"] == pytest.approx(direct["pe_grad_reduce"].sent + direct["pe_param_gather"].sent)
    assert b["pe_sharded_bytes"] < b["pe_replicated_bytes"] / 2
    # PiT-T's 3 heads: no Ulysses at P = 2, 4, 8 -- the projection uses a ring there.
    assert rows[("tiny", 8, 2)]["scheme"] == "ring 2" and rows[("tiny", 8, 8)]["ring"] == 8
    # Memory: activations grow with the tokens; PiT-B 512x512 does not fit one 24 GB GPU without SP.
    mem = {(r["size"], r["side"], r["checkpointing"]): r for r in report["memory"]}
    assert {c for _, _, c in mem} == {"none", "full", "local"}
    peak = activation_memory(ModelConfig(size="base"), 512 * 512, 3, "none", bytes_per_element=2).peak
    assert mem[("base", 512, "none")]["activation_bytes_per_image"] == pytest.approx(peak)
    assert peak == pytest.approx(16.06 * 512 * 512 * 768 * 12 * 2, rel=0.01)  # ~16 D-vectors per token and layer
    assert mem[("base", 512, "none")]["min_sp"]["24.0"] > 1 and mem[("tiny", 224, "none")]["min_sp"]["80.0"] == 1
    # Full checkpointing keeps one D-vector per token and layer and recomputes one block at a time: the
    # same image fits one 24 GB GPU without SP.
    assert mem[("base", 512, "full")]["min_sp"]["24.0"] == 1
    assert mem[("base", 512, "full")]["activation_bytes_per_image"] < peak / 5
    # Full checkpointing re-sends the forward's 4 all-to-alls per layer: +50% attention bytes; local none.
    assert b["attention_bytes_by_policy"]["full"] == pytest.approx(1.5 * b["attention_bytes"])
    assert b["attention_bytes_by_policy"]["local"] == b["attention_bytes"]
    assert "ulysses 4" in proc.stdout and "Peak activations one image keeps" in proc.stdout


def test_an_image_of_any_token_count_projects_on_every_p_and_sizes_may_be_rectangles(pitdist_cli, tmp_path):
    # 7x5 = 35 tokens: no P > 1 divides them, so P = 1 was all there was; now P = 2, 4, 8 pad.
    out = tmp_path / "proj.json"
    args = ("--image", "7x5x3", "--gpus", "8", "--sizes", "base", "--mem-sides", "30x20,7")
    proc = pitdist_cli("bench", "projection", *args, "--out", str(out), timeout=120, check=True)
    report = json.loads(out.read_text())
    assert {r["sp"] for r in report["traffic"]} == {1, 2, 4, 8} and {r["tokens"] for r in report["traffic"]} == {35}
    mem = {(r["side"], r["height"], r["width"], r["tokens"]) for r in report["memory"]}
    assert mem == {(None, 30, 20, 600), (7, 7, 7, 49)}
    assert "7x5x3 (35 tokens)" in proc.stdout and "30x20" in proc.stdout


@pytest.mark.parametrize(
    "args, message",
    [
        (("--mem-sides", "224,30x"), "'30x': write SIDE or HxW"),
        (("--image", "7x0x3"), "sides and channels must be >= 1"),
    ],
)
def test_bad_sizes_are_refused(pitdist_cli, tmp_path, args, message):
    proc = pitdist_cli("bench", "projection", *args, "--out", str(tmp_path / "p.json"), timeout=60)
    assert proc.returncode == 2 and message in proc.stderr, proc.stderr
    assert not (tmp_path / "p.json").exists()


def test_unknown_model_size_is_refused(pitdist_cli, tmp_path):
    proc = pitdist_cli("bench", "projection", "--sizes", "huge", "--out", str(tmp_path / "p.json"), timeout=60)
    assert proc.returncode == 2 and "choose from tiny,small,base" in proc.stderr
