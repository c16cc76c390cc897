"""Sequence parallelism computes exactly what one device computes.

Real gloo process groups and real DeepSpeed engines; a 4-head nano PiT on 8x8 images (64 tokens)
so Ulysses can split it over P = 2 and 4.
"""

import pytest
from spawn import run_ranks
from workers import batch_ids, loss_curve, one_step_versus_single_device

VARIANTS = [("none", False), ("sincos", False), ("learned", False), ("learned", True)]
pytestmark = pytest.mark.slow


@pytest.mark.parametrize("dp, sp", [(1, 2), (1, 4), (2, 2)], ids=["P2", "P4", "Q2xP2"])
def test_logits_loss_and_every_gradient_match_one_device(dp, sp):
    reports = run_ranks(dp * sp, one_step_versus_single_device, dp, sp, VARIANTS)
    for rank, report in enumerate(reports):
        assert [r["variant"] for r in report] == ["none", "sincos", "learned", "learned sharded"]
        for entry in report:
            worst = {k: v for k, v in entry["diffs"].items() if v > 1e-5}
            assert not worst, f"rank {rank}, {entry['variant']}: relative differences above 1e-5: {worst}"
            assert len(entry["diffs"]) > 20  # logits, loss, consolidated state and every parameter


@pytest.mark.parametrize("zero", [0, 1, 2])
def test_twenty_steps_match_the_single_device_loss_curve(zero, tmp_path):
    # Clipping is on (DeepSpeed must compute the global norm right) and the learned table is sharded.
    common = ["--parallel.zero_stage", str(zero), "--optim.grad_clip", "0.5", "--model.pos_embed", "learned"]
    single = run_ranks(1, loss_curve, common, str(tmp_path / "p1"))[0]
    for dp, sp, shard in [(1, 2, "true"), (2, 2, "true"), (1, 4, "false")]:
        mesh = [
            "--parallel.dp",
            str(dp),
            "--parallel.sp",
            str(sp),
            "--parallel.launcher",
            "local",
            "--model.shard_pos_embed",
            shard,
        ]
        curves = run_ranks(dp * sp, loss_curve, common + mesh, str(tmp_path / f"q{dp}p{sp}"))
        assert all(c == curves[0] for c in curves), "ranks disagree on the global loss"
        worst = max(abs(a - b) for a, b in zip(curves[0], single))
        assert worst < 1e-4, f"dp={dp} sp={sp} zero={zero}: loss curve differs from P=1 by {worst}"
    assert sum(single[-5:]) < sum(single[:5])  # and it is a real training curve


def test_sp_ranks_of_a_group_see_the_same_images_and_dp_groups_disjoint_ones():
    ids = run_ranks(4, batch_ids, 2, 2, 12)
    assert ids[0] == ids[1] and ids[2] == ids[3]
    for step in range(12):
        assert not set(ids[0][step]) & set(ids[2][step])
        assert len(ids[0][step]) == len(ids[2][step]) == 16
