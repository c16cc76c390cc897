"""The pitdist pixel dataset on disk: Arrow IPC shards plus a manifest, written atomically, read memory-mapped.

A dataset is a directory:

  manifest.json        format + version, image shape, class names, and per shard: file, rows, bytes, sha256
  shard-00000.arrow    Arrow IPC *file* format, uncompressed, columns
                         id     int64                 stable image id (unique in the dataset)
                         label  int64                 index into the class names
                         pixels fixed_size_binary(H*W*C)  the raw uint8 image, H x W x C row-major
                       schema metadata: pitdist.format_version, .height, .width, .channels, .class_names (JSON)

Images may be rectangular: height and width are kept apart in the manifest, the metadata and every
view, and a shape is written H x W x C (rows, then columns, then channels), as numpy indexes it.

Why Arrow IPC rather than Parquet: an uncompressed IPC file memory-maps with zero copies, so the pixel
column of a record batch *is* a numpy array [n, H, W, C] over the page cache (np.frombuffer on its data
buffer); Parquet always decodes into fresh memory (about 1M 28x28 images/s here against millions for
IPC). The price is size on disk (no compression), which raw uint8 pixels barely lose anyway.

Loading checks every shard against the manifest (size, sha256 of the bytes), its schema and metadata,
row counts, nulls, label range and id uniqueness, and raises DataError naming the file (and row) at
fault: a bad dataset stops a run before its first step.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa

from pitdist.config import ConfigError

FORMAT_NAME = "pitdist-pixels"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
META_KEYS = ("format_version", "height", "width", "channels", "class_names")
_PREFIX = "pitdist."


class DataError(ConfigError):
    """A dataset is missing, corrupt or inconsistent. The message names the file (and row) at fault."""


def arrow_schema(shape: tuple[int, int, int], class_names: list[str], source: str = "") -> pa.Schema:
    h, w, c = shape
    meta = {
        "format_version": str(FORMAT_VERSION),
        "height": str(h),
        "width": str(w),
        "channels": str(c),
        "class_names": json.dumps(list(class_names)),
        "source": source,
    }
    return pa.schema(
        [("id", pa.int64()), ("label", pa.int64()), ("pixels", pa.binary(h * w * c))],
        metadata={f"{_PREFIX}{k}": v for k, v in meta.items()},
    )


def pixel_batch(ids: np.ndarray, labels: np.ndarray, pixels: np.ndarray, schema: pa.Schema) -> pa.RecordBatch:
    """A record batch of images (uint8 [k, H, W, C]) whose pixel column wraps their bytes without a copy."""
    pixels = np.ascontiguousarray(pixels)
    column = pa.FixedSizeBinaryArray.from_buffers(
        schema.field("pixels").type, len(pixels), [None, pa.py_buffer(pixels.reshape(-1))]
    )
    return pa.record_batch([pa.array(ids, pa.int64()), pa.array(labels, pa.int64()), column], schema=schema)


def is_arrow_dataset(path: str | os.PathLike) -> bool:
    return (Path(path) / MANIFEST).is_file()


def sha256_file(path: Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


# --- writing --------------------------------------------------------------------------------------------


class DatasetWriter:
    """Writes shards of ``rows_per_shard`` rows into a hidden temporary directory beside ``out``; ``close()``
    writes the manifest and renames the directory to ``out``. Used as a context manager, an exception
    (or a killed process) leaves no directory at ``out`` and nothing with a manifest: nothing that loads."""

    def __init__(
        self,
        out: str | os.PathLike,
        shape: tuple[int, int, int],
        class_names: list[str],
        rows_per_shard: int,
        source: str = "",
        overwrite: bool = False,
    ):
        self.out = Path(out).absolute()
        if self.out.exists() and not overwrite:
            raise DataError(f"{self.out} already exists; choose another --out or pass --overwrite")
        if rows_per_shard < 1:
            raise DataError(f"rows per shard must be >= 1, got {rows_per_shard}")
        self.shape, self.class_names, self.rows_per_shard = tuple(shape), list(class_names), rows_per_shard
        self.overwrite = overwrite
        self.schema = arrow_schema(self.shape, self.class_names, source)
        self.tmp = self.out.parent / f".{self.out.name}.partial-{os.getpid()}"
        if self.tmp.exists():
            shutil.rmtree(self.tmp)
        self.tmp.mkdir(parents=True)
        self.shards: list[dict] = []
        self._writer: pa.ipc.RecordBatchFileWriter | None = None
        self._rows_in_shard = 0
        self.num_rows = 0

    def _open_shard(self) -> None:
        name = f"shard-{len(self.shards):05d}.arrow"
        self._path = self.tmp / (name + ".partial")
        self._writer = pa.ipc.new_file(str(self._path), self.schema)
        self._rows_in_shard = 0

    def _close_shard(self) -> None:
        self._writer.close()
        final = self._path.with_suffix("")  # drop ".partial": the shard is complete
        os.replace(self._path, final)
        self.shards.append(
            {
                "file": final.name,
                "rows": self._rows_in_shard,
                "bytes": final.stat().st_size,
                "sha256": sha256_file(final),
            }
        )
        self._writer = None

    def write(self, labels: np.ndarray, pixels: np.ndarray, ids: np.ndarray | None = None) -> None:
        """Append images: pixels uint8 [k, H, W, C], labels [k]; ids default to the running row number."""
        pixels = np.ascontiguousarray(pixels)
        if pixels.dtype != np.uint8 or pixels.shape[1:] != self.shape:
            raise DataError(
                f"images of dtype {pixels.dtype} and shape {pixels.shape[1:]} do not match the dataset's "
                f"uint8 {self.shape} (H, W, C)"
            )
        labels = np.asarray(labels, dtype=np.int64)
        ids = (
            np.arange(self.num_rows, self.num_rows + len(labels), dtype=np.int64)
            if ids is None
            else np.asarray(ids, np.int64)
        )
        start = 0
        while start < len(labels):
            if self._writer is None:
                self._open_shard()
            take = min(len(labels) - start, self.rows_per_shard - self._rows_in_shard)
            part = slice(start, start + take)
            self._writer.write_batch(pixel_batch(ids[part], labels[part], pixels[part], self.schema))
            self._rows_in_shard += take
            self.num_rows += take
            start += take
            if self._rows_in_shard == self.rows_per_shard:
                self._close_shard()

    def close(self) -> Path:
        if self._writer is not None:
            self._close_shard()
        if self.num_rows == 0:
            raise DataError("the source has no images; nothing written")
        h, w, c = self.shape
        manifest = {
            "format": FORMAT_NAME,
            "format_version": FORMAT_VERSION,
            "height": h,
            "width": w,
            "channels": c,
            "class_names": self.class_names,
            "num_rows": self.num_rows,
            "shards": self.shards,
        }
        (self.tmp / MANIFEST).write_text(json.dumps(manifest, indent=1))
        if self.out.exists():  # overwrite: only now that the new dataset is complete
            shutil.rmtree(self.out)
        os.rename(self.tmp, self.out)
        return self.out

    def abort(self) -> None:
        if self._writer is not None:
            self._writer.close()
        shutil.rmtree(self.tmp, ignore_errors=True)

    def __enter__(self) -> DatasetWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None:
            self.abort()


# --- reading --------------------------------------------------------------------------------------------


def pixel_view(column: pa.Array, shape: tuple[int, int, int]) -> np.ndarray:
    """Zero-copy uint8 [n, H, W, C] view of one fixed_size_binary array (no per-row Python)."""
    width = column.type.byte_width
    data = column.buffers()[1]
    return np.frombuffer(data, np.uint8, count=len(column) * width, offset=column.offset * width).reshape(
        len(column), *shape
    )


def table_to_numpy(
    table: pa.Table | pa.RecordBatch, shape: tuple[int, int, int]
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(pixels uint8 [b, H, W, C], ids int64 [b], labels int64 [b]) from an Arrow batch; zero-copy for the
    pixels when the column is one chunk."""
    col = table.column("pixels")
    if isinstance(col, pa.ChunkedArray):
        col = col.chunk(0) if col.num_chunks == 1 else col.combine_chunks()
    ids = table.column("id").to_numpy()
    labels = table.column("label").to_numpy()
    return pixel_view(col, shape), np.asarray(ids, np.int64), np.asarray(labels, np.int64)


