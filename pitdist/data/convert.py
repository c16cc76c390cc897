"""`pitdist data convert` sources and `pitdist data inspect`.

Every source becomes a ``Source``: the image shape, class names, a row count (for the progress bar)
and an iterator of (labels, uint8 pixels [k, H, W, C]) chunks, which DatasetWriter shards.
"""

from __future__ import annotations

import gzip
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from pitdist.data.arrow import DataError, DatasetWriter, iter_chunks, open_arrow_dataset

FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"  # Debian package dataset-fashion-mnist
FASHION_MNIST_CLASSES = [
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
]
SOURCES = ("digits", "fashion-mnist", "idx", "imagefolder", "hf-disk", "parquet")
CHUNK = 4096


@dataclass
class Source:
    """``chunks()`` yields (labels, pixels) or, where the source has its own ids, (labels, pixels, ids)."""

    shape: tuple[int, int, int]
    class_names: list[str]
    num_rows: int  # rows in the source, bad rows included (the progress bar's total)
    chunks: Callable[[], Iterator[tuple[np.ndarray, ...]]]
    description: str
    skipped: list = field(default_factory=list)  # rows a source left out (pitdist.data.parquet.BadRow)


# --- idx (MNIST / Fashion-MNIST) ----------------------------------------------------------------------


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """An idx file (optionally gzipped): big-endian magic 2051 = uint8 images [n, rows, cols], 2049 = labels [n]."""
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            data = f.read()
    except (OSError, EOFError) as exc:
        raise DataError(f"{path}: cannot read idx file ({exc})") from None
    if len(data) < 8:
        raise DataError(f"{path}: too short for an idx file ({len(data)} bytes)")
    magic = int.from_bytes(data[:4], "big")
    if magic == 2051:
        n, rows, cols = (int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(3))
        header, shape = 16, (n, rows, cols)
    elif magic == 2049:
        header, shape = 8, (int.from_bytes(data[4:8], "big"),)
    else:
        raise DataError(f"{path}: magic number {magic} is neither 2051 (images) nor 2049 (labels)")
    need = header + int(np.prod(shape))
    if len(data) != need:
        raise DataError(f"{path}: {len(data)} bytes but the header promises {need} (truncated or corrupt idx file)")
    return np.frombuffer(data, np.uint8, offset=header).reshape(shape)


def _find_idx(directory: Path, split: str, kind: str) -> Path:
    stem = {"train": "train", "test": "t10k"}[split]
    for name in (
        f"{stem}-{kind}-idx{3 if kind == 'images' else 1}-ubyte",
        f"{stem}-{kind}.idx{3 if kind == 'images' else 1}-ubyte",
    ):
        for candidate in (directory / name, directory / f"{name}.gz"):
            if candidate.is_file():
                return candidate
    raise DataError(f"{directory}: no {stem}-{kind}-idx*-ubyte[.gz] file for split '{split}'")


def idx_source(directory: str | os.PathLike, split: str, class_names: list[str] | None) -> Source:
    directory = Path(directory)
    if not directory.is_dir():
        hint = " (apt-get install dataset-fashion-mnist)" if str(directory) == FASHION_MNIST_DIR else ""
        raise DataError(f"{directory}: no such directory{hint}")
    splits = ["train", "test"] if split == "all" else [split]
    images, labels = [], []
    for s in splits:
        img_file, lab_file = _find_idx(directory, s, "images"), _find_idx(directory, s, "labels")
        img, lab = read_idx(img_file), read_idx(lab_file)
        if img.ndim != 3 or lab.ndim != 1:
            raise DataError(f"{img_file} / {lab_file}: expected an images file (2051) and a labels file (2049)")
        if len(img) != len(lab):
            raise DataError(f"{img_file}: {len(img)} images but {lab_file} has {len(lab)} labels")
        images.append(img)
        labels.append(lab)
    pixels = np.concatenate(images)[..., None]
    labels_all = np.concatenate(labels).astype(np.int64)
    names = class_names or [str(i) for i in range(int(labels_all.max()) + 1)]
    return Source(
        pixels.shape[1:],
        names,
        len(pixels),
        lambda: iter_chunks(labels_all, pixels, CHUNK),
        f"idx {directory} ({split})",
    )


# --- scikit-learn digits --------------------------------------------------------------------------------


