"""Which dataset a job names, loaded and split: the one place ``data.dataset`` is interpreted."""

from __future__ import annotations

from pitdist.config import ConfigError, DataConfig, JobConfig
from pitdist.data.dataset import PixelDataset, synthetic_dataset


def load_dataset(name: str, options: DataConfig | None = None, progress: bool = False) -> PixelDataset:
    """``options``: how a Parquet dataset decodes (columns, shape, bad rows); the defaults otherwise."""
    if name == "digits":
        from pitdist.data.digits import load_digits_dataset

        return load_digits_dataset()
    if name.startswith("synthetic:"):
        return synthetic_dataset(name)
    from pitdist.data.arrow import is_arrow_dataset, open_arrow_dataset
    from pitdist.data.parquet import is_parquet_source

    if not is_arrow_dataset(name) and is_parquet_source(name):
        from pitdist.data.parquet_pixels import parquet_dataset

        return parquet_dataset(name, options or DataConfig(dataset=name), progress)
    if is_arrow_dataset(name) or "/" in name or name.startswith("."):
        # A directory written by `pitdist data convert`: validated, pixels memory-mapped (DataError if bad).
        ds = open_arrow_dataset(name)
        return PixelDataset(ds.ids, ds.labels, ds.pixels, ds.class_names, str(ds.path))  # type: ignore[arg-type]
    raise ConfigError(
        f"data.dataset = {name!r}: use 'digits', synthetic:HxWxC[:COUNT], a directory written by "
        "`pitdist data convert`, or Parquet files of encoded images (a .parquet file, a directory or a glob)"
    )


def split_dataset(cfg: JobConfig, progress: bool = False) -> tuple[PixelDataset, PixelDataset]:
    """The job's (training, validation) split: deterministic in ``train.seed``; with
    ``data.val_dataset``, all of ``data.dataset`` and that dataset."""
    data = load_dataset(cfg.data.dataset, cfg.data, progress)
    if not cfg.data.val_dataset:
        return data.split(cfg.data.val_fraction, seed=cfg.train.seed)
    val = load_dataset(cfg.data.val_dataset, cfg.data, progress)
    if val.image_shape != data.image_shape or val.num_classes != data.num_classes:
        h, w, c = data.image_shape
        vh, vw, vc = val.image_shape
        raise ConfigError(
            f"data.val_dataset = {cfg.data.val_dataset!r}: its {vh}x{vw}x{vc} images of {val.num_classes} "
            f"classes do not match data.dataset's {h}x{w}x{c} of {data.num_classes}; evaluate on a split of "
            "the same dataset (e.g. convert --split test)"
        )
    return data, val
