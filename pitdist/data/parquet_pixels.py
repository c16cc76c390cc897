"""Training straight from Parquet files of encoded images: the pixels decoded where they are needed.

A Parquet dataset is never turned into raw pixels as a whole (ImageNet's would be 190 GB). What a run
keeps of it is the ids and labels (16 bytes an image, from the footers and the label column) and a
``ParquetPixels``: an array-like uint8 [n, H, W, C] that decodes the rows it is indexed with, reading
each Parquet row group they fall in (encoded bytes kept in a small LRU cache, so an evaluation pass
or a dataset that fits reads each row group once). It indexes like pitdist.data.arrow.ShardedPixels,
so the local loaders, the train/validation split and evaluation take it unchanged; on the Ray path
the training images never touch it and are decoded by Ray Data tasks (pitdist.data.ray_reader).

The unit of work everywhere is the row group (``RowGroup``): the local reader reads one at a time, a
Ray Data task decodes one, and the bad-row scan walks them in order. A bad row is found when its row
group is decoded. With ``data.bad_rows = "fail"`` nothing is scanned up front and the first bad row
read stops the run (DataError naming file and row). ``"skip"`` must know the bad rows before the first
step, because the epoch's length and every DP share depend on them: ``scan_bad_rows`` decodes the
whole dataset once (locally, or in Ray Data tasks on a cluster), and the ids of those rows are left
out of the dataset.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pitdist.config import DataConfig, parse_hwc
from pitdist.data.arrow import DataError, table_to_numpy
from pitdist.data.dataset import PixelDataset
from pitdist.data.parquet import BadRow, ParquetImages, decode_rows, open_parquet_images

CACHE_BYTES = 256 * 2**20  # encoded row groups kept per ParquetPixels (and its selections)


@dataclass(frozen=True)
class RowGroup:
    file: str
    index: int  # row group number within the file
    first_row: int  # its first row within the file
    rows: int
    first_id: int  # the dataset id of its first row

    def read(self, images: ParquetImages):
        """Its image and label columns, still encoded (a pyarrow Table)."""
        import pyarrow.parquet as pq

        columns = [images.image_column, images.label_column]
        return pq.ParquetFile(self.file).read_row_group(self.index, columns=columns)


def row_groups(images: ParquetImages) -> list[RowGroup]:
    """Every row group of every file, in id order (from the footers alone)."""
    import pyarrow.parquet as pq

    groups = []
    for file, first_id in zip(images.files, images.first_ids):
        meta, row = pq.ParquetFile(file).metadata, 0
        for i in range(meta.num_row_groups):
            n = meta.row_group(i).num_rows
            groups.append(RowGroup(file, i, row, n, first_id + row))
            row += n
    return groups


def decode_row_group(images: ParquetImages, group: RowGroup, bad_rows: str = "fail"):
    """(pitdist pixel batch, bad rows) of one row group: what a reader or Ray Data task does."""
    return decode_rows(images, group.read(images), group.file, group.first_row, bad_rows)


def scan_bad_rows(images: ParquetImages, groups: list[RowGroup] | None = None, progress: bool = False) -> list[BadRow]:
    """Decode every image once and return the rows that cannot become one (the ``skip`` policy's list)."""
    from tqdm import tqdm

    bad: list[BadRow] = []
    with tqdm(total=images.num_rows, unit="img", desc="checking images", disable=not progress) as bar:
        for group in groups or row_groups(images):
            bad.extend(decode_row_group(images, group, "skip")[1])
            bar.update(group.rows)
    return bad


class ParquetPixels:
    """uint8 images [n, H, W, C] of the Parquet rows ``ids``, decoded on indexing (module docstring).

    A bad row met while indexing raises DataError naming its file and row: with ``skip`` the caller
    has already left the scanned bad ids out of ``ids``.
    """

    ndim = 4
    dtype = np.dtype(np.uint8)

    def __init__(self, images: ParquetImages, ids: np.ndarray, groups: list[RowGroup] | None = None, cache=None):
        self.images, self.ids = images, np.asarray(ids, np.int64)
        self.groups = groups if groups is not None else row_groups(images)
        self._starts = np.array([g.first_id for g in self.groups], np.int64)
        self._cache = cache if cache is not None else _Cache(CACHE_BYTES)

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def shape(self) -> tuple[int, ...]:
        return (len(self), *self.images.shape)

    def select(self, key) -> ParquetPixels:
        return ParquetPixels(self.images, self.ids[key], self.groups, self._cache)

    def __getitem__(self, key) -> np.ndarray:
        if isinstance(key, (int, np.integer)):
            return self[np.array([key])][0]
        ids = self.ids[key]
        out = np.empty((len(ids), *self.images.shape), np.uint8)
        group_of = np.searchsorted(self._starts, ids, side="right") - 1
        for g in np.unique(group_of):
            where = np.flatnonzero(group_of == g)
            out[where] = self._decode(self.groups[g], ids[where] - self._starts[g])
        return out

    def _decode(self, group: RowGroup, rows: np.ndarray) -> np.ndarray:
        table = self._cache.get(group, lambda: group.read(self.images))
        batch, _ = decode_rows(self.images, table.take(rows), group.file, group.first_row + rows)
        return table_to_numpy(batch, self.images.shape)[0]

    def __array__(self, dtype=None, copy=None) -> np.ndarray:
        arr = self[np.arange(len(self))]
        return arr if dtype is None else arr.astype(dtype)


class _Cache:
    """Least-recently-used encoded row groups, up to a byte budget (shared by a dataset's selections)."""

    def __init__(self, budget: int):
        self.budget, self.used, self.tables = budget, 0, OrderedDict()

    def get(self, key: RowGroup, read):
        if key in self.tables:
            self.tables.move_to_end(key)
            return self.tables[key]
        table = read()
        self.tables[key] = table
        self.used += table.nbytes
        while self.used > self.budget and len(self.tables) > 1:
            _, old = self.tables.popitem(last=False)
            self.used -= old.nbytes
        return table


def parquet_dataset(path: str, options: DataConfig, progress: bool = False) -> PixelDataset:
    """The Parquet images at ``path`` as a PixelDataset whose pixels decode on indexing.

    Checked before anything trains: files, columns and types, the image shape (``data.image_shape`` or
    the first image), and every label (read alone, cheap). With ``data.bad_rows = skip`` every image is
    decoded once to find the bad rows (``known_bad_rows``: cached, so the ranks of a run do not repeat
    the driver's scan); their ids are left out and listed in ``PixelDataset.skipped``.
    """
    images = open_parquet_images(
        path,
        image_column=options.image_column,
        label_column=options.label_column,
        shape=parse_hwc(options.image_shape) if options.image_shape else None,
        resize=options.resize,
    )
    groups = row_groups(images)
    labels = _labels(images)
    skipped = known_bad_rows(images, groups, progress) if options.bad_rows == "skip" else []
    if not skipped:
        outside = np.flatnonzero((labels < 0) | (labels >= len(images.class_names)))
        if outside.size:  # a null label reads as -1
            group = groups[np.searchsorted([g.first_id for g in groups], outside[0], side="right") - 1]
            row = group.first_row + int(outside[0]) - group.first_id
            raise DataError(
                f"{group.file}: row {row} (id {outside[0]}): label {labels[outside[0]]} is outside the "
                f"{len(images.class_names)} classes (data.bad_rows = skip leaves such rows out)"
            )
    keep = np.ones(len(labels), bool)
    keep[[b.id for b in skipped]] = False
    ids = np.flatnonzero(keep).astype(np.int64)
    if not len(ids):
        raise DataError(f"{path}: every one of its {len(labels)} rows is a bad row, e.g. {skipped[0]}")
    pixels = ParquetPixels(images, ids, groups)
    return PixelDataset(ids, labels[keep], pixels, list(images.class_names), images.description, tuple(skipped))


def _labels(images: ParquetImages) -> np.ndarray:
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    columns = [pq.read_table(f, columns=[images.label_column]).column(0) for f in images.files]
    return np.concatenate([pc.fill_null(c, -1).to_numpy() for c in columns]).astype(np.int64)


def known_bad_rows(images: ParquetImages, groups: list[RowGroup], progress: bool = False) -> list[BadRow]:
    """``scan_bad_rows``, remembered in ~/.cache/pitdist (or $XDG_CACHE_HOME/pitdist) under a key of the
    files (path, size, modification time) and of how they decode, so a changed file is scanned again."""
    key = {
        "files": [(f, st.st_size, st.st_mtime_ns) for f, st in ((f, os.stat(f)) for f in images.files)],
        "decode": [images.shape, images.resize, images.image_column, images.label_column, len(images.class_names)],
    }
    digest = hashlib.sha256(json.dumps(key).encode()).hexdigest()[:24]
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "pitdist" / "parquet-scans"
    path = cache / f"{digest}.json"
    try:
        return [BadRow(**row) for row in json.loads(path.read_text())["bad_rows"]]
    except (OSError, ValueError, KeyError, TypeError):
        pass
    bad = scan_bad_rows(images, groups, progress)
    try:
        cache.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".tmp{os.getpid()}")
        tmp.write_text(json.dumps({"key": key, "bad_rows": [dataclasses.asdict(b) for b in bad]}))
        tmp.replace(path)  # atomic: a rank reading it never sees half a list
    except OSError:
        pass  # an unwritable cache only costs the next reader a scan
    return bad
