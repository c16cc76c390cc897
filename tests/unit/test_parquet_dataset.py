"""data.dataset = Parquet files of encoded images: loaded without conversion as a dataset whose pixels
decode on indexing, bad rows failing by file and row or skipped (scanned once, cached, reported), and
the settings that say how they decode checked by name."""

from __future__ import annotations

import json

import numpy as np
import pytest
from parquet_files import png, write_digits_parquet, write_plain_parquet

from pitdist.config import ConfigError, DataConfig, config_from_dict
from pitdist.data.arrow import DataError
from pitdist.data.digits import load_digits_dataset
from pitdist.data.parquet_pixels import ParquetPixels
from pitdist.data.registry import load_dataset, split_dataset


@pytest.fixture(scope="module")
def digits_parquet(tmp_path_factory):
    return write_digits_parquet(tmp_path_factory.mktemp("parquet") / "digits"), load_digits_dataset()


@pytest.fixture(autouse=True)
def own_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))


def test_a_parquet_dataset_has_its_sources_ids_labels_and_pixels_in_any_index_order(digits_parquet):
    root, digits = digits_parquet
    data = load_dataset(str(root))
    assert isinstance(data.pixels, ParquetPixels) and data.image_shape == (8, 8, 1)
    np.testing.assert_array_equal(data.ids, digits.ids)
    np.testing.assert_array_equal(data.labels, digits.labels)
    assert data.class_names == digits.class_names
    index = np.random.default_rng(0).permutation(len(data))[:300]  # across both files, any order
    np.testing.assert_array_equal(data.pixels[index], np.asarray(digits.pixels)[index])


def test_the_split_and_its_validation_pixels_equal_those_of_the_same_images_in_memory(digits_parquet):
    root, _ = digits_parquet
    cfg = config_from_dict({"data": {"dataset": str(root)}})
    train, val = split_dataset(cfg)
    mem_train, mem_val = load_digits_dataset().split(cfg.data.val_fraction, seed=cfg.train.seed)
    np.testing.assert_array_equal(train.ids, mem_train.ids)
    np.testing.assert_array_equal(np.asarray(val.pixels), np.asarray(mem_val.pixels))
    assert isinstance(val.pixels, ParquetPixels)  # a selection: still decoded on demand


def test_under_fail_a_bad_image_stops_the_read_naming_file_and_row(tmp_path):
    good = png(np.full((4, 4, 1), 9, np.uint8))
    write_plain_parquet(tmp_path / "a.parquet", [good, good, b"not a png", good], [0, 1, 0, 1])
    data = load_dataset(str(tmp_path / "a.parquet"))  # nothing decoded yet: fail scans nothing up front
    np.testing.assert_array_equal(data.pixels[[0, 1, 3]][:, 0, 0, 0], [9, 9, 9])
    with pytest.raises(DataError, match=r"a\.parquet: row 2 \(id 2\): undecodable image bytes.*bad_rows = skip"):
        data.pixels[[3, 2]]


def test_under_fail_a_label_outside_the_classes_stops_the_load_naming_file_and_row(tmp_path, digits_parquet):
    root, _ = digits_parquet
    write_plain_parquet(tmp_path / "a.parquet", [png(np.zeros((4, 4, 1), np.uint8))] * 3, [0, None, 1])
    with pytest.raises(DataError, match=r"a\.parquet: row 1 \(id 1\): label -1 is outside the 2 classes"):
        load_dataset(str(tmp_path / "a.parquet"))


def test_skip_leaves_bad_rows_out_once_scanned_and_a_changed_file_is_scanned_again(tmp_path):
    good, wide = png(np.full((4, 4, 1), 7, np.uint8)), png(np.zeros((4, 5, 1), np.uint8))
    path = tmp_path / "a.parquet"
    write_plain_parquet(path, [good, b"\x89PNG broken", wide, good, None], [0, 1, 0, 1, 0])
    options = DataConfig(dataset=str(path), bad_rows="skip")
    data = load_dataset(str(path), options)
    np.testing.assert_array_equal(data.ids, [0, 3])
    np.testing.assert_array_equal(data.labels, [0, 1])
    assert [(b.row, b.id) for b in data.skipped] == [(1, 1), (2, 2), (4, 4)]
    assert "4x5, not 4x4" in data.skipped[1].reason
    np.testing.assert_array_equal(data.pixels[:][:, 0, 0, 0], [7, 7])
    (scan,) = (tmp_path / "cache" / "pitdist" / "parquet-scans").glob("*.json")
    assert [r["id"] for r in json.loads(scan.read_text())["bad_rows"]] == [1, 2, 4]
    # The ranks of a run read the driver's scan: the cached list is what they leave out.
    scan.write_text(scan.read_text().replace('"id": 4', '"id": 0'))
    np.testing.assert_array_equal(load_dataset(str(path), options).ids, [3, 4])
    # A rewritten file has another key: scanned afresh.
    write_plain_parquet(path, [good, good, wide], [0, 1, 0])
    assert [b.id for b in load_dataset(str(path), options).skipped] == [2]


def test_resize_decodes_every_size_and_channel_count_to_the_configured_shape(tmp_path):
    rgb = np.zeros((6, 9, 3), np.uint8)
    rgb[..., 1] = 200
    write_plain_parquet(tmp_path / "a.parquet", [png(rgb), png(np.zeros((3, 3, 1), np.uint8))], [0, 1])
    options = DataConfig(dataset="x", image_shape="4x4x3", resize=True)
    pixels = load_dataset(str(tmp_path / "a.parquet"), options).pixels[:]
    assert pixels.shape == (2, 4, 4, 3) and (pixels[0, ..., 1] == 200).all() and pixels[1].max() == 0


@pytest.mark.parametrize(
    "data, message",
    [
        ({"image_shape": "28x28"}, r"data\.image_shape: write HxWxC with C = 1 or 3"),
        ({"image_shape": "28x28x2"}, r"data\.image_shape: write HxWxC with C = 1 or 3"),
        ({"resize": True}, r"data\.resize: needs data\.image_shape"),
        ({"bad_rows": "ignore"}, r"data\.bad_rows"),
    ],
    ids=["two-sides", "two-channels", "resize-without-shape", "unknown-policy"],
)
def test_parquet_settings_are_checked_by_name(data, message):
    with pytest.raises(ConfigError, match=message):
        config_from_dict({"data": data})


def test_a_missing_column_names_the_setting_that_fixes_it(digits_parquet):
    root, _ = digits_parquet
    with pytest.raises(
        DataError, match=r"no label column 'digit' \(columns: \['image', 'label'\]\).*data.label_column"
    ):
        load_dataset(str(root), DataConfig(dataset=str(root), label_column="digit"))