def digits_source() -> Source:
    from pitdist.data.digits import load_digits_dataset

    d = load_digits_dataset()
    return Source(
        d.image_shape, d.class_names, len(d), lambda: iter_chunks(d.labels, d.pixels, CHUNK), "sklearn digits"
    )


# --- Hugging Face datasets ------------------------------------------------------------------------------


def _decode(image, channels: int) -> np.ndarray:
    """One PIL image (or an encoded {'bytes', 'path'} cell) -> uint8 [H, W, C]."""
    import io

    from PIL import Image

    if isinstance(image, dict):
        image = Image.open(io.BytesIO(image["bytes"])) if image.get("bytes") else Image.open(image["path"])
    arr = np.asarray(image.convert("L" if channels == 1 else "RGB"), dtype=np.uint8)
    return arr[..., None] if arr.ndim == 2 else arr


def hf_source(ds, description: str, image_column: str | None, label_column: str | None) -> Source:
    """Any ``datasets.Dataset``: images from an Image feature (decoded with PIL) or a numeric array column,
    labels from a ClassLabel (its names become the class names) or an integer column."""
    import datasets

    features = ds.features
    image_column = image_column or next(
        (k for k, f in features.items() if isinstance(f, datasets.Image)),
        next((k for k in ("image", "img", "pixels") if k in features), None),
    )
    label_column = label_column or next(
        (k for k, f in features.items() if isinstance(f, datasets.ClassLabel)),
        next((k for k in ("label", "labels") if k in features), None),
    )
    for what, col in (("image", image_column), ("label", label_column)):
        if col is None or col not in features:
            raise DataError(
                f"{description}: no {what} column found (columns: {list(features)}); name it with --{what}-column"
            )
    if len(ds) == 0:
        raise DataError(f"{description}: the dataset is empty (0 images)")
    label_feature = features[label_column]
    if isinstance(label_feature, datasets.ClassLabel):
        class_names = list(label_feature.names)
    else:
        all_labels = np.asarray(ds.with_format("numpy")[label_column])
        if not np.issubdtype(all_labels.dtype, np.integer):
            raise DataError(
                f"{description}: label column '{label_column}' is {all_labels.dtype}, not integer class ids"
            )
        class_names = [str(i) for i in range(int(all_labels.max()) + 1)]
    is_image = isinstance(features[image_column], datasets.Image)
    if is_image:
        first = ds.cast_column(image_column, datasets.Image(decode=False))[0][image_column]
        channels = 1 if _probe_mode(first) in ("L", "1", "I;16", "I", "F") else 3
        shape = _decode(first, channels).shape
    else:
        shape = np.asarray(ds.with_format("numpy")[0][image_column]).shape
        shape = (*shape, 1) if len(shape) == 2 else shape
    if len(shape) != 3:
        raise DataError(f"{description}: images in '{image_column}' have shape {shape}; expected H x W (x C)")

    def chunks():
        raw = ds.cast_column(image_column, datasets.Image(decode=False)) if is_image else ds.with_format("numpy")
        for start in range(0, len(ds), CHUNK):
            batch = raw[start : start + CHUNK]
            labels = np.asarray(batch[label_column], dtype=np.int64)
            if is_image:
                pixels = np.empty((len(labels), *shape), np.uint8)
                for i, cell in enumerate(batch[image_column]):
                    img = _decode(cell, shape[2])
                    if img.shape != shape:
                        where = cell.get("path") or f"row {start + i}"
                        raise DataError(
                            f"{description}: image {where} is {img.shape[0]}x{img.shape[1]}x{img.shape[2]}, "
                            f"the first was {shape[0]}x{shape[1]}x{shape[2]}; all images must share one size"
                        )
                    pixels[i] = img
            else:
                values = np.asarray(batch[image_column]).reshape(len(labels), *shape)
                if values.min() < 0 or values.max() > 255:
                    raise DataError(f"{description}: '{image_column}' values outside 0..255")
                pixels = values.astype(np.uint8)
            yield labels, pixels

    return Source(tuple(int(s) for s in shape), class_names, len(ds), chunks, description)


def _probe_mode(cell) -> str:
    import io

    from PIL import Image

    with Image.open(io.BytesIO(cell["bytes"])) if cell.get("bytes") else Image.open(cell["path"]) as img:
        return img.mode


