"""A new seeded order and new DP shares every epoch on the Ray Data path, reproducible from (seed, epoch).

Handing Ray Train one Dataset splits it once (``streaming_split(equal=True)``) and replays that split
every epoch: the same blocks reach the same worker in the same order, so each DP group trains on the
same share every epoch and only the local shuffle buffer varies. pitdist builds each epoch's Dataset
itself instead (``EpochPlan.dataset``): the read units (Parquet row groups; slices of ``data.block_rows``
rows of Arrow shards or of an in-memory table) in a permutation seeded with ``(train.seed, epoch)``,
read and decoded by Ray Data tasks as before, filtered to the training split. Rank 0 splits it into
one equal stream per worker and hands the streams to the others through Ray Train's
``broadcast_from_rank_zero`` (Ray's control plane, a few hundred bytes: an object ref; no torch
collective, nothing for the ledger) - ``EpochStreams``. Each worker's local shuffle buffer, reseeded
with seed + epoch (pitdist.train.batches), then mixes rows across the blocks it receives.

Permuting the inputs rather than the blocks keeps an epoch streaming: ``randomize_block_order`` and
``random_shuffle`` are all-to-all operators that hold every block of the epoch (here: decoded pixels)
before the first batch, and their per-execution reseeding (``RandomSeedConfig``) counts executions
from 0 in every new process, which a resumed run cannot line up with its epoch. Here the epoch is an
argument: a restored worker group re-creates epoch e's Dataset (the same units in the same order;
``preserve_order`` makes the split deterministic) and skips the batches it had trained on. Every
epoch is one execution split into equal streams, so every row is read once per epoch, but the up to
Q P - 1 rows the equal split cannot share (reported in ``dropped_per_epoch``), and those now differ
from epoch to epoch.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa

from pitdist.data.arrow import arrow_schema, is_arrow_dataset, open_arrow_dataset, open_shard, pixel_batch
from pitdist.data.dataset import PixelDataset


@dataclass
class EpochPlan:
    """How to build any epoch's Dataset of the training split (picklable: it travels to the workers)."""

    units: list  # dicts a read task turns into rows, or Arrow tables of the rows (``reader`` None)
    reader: object  # map_batches function over a batch of unit dicts, or None
    reader_kwargs: dict
    keep_ids: pa.Array | None  # the training split's ids; None = every row
    seed: int
    shuffle: bool
    workers: int | None = None  # read tasks at a time (None: as many as the cluster's CPUs allow)

    def order(self, epoch: int) -> np.ndarray:
        """The units' order in ``epoch``: a permutation seeded with (seed, epoch), or as listed."""
        n = len(self.units)
        return np.random.default_rng([self.seed, epoch]).permutation(n) if self.shuffle else np.arange(n)

    def dataset(self, epoch: int):
        import ray

        quiet_data_context()
        units = [self.units[i] for i in self.order(epoch)]
        if self.reader is None:
            # from_blocks takes each block's metadata from the table itself; from_arrow(_refs) sends a
            # task per block for it, which never runs on a cluster whose CPUs the training workers hold
            # (one logical CPU per rank), as a Ray Train worker builds this dataset mid-run.
            rows = ray.data.from_blocks(units)
        else:
            rows = ray.data.from_items(units, override_num_blocks=len(units)).map_batches(
                self.reader,
                fn_kwargs=self.reader_kwargs,
                batch_size=1,
                batch_format="pyarrow",
                compute=ray.data.TaskPoolStrategy(size=self.workers),
            )
        if self.keep_ids is not None:
            rows = rows.map_batches(
                _keep_ids, fn_kwargs={"ids": self.keep_ids}, batch_format="pyarrow", zero_copy_batch=True
            )
        return rows


def quiet_data_context() -> None:
    """A deterministic order (exact epochs and resumes), and none of Ray Data's per-epoch bars and
    banners, which would drown pitdist's progress bar."""
    import ray

    context = ray.data.DataContext.get_current()
    context.execution_options.preserve_order = True
    context.enable_progress_bars = context.print_on_execution_start = False


