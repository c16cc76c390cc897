"""pitdist Arrow pixel datasets: exact round trips from every source, DP/SP assignment over an epoch,
exact resume, and a clear DataError for every kind of bad input."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
import torch

from pitdist.config import ConfigError
from pitdist.data.arrow import DataError, DatasetWriter, arrow_schema, sha256_file
from pitdist.data.convert import convert, make_source, read_idx
from pitdist.data.registry import load_dataset
from pitdist.data.sharding import BatchSchedule
from pitdist.models.pit import pixels_to_tokens
from pitdist.parallel_dims import ParallelDims


def _convert(kind, path, out, **kw):
    split, rows = kw.pop("split", None), kw.pop("rows", 500)
    return convert(make_source(kind, path and str(path), split, **kw), out, rows_per_shard=rows, progress=False)


def write_idx(path: Path, array: np.ndarray, gz: bool = False) -> None:
    """An idx file as MNIST ships it: big-endian magic (2051 images, 2049 labels), dims, raw uint8."""
    magic = 2051 if array.ndim == 3 else 2049
    header = magic.to_bytes(4, "big") + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    data = header + np.ascontiguousarray(array, np.uint8).tobytes()
    (gzip.open if gz else open)(path, "wb").write(data)


@pytest.fixture(scope="module")
def digits_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("data") / "digits"
    _convert("digits", None, out, rows=500)  # 4 shards: 500, 500, 500, 297
    return out


# --- round trips ---------------------------------------------------------------------------------------


def test_digits_round_trip_is_exact_and_memory_mapped(digits_dir):
    got, ref = load_dataset(str(digits_dir)), load_dataset("digits")
    assert len(got) == 1797 and got.image_shape == (8, 8, 1) and got.class_names == ref.class_names
    assert np.array_equal(got.ids, ref.ids) and np.array_equal(got.labels, ref.labels)
    assert np.array_equal(np.asarray(got.pixels), ref.pixels)
    views = got.pixels.views
    assert [len(v) for v in views] == [500, 500, 500, 297]
    assert all(not v.flags.owndata and not v.flags.writeable for v in views)  # views over the read-only mmap
    # The train/validation split selects rows without copying and yields the same images as in memory.
    train, val = got.split(0.2, seed=3)
    ref_train, ref_val = ref.split(0.2, seed=3)
    assert train.pixels.views is views
    index = np.array([0, 7, len(train) - 1, 5])
    assert np.array_equal(train.pixels[index], ref_train.pixels[index])
    assert np.array_equal(val.pixels[np.arange(len(val))], ref_val.pixels)
    manifest = json.loads((digits_dir / "manifest.json").read_text())
    assert manifest["num_rows"] == 1797 and all(len(s["sha256"]) == 64 for s in manifest["shards"])


def test_digits_and_synthetic_names_still_work():
    assert len(load_dataset("digits")) == 1797
    assert load_dataset("synthetic:4x4x3:10").pixels.shape == (10, 4, 4, 3)
    with pytest.raises(ConfigError, match="a directory written by `pitdist data convert`"):
        load_dataset("nonsense")


@pytest.mark.parametrize("gz", [False, True])
def test_fashion_mnist_format_idx_round_trip(tmp_path, gz):
    rng = np.random.default_rng(0)
    src = tmp_path / "idx"
    src.mkdir()
    sets = {}
    for stem, n in (("train", 70), ("t10k", 30)):
        images, labels = rng.integers(0, 256, (n, 28, 28), np.uint8), rng.integers(0, 10, n).astype(np.uint8)
        sfx = ".gz" if gz else ""
        write_idx(src / f"{stem}-images-idx3-ubyte{sfx}", images, gz)
        write_idx(src / f"{stem}-labels-idx1-ubyte{sfx}", labels, gz)
        sets[stem] = images, labels
    assert np.array_equal(read_idx(src / f"train-images-idx3-ubyte{'.gz' if gz else ''}"), sets["train"][0])

    _convert("fashion-mnist", src, tmp_path / "all", split="all", rows=32)
    got = load_dataset(str(tmp_path / "all"))
    assert got.image_shape == (28, 28, 1) and got.class_names[0] == "T-shirt/top" and len(got.class_names) == 10
    assert np.array_equal(got.ids, np.arange(100))
    assert np.array_equal(np.asarray(got.pixels)[..., 0], np.concatenate([sets["train"][0], sets["t10k"][0]]))
    assert np.array_equal(got.labels, np.concatenate([sets["train"][1], sets["t10k"][1]]))

    _convert("idx", src, tmp_path / "test", split="test")
    test = load_dataset(str(tmp_path / "test"))
    assert np.array_equal(np.asarray(test.pixels)[..., 0], sets["t10k"][0]) and test.class_names[0] == "0"


def test_imagefolder_round_trip(tmp_path):
    from PIL import Image

    rng = np.random.default_rng(1)
    expected = {}
    for label, name in enumerate(["cat", "dog", "emu"]):
        (tmp_path / "img" / name).mkdir(parents=True)
        for i in range(4):
            arr = rng.integers(0, 256, (6, 5, 3), np.uint8)
            Image.fromarray(arr).save(tmp_path / "img" / name / f"{i}.png")
            expected[arr.tobytes()] = label
    _convert("imagefolder", tmp_path / "img", tmp_path / "out")
    got = load_dataset(str(tmp_path / "out"))
    assert got.image_shape == (6, 5, 3) and got.class_names == ["cat", "dog", "emu"]
    pixels = np.asarray(got.pixels)
    assert {p.tobytes(): int(lab) for p, lab in zip(pixels, got.labels)} == expected


def test_save_to_disk_round_trip_with_image_and_array_columns(tmp_path):
    import datasets
    from PIL import Image

    rng = np.random.default_rng(2)
    grey = rng.integers(0, 256, (9, 7, 7), np.uint8)
    labels = rng.integers(0, 3, 9)
    features = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=["a", "b", "c"])})
    ds = datasets.Dataset.from_dict(
        {"image": [Image.fromarray(g) for g in grey], "label": labels.tolist()}, features=features
    )
    datasets.DatasetDict({"train": ds, "test": ds.select(range(3))}).save_to_disk(str(tmp_path / "hf"))
    _convert("hf-disk", tmp_path / "hf", tmp_path / "out", split="train")
    got = load_dataset(str(tmp_path / "out"))
    assert got.class_names == ["a", "b", "c"] and got.image_shape == (7, 7, 1)
    assert np.array_equal(np.asarray(got.pixels)[..., 0], grey) and np.array_equal(got.labels, labels)

    rgb = rng.integers(0, 256, (5, 4, 4, 3), np.uint8)
    arrays = datasets.Dataset.from_dict(
        {"pixels": rgb.tolist(), "label": [0, 1, 2, 3, 1]},
        features=datasets.Features({"pixels": datasets.Array3D((4, 4, 3), "uint8"), "label": datasets.Value("int64")}),
    )
    arrays.save_to_disk(str(tmp_path / "hf2"))
    _convert("hf-disk", tmp_path / "hf2", tmp_path / "out2")
    got = load_dataset(str(tmp_path / "out2"))
    assert np.array_equal(np.asarray(got.pixels), rgb) and got.class_names == ["0", "1", "2", "3"]


# --- which images each rank consumes ----------------------------------------------------------------------


def _rank_view(data, schedule, dims: ParallelDims, rank: int, steps: range):
    """What LocalBatches gives ``rank``: its DP group's ids per step and its own tokens."""
    dp_rank, sp_rank = dims.coords(rank)
    lo_hi = dims.shards(64).pixels(sp_rank)
    ids, tokens = [], []
    for step in steps:
        index = schedule.dp_indices(step, dp_rank, dims.dp)
        ids.append(data.ids[index])
        tokens.append(pixels_to_tokens(torch.from_numpy(data.pixels[index]), 1, lo_hi))
    return ids, tokens


