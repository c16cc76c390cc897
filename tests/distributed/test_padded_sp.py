"""Any image on any mesh: token shards padded to a common length compute exactly what one device does.

The meshes are chosen so that P does not divide the image's tokens (or, with a CLS token, its tokens
plus one): 7x7 on Ulysses 2, 28x28 on Ulysses 3 (PiT-T's 3 heads; 784 is no multiple of 3), 30x20 on
Ulysses 2 x ring 2 (600 tokens divide by 4; 601 with CLS do not), 9x9 on a ring of 4, and 3x3 on a ring
of 4, where the last rank holds padding alone. Real gloo groups, in float64: two fp32 runs summing
784 tokens in different orders differ by up to 1.5e-5 (measured) with no padding at all, which would
hide or mimic an error at the 1e-5 tolerance. DeepSpeed reduces no float64 gradient, so these sum
the gradients over the SP group by hand; the trainer's runs below go through the real engine in fp32.
"""

import pytest
import torch
from spawn import run_ranks
from workers import (
    checkpointing_versus_none,
    comm_runs,
    logits_under_permutation,
    loss_curve,
    one_step_versus_single_device,
    saved_bytes_padded_versus_divisible,
)

from pitdist.report.comm_report import load_run, summarize

VARIANTS = [("none", False), ("sincos", False), ("learned", False), ("learned", True)]
SMALL = ("--model.depth", "2")
pytestmark = pytest.mark.slow


@pytest.mark.parametrize(
    "sp, ring, image, model",
    [
        (2, 1, (7, 7, 1), ("--model.heads", "2", *SMALL)),
        (3, 1, (28, 28, 1), ("--model.heads", "3", "--model.dim", "48", *SMALL)),
        (4, 2, (30, 20, 1), ("--model.heads", "2", *SMALL)),
        (4, 4, (9, 9, 1), SMALL),
        (4, 4, (3, 3, 1), SMALL),
    ],
    ids=["7x7-ulysses2", "28x28-ulysses3", "30x20-ulysses2xring2", "9x9-ring4", "3x3-ring4-empty-rank"],
)
def test_padded_shards_match_one_device_for_every_pe_and_both_pools(sp, ring, image, model):
    reports = run_ranks(sp, one_step_versus_single_device, 1, sp, VARIANTS, ring, image, model, ("mean", "cls"), True)
    for rank, report in enumerate(reports):
        assert [(r["pool"], r["variant"]) for r in report] == [
            (pool, v) for pool in ("mean", "cls") for v in ("none", "sincos", "learned", "learned sharded")
        ]
        for entry in report:
            worst = {k: v for k, v in entry["diffs"].items() if v > 1e-5}
            assert not worst, (
                f"rank {rank}, {entry['pool']} {entry['variant']}: relative differences above 1e-5: {worst}"
            )
            assert len(entry["diffs"]) > 10  # logits, loss, consolidated state and every parameter


@pytest.mark.parametrize(
    "sp, ring, image, model",
    [
        (3, 1, (7, 7, 1), ("--model.heads", "3", "--model.dim", "48", *SMALL)),
        (4, 4, (9, 9, 1), ("--model.pool", "cls", *SMALL)),
    ],
    ids=["7x7-ulysses3-mean", "9x9-ring4-cls"],
)
def test_no_pe_pit_stays_permutation_invariant_with_padded_shards(sp, ring, image, model):
    for rank, out in enumerate(run_ranks(sp, logits_under_permutation, sp, ring, image, model)):
        out = {k: torch.tensor(v) for k, v in out.items()}
        torch.testing.assert_close(out["permuted"], out["original"], rtol=1e-5, atol=1e-5, msg=f"rank {rank}")
        torch.testing.assert_close(out["original"], out["plain"], rtol=1e-5, atol=1e-5, msg=f"rank {rank}")


@pytest.mark.parametrize("ring", [1, 3], ids=["ulysses3", "ring3"])
def test_padding_saves_what_the_next_divisible_size_saves_and_no_n_by_n(ring):
    # 28x28 = 784 tokens on P = 3: shards of 262 slots, 2 padded; 6x131 = 786 tokens divide into the
    # same 262. Memory linear in the slots means the two save the same bytes; an N x N mask would add
    # 784^2 * 4 B = 2.5 MB per image and head, far more than the 5% allowed.
    model = ("--model.heads", "3", "--model.dim", "48", *SMALL)
    for rank, out in enumerate(
        run_ranks(3, saved_bytes_padded_versus_divisible, 3, ring, (28, 28, 1), (6, 131, 1), model)
    ):
        assert out["padded slots"] == out["divisible slots"] == 262
        assert abs(out["padded"] - out["divisible"]) <= 0.05 * out["divisible"], (rank, out)


# The default job's digits are 8x8: 64 tokens (65 with CLS), which 3 does not divide, nor 2 or 4 with CLS.
THREE_HEADS = ("--model.heads", "3", "--model.dim", "48")


def _mesh(dp, sp, ring=1):
    return ["--parallel.dp", str(dp), "--parallel.sp", str(sp), "--parallel.ring", str(ring)]


