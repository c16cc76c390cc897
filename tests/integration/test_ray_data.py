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
    """30x20x1 from shards and 5x7x3 from memory (both paths of the training plan): H and W never swap."""
    from pitdist.data.ray_epochs import epoch_plan
    from pitdist.data.ray_reader import iter_pixel_batches, ray_dataset

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
    plan, n = epoch_plan(train, "synthetic:5x7x3:20", seed=0, shuffle=False, block_rows=8)
    got = np.concatenate([p for p, _, _ in iter_pixel_batches(plan.dataset(0), train.image_shape, 8)])
    assert n == 20 and got.shape == (20, 5, 7, 3) and np.array_equal(got, train.pixels)


def test_ray_reader_validates_before_reading(ray_local, tmp_path):
    from pitdist.data.ray_reader import ray_dataset

    root = convert(make_source("digits", None, None), tmp_path / "d", rows_per_shard=1000, progress=False)
    shard = root / "shard-00001.arrow"
    shard.write_bytes(shard.read_bytes()[:-8])
    with pytest.raises(DataError, match="shard-00001.arrow: .* bytes but the manifest says"):
        ray_dataset(root)


@pytest.mark.parametrize("kind", ["arrow", "parquet", "memory"])
def test_every_epoch_streams_each_training_image_once_in_a_new_order_reproducible_from_seed_and_epoch(
    ray_local, tmp_path, kind
):
    from parquet_files import write_digits_parquet

    from pitdist.data.ray_epochs import epoch_plan
    from pitdist.data.ray_reader import iter_pixel_batches

    source = {
        "arrow": lambda: str(
            convert(make_source("digits", None, None), tmp_path / "d", rows_per_shard=400, progress=False)
        ),
        "parquet": lambda: str(write_digits_parquet(tmp_path / "pq", split=900)),
        "memory": lambda: "digits",
    }[kind]()
    train, _ = load_dataset(source).split(0.2, seed=0)

    def ids(epoch: int, shuffle: bool = True) -> list[int]:
        plan, n = epoch_plan(train, source, seed=3, shuffle=shuffle, block_rows=100)
        assert n == len(train)
        return [
            int(i) for _, batch, _ in iter_pixel_batches(plan.dataset(epoch), train.image_shape, 256) for i in batch
        ]

    first, second = ids(0), ids(1)
    assert sorted(first) == sorted(second) == sorted(train.ids.tolist())  # every image once per epoch
    assert first != second  # a new order (and so new shares of the equal split) every epoch
    assert ids(1) == second  # a pure function of (seed, epoch): a resumed run re-creates it
    assert ids(0, shuffle=False) == train.ids.tolist()  # data.shuffle = false: the dataset's own order