def test_q2_p2_epoch_covers_every_id_once_and_sp_ranks_agree(digits_dir):
    data, _ = load_dataset(str(digits_dir)).split(0.2, seed=0)  # 1438 training images
    schedule = BatchSchedule(len(data), global_batch=32, seed=5)
    dims = ParallelDims(2, 2)
    assert schedule.dropped_per_epoch == len(data) % 32 == 30
    views = [_rank_view(data, schedule, dims, r, range(schedule.steps_per_epoch)) for r in range(4)]
    # Ranks 0,1 form DP group 0 and ranks 2,3 DP group 1: identical ids in identical order within a group.
    for a, b in ((0, 1), (2, 3)):
        assert all(np.array_equal(x, y) for x, y in zip(views[a][0], views[b][0]))
    group_ids = [np.concatenate(views[r][0]) for r in (0, 2)]
    consumed = np.concatenate(group_ids)
    assert len(consumed) == len(np.unique(consumed)) == len(data) - schedule.dropped_per_epoch
    assert not set(group_ids[0]) & set(group_ids[1])
    left_out = set(data.ids) - set(consumed)
    assert len(left_out) == schedule.dropped_per_epoch
    # Each SP rank converts only its half of the pixels; the halves make up the whole image.
    for step in (0, schedule.steps_per_epoch - 1):
        index = schedule.dp_indices(step, 1, 2)
        whole = pixels_to_tokens(torch.from_numpy(data.pixels[index]), 1)
        assert views[2][1][step].shape == (16, 32, 1)
        assert torch.equal(torch.cat([views[2][1][step], views[3][1][step]], dim=1), whole)
    # The next epoch is a different order of the same images.
    assert not np.array_equal(schedule.global_batch_indices(0), schedule.global_batch_indices(schedule.steps_per_epoch))


