"""What can be refused before any rank starts: the dataset, the mesh, the resume target."""

from __future__ import annotations

import torch

from pitdist.config import ConfigError, JobConfig
from pitdist.data.registry import split_dataset
from pitdist.parallel_dims import ParallelDims
from pitdist.train.checkpoint import check_resume


def validate_mesh(cfg: JobConfig, image_shape: tuple[int, int, int], world_size: int | None = None) -> None:
    """MeshError (naming what would work) when the DP x SP layout cannot run this model; any image can
    (its token shards are padded), given whole patches (ConfigError otherwise)."""
    h, w, _ = image_shape
    p = cfg.model.patch_size
    if h % p or w % p:
        raise ConfigError(
            f"model.patch_size: {p} does not divide the dataset's {h}x{w} images; choose a patch size that "
            f"divides both {h} and {w}"
        )
    ParallelDims.from_config(cfg.parallel).validate(heads=cfg.model.num_heads, world_size=world_size)


def check_offload(cfg: JobConfig, device_type: str) -> None:
    """train.checkpoint_offload moves what checkpointing keeps off a GPU: on CPU it would only copy."""
    if cfg.train.checkpoint_offload and device_type != "cuda":
        raise ConfigError(
            "train.checkpoint_offload: moves what activation checkpointing keeps from GPU to host memory, "
            f"but this run trains on {device_type}, where both are the same memory; drop "
            "--train.checkpoint_offload (checkpointing alone already keeps only the checkpointed inputs)"
        )


def validate_job(cfg: JobConfig) -> None:
    """Load the data (DataError if unreadable), check the mesh and the resume target (ConfigError)."""
    train_data, _ = split_dataset(cfg, progress=True)  # a bad-row scan of Parquet images shows a bar
    validate_mesh(cfg, train_data.image_shape)
    here = cfg.parallel.launcher != "ray"  # the ranks run on this machine: their device is known now
    if cfg.train.device == "cpu" or (here and cfg.train.device == "auto" and not torch.cuda.is_available()):
        check_offload(cfg, "cpu")
    check_resume(cfg)
