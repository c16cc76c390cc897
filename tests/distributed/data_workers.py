"""Per-rank code for tests/distributed/test_arrow_data_ranks.py (importable by spawned processes)."""

from __future__ import annotations

import hashlib

import numpy as np
import torch

from pitdist.config import load_config
from pitdist.data.registry import split_dataset
from pitdist.data.sharding import BatchSchedule
from pitdist.distributed.mesh import Mesh
from pitdist.parallel_dims import ParallelDims
from pitdist.train.batches import LocalBatches


def epoch_from_arrow(rank: int, dataset_dir: str, dp: int, sp: int, batch: int, start: int, stop: int) -> dict:
    """Steps [start, stop) of a real rank on a converted dataset: the ids it trains on, a digest of its
    tokens, its token range and the dropped count, built exactly as train() builds them."""
    cfg = load_config(
        None,
        [
            "--data.dataset",
            dataset_dir,
            "--parallel.dp",
            str(dp),
            "--parallel.sp",
            str(sp),
            "--parallel.launcher",
            "local",
            "--train.batch_size",
            str(batch),
        ],
    )
    mesh = Mesh(ParallelDims(dp, sp))
    train_data, _ = split_dataset(cfg)
    schedule = BatchSchedule(len(train_data), cfg.train.batch_size, cfg.train.seed, cfg.data.shuffle)
    batches = LocalBatches(train_data, schedule, mesh, 1, torch.device("cpu"), torch.float32)
    ids, digests = [], []
    for step in range(start, stop):
        batch = batches(step)
        ids.append(np.asarray(batch.ids).tolist())
        digests.append(hashlib.sha256(batch.tokens.numpy().tobytes()).hexdigest())
    return {
        "dp_rank": mesh.dp_rank,
        "sp_rank": mesh.sp_rank,
        "ids": ids,
        "digests": digests,
        "token_range": list(batches.token_range),
        "steps_per_epoch": schedule.steps_per_epoch,
        "dropped": schedule.dropped_per_epoch,
        "num_train": len(train_data),
        "train_ids": np.asarray(train_data.ids).tolist(),
    }