def imagefolder_source(directory: str | os.PathLike, split: str, image_column, label_column) -> Source:
    import datasets

    directory = Path(directory)
    if not directory.is_dir():
        raise DataError(f"{directory}: no such image folder")
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    import tempfile

    with tempfile.TemporaryDirectory() as cache:  # no trace left in ~/.cache; the table is kept in memory
        try:
            ds = datasets.load_dataset(
                "imagefolder", data_dir=str(directory), split=split, cache_dir=cache, keep_in_memory=True
            )
        except (ValueError, FileNotFoundError) as exc:
            raise DataError(f"{directory}: cannot read as an image folder ({exc})") from None
    return hf_source(ds, f"imagefolder {directory}", image_column, label_column)


def hf_disk_source(directory: str | os.PathLike, split: str, image_column, label_column) -> Source:
    import datasets

    try:
        ds = datasets.load_from_disk(str(directory))
    except (FileNotFoundError, ValueError) as exc:
        raise DataError(f"{directory}: not a Hugging Face dataset saved with save_to_disk ({exc})") from None
    if isinstance(ds, datasets.DatasetDict):
        if split not in ds:
            raise DataError(f"{directory}: no split '{split}' (splits: {list(ds)}); choose one with --split")
        ds = ds[split]
    return hf_source(ds, f"hf-disk {directory}", image_column, label_column)


# --- Parquet with encoded images (Hugging Face layout) ---------------------------------------------------


def parquet_source(path: str, image_column, label_column, shape=None, bad_rows: str = "fail") -> Source:
    """Parquet files of PNG/JPEG bytes (pitdist.data.parquet); ids are the rows' positions in the files, so
    a converted copy keeps the ids a run streaming the same files would see."""
    from pitdist.data.arrow import table_to_numpy
    from pitdist.data.parquet import iter_decoded, open_parquet_images

    images = open_parquet_images(
        path, image_column=image_column, label_column=label_column, shape=shape, resize=shape is not None
    )
    skipped: list = []

    def chunks():
        for batch in iter_decoded(images, bad_rows, CHUNK, found=skipped):
            pixels, ids, labels = table_to_numpy(batch, images.shape)
            yield labels, pixels, ids

    return Source(images.shape, list(images.class_names), images.num_rows, chunks, images.description, skipped)


def make_source(
    kind: str,
    path: str | None,
    split: str | None,
    image_column=None,
    label_column=None,
    class_names: list[str] | None = None,
    shape: tuple[int, int, int] | None = None,
    bad_rows: str = "fail",
) -> Source:
    if kind == "digits":
        return digits_source()
    if kind == "fashion-mnist":
        return idx_source(path or FASHION_MNIST_DIR, split or "train", class_names or FASHION_MNIST_CLASSES)
    if path is None:
        raise DataError(f"source '{kind}' needs a path")
    if kind == "idx":
        return idx_source(path, split or "train", class_names)
    if kind == "imagefolder":
        return imagefolder_source(path, split or "train", image_column, label_column)
    if kind == "hf-disk":
        return hf_disk_source(path, split or "train", image_column, label_column)
    if kind == "parquet":
        return parquet_source(path, image_column, label_column, shape, bad_rows)
    raise DataError(f"unknown source '{kind}'; choose one of {', '.join(SOURCES)}")


