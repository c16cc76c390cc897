"""An in-memory pixel dataset: uint8 images [n, H, W, C], integer labels, stable ids."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from pitdist.config import ConfigError


@dataclass
class PixelDataset:
    ids: np.ndarray  # int64 [n], stable across shuffles and shards
    labels: np.ndarray  # int64 [n], in range(len(class_names))
    pixels: np.ndarray  # uint8 [n, H, W, C]
    class_names: list[str]
    name: str = ""
    # Rows of the source left out as bad (data.bad_rows = skip; pitdist.data.parquet.BadRow), kept by
    # every subset: they belong to the source, and the run reports them.
    skipped: tuple = ()

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return tuple(self.pixels.shape[1:])  # type: ignore[return-value]

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def subset(self, index: np.ndarray) -> PixelDataset:
        # Memory-mapped pixels (pitdist.data.arrow.ShardedPixels) select rows without copying them.
        pixels = self.pixels.select(index) if hasattr(self.pixels, "select") else self.pixels[index]
        return PixelDataset(self.ids[index], self.labels[index], pixels, self.class_names, self.name, self.skipped)

    def split(self, val_fraction: float, seed: int) -> tuple[PixelDataset, PixelDataset]:
        """Deterministic train/validation split (independent of the training shuffle)."""
        order = np.random.default_rng(seed).permutation(len(self))
        n_val = max(1, int(round(len(self) * val_fraction)))
        return self.subset(np.sort(order[n_val:])), self.subset(np.sort(order[:n_val]))


def synthetic_dataset(spec: str) -> PixelDataset:
    """``synthetic:HxWxC[:COUNT]``: seeded random uint8 images with 10 labels, for communication and
    speed measurements where only the shape matters (nothing to learn)."""
    try:
        _, shape, *rest = spec.split(":")
        h, w, c = (int(v) for v in shape.split("x"))
        count = int(rest[0]) if rest else 512
    except ValueError:
        raise ConfigError(
            f"data.dataset = {spec!r}: write synthetic:HxWxC or synthetic:HxWxC:COUNT, e.g. synthetic:28x28x1:1000"
        ) from None
    if min(h, w, c, count) < 1:
        raise ConfigError(f"data.dataset = {spec!r}: sizes and count must be >= 1")
    rng = np.random.default_rng(0)
    return PixelDataset(
        ids=np.arange(count, dtype=np.int64),
        labels=rng.integers(0, 10, count).astype(np.int64),
        pixels=rng.integers(0, 256, (count, h, w, c), dtype=np.uint8),
        class_names=[str(i) for i in range(10)],
        name=spec,
    )
