"""Image datasets as users keep them: Parquet files whose image column holds encoded PNG/JPEG bytes.

The layout is the one Hugging Face ``datasets`` writes with ``to_parquet`` (and the Hub serves): an image
column, default ``image``, of struct<bytes: binary, path: string> (plain binary is accepted too), and an
integer label column, default ``label``. Class names come from the ClassLabel feature in the schema's
``huggingface`` metadata, else they are 0 .. max(label).

An image's id is its position in the sorted file list (file by file, row by row), so it is stable
while the files are, and the same whether the images are decoded here or by Ray Data tasks on a
cluster. ``open_parquet_images`` checks what it can on the driver without decoding: files readable,
columns present and typed, row counts (from the footers), class names, the image shape (given, or
from the first image). ``decode_rows`` turns one Arrow batch of encoded rows into a pitdist pixel
batch (id, label, fixed_size_binary pixels), the shape the rest of pitdist reads.

A row that cannot become an H x W x C image (undecodable bytes, a null, a label outside the classes,
another size when resizing is off) is a bad row. ``bad_rows = "fail"`` raises DataError naming the
file and row; ``"skip"`` leaves it out and reports it, so a run can count what it did not train on.
"""

from __future__ import annotations

import glob
import io
import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa

from pitdist.data.arrow import DataError, arrow_schema, pixel_batch

IMAGE_COLUMN = "image"  # Hugging Face's defaults (datasets.Image / datasets.ClassLabel features)
LABEL_COLUMN = "label"
BAD_ROW_POLICIES = ("fail", "skip")


@dataclass(frozen=True)
class BadRow:
    file: str
    row: int  # row number within the file
    id: int
    reason: str

    def __str__(self) -> str:
        return f"{self.file}: row {self.row} (id {self.id}): {self.reason}"


@dataclass(frozen=True)
class ParquetImages:
    """A validated set of Parquet image files: what every reader (local or Ray Data task) decodes with."""

    files: tuple[str, ...]
    rows: tuple[int, ...]  # per file, from its footer
    shape: tuple[int, int, int]  # H, W, C every image becomes
    class_names: tuple[str, ...]
    image_column: str = IMAGE_COLUMN
    label_column: str = LABEL_COLUMN
    resize: bool = False  # False: an image of another size is a bad row; True: resized (bilinear)

    @property
    def num_rows(self) -> int:
        return sum(self.rows)

    @property
    def first_ids(self) -> tuple[int, ...]:
        """The id of each file's first row."""
        return tuple(int(s) for s in np.cumsum((0, *self.rows[:-1])))

    def schema(self) -> pa.Schema:
        return arrow_schema(self.shape, list(self.class_names), source=f"parquet {self.description}")

    @property
    def description(self) -> str:
        return self.files[0] if len(self.files) == 1 else f"{Path(self.files[0]).parent} ({len(self.files)} files)"


def is_parquet_source(path: str | os.PathLike) -> bool:
    """A .parquet file, a glob, or a directory holding .parquet files (and no pitdist manifest)."""
    text = str(path)
    if glob.has_magic(text):
        return True
    p = Path(text)
    return (p.is_file() and p.suffix == ".parquet") or (p.is_dir() and any(p.rglob("*.parquet")))


def list_parquet_files(path: str | os.PathLike) -> list[str]:
    """The Parquet files ``path`` names, sorted: a file, a directory (searched recursively) or a glob."""
    text = str(path)
    if glob.has_magic(text):
        files = sorted(f for f in glob.glob(text, recursive=True) if Path(f).is_file())
    elif Path(text).is_dir():
        files = sorted(str(f) for f in Path(text).rglob("*.parquet") if f.is_file())
    elif Path(text).is_file():
        files = [text]
    else:
        raise DataError(f"{text}: no such file or directory (give a .parquet file, a directory of them or a glob)")
    if not files:
        raise DataError(f"{text}: no Parquet files found (looked for *.parquet)")
    return [str(Path(f).absolute()) for f in files]