def convert(
    source: Source,
    out: str | os.PathLike,
    rows_per_shard: int | None = None,
    shard_mb: float = 256.0,
    overwrite: bool = False,
    progress: bool = True,
) -> Path:
    """Write ``source`` as a pitdist dataset at ``out`` (atomically: see DatasetWriter)."""
    from tqdm import tqdm

    image_bytes = int(np.prod(source.shape))
    rows = rows_per_shard or max(1, int(shard_mb * 2**20) // image_bytes)
    writer = DatasetWriter(out, source.shape, source.class_names, rows, source=source.description, overwrite=overwrite)
    with (
        writer,
        tqdm(total=source.num_rows, unit="img", desc=f"convert -> {Path(out).name}", disable=not progress) as bar,
    ):
        for labels, pixels, *ids in source.chunks():
            bad = np.flatnonzero((labels < 0) | (labels >= len(source.class_names)))
            if bad.size:
                raise DataError(
                    f"{source.description}: image {writer.num_rows + int(bad[0])} has label {labels[bad[0]]}, "
                    f"outside the {len(source.class_names)} classes"
                )
            writer.write(labels, pixels, ids[0] if ids else None)
            bar.update(writer.num_rows + len(source.skipped) - bar.n)  # skipped rows count as read
        return writer.close()


# --- inspect --------------------------------------------------------------------------------------------


def inspect(path: str | os.PathLike, grid: str | os.PathLike | None, count: int = 16) -> str:
    """A text summary of a dataset (schema, counts, label histogram); writes a PNG grid of ``count`` images."""
    from pitdist.data.arrow import is_arrow_dataset
    from pitdist.data.parquet import is_parquet_source

    if not is_arrow_dataset(path) and is_parquet_source(path):
        return inspect_parquet(path, grid, count)
    ds = open_arrow_dataset(path)
    h, w, c = ds.shape
    lines = [
        f"dataset {ds.path}",
        f"  format {ds.manifest['format']} v{ds.manifest['format_version']}, "
        f"{len(ds.ids)} images of {h}x{w}x{c} (HxWxC) uint8, {len(ds.class_names)} classes, "
        f"{len(ds.manifest['shards'])} shards (checksums verified)",
        "  schema:",
    ]
    lines += [f"    {f.name}: {f.type}" for f in ds.tables[0].schema]
    lines.append(
        "  metadata: " + ", ".join(f"{k.decode()}={v.decode()[:60]}" for k, v in ds.tables[0].schema.metadata.items())
    )
    lines.append("  shards:")
    lines += [
        f"    {s['file']}: {s['rows']} rows, {s['bytes']} bytes, sha256 {s['sha256'][:16]}..."
        for s in ds.manifest["shards"]
    ]
    lines += _histogram(np.bincount(ds.labels, minlength=len(ds.class_names)), ds.class_names)
    lines.append(f"  ids {int(ds.ids.min())}..{int(ds.ids.max())}")
    if grid:
        _write_grid(ds, Path(grid), count)
        lines.append(f"wrote {grid}")
    return "\n".join(lines)


def inspect_parquet(path: str | os.PathLike, grid: str | os.PathLike | None, count: int = 16) -> str:
    """``inspect`` for Parquet files of encoded images: what a run would stream from them, undecoded
    (the grid decodes its first ``count`` images)."""
    import pyarrow.parquet as pq

    from pitdist.data.parquet import label_counts, open_parquet_images

    images = open_parquet_images(path)
    h, w, c = images.shape
    lines = [
        f"parquet images {images.description}",
        f"  {images.num_rows} images in {len(images.files)} files, decoded to {h}x{w}x{c} (HxWxC) uint8 "
        f"(the first image's shape), {len(images.class_names)} classes; "
        f"image column '{images.image_column}', label column '{images.label_column}'",
        "  schema:",
    ]
    lines += [f"    {f.name}: {f.type}" for f in pq.ParquetFile(images.files[0]).schema_arrow]
    lines.append("  files:")
    lines += [
        f"    {Path(f).name}: {n} rows, ids {first}..{first + n - 1}"
        for f, n, first in zip(images.files, images.rows, images.first_ids)
    ]
    lines += _histogram(label_counts(images), list(images.class_names))
    if grid:
        from types import SimpleNamespace

        from pitdist.data.arrow import table_to_numpy
        from pitdist.data.parquet import iter_decoded

        pixels, ids, labels = table_to_numpy(next(iter_decoded(images, "skip", batch_size=count)), images.shape)
        _write_grid(
            SimpleNamespace(pixels=pixels, ids=ids, labels=labels, class_names=images.class_names), Path(grid), count
        )
        lines.append(f"wrote {grid}")
    return "\n".join(lines)


def _histogram(hist: np.ndarray, class_names: list[str]) -> list[str]:
    width = max(len(n) for n in class_names)
    return ["  labels:"] + [
        f"    {i:3d} {name:<{width}} {n:8d} {'#' * int(round(40 * n / max(hist.max(), 1)))}"
        for i, (name, n) in enumerate(zip(class_names, hist))
    ]


def _write_grid(ds, out: Path, count: int) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    count = min(count, len(ds.ids))
    cols = min(8, count)
    rows = -(-count // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(1.5 * cols, 1.7 * rows), squeeze=False)
    images = ds.pixels[np.arange(count)]
    for i, ax in enumerate(axes.flat):
        ax.axis("off")
        if i < count:
            img = images[i]
            ax.imshow(
                img[..., 0] if img.shape[2] == 1 else img, cmap="gray" if img.shape[2] == 1 else None, vmin=0, vmax=255
            )
            ax.set_title(f"{ds.ids[i]}: {ds.class_names[ds.labels[i]]}"[:18], fontsize=7)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=100)
    plt.close(fig)