class ShardedPixels:
    """Rows of several memory-mapped record batches, indexed like one uint8 array [n, H, W, C].

    ``views`` are the zero-copy numpy arrays over the mapped files. Indexing with integers or an index
    array gathers just those rows into a new array; ``select`` makes a subset without copying pixels,
    so a train/validation split keeps the dataset on disk."""

    ndim = 4
    dtype = np.dtype(np.uint8)

    def __init__(self, views: list[np.ndarray], rows: np.ndarray | None = None):
        self.views = views
        self._starts = np.cumsum([0] + [len(v) for v in views])
        self.rows = rows  # None: every row in order; else global row numbers into the concatenation

    def __len__(self) -> int:
        return int(self._starts[-1]) if self.rows is None else len(self.rows)

    @property
    def shape(self) -> tuple[int, ...]:
        return (len(self), *self.views[0].shape[1:])

    def _global(self, key) -> np.ndarray:
        if isinstance(key, slice):
            idx = np.arange(len(self))[key]
        else:
            idx = np.asarray(key)
            if idx.dtype == bool:
                idx = np.flatnonzero(idx)
            idx = np.where(idx < 0, idx + len(self), idx).astype(np.int64)
            if idx.size and (idx.min() < 0 or idx.max() >= len(self)):
                raise IndexError(f"index out of range for {len(self)} images")
        return idx if self.rows is None else self.rows[idx]

    def select(self, key) -> ShardedPixels:
        return ShardedPixels(self.views, self._global(key))

    def __getitem__(self, key) -> np.ndarray:
        if isinstance(key, (int, np.integer)):
            return self[np.array([key])][0]
        rows = self._global(key)
        if len(self.views) == 1:
            return self.views[0][rows]
        out = np.empty((len(rows), *self.views[0].shape[1:]), np.uint8)
        chunk = np.searchsorted(self._starts, rows, side="right") - 1
        for c in np.unique(chunk):
            mask = chunk == c
            out[mask] = self.views[c][rows[mask] - self._starts[c]]
        return out

    def __array__(self, dtype=None, copy=None) -> np.ndarray:
        arr = self[np.arange(len(self))]
        return arr if dtype is None else arr.astype(dtype)