def open_parquet_images(
    path: str | os.PathLike,
    *,
    image_column: str | None = None,
    label_column: str | None = None,
    shape: tuple[int, int, int] | None = None,
    resize: bool = False,
) -> ParquetImages:
    """Validate the Parquet files at ``path`` (module docstring) and say how their images decode."""
    import pyarrow.parquet as pq

    image_column, label_column = image_column or IMAGE_COLUMN, label_column or LABEL_COLUMN
    files, rows, schemas = list_parquet_files(path), [], []
    for file in files:
        try:
            meta = pq.ParquetFile(file)
        except (pa.ArrowInvalid, OSError) as exc:
            raise DataError(f"{file}: not a readable Parquet file ({exc})") from None
        schema = meta.schema_arrow
        for what, col in (("image", image_column), ("label", label_column)):
            if col not in schema.names:
                raise DataError(
                    f"{file}: no {what} column '{col}' (columns: {schema.names}); "
                    f"name it with --{what}-column or data.{what}_column"
                )
        _check_types(file, schema, image_column, label_column)
        rows.append(meta.metadata.num_rows)
        schemas.append(schema)
    if sum(rows) == 0:
        raise DataError(f"{path}: the Parquet files hold no rows (0 images)")
    class_names = _class_names(files, schemas[0], label_column)
    if shape is None:
        shape = _first_image_shape(files, rows, image_column)
    elif len(shape) != 3 or min(shape) < 1 or shape[2] not in (1, 3):
        raise DataError(f"image shape {shape}: give H x W x C with C = 1 (grey) or 3 (RGB)")
    return ParquetImages(
        tuple(files), tuple(rows), tuple(int(s) for s in shape), tuple(class_names), image_column, label_column, resize
    )


def _check_types(file: str, schema: pa.Schema, image_column: str, label_column: str) -> None:
    image_type, label_type = schema.field(image_column).type, schema.field(label_column).type
    encoded = pa.types.is_binary(image_type) or pa.types.is_large_binary(image_type)
    if pa.types.is_struct(image_type):
        names = [image_type.field(i).name for i in range(image_type.num_fields)]
        encoded = "bytes" in names
    if not encoded:
        raise DataError(
            f"{file}: image column '{image_column}' is {image_type}; expected encoded images "
            "(struct<bytes, path> as Hugging Face writes them, or binary)"
        )
    if not pa.types.is_integer(label_type):
        raise DataError(f"{file}: label column '{label_column}' is {label_type}, not integer class ids")


def _class_names(files: list[str], schema: pa.Schema, label_column: str) -> list[str]:
    """The ClassLabel names in the ``huggingface`` schema metadata, else 0 .. max(label) over all files."""
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    raw = (schema.metadata or {}).get(b"huggingface")
    if raw:
        try:
            feature = json.loads(raw)["info"]["features"][label_column]
        except (ValueError, KeyError, TypeError):
            feature = {}
        if isinstance(feature, dict) and feature.get("_type") == "ClassLabel" and feature.get("names"):
            return [str(n) for n in feature["names"]]
    highest = max(pc.max(pq.read_table(f, columns=[label_column]).column(0)).as_py() or 0 for f in files)
    return [str(i) for i in range(int(highest) + 1)]


def _first_image_shape(files: list[str], rows: list[int], image_column: str) -> tuple[int, int, int]:
    import pyarrow.parquet as pq

    file = files[next(i for i, n in enumerate(rows) if n)]
    batch = next(pq.ParquetFile(file).iter_batches(batch_size=1, columns=[image_column]))
    data = _encoded(batch.column(0))[0].as_py()
    try:
        image = _open(data)
    except ValueError as exc:
        raise DataError(f"{file}: row 0: {exc}; cannot take the image shape from it (give it explicitly)") from None
    channels = 1 if image.mode in ("1", "L", "LA", "I", "I;16", "F") else 3
    return (image.height, image.width, channels)


def _encoded(column: pa.Array) -> pa.Array:
    """The bytes of an image column (the struct's ``bytes`` child, or the column itself)."""
    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks()
    if pa.types.is_struct(column.type):
        import pyarrow.compute as pc

        return pc.struct_field(column, "bytes")
    return column