@pytest.mark.parametrize(
    "mesh, model",
    [
        (_mesh(1, 3), (*THREE_HEADS, "--model.pos_embed", "learned", "--model.shard_pos_embed", "true")),
        (_mesh(1, 2), ("--model.pool", "cls", "--model.pos_embed", "learned", "--parallel.zero_stage", "2")),
        (_mesh(1, 4, 2), ("--model.pool", "cls", "--model.pos_embed", "sincos", "--parallel.zero_stage", "1")),
    ],
    ids=["ulysses3-mean-sharded-z0", "ulysses2-cls-learned-z2", "ulysses2xring2-cls-sincos-z1"],
)
def test_twenty_padded_steps_match_the_single_device_loss_curve(mesh, model, tmp_path):
    common = ["--optim.grad_clip", "0.5", *model]
    single = run_ranks(1, loss_curve, common, str(tmp_path / "p1"))[0]
    world = int(mesh[1]) * int(mesh[3])
    curves = run_ranks(world, loss_curve, [*common, *mesh, "--parallel.launcher", "local"], str(tmp_path / "sp"))
    assert all(c == curves[0] for c in curves), "ranks disagree on the global loss"
    worst = max(abs(a - b) for a, b in zip(curves[0], single))
    assert worst < 1e-4, f"{mesh} {model}: loss curve differs from P=1 by {worst}"
    assert sum(single[-5:]) < sum(single[:5])  # and it is a real training curve


def test_a_padded_run_resumed_mid_run_equals_an_uninterrupted_run(tmp_path):
    # Ring of 3 on 65 tokens (CLS): shards of 22 slots, the table sharded into 3 x 22 padded rows in
    # per-rank checkpoint files, ZeRO 2 state partitioned over the 3 ranks.
    common = [
        *_mesh(1, 3, 3),
        "--parallel.launcher",
        "local",
        "--parallel.zero_stage",
        "2",
        "--model.pool",
        "cls",
        "--model.pos_embed",
        "learned",
        "--model.shard_pos_embed",
        "true",
        "--train.checkpoint_every",
        "10",
    ]
    straight = run_ranks(3, loss_curve, common, str(tmp_path / "straight"))[0]
    resume = ["--train.resume", str(tmp_path / "straight" / "checkpoints"), "--train.resume_tag", "step-10"]
    resumed = run_ranks(3, loss_curve, [*common, *resume], str(tmp_path / "resumed"))[0]
    assert resumed[:10] == straight[:10]
    assert resumed[10:] == pytest.approx(straight[10:], abs=1e-6)
    a = torch.load(tmp_path / "straight" / "model.pt")
    b = torch.load(tmp_path / "resumed" / "model.pt")
    assert a.keys() == b.keys() and a["pos_embed.weight"].shape == (64, 64) and a["cls_token"].shape == (1, 1, 64)
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize(
    "dp, sp, ring, zero, model",
    [(1, 3, 1, 0, THREE_HEADS), (1, 2, 1, 2, ("--model.pool", "cls")), (2, 2, 2, 1, ("--model.pool", "cls"))],
    ids=["ulysses3-z0", "ulysses2-cls-z2", "Q2xring2-cls-z1"],
)
def test_ledger_bytes_equal_the_model_for_padded_shards(dp, sp, ring, zero, model, tmp_path):
    variants = ["none", "learned", "learned-sharded"]
    run_dirs = run_ranks(dp * sp, comm_runs, dp, sp, zero, variants, str(tmp_path), ring, model)[0]
    for variant, run_dir in zip(variants, run_dirs):
        for rank, rows in enumerate(summarize(load_run(run_dir))["rows"]):
            assert any(r.category in ("attention_a2a", "attention_ring") and r.sent > 0 for r in rows)
            for row in rows:
                where = f"{variant}, rank {rank}, {row.category}"
                assert row.model_sent is not None, f"{where}: measured traffic the model does not know"
                assert row.handed == pytest.approx(row.model_handed, rel=0.01), where
                assert row.sent == pytest.approx(row.model_sent, rel=0.01, abs=1e-9), where


@pytest.mark.parametrize(
    "sp, ring, image, model",
    [(3, 1, (7, 7, 1), ("--model.heads", "3", "--model.dim", "48")), (4, 2, (5, 5, 1), ("--model.pool", "cls"))],
    ids=["7x7-ulysses3", "5x5-cls-ulysses2xring2"],
)
def test_every_checkpointing_policy_on_padded_shards_computes_what_no_checkpointing_does(sp, ring, image, model):
    reports = run_ranks(sp, checkpointing_versus_none, 1, sp, ring, VARIANTS, image, (*model, *SMALL))
    for rank, report in enumerate(reports):
        assert {r["policy"] for r in report} == {"none", "full", "selective", "local"}
        for entry in report:
            worst = {k: v for k, v in entry["diffs"].items() if v > 1e-6}
            assert not worst, f"rank {rank}, {entry['variant']}, {entry['policy']}: differences above 1e-6: {worst}"
            if entry["variant"] == "sincos":  # the memory model counts the rank's slots, padding included
                assert entry["held"] == pytest.approx(entry["model_held"], rel=0.10), (rank, entry["policy"])
