"""Real gloo ranks (Q = 2 x P = 2) read a converted Arrow dataset: each DP group trains on a disjoint share of
every epoch, the SP ranks of a group on identical ids in identical order, each rank on its own tokens only."""

import numpy as np
import pytest
import torch
from data_workers import epoch_from_arrow
from spawn import run_ranks

from pitdist.data.convert import convert, make_source
from pitdist.data.registry import load_dataset
from pitdist.models.pit import pixels_to_tokens

pytestmark = pytest.mark.slow


def test_q2_p2_ranks_on_an_arrow_dataset(tmp_path):
    root = convert(make_source("digits", None, None), tmp_path / "digits", rows_per_shard=400, progress=False)
    out = run_ranks(4, epoch_from_arrow, str(root), 2, 2, 64, 0, 23)  # 1438 training images: 22 steps + 30 left
    steps, dropped = out[0]["steps_per_epoch"], out[0]["dropped"]
    assert (steps, dropped) == (22, 1438 - 22 * 64)
    assert [(o["dp_rank"], o["sp_rank"]) for o in out] == [(0, 0), (0, 1), (1, 0), (1, 1)]
    for a, b in ((0, 1), (2, 3)):
        assert out[a]["ids"] == out[b]["ids"]  # same images, same order, every step
        assert out[a]["token_range"] != out[b]["token_range"]
    epoch = [np.concatenate(out[r]["ids"][:steps]) for r in (0, 2)]
    consumed = np.concatenate(epoch)
    assert len(consumed) == len(set(consumed.tolist())) == out[0]["num_train"] - dropped
    assert not set(epoch[0].tolist()) & set(epoch[1].tolist())
    assert len(set(out[0]["train_ids"]) - set(consumed.tolist())) == dropped
    # Each rank's tokens are exactly its slice of its group's images (checked against an in-process load).
    data = load_dataset(str(root))
    row_of = {int(i): r for r, i in enumerate(data.ids)}
    for o in out:
        for step in (0, steps - 1, steps):  # steps = first step of epoch 2
            index = np.array([row_of[i] for i in o["ids"][step]])
            tokens = pixels_to_tokens(torch.from_numpy(data.pixels[index]), 1, tuple(o["token_range"]))
            import hashlib

            assert hashlib.sha256(tokens.numpy().tobytes()).hexdigest() == o["digests"][step]
    # Resumed at step k in fresh processes: exactly the uninterrupted run's ids from step k on.
    resumed = run_ranks(4, epoch_from_arrow, str(root), 2, 2, 64, 15, 23)
    for r in range(4):
        assert resumed[r]["ids"] == out[r]["ids"][15:] and resumed[r]["digests"] == out[r]["digests"][15:]