def test_resumed_run_consumes_exactly_what_the_uninterrupted_run_does_after_step_k(digits_dir):
    dims, k, end = ParallelDims(2, 2), 37, 100  # crosses the epoch boundary at step 44
    whole = BatchSchedule(1797 - 359, 32, seed=9)
    first = [
        _rank_view(load_dataset(str(digits_dir)).split(0.2, 0)[0], whole, dims, r, range(end))[0] for r in range(4)
    ]
    # A new process: reload the dataset, rebuild the schedule from the config, start at step k.
    data = load_dataset(str(digits_dir)).split(0.2, 0)[0]
    resumed = [_rank_view(data, BatchSchedule(len(data), 32, seed=9), dims, r, range(k, end))[0] for r in range(4)]
    for r in range(4):
        assert all(np.array_equal(a, b) for a, b in zip(first[r][k:], resumed[r]))


# --- bad input --------------------------------------------------------------------------------------------


def _copy(src: Path, dst: Path) -> Path:
    import shutil

    shutil.copytree(src, dst)
    return dst


def _replace_shard(root: Path, index: int, table: pa.Table) -> Path:
    """Rewrite one shard with ``table`` and make the manifest agree with it (so later checks are reached)."""
    manifest = json.loads((root / "manifest.json").read_text())
    entry = manifest["shards"][index]
    file = root / entry["file"]
    with pa.ipc.new_file(str(file), table.schema) as w:
        w.write_table(table)
    entry.update(rows=table.num_rows, bytes=file.stat().st_size, sha256=sha256_file(file))
    (root / "manifest.json").write_text(json.dumps(manifest))
    return file


def _shard_table(root: Path, index: int = 0) -> pa.Table:
    file = sorted(root.glob("shard-*.arrow"))[index]
    return pa.ipc.open_file(pa.py_buffer(file.read_bytes())).read_all()  # in memory: the file gets rewritten


def _expect(root: Path, *fragments: str) -> None:
    with pytest.raises(DataError) as info:
        load_dataset(str(root))
    for f in fragments:
        assert f in str(info.value), str(info.value)
    assert isinstance(info.value, ConfigError)  # the CLI turns it into "error: ..." and exit status 2


def test_truncated_shard(digits_dir, tmp_path):
    root = _copy(digits_dir, tmp_path / "d")
    shard = root / "shard-00001.arrow"
    shard.write_bytes(shard.read_bytes()[:-100])
    _expect(root, str(shard), "truncated")


