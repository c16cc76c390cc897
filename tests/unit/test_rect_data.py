"""Rectangular images (H != W) through the data path: written by `pitdist data convert`'s writer, read
back memory-mapped with H and W in their places, and refused when a shape is transposed.

A square image cannot tell H from W, so every test here uses H != W; 30x20x1 and 5x7x3 also differ
in which side is longer."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from pitdist.data.arrow import DataError, DatasetWriter, sha256_file
from pitdist.data.convert import Source, convert, make_source
from pitdist.data.registry import load_dataset

SHAPES = [(30, 20, 1), (5, 7, 3)]


def rect_source(shape: tuple[int, int, int], n: int = 23, seed: int = 0) -> tuple[Source, np.ndarray, np.ndarray]:
    """A convert Source of ``n`` random images of ``shape``; also returns (pixels, labels) to compare with."""
    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 256, (n, *shape), np.uint8)
    labels = rng.integers(0, 4, n).astype(np.int64)
    chunks = lambda: iter([(labels[:10], pixels[:10]), (labels[10:], pixels[10:])])
    return Source(shape, list("abcd"), n, chunks, f"random {shape}"), pixels, labels


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_rectangular_round_trip_is_bit_identical_and_keeps_h_and_w(tmp_path, shape):
    source, pixels, labels = rect_source(shape)
    root = convert(source, tmp_path / "rect", rows_per_shard=8, progress=False)  # 3 shards: 8, 8, 7
    got = load_dataset(str(root))
    assert got.image_shape == shape and got.pixels.shape == (23, *shape)
    assert np.asarray(got.pixels).tobytes() == pixels.tobytes() and np.array_equal(got.labels, labels)
    assert np.array_equal(got.pixels[np.array([22, 3, 9])], pixels[[22, 3, 9]])  # a gather across shards
    h, w, c = shape
    manifest = json.loads((root / "manifest.json").read_text())
    assert (manifest["height"], manifest["width"], manifest["channels"]) == shape
    assert [s["rows"] for s in manifest["shards"]] == [8, 8, 7]
    for shard in sorted(root.glob("shard-*.arrow")):
        schema = pa.ipc.open_file(str(shard)).schema
        meta = {k.decode(): v.decode() for k, v in schema.metadata.items()}
        assert (meta["pitdist.height"], meta["pitdist.width"], meta["pitdist.channels"]) == (str(h), str(w), str(c))
        assert schema.field("pixels").type == pa.binary(h * w * c)


def _write_idx(path: Path, array: np.ndarray) -> None:
    magic = 2051 if array.ndim == 3 else 2049
    header = magic.to_bytes(4, "big") + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + np.ascontiguousarray(array, np.uint8).tobytes())


def test_idx_rows_and_columns_become_height_and_width(tmp_path):
    rng = np.random.default_rng(1)
    images = rng.integers(0, 256, (12, 30, 20), np.uint8)  # idx dims: count, rows, columns
    _write_idx(tmp_path / "train-images-idx3-ubyte.gz", images)
    _write_idx(tmp_path / "train-labels-idx1-ubyte.gz", rng.integers(0, 3, 12).astype(np.uint8))
    root = convert(make_source("idx", str(tmp_path), None), tmp_path / "out", rows_per_shard=5, progress=False)
    got = load_dataset(str(root))
    assert got.image_shape == (30, 20, 1)
    assert np.array_equal(np.asarray(got.pixels)[..., 0], images)


def test_hf_array_column_of_rectangular_images(tmp_path):
    import datasets

    rgb = np.random.default_rng(2).integers(0, 256, (4, 5, 7, 3), np.uint8)
    features = datasets.Features({"pixels": datasets.Array3D((5, 7, 3), "uint8"), "label": datasets.Value("int64")})
    datasets.Dataset.from_dict({"pixels": rgb.tolist(), "label": [0, 1, 1, 0]}, features=features).save_to_disk(
        str(tmp_path / "hf")
    )
    root = convert(make_source("hf-disk", str(tmp_path / "hf"), None), tmp_path / "out", progress=False)
    got = load_dataset(str(root))
    assert got.image_shape == (5, 7, 3) and np.array_equal(np.asarray(got.pixels), rgb)


def test_transposed_images_are_refused_by_the_writer(tmp_path):
    with pytest.raises(DataError, match=r"shape \(20, 30, 1\) do not match the dataset's uint8 \(30, 20, 1\)"):
        with DatasetWriter(tmp_path / "t", (30, 20, 1), ["a"], 10) as w:
            w.write(np.zeros(2, np.int64), np.zeros((2, 20, 30, 1), np.uint8))
    assert not list(tmp_path.iterdir())


def test_shards_whose_h_and_w_are_swapped_do_not_load(tmp_path):
    """20x30 has the byte width of 30x20: only the shape comparisons can tell them apart."""
    source, _, _ = rect_source((30, 20, 1))
    root = convert(source, tmp_path / "rect", rows_per_shard=8, progress=False)
    manifest = json.loads((root / "manifest.json").read_text())
    manifest["height"], manifest["width"] = 20, 30
    (root / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(
        DataError, match=r"manifest.json: image shape 20x30x1 \(HxWxC\) differs from the shards' 30x20x1"
    ):
        load_dataset(str(root))

    # One shard rewritten with H and W swapped in its metadata: refused, naming that shard.
    manifest["height"], manifest["width"] = 30, 20
    file = root / manifest["shards"][1]["file"]
    table = pa.ipc.open_file(pa.py_buffer(file.read_bytes())).read_all()
    table = table.replace_schema_metadata({**table.schema.metadata, b"pitdist.height": b"20", b"pitdist.width": b"30"})
    with pa.ipc.new_file(str(file), table.schema) as out:
        out.write_table(table)
    manifest["shards"][1].update(bytes=file.stat().st_size, sha256=sha256_file(file))
    (root / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(DataError, match=r"shard-00001.arrow: image shape \(20, 30, 1\) / classes differ"):
        load_dataset(str(root))
