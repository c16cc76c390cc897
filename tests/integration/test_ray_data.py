"""Ray Data reading of a pitdist dataset on a real local Ray instance (started and shut down here)."""

import os
from pathlib import Path

import numpy as np
import pytest

from pitdist.data.arrow import DataError
from pitdist.data.convert import Source, convert, make_source
from pitdist.data.registry import load_dataset

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def ray_local():
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    bootstrap = Path.home() / "ray_bootstrap_config.yaml"  # stops Ray probing a cloud metadata address
    if not bootstrap.exists():
        bootstrap.write_text("{}\n")
    import ray

    ray.init(num_cpus=4, include_dashboard=False, log_to_driver=False)
    try:
        yield ray
    finally:
        ray.shutdown()


def test_ray_batches_equal_the_local_dataset_in_order(ray_local, tmp_path):
    from pitdist.data.ray_reader import iter_pixel_batches, ray_dataset

    root = convert(make_source("digits", None, None), tmp_path / "d", rows_per_shard=400, progress=False)
    ds, shape, names = ray_dataset(root)
    assert shape == (8, 8, 1) and names == [str(i) for i in range(10)]
    batches = list(iter_pixel_batches(ds, shape, 256))
    assert all(
        p.dtype == np.uint8 and p.shape[1:] == (8, 8, 1) and len(p) == len(i) == len(lab) for p, i, lab in batches
    )
    pixels, ids, labels = (np.concatenate(parts) for parts in zip(*batches))
    local = load_dataset(str(root))
    assert np.array_equal(ids, local.ids)  # preserve_order: shard order, row order
    assert np.array_equal(labels, local.labels) and np.array_equal(pixels, np.asarray(local.pixels))


def test_ray_batches_of_rectangular_images_are_b_h_w_c(ray_local, tmp_path):
    """30x20x1 from shards and 5x7x3 from memory (training_rows' two paths): H and W never swap."""
    from pitdist.data.ray_reader import iter_pixel_batches, ray_dataset, training_rows

    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, (50, 30, 20, 1), np.uint8)
    source = Source((30, 20, 1), ["a", "b"], 50, lambda: iter([(np.arange(50) % 2, pixels)]), "random 30x20x1")
    root = convert(source, tmp_path / "rect", rows_per_shard=16, progress=False)
    ds, shape, _ = ray_dataset(root)
    assert shape == (30, 20, 1)
    batches = list(iter_pixel_batches(ds, shape, 16))
    assert [p.shape for p, _, _ in batches] == [(16, 30, 20, 1)] * 3 + [(2, 30, 20, 1)]
    assert np.array_equal(np.concatenate([p for p, _, _ in batches]), pixels)

    train = load_dataset("synthetic:5x7x3:20")
    rows, n = training_rows(train, "synthetic:5x7x3:20")
    got = np.concatenate([p for p, _, _ in iter_pixel_batches(rows, train.image_shape, 8)])
    assert n == 20 and got.shape == (20, 5, 7, 3) and np.array_equal(got, train.pixels)


def test_ray_reader_validates_before_reading(ray_local, tmp_path):
    from pitdist.data.ray_reader import ray_dataset

    root = convert(make_source("digits", None, None), tmp_path / "d", rows_per_shard=1000, progress=False)
    shard = root / "shard-00001.arrow"
    shard.write_bytes(shard.read_bytes()[:-8])
    with pytest.raises(DataError, match="shard-00001.arrow: .* bytes but the manifest says"):
        ray_dataset(root)
