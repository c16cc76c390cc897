"""Ray Data reading of a pitdist dataset on a real local Ray instance (started and shut down here)."""

import os
from pathlib import Path

import numpy as np
import pytest

from pitdist.data.arrow import DataError
from pitdist.data.convert import convert, make_source
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


def test_ray_reader_validates_before_reading(ray_local, tmp_path):
    from pitdist.data.ray_reader import ray_dataset

    root = convert(make_source("digits", None, None), tmp_path / "d", rows_per_shard=1000, progress=False)
    shard = root / "shard-00001.arrow"
    shard.write_bytes(shard.read_bytes()[:-8])
    with pytest.raises(DataError, match="shard-00001.arrow: .* bytes but the manifest says"):
        ray_dataset(root)