def _open(data: bytes | None):
    from PIL import Image, UnidentifiedImageError

    if data is None:
        raise ValueError("no image bytes (null)")
    try:
        image = Image.open(io.BytesIO(data))
        image.load()
    except (UnidentifiedImageError, OSError, SyntaxError) as exc:
        raise ValueError(f"undecodable image bytes ({type(exc).__name__}: {exc})") from None
    return image


def decode_image(data: bytes | None, shape: tuple[int, int, int], resize: bool) -> np.ndarray:
    """Encoded bytes -> uint8 [H, W, C] of ``shape``; ValueError saying why not."""
    from PIL import Image

    h, w, c = shape
    image = _open(data).convert("L" if c == 1 else "RGB")
    if image.size != (w, h):
        if not resize:
            raise ValueError(
                f"image is {image.height}x{image.width}, not {h}x{w}; resize the files or set data.resize = true"
            )
        image = image.resize((w, h), Image.Resampling.BILINEAR)
    arr = np.asarray(image, dtype=np.uint8)
    return arr[..., None] if arr.ndim == 2 else arr


def decode_rows(
    images: ParquetImages,
    batch: pa.RecordBatch | pa.Table,
    file: str,
    rows: int | np.ndarray,
    bad_rows: str = "fail",
) -> tuple[pa.RecordBatch, list[BadRow]]:
    """Decode ``batch`` (image and label columns of ``file``) into a pitdist pixel batch. ``rows``: the
    file's row number of each batch row, or of the first of consecutive rows. Bad rows raise DataError
    (``"fail"``) or are left out and returned (``"skip"``)."""
    if bad_rows not in BAD_ROW_POLICIES:
        raise DataError(f"bad-row policy {bad_rows!r}: choose one of {', '.join(BAD_ROW_POLICIES)}")
    if np.ndim(rows) == 0:
        rows = np.arange(int(rows), int(rows) + batch.num_rows)
    ids = images.first_ids[images.files.index(file)] + np.asarray(rows, np.int64)
    encoded = _encoded(batch.column(images.image_column)).to_pylist()
    labels = batch.column(images.label_column).to_pylist()
    pixels = np.empty((len(labels), *images.shape), np.uint8)
    keep, bad = [], []
    for i, (data, label) in enumerate(zip(encoded, labels)):
        try:
            if label is None or not 0 <= label < len(images.class_names):
                raise ValueError(f"label {label} is outside the {len(images.class_names)} classes")
            pixels[len(keep)] = decode_image(data, images.shape, images.resize)
        except ValueError as exc:
            found = BadRow(file, int(rows[i]), int(ids[i]), str(exc))
            if bad_rows == "fail":
                raise DataError(f"{found} (data.bad_rows = skip leaves such rows out)") from None
            bad.append(found)
            continue
        keep.append(i)
    kept_labels = np.asarray(labels, dtype=object)[keep].astype(np.int64)
    return pixel_batch(ids[keep], kept_labels, pixels[: len(keep)], images.schema()), bad


def iter_decoded(images: ParquetImages, bad_rows: str = "fail", batch_size: int = 1024, found: list | None = None):
    """Decoded pixel batches of every file in order; skipped rows are appended to ``found``."""
    import pyarrow.parquet as pq

    for file in images.files:
        row = 0
        reader = pq.ParquetFile(file)
        for raw in reader.iter_batches(batch_size=batch_size, columns=[images.image_column, images.label_column]):
            decoded, bad = decode_rows(images, raw, file, row, bad_rows)
            if found is not None:
                found.extend(bad)
            row += raw.num_rows
            yield decoded


def label_counts(images: ParquetImages) -> np.ndarray:
    """Rows per class over every file (the label column alone is read); labels outside count nowhere."""
    import pyarrow.parquet as pq

    labels = np.concatenate(
        [
            np.asarray(pq.read_table(f, columns=[images.label_column]).column(0).to_numpy(zero_copy_only=False))
            for f in images.files
        ]
    )
    labels = labels[(labels >= 0) & (labels < len(images.class_names))].astype(np.int64)
    return np.bincount(labels, minlength=len(images.class_names))
