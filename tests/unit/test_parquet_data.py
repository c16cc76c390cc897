"""Parquet files of encoded images, as Hugging Face `datasets` writes them (to_parquet): converted and
inspected without any other step, ids that are the rows' positions in the files, and a DataError naming
file and row for every kind of bad input (or, with bad_rows = skip, the row left out and reported)."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from parquet_files import png, write_digits_parquet, write_plain_parquet

from pitdist.data.arrow import DataError, open_arrow_dataset
from pitdist.data.convert import convert, inspect, make_source
from pitdist.data.digits import load_digits_dataset
from pitdist.data.parquet import decode_rows, iter_decoded, open_parquet_images


@pytest.fixture(scope="module")
def digits_parquet(tmp_path_factory):
    """The 1,797 digits in two Parquet files written by `datasets`, 1,000 + 797 rows."""
    return write_digits_parquet(tmp_path_factory.mktemp("parquet") / "digits"), load_digits_dataset()


def test_hf_parquet_converts_to_exactly_the_same_images_labels_ids_and_class_names(digits_parquet, tmp_path):
    root, d = digits_parquet
    out = convert(make_source("parquet", str(root), None), tmp_path / "ds", rows_per_shard=700, progress=False)
    ds = open_arrow_dataset(out)
    assert ds.class_names == d.class_names  # from the ClassLabel in the files' metadata
    np.testing.assert_array_equal(ds.ids, np.arange(1797))  # file by file, row by row
    np.testing.assert_array_equal(ds.labels, d.labels)
    np.testing.assert_array_equal(np.asarray(ds.pixels), np.asarray(d.pixels))
    assert [s["rows"] for s in ds.manifest["shards"]] == [700, 700, 397]


def test_a_glob_and_a_single_file_name_the_same_rows_and_their_ids(digits_parquet):
    root, _ = digits_parquet
    both = open_parquet_images(str(root / "train-*.parquet"))
    second = open_parquet_images(root / "train-00001.parquet")
    assert both.rows == (1000, 797) and both.first_ids == (0, 1000) and both.shape == (8, 8, 1)
    assert second.num_rows == 797 and second.first_ids == (0,)
    batch = next(iter_decoded(both, batch_size=5))
    assert batch.column("id").to_pylist() == [0, 1, 2, 3, 4]


def test_inspect_reads_parquet_and_draws_its_grid(digits_parquet, tmp_path):
    root, d = digits_parquet
    text = inspect(root, tmp_path / "grid.png", count=8)
    assert "1797 images in 2 files, decoded to 8x8x1" in text
    assert "train-00001.parquet: 797 rows, ids 1000..1796" in text
    counts = np.bincount(d.labels, minlength=10)
    assert f"    {0:3d} {'0'} {counts[0]:8d}" in text
    assert (tmp_path / "grid.png").stat().st_size > 1000


def test_without_hf_metadata_class_names_are_the_label_range(tmp_path):
    cells = [png(np.full((4, 6, 1), v, np.uint8)) for v in (0, 100, 200)]
    write_plain_parquet(tmp_path / "a.parquet", cells, [0, 4, 2])
    images = open_parquet_images(tmp_path / "a.parquet")
    assert images.class_names == ("0", "1", "2", "3", "4") and images.shape == (4, 6, 1)
    out = convert(make_source("parquet", str(tmp_path / "a.parquet"), None), tmp_path / "ds", progress=False)
    np.testing.assert_array_equal(np.asarray(open_arrow_dataset(out).pixels)[:, 0, 0, 0], [0, 100, 200])


def test_undecodable_bytes_fail_naming_file_and_row_and_nothing_is_written(tmp_path):
    good = png(np.zeros((4, 4, 1), np.uint8))
    write_plain_parquet(tmp_path / "a.parquet", [good, good, b"not a png", good], [0, 1, 0, 1])
    with pytest.raises(DataError, match=r"a\.parquet: row 2 \(id 2\): undecodable image bytes.*bad_rows = skip"):
        convert(make_source("parquet", str(tmp_path / "a.parquet"), None), tmp_path / "ds", progress=False)
    assert not (tmp_path / "ds").exists() and not list(tmp_path.glob(".ds*"))


def test_skip_leaves_bad_rows_out_keeps_the_source_ids_and_reports_them(tmp_path):
    good, wide = png(np.full((4, 4, 1), 7, np.uint8)), png(np.zeros((4, 5, 1), np.uint8))
    write_plain_parquet(tmp_path / "a.parquet", [good, b"\x89PNG broken", wide, good, None], [0, 1, 0, 1, 0])
    source = make_source("parquet", str(tmp_path / "a.parquet"), None, bad_rows="skip")
    ds = open_arrow_dataset(convert(source, tmp_path / "ds", progress=False))
    np.testing.assert_array_equal(ds.ids, [0, 3])
    np.testing.assert_array_equal(ds.labels, [0, 1])
    assert [(b.row, b.id) for b in source.skipped] == [(1, 1), (2, 2), (4, 4)]
    reasons = [b.reason for b in source.skipped]
    assert "undecodable" in reasons[0] and "4x5, not 4x4" in reasons[1] and "null" in reasons[2]


def test_a_given_shape_resizes_and_converts_channels(tmp_path):
    rgb = np.zeros((6, 9, 3), np.uint8)
    rgb[..., 0] = 255
    write_plain_parquet(tmp_path / "a.parquet", [png(rgb), png(np.zeros((3, 3, 3), np.uint8))], [0, 1])
    source = make_source("parquet", str(tmp_path / "a.parquet"), None, shape=(4, 4, 1))
    pixels = np.asarray(open_arrow_dataset(convert(source, tmp_path / "ds", progress=False)).pixels)
    assert pixels.shape == (2, 4, 4, 1)
    assert pixels[0].min() == pixels[0].max() == round(0.299 * 255)  # PIL's L = ITU-R 601-2 luma


def test_a_label_outside_the_classes_is_a_bad_row(tmp_path, digits_parquet):
    images = open_parquet_images(digits_parquet[0])
    batch = pa.table({"image": [{"bytes": png(np.zeros((8, 8, 1), np.uint8)), "path": None}], "label": [10]})
    with pytest.raises(DataError, match=r"row 5 \(id 1005\): label 10 is outside the 10 classes"):
        decode_rows(images, batch, images.files[1], rows=5)


@pytest.mark.parametrize(
    "write, message",
    [
        (
            lambda p: pq.write_table(pa.table({"img": [b"x"], "label": [0]}), p),
            r"no image column 'image' \(columns: \['img', 'label'\]\).*--image-column",
        ),
        (
            lambda p: pq.write_table(pa.table({"image": [b"x"], "y": [0]}), p),
            r"no label column 'label'.*--label-column",
        ),
        (
            lambda p: write_plain_parquet(p, [b"x"], ["cat"], pa.string()),
            r"label column 'label' is string, not integer",
        ),
        (
            lambda p: pq.write_table(pa.table({"image": [1.5], "label": [0]}), p),
            r"image column 'image' is double; expected encoded",
        ),
        (lambda p: open(p, "wb").write(b"PAR1 not really"), r"not a readable Parquet file"),
        (lambda p: write_plain_parquet(p, [], []), r"hold no rows"),
    ],
    ids=["no-image-column", "no-label-column", "string-labels", "pixels-not-bytes", "not-parquet", "empty"],
)
def test_bad_files_are_refused_by_name(tmp_path, write, message):
    write(tmp_path / "bad.parquet")
    with pytest.raises(DataError, match=message):
        open_parquet_images(tmp_path / "bad.parquet")


def test_no_parquet_files_and_no_such_path(tmp_path):
    with pytest.raises(DataError, match="no Parquet files found"):
        open_parquet_images(str(tmp_path / "*.parquet"))
    with pytest.raises(DataError, match="no such file or directory"):
        open_parquet_images(tmp_path / "nowhere")


def test_the_cli_converts_parquet_and_refuses_a_bad_shape(digits_parquet, tmp_path, pitdist_cli):
    root, _ = digits_parquet
    bad = pitdist_cli("data", "convert", "parquet", str(root), "--out", str(tmp_path / "x"), "--shape", "8x8x2")
    assert bad.returncode == 2 and "C 1 (grey) or 3 (RGB)" in bad.stderr and not (tmp_path / "x").exists()
    ok = pitdist_cli(
        "data", "convert", "parquet", str(root), "--out", str(tmp_path / "ds"), "--no-progress", check=True
    )
    assert "1797 images of 8x8x1 (HxWxC), 10 classes" in ok.stdout
