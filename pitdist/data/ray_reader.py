"""Reading a pitdist dataset with Ray Data (the cluster path; local runs memory-map the shards instead).

``ray_dataset`` validates the directory on the driver (manifest, checksums, schema, labels: the same
checks as a local run), then builds a Ray Dataset whose read tasks each memory-map one shard on a Ray
worker (Ray has no Arrow IPC reader, so the shard paths are the source and a map step reads them).
``iter_pixel_batches`` turns ``iter_batches(batch_format="pyarrow")`` into uint8 [b, H, W, C] numpy
arrays plus ids and labels by viewing the fixed_size_binary buffer: no per-row Python. (numpy batches
would hold fixed_size_binary as an object array of bytes, and ``iter_torch_batches`` rejects it.)

What training streams is built per epoch in pitdist.data.ray_epochs (Arrow shards in slices, Parquet
row groups decoded by Ray Data tasks, in-memory datasets from the object store); it reads shards with
the same ``open_shard`` and yields batches through ``iter_pixel_batches``.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pyarrow as pa

from pitdist.data.arrow import (
    open_arrow_dataset,
    open_shard,
    table_to_numpy,
)


def _read_shards(batch: pa.Table) -> pa.Table:
    """Map step: the rows of the shard files named in ``batch['path']`` (checksums were verified on the driver)."""
    tables = [open_shard(Path(p), checksum=False)[0] for p in batch.column("path").to_pylist()]
    return pa.concat_tables(tables) if len(tables) > 1 else tables[0]


def ray_dataset(path: str | os.PathLike, *, preserve_order: bool = True):
    """(ray.data.Dataset of id/label/pixels rows, image shape (H, W, C), class names) for a dataset directory."""
    import ray

    ds = open_arrow_dataset(path)  # raises DataError before Ray does anything
    files = [str(ds.path / s["file"]) for s in ds.manifest["shards"]]
    if preserve_order:  # a deterministic order makes an epoch reproducible and a resume exact
        ray.data.DataContext.get_current().execution_options.preserve_order = True
    items = ray.data.from_items([{"path": f} for f in files], override_num_blocks=len(files))
    rows = items.map_batches(_read_shards, batch_size=1, batch_format="pyarrow", zero_copy_batch=True)
    return rows, ds.shape, ds.class_names


def iter_pixel_batches(
    source, shape: tuple[int, int, int], batch_size: int, **iter_kwargs
) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """(pixels uint8 [b, H, W, C], ids int64 [b], labels int64 [b]) from a ray.data Dataset or DataIterator."""
    for batch in source.iter_batches(batch_size=batch_size, batch_format="pyarrow", **iter_kwargs):
        yield table_to_numpy(batch, shape)