@dataclass
class ArrowDataset:
    path: Path
    shape: tuple[int, int, int]
    class_names: list[str]
    ids: np.ndarray
    labels: np.ndarray
    pixels: ShardedPixels
    manifest: dict
    tables: list[pa.Table] = field(default_factory=list)  # keep the mapped tables (and their mmaps) alive


def _meta(schema: pa.Schema, file: Path) -> dict[str, str]:
    raw = {k.decode(): v.decode() for k, v in (schema.metadata or {}).items()}
    missing = [k for k in META_KEYS if _PREFIX + k not in raw]
    if missing:
        raise DataError(
            f"{file}: schema metadata lacks {', '.join(_PREFIX + k for k in missing)}; "
            "not written by `pitdist data convert` (re-convert the source)"
        )
    return {k: raw[_PREFIX + k] for k in META_KEYS}


def read_manifest(path: str | os.PathLike) -> dict:
    root = Path(path)
    file = root / MANIFEST
    if not root.is_dir():
        raise DataError(
            f"data.dataset = '{path}': no such directory; use 'digits', synthetic:HxWxC[:COUNT] "
            "or a directory written by `pitdist data convert`"
        )
    if not file.is_file():
        raise DataError(
            f"{root}: no {MANIFEST}; not a pitdist dataset, or its conversion did not finish "
            "(run `pitdist data convert` again)"
        )
    try:
        manifest = json.loads(file.read_text())
        shards = manifest["shards"]
        ok = manifest.get("format") == FORMAT_NAME and isinstance(shards, list)
    except (ValueError, KeyError, TypeError) as exc:
        raise DataError(f"{file}: unreadable manifest ({exc})") from None
    if not ok:
        raise DataError(f"{file}: not a {FORMAT_NAME} manifest")
    if manifest.get("format_version") != FORMAT_VERSION:
        raise DataError(
            f"{file}: format version {manifest.get('format_version')!r}; this pitdist reads "
            f"version {FORMAT_VERSION} (re-convert the source)"
        )
    return manifest


def verify_shard_bytes(file: Path, entry: dict) -> None:
    if not file.is_file():
        raise DataError(f"{file}: shard listed in the manifest is missing")
    size = file.stat().st_size
    if size != entry["bytes"]:
        raise DataError(f"{file}: {size} bytes but the manifest says {entry['bytes']} (truncated or replaced shard)")
    digest = sha256_file(file)
    if digest != entry["sha256"]:
        raise DataError(
            f"{file}: sha256 {digest[:16]}... does not match the manifest's {entry['sha256'][:16]}... "
            "(corrupt shard; re-convert the source)"
        )


