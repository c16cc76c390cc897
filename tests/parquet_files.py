"""Parquet files of encoded images as users have them, written for the tests: by Hugging Face `datasets`
(to_parquet, with its Image and ClassLabel features) or plainly with pyarrow."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image


def png(pixels: np.ndarray) -> bytes:
    out = io.BytesIO()
    Image.fromarray(pixels[..., 0] if pixels.shape[-1] == 1 else pixels).save(out, format="PNG")
    return out.getvalue()


def write_hf_parquet(path, pixels: np.ndarray, labels: np.ndarray, names: list[str]) -> None:
    """What `datasets.Dataset.to_parquet` writes for an Image and a ClassLabel feature."""
    import datasets

    features = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=names)})
    images = [Image.fromarray(p[..., 0]) for p in pixels]
    datasets.Dataset.from_dict({"image": images, "label": labels.tolist()}, features=features).to_parquet(str(path))


def write_plain_parquet(path, cells: list, labels: list, label_type: pa.DataType | None = None) -> None:
    """Encoded bytes in a struct<bytes, path> column without Hugging Face metadata."""
    image = pa.array(
        [{"bytes": c, "path": None} for c in cells], pa.struct([("bytes", pa.binary()), ("path", pa.string())])
    )
    pq.write_table(pa.table({"image": image, "label": pa.array(labels, label_type or pa.int64())}), str(path))


def write_digits_parquet(root: Path, split: int = 1000) -> Path:
    """scikit-learn's 1,797 digits as PNGs in two files written by `datasets` (split and 1,797 - split rows;
    one row group each), so the ids are the digits' own."""
    from pitdist.data.digits import load_digits_dataset

    d = load_digits_dataset()
    root.mkdir(parents=True, exist_ok=True)
    pixels, labels = np.asarray(d.pixels), d.labels
    write_hf_parquet(root / "train-00000.parquet", pixels[:split], labels[:split], d.class_names)
    write_hf_parquet(root / "train-00001.parquet", pixels[split:], labels[split:], d.class_names)
    return root
