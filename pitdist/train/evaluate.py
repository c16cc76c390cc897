"""Held-out accuracy, each DP group scoring its own share."""

from __future__ import annotations

import numpy as np
import torch

from pitdist.data.dataset import PixelDataset
from pitdist.distributed import comm
from pitdist.observe.categories import Category
from pitdist.train.batches import LocalBatches


@torch.no_grad()
def evaluate(model: torch.nn.Module, batches: LocalBatches, data: PixelDataset, batch_size: int) -> float:
    """Accuracy on ``data``: each DP group scores a contiguous share, counts are summed over DP."""
    mesh = batches.mesh
    model.eval()
    share = np.array_split(np.arange(len(data)), mesh.dp)[mesh.dp_rank]
    correct = 0
    for start in range(0, len(share), batch_size):
        index = share[start : start + batch_size]
        pred = model(batches.tokens(index, data), batches.positions).argmax(dim=-1).cpu()
        correct += int((pred == torch.from_numpy(data.labels[index])).sum())
    model.train()
    counts = torch.tensor([correct, len(share)], dtype=torch.float64, device=batches.device)
    comm.all_reduce_(counts, mesh.dp_group, category=Category.EVAL)
    return float(counts[0] / counts[1])