def open_shard(file: Path, entry: dict | None = None, checksum: bool = True) -> tuple[pa.Table, dict]:
    """Memory-map one shard after checking it against its manifest entry; returns (table, metadata)."""
    if entry is not None and checksum:
        verify_shard_bytes(file, entry)
    try:
        table = pa.ipc.open_file(pa.memory_map(str(file), "r")).read_all()
    except (pa.ArrowInvalid, OSError) as exc:
        raise DataError(f"{file}: not a readable Arrow IPC file ({exc})") from None
    meta = _meta(table.schema, file)
    try:
        shape = (int(meta["height"]), int(meta["width"]), int(meta["channels"]))
        class_names = json.loads(meta["class_names"])
        version = int(meta["format_version"])
    except ValueError as exc:
        raise DataError(f"{file}: bad schema metadata ({exc})") from None
    if version != FORMAT_VERSION:
        raise DataError(f"{file}: format version {version}; this pitdist reads version {FORMAT_VERSION}")
    if not isinstance(class_names, list) or not class_names:
        raise DataError(f"{file}: metadata {_PREFIX}class_names must be a non-empty JSON list")
    names = table.schema.names
    for col, ok in (
        ("id", pa.types.is_integer),
        ("label", pa.types.is_integer),
        ("pixels", pa.types.is_fixed_size_binary),
    ):
        if col not in names:
            raise DataError(f"{file}: no column '{col}' (columns: {names})")
        if not ok(table.schema.field(col).type):
            raise DataError(f"{file}: column '{col}' has type {table.schema.field(col).type}")
    width = table.schema.field("pixels").type.byte_width
    if width != int(np.prod(shape)):
        raise DataError(
            f"{file}: pixels are {width} bytes per image but the metadata says "
            f"{shape[0]}x{shape[1]}x{shape[2]} = {int(np.prod(shape))}"
        )
    for col in ("id", "label", "pixels"):
        if table.column(col).null_count:
            raise DataError(f"{file}: column '{col}' has {table.column(col).null_count} null values")
    if entry is not None and table.num_rows != entry["rows"]:
        raise DataError(f"{file}: {table.num_rows} rows but the manifest says {entry['rows']}")
    return table, {"shape": shape, "class_names": class_names}


def open_arrow_dataset(path: str | os.PathLike, checksum: bool = True) -> ArrowDataset:
    """Validate and memory-map a dataset directory (see the module docstring for what is checked)."""
    root = Path(path).absolute()
    manifest = read_manifest(root)
    if not manifest["shards"] or manifest.get("num_rows", 0) == 0:
        raise DataError(f"{root}: the dataset is empty (0 images)")
    tables, views, ids, labels = [], [], [], []
    shape = class_names = None
    for entry in manifest["shards"]:
        file = root / entry["file"]
        table, meta = open_shard(file, entry, checksum)
        if shape is None:
            shape, class_names = meta["shape"], meta["class_names"]
        elif (meta["shape"], meta["class_names"]) != (shape, class_names):
            raise DataError(f"{file}: image shape {meta['shape']} / classes differ from the first shard's {shape}")
        lab = np.asarray(table.column("label").to_numpy(), np.int64)
        bad = np.flatnonzero((lab < 0) | (lab >= len(class_names)))
        if bad.size:
            row = int(bad[0])
            raise DataError(
                f"{file}: row {row} (id {table.column('id')[row].as_py()}): label {lab[row]} is outside "
                f"the {len(class_names)} classes [0, {len(class_names)}) ({bad.size} such rows)"
            )
        for chunk in table.column("pixels").chunks:
            if len(chunk):
                views.append(pixel_view(chunk, shape))
        tables.append(table)
        ids.append(np.asarray(table.column("id").to_numpy(), np.int64))
        labels.append(lab)
    listed = (manifest.get("height"), manifest.get("width"), manifest.get("channels"))
    if shape != listed:  # H and W swapped keeps the byte width: only this comparison catches it
        raise DataError(
            f"{root / MANIFEST}: image shape {'x'.join(map(str, listed))} (HxWxC) differs from the shards' "
            f"{'x'.join(map(str, shape))}; re-convert the source"
        )
    all_ids = np.concatenate(ids)
    if len(all_ids) == 0:
        raise DataError(f"{root}: the dataset is empty (0 images)")
    uniq, counts = np.unique(all_ids, return_counts=True)
    if len(uniq) != len(all_ids):
        raise DataError(f"{root}: image id {int(uniq[counts > 1][0])} occurs more than once; ids must be unique")
    return ArrowDataset(
        root, shape, class_names, all_ids, np.concatenate(labels), ShardedPixels(views), manifest, tables
    )


def iter_chunks(labels: np.ndarray, pixels: np.ndarray, chunk: int) -> Iterable[tuple[np.ndarray, np.ndarray]]:
    for start in range(0, len(labels), chunk):
        yield labels[start : start + chunk], pixels[start : start + chunk]
