"""A run resumed from a DeepSpeed checkpoint ends exactly where an uninterrupted run ends."""

import pytest
import torch
from spawn import run_ranks
from workers import loss_curve

pytestmark = pytest.mark.slow


@pytest.mark.parametrize(
    "zero, saved_with, resumed_with", [(0, "none", "none"), (2, "none", "none"), (2, "local", "full")]
)
def test_resume_mid_run_equals_an_uninterrupted_run(zero, saved_with, resumed_with, tmp_path):
    # Activation checkpointing leaves parameter names and state dicts alone: a checkpoint written under
    # one policy resumes under another.
    # The hardest case: 2 x 2 mesh, the learned table sharded over SP (its rows live in per-rank
    # expert files of the checkpoint), ZeRO state partitioned over all 4 ranks.
    common = [
        "--parallel.dp",
        "2",
        "--parallel.sp",
        "2",
        "--parallel.launcher",
        "local",
        "--parallel.zero_stage",
        str(zero),
        "--model.pos_embed",
        "learned",
        "--model.shard_pos_embed",
        "true",
        "--train.checkpoint_every",
        "10",
    ]
    policy = "--train.activation_checkpointing"
    straight = run_ranks(4, loss_curve, [*common, policy, saved_with], str(tmp_path / "straight"))[0]
    resume = ["--train.resume", str(tmp_path / "straight" / "checkpoints"), "--train.resume_tag", "step-10"]
    resumed = run_ranks(4, loss_curve, [*common, policy, resumed_with, *resume], str(tmp_path / "resumed"))[0]
    assert resumed[:10] == straight[:10]  # carried over from the checkpoint
    assert resumed[10:] == pytest.approx(straight[10:], abs=1e-6)
    a = torch.load(tmp_path / "straight" / "model.pt")
    b = torch.load(tmp_path / "resumed" / "model.pt")
    assert a.keys() == b.keys() and a["pos_embed.weight"].shape == (64, 64)  # the whole table
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=1e-6, atol=1e-7)