def _keep_ids(batch: pa.Table, ids: pa.Array) -> pa.Table:
    import pyarrow.compute as pc

    return batch.filter(pc.is_in(batch.column("id"), value_set=ids))


def _read_slices(batch: pa.Table) -> pa.Table:
    """Map step: rows ``offset .. offset + rows`` of the shard files in ``batch`` (memory-mapped; the
    checksums were verified on the driver)."""
    tables = [open_shard(Path(u["path"]), checksum=False)[0].slice(u["offset"], u["rows"]) for u in batch.to_pylist()]
    return pa.concat_tables(tables) if len(tables) > 1 else tables[0]


def _decode_row_groups(batch: pa.Table, images, bad_rows: str) -> pa.Table:
    """Map step: the decoded rows of the Parquet row groups in ``batch`` (fields of RowGroup)."""
    from pitdist.data.parquet_pixels import RowGroup, decode_row_group

    decoded = [decode_row_group(images, RowGroup(**g), bad_rows)[0] for g in batch.to_pylist()]
    return pa.Table.from_batches(decoded, schema=images.schema())


def epoch_plan(train: PixelDataset, source: str, *, seed: int, shuffle: bool, block_rows: int, bad_rows: str = "fail"):
    """(EpochPlan, row count) of the training split ``train`` of dataset ``source``.

    Parquet streams from its row groups and an Arrow directory from slices of its shards, both read on
    the cluster and filtered to the split's ids; anything else (digits, synthetic) is in memory already
    (every worker loads it too) and travels with the plan, in slices.
    """
    import dataclasses

    from pitdist.data.parquet_pixels import ParquetPixels

    if isinstance(train.pixels, ParquetPixels):
        units = [dataclasses.asdict(g) for g in train.pixels.groups]
        kwargs = {"images": train.pixels.images, "bad_rows": bad_rows}
        plan = EpochPlan(units, _decode_row_groups, kwargs, pa.array(train.ids), seed, shuffle)
    elif is_arrow_dataset(source):
        ds = open_arrow_dataset(source)  # validated (checksums, schema) here, on the driver
        units = [
            {"path": str(ds.path / s["file"]), "offset": offset, "rows": min(block_rows, s["rows"] - offset)}
            for s in ds.manifest["shards"]
            for offset in range(0, s["rows"], block_rows)
        ]
        plan = EpochPlan(units, _read_slices, {}, pa.array(train.ids), seed, shuffle)
    else:
        schema, pixels = arrow_schema(train.image_shape, train.class_names, source), np.asarray(train.pixels)
        tables = [  # own buffers, not slices of one table: each pickles alone
            pa.Table.from_batches([pixel_batch(train.ids[part], train.labels[part], pixels[part], schema)])
            for part in (slice(start, start + block_rows) for start in range(0, len(train), block_rows))
        ]
        plan = EpochPlan(tables, None, {}, None, seed, shuffle)
    return plan, len(train)


class EpochStreams:
    """This worker's stream of each epoch: ``streams(epoch)`` -> a Ray DataIterator (module docstring).

    Every worker calls it at the start of every epoch it trains (it is a barrier); rank 0 builds and
    splits the epoch and keeps the split alive until the next.
    """

    def __init__(self, plan: EpochPlan, world_size: int, rank: int):
        self.plan, self.world_size, self.rank = plan, world_size, rank
        self._held = None

    def __call__(self, epoch: int):
        import ray
        from ray.train.collective import broadcast_from_rank_zero

        ref = None
        if self.rank == 0:
            splits = self.plan.dataset(epoch).streaming_split(self.world_size, equal=True)
            self._held = ref = ray.put(splits)
        (ref,) = broadcast_from_rank_zero([ref] if self.rank == 0 else None)
        return ray.get(ref)[self.rank]
