"""What each rank trains on at each step: its DP group's images, cut to its SP rank's pixel tokens.

Two loaders, one contract: ``batches(step)`` returns a pitdist.train.step.Batch (the group's image ids,
this rank's tokens, their positions and the labels), and every SP rank of a group gets the same ids in
the same order.

``LocalBatches`` (data.loader = "memory") indexes a memory-mapped dataset with the batch schedule, a
pure function of (seed, step): nothing is sent, and a restored run needs only the step.

``StreamedBatches`` (data.loader = "ray_data") reads this worker's share of each epoch's Ray Dataset,
split into Q * P equal streams (``streaming_split(equal=True)``) in a new seeded order every epoch
(pitdist.data.ray_epochs.EpochStreams). One
stream cannot be shared by several workers, so each worker reads b / (Q * P) images per step and the
SP group all-gathers them (DESIGN.md section 7): every SP rank then holds the group's b / Q images in
rank order. The gather is ledger category ``data``: (P - 1) / P of the group's uint8 pixels plus
16 bytes of id and label per image, small next to the attention all-to-alls. With ``preserve_order``,
an epoch's order seeded by (seed, epoch) and a local shuffle seeded by seed + epoch the streams are
reproducible, so a restored run re-opens the epoch and discards the batches it already trained on
(Ray Data has no seek).
"""

from __future__ import annotations

import numpy as np
import torch

from pitdist.config import ConfigError, JobConfig
from pitdist.data.dataset import PixelDataset
from pitdist.data.ray_reader import iter_pixel_batches
from pitdist.data.sharding import BatchSchedule
from pitdist.distributed import comm
from pitdist.distributed.mesh import Mesh
from pitdist.models.pit import pixels_to_tokens
from pitdist.observe.categories import Category
from pitdist.train.step import Batch


class LocalBatches:
    """This rank's slice of each step's batch, indexed from a memory-mapped dataset."""

    def __init__(
        self,
        data: PixelDataset,
        schedule: BatchSchedule,
        mesh: Mesh,
        patch_size: int,
        device: torch.device,
        dtype: torch.dtype,
        cls: bool = False,
    ):
        self.data, self.schedule, self.mesh = data, schedule, mesh
        self.patch_size, self.device, self.dtype = patch_size, device, dtype
        h, w, _ = data.image_shape
        self.num_tokens = (h // patch_size) * (w // patch_size)
        # This rank's pixel tokens: a contiguous range, shorter than its slots on the rank that holds
        # the CLS token or padding, empty on a rank of padding alone (pitdist.parallel_dims.TokenShards).
        self.token_range = mesh.pixel_range(self.num_tokens, cls)
        self.positions = torch.arange(*self.token_range, device=device)

    @property
    def steps_per_epoch(self) -> int:
        return self.schedule.steps_per_epoch

    @property
    def dropped_per_epoch(self) -> int:
        return self.schedule.dropped_per_epoch

    def to_tokens(self, pixels: torch.Tensor) -> torch.Tensor:
        """This rank's tokens of uint8 images [b, H, W, C]."""
        return pixels_to_tokens(pixels, self.patch_size, self.token_range).to(self.device, self.dtype)

    def tokens(self, index: np.ndarray, data: PixelDataset | None = None) -> torch.Tensor:
        """This rank's tokens of images ``index`` of ``data`` (default: the training set)."""
        return self.to_tokens(torch.from_numpy((data or self.data).pixels[index]))

    def __call__(self, step: int) -> Batch:
        index = self.schedule.dp_indices(step, self.mesh.dp_rank, self.mesh.dp)
        labels = torch.from_numpy(self.data.labels[index]).to(self.device)
        return Batch(self.tokens(index), self.positions, labels, self.data.ids[index])


class StreamedBatches(LocalBatches):
    """This rank's slice of each step's batch, streamed by Ray Data and gathered over the SP group.

    ``data`` is still the (memory-mapped) training split: evaluation and the image shape come from it;
    the training images come only from ``streams(epoch)``, this worker's DataIterator of the epoch,
    which holds ``num_rows`` / (Q * P) of its ``num_rows`` rows.
    """

    def __init__(
        self,
        streams,
        num_rows: int,
        data: PixelDataset,
        cfg: JobConfig,
        mesh: Mesh,
        device: torch.device,
        dtype: torch.dtype,
    ):
        super().__init__(data, None, mesh, cfg.model.patch_size, device, dtype, cfg.model.pool == "cls")  # type: ignore[arg-type]
        self.streams, self.cfg = streams, cfg
        world = mesh.world_size
        self.per_worker = cfg.train.batch_size // world
        self._steps_per_epoch = num_rows // world // self.per_worker
        if self._steps_per_epoch == 0:
            raise ConfigError(
                f"the dataset has {num_rows} training images, fewer than one global batch of "
                f"{cfg.train.batch_size}; lower train.batch_size"
            )
        self._dropped = num_rows - self._steps_per_epoch * cfg.train.batch_size
        self._position: tuple[int, int] | None = None  # (epoch, batches taken) of the open iterator
        self._stream = None

    @property
    def steps_per_epoch(self) -> int:
        return self._steps_per_epoch

    @property
    def dropped_per_epoch(self) -> int:
        # Up to Q*P - 1 rows that equal splits cannot share, plus what cannot fill a global batch.
        return self._dropped

    def _open(self, epoch: int, skip: int) -> None:
        if self._stream is not None:
            for _ in self._stream:  # the previous epoch's leftovers (< one batch): its execution ends
                pass
        shuffle = {}
        if self.cfg.data.shuffle:
            shuffle = {
                "local_shuffle_buffer_size": self.cfg.data.shuffle_buffer,
                "local_shuffle_seed": self.cfg.train.seed + epoch,
            }
        shard = self.streams(epoch)
        self._stream = iter_pixel_batches(shard, self.data.image_shape, self.per_worker, drop_last=True, **shuffle)
        for _ in range(skip):  # a restored run: the batches trained on before the checkpoint
            next(self._stream)
        self._position = (epoch, skip)

    def __call__(self, step: int) -> Batch:
        epoch, within = divmod(step, self._steps_per_epoch)
        if self._position != (epoch, within):
            self._open(epoch, skip=within)
        pixels, ids, labels = next(self._stream)
        self._position = (epoch, within + 1)
        pixels = torch.from_numpy(pixels.copy()).to(self.device)  # Arrow buffers are read-only
        meta = torch.from_numpy(np.stack([ids, labels], axis=1)).to(self.device)
        if self.mesh.sp > 1:
            pixels = comm.all_gather_cat(pixels, self.mesh.sp_group, category=Category.DATA)
            meta = comm.all_gather_cat(meta, self.mesh.sp_group, category=Category.DATA)
        return Batch(self.to_tokens(pixels), self.positions, meta[:, 1], meta[:, 0].cpu().numpy())
