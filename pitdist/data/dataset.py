"""An in-memory pixel dataset: uint8 images [n, H, W, C], integer labels, stable ids."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class PixelDataset:
    ids: np.ndarray  # int64 [n], stable across shuffles and shards
    labels: np.ndarray  # int64 [n], in range(len(class_names))
    pixels: np.ndarray  # uint8 [n, H, W, C]
    class_names: list[str]
    name: str = ""

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return tuple(self.pixels.shape[1:])  # type: ignore[return-value]

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def subset(self, index: np.ndarray) -> "PixelDataset":
        return PixelDataset(self.ids[index], self.labels[index], self.pixels[index], self.class_names, self.name)

    def split(self, val_fraction: float, seed: int) -> tuple["PixelDataset", "PixelDataset"]:
        """Deterministic train/validation split (independent of the training shuffle)."""
        order = np.random.default_rng(seed).permutation(len(self))
        n_val = max(1, int(round(len(self) * val_fraction)))
        return self.subset(np.sort(order[n_val:])), self.subset(np.sort(order[:n_val]))


def load_dataset(name: str) -> PixelDataset:
    if name == "digits":
        from pitdist.data.digits import load_digits_dataset

        return load_digits_dataset()
    raise ValueError(f"data.dataset = {name!r}: only 'digits' is available in this version")
