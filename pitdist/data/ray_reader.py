"""Reading a pitdist dataset with Ray Data (the cluster path; local runs memory-map the shards instead).

``ray_dataset`` validates the directory on the driver (manifest, checksums, schema, labels: the same
checks as a local run), then builds a Ray Dataset whose read tasks each memory-map one shard on a Ray
worker (Ray has no Arrow IPC reader, so the shard paths are the source and a map step reads them).
``iter_pixel_batches`` turns ``iter_batches(batch_format="pyarrow")`` into uint8 [b, H, W, C] numpy
arrays plus ids and labels by viewing the fixed_size_binary buffer: no per-row Python. (numpy batches
would hold fixed_size_binary as an object array of bytes, and ``iter_torch_batches`` rejects it.)

``parquet_rows`` does the same for Parquet files of encoded images: one read task per row group,
which decodes it on a Ray worker (``map_batches`` on the cluster's CPUs) into the same id/label/pixels
rows, so nothing downstream knows the difference.

``training_rows`` is what the Ray launcher hands to Ray Train: the training split of any pitdist
dataset (Arrow shards and Parquet streamed, the bundled digits and synthetic images from memory).
Ray Train splits it between the workers and pitdist.train.batches.StreamedBatches gathers each SP
group's share.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pyarrow as pa

from pitdist.data.arrow import (
    arrow_schema,
    is_arrow_dataset,
    open_arrow_dataset,
    open_shard,
    pixel_batch,
    table_to_numpy,
)
from pitdist.data.dataset import PixelDataset


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


def _decode_row_groups(batch: pa.Table, images, bad_rows: str) -> pa.Table:
    """Map step: the decoded rows of the row groups named in ``batch`` (fields of RowGroup)."""
    from pitdist.data.parquet_pixels import RowGroup, decode_row_group

    decoded = [decode_row_group(images, RowGroup(**g), bad_rows)[0] for g in batch.to_pylist()]
    return pa.Table.from_batches(decoded, schema=images.schema())


def parquet_rows(pixels, bad_rows: str = "fail", workers: int | None = None):
    """ray.data.Dataset of id/label/pixels rows decoded from the row groups of ``pixels`` (a ParquetPixels),
    by at most ``workers`` concurrent tasks (None: as many as the cluster's CPUs allow).

    Under ``skip`` the decode drops the bad rows the driver's scan found (the same ones: decoding is
    deterministic); under ``fail`` a bad row fails its task with the DataError naming file and row.
    """
    import dataclasses

    import ray

    ray.data.DataContext.get_current().execution_options.preserve_order = True
    groups = [dataclasses.asdict(g) for g in pixels.groups]
    items = ray.data.from_items(groups, override_num_blocks=len(groups))
    return items.map_batches(
        _decode_row_groups,
        fn_kwargs={"images": pixels.images, "bad_rows": bad_rows},
        batch_size=1,
        batch_format="pyarrow",
        compute=ray.data.TaskPoolStrategy(size=workers),
    )


def _keep_ids(batch: pa.Table, ids: pa.Array) -> pa.Table:
    import pyarrow.compute as pc

    return batch.filter(pc.is_in(batch.column("id"), value_set=ids))


def training_rows(train: PixelDataset, source: str, bad_rows: str = "fail"):
    """(ray.data.Dataset, row count) of the training split ``train`` of dataset ``source``.

    A dataset directory streams from its shards and Parquet files from their row groups (read on the
    cluster, filtered to the split's ids); anything else (digits, synthetic) is already in the driver's
    memory and goes in as one Arrow table.
    """
    import ray

    from pitdist.data.parquet_pixels import ParquetPixels

    # pitdist shows its own progress bar; Ray Data's per-epoch bars and banners would drown it.
    context = ray.data.DataContext.get_current()
    context.enable_progress_bars = context.print_on_execution_start = False
    if is_arrow_dataset(source) or isinstance(train.pixels, ParquetPixels):
        if isinstance(train.pixels, ParquetPixels):
            rows = parquet_rows(train.pixels, bad_rows)
        else:
            rows, _, _ = ray_dataset(source)
        rows = rows.map_batches(
            _keep_ids, fn_kwargs={"ids": pa.array(train.ids)}, batch_format="pyarrow", zero_copy_batch=True
        )
    else:
        ray.data.DataContext.get_current().execution_options.preserve_order = True
        schema = arrow_schema(train.image_shape, train.class_names, source)
        rows = ray.data.from_arrow(
            pa.Table.from_batches([pixel_batch(train.ids, train.labels, np.asarray(train.pixels), schema)])
        )
    return rows, len(train)


def iter_pixel_batches(
    source, shape: tuple[int, int, int], batch_size: int, **iter_kwargs
) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """(pixels uint8 [b, H, W, C], ids int64 [b], labels int64 [b]) from a ray.data Dataset or DataIterator."""
    for batch in source.iter_batches(batch_size=batch_size, batch_format="pyarrow", **iter_kwargs):
        yield table_to_numpy(batch, shape)
