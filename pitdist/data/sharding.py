"""Which images each rank trains on at each step.

Batches are a pure function of (seed, step): epoch e's order is a permutation seeded with seed + e,
and step s takes the s-th global batch of it. So a run restored at step s needs nothing but s to
continue exactly, and every rank of an SP group computes the same batch without talking.
A global batch of B images is cut into Q contiguous shares, one per data-parallel group; all SP
ranks of a group take the same share. The last n % B images of each epoch's order are left out.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class BatchSchedule:
    num_items: int
    global_batch: int
    seed: int
    shuffle: bool = True

    def __post_init__(self) -> None:
        if self.num_items < self.global_batch:
            raise ValueError(
                f"the dataset has {self.num_items} training images, fewer than one global batch of "
                f"{self.global_batch}; lower train.batch_size"
            )

    @property
    def steps_per_epoch(self) -> int:
        return self.num_items // self.global_batch

    @property
    def dropped_per_epoch(self) -> int:
        """Images per epoch that cannot fill a global batch and are left out."""
        return self.num_items % self.global_batch

    def epoch_order(self, epoch: int) -> np.ndarray:
        return _epoch_order(self.num_items, self.seed, epoch, self.shuffle)

    def global_batch_indices(self, step: int) -> np.ndarray:
        epoch, within = divmod(step, self.steps_per_epoch)
        start = within * self.global_batch
        return self.epoch_order(epoch)[start : start + self.global_batch]

    def dp_indices(self, step: int, dp_rank: int, dp_size: int) -> np.ndarray:
        """The share of step's global batch that data-parallel group ``dp_rank`` trains on."""
        per_group = self.global_batch // dp_size
        return self.global_batch_indices(step)[dp_rank * per_group : (dp_rank + 1) * per_group]


@functools.lru_cache(maxsize=4)
def _epoch_order(num_items: int, seed: int, epoch: int, shuffle: bool) -> np.ndarray:
    # Cached: every step of an epoch slices the same permutation (recomputing it cost ~1 ms per step at
    # 70k images, more than gathering the batch). Read-only so no caller can alter the cached copy.
    order = np.random.default_rng([seed, epoch]).permutation(num_items) if shuffle else np.arange(num_items)
    order.flags.writeable = False
    return order
