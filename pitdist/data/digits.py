"""scikit-learn's bundled handwritten digits: 1,797 grey 8x8 images, no download needed."""

from __future__ import annotations

import numpy as np

from pitdist.data.dataset import PixelDataset


def load_digits_dataset() -> PixelDataset:
    from sklearn.datasets import load_digits

    bunch = load_digits()
    # The source values are 0..16; stretch them to the 0..255 of every other uint8 image source.
    pixels = np.rint(bunch.images * (255.0 / 16.0)).astype(np.uint8)[..., None]  # [n, 8, 8, 1]
    return PixelDataset(
        ids=np.arange(len(pixels), dtype=np.int64),
        labels=bunch.target.astype(np.int64),
        pixels=pixels,
        class_names=[str(c) for c in bunch.target_names],
        name="digits",
    )