def test_corrupt_byte_fails_the_checksum(digits_dir, tmp_path):
    root = _copy(digits_dir, tmp_path / "d")
    shard = root / "shard-00002.arrow"
    data = bytearray(shard.read_bytes())
    data[len(data) // 2] ^= 0xFF
    shard.write_bytes(bytes(data))
    _expect(root, str(shard), "sha256", "does not match the manifest")


def test_manifest_checksum_mismatch(digits_dir, tmp_path):
    root = _copy(digits_dir, tmp_path / "d")
    manifest = json.loads((root / "manifest.json").read_text())
    manifest["shards"][3]["sha256"] = "0" * 64
    (root / "manifest.json").write_text(json.dumps(manifest))
    _expect(root, "shard-00003.arrow", "does not match the manifest's 0000000000000000")


def test_not_an_arrow_file_even_with_a_matching_checksum(digits_dir, tmp_path):
    root = _copy(digits_dir, tmp_path / "d")
    manifest = json.loads((root / "manifest.json").read_text())
    file = root / "shard-00000.arrow"
    file.write_bytes(b"PK\x03\x04 definitely not arrow" * 10)
    manifest["shards"][0].update(bytes=file.stat().st_size, sha256=sha256_file(file))
    (root / "manifest.json").write_text(json.dumps(manifest))
    _expect(root, str(file), "not a readable Arrow IPC file")


def test_pixels_whose_size_does_not_match_the_metadata(digits_dir, tmp_path):
    root = _copy(digits_dir, tmp_path / "d")
    table = _shard_table(root)
    schema = arrow_schema((8, 8, 1), [str(i) for i in range(10)])
    wrong = pa.FixedSizeBinaryArray.from_buffers(pa.binary(63), 500, [None, pa.py_buffer(np.zeros(500 * 63, np.uint8))])
    bad = pa.table(
        [table.column("id"), table.column("label"), wrong],
        schema=pa.schema(
            [schema.field("id"), schema.field("label"), ("pixels", pa.binary(63))], metadata=schema.metadata
        ),
    )
    file = _replace_shard(root, 0, bad)
    _expect(root, str(file), "pixels are 63 bytes per image but the metadata says 8x8x1 = 64")


def test_label_outside_the_class_list_names_file_and_row(digits_dir, tmp_path):
    root = _copy(digits_dir, tmp_path / "d")
    table = _shard_table(root, 2)
    labels = table.column("label").to_numpy().copy()
    labels[123] = 10
    file = _replace_shard(root, 2, table.set_column(1, "label", pa.array(labels)))
    _expect(root, str(file), "row 123 (id 1123): label 10 is outside the 10 classes [0, 10)")


def test_missing_metadata_key(digits_dir, tmp_path):
    root = _copy(digits_dir, tmp_path / "d")
    table = _shard_table(root, 1)
    meta = {k: v for k, v in table.schema.metadata.items() if k != b"pitdist.class_names"}
    file = _replace_shard(root, 1, table.replace_schema_metadata(meta))
    _expect(root, str(file), "schema metadata lacks pitdist.class_names")


def test_empty_dataset(tmp_path):
    with pytest.raises(DataError, match="no images"):
        with DatasetWriter(tmp_path / "empty", (2, 2, 1), ["a"], 10) as w:
            w.close()
    assert not (tmp_path / "empty").exists() and not list(tmp_path.iterdir())
    root = tmp_path / "hand"
    root.mkdir()
    (root / "manifest.json").write_text(
        json.dumps(
            {
                "format": "pitdist-pixels",
                "format_version": 1,
                "height": 2,
                "width": 2,
                "channels": 1,
                "class_names": ["a"],
                "num_rows": 0,
                "shards": [],
            }
        )
    )
    _expect(root, str(root), "the dataset is empty (0 images)")


def test_duplicate_ids_and_missing_directory(tmp_path):
    with DatasetWriter(tmp_path / "dup", (2, 2, 1), ["a", "b"], 10) as w:
        w.write(np.array([0, 1]), np.zeros((2, 2, 2, 1), np.uint8), ids=np.array([7, 7]))
        w.close()
    _expect(tmp_path / "dup", "image id 7 occurs more than once")
    _expect(tmp_path / "nowhere/x", "no such directory")


def test_interrupted_conversion_leaves_nothing_that_loads(digits_dir, tmp_path):
    source = make_source("digits", None, None)
    real_chunks = source.chunks

    def failing():
        labels, pixels = next(iter(real_chunks()))
        yield labels[:300], pixels[:300]  # three complete shards of 100 rows exist by now
        raise KeyboardInterrupt("stopped halfway")

    source.chunks = failing
    with pytest.raises(KeyboardInterrupt):
        convert(source, tmp_path / "out", rows_per_shard=100, progress=False)
    assert not (tmp_path / "out").exists() and not list(tmp_path.iterdir())  # the partial directory is gone too
    _expect(tmp_path / "out", "no such directory")
    # An existing dataset is replaced only once the new one is complete.
    target = _copy(digits_dir, tmp_path / "kept")
    source.chunks = failing
    with pytest.raises(KeyboardInterrupt):
        convert(source, target, rows_per_shard=100, overwrite=True, progress=False)
    assert len(load_dataset(str(target))) == 1797
    with pytest.raises(DataError, match="already exists"):
        convert(make_source("digits", None, None), target, progress=False)
