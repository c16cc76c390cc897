"""What can be refused before any rank starts: the dataset, the mesh, the resume target."""

from __future__ import annotations

from pitdist.config import JobConfig
from pitdist.data.registry import split_dataset
from pitdist.parallel_dims import ParallelDims
from pitdist.train.checkpoint import check_resume


def validate_mesh(cfg: JobConfig, image_shape: tuple[int, int, int], world_size: int | None = None) -> None:
    """MeshError (naming what would work) when the DP x SP layout cannot run this model on these images."""
    h, w, _ = image_shape
    tokens = (h // cfg.model.patch_size) * (w // cfg.model.patch_size)
    ParallelDims.from_config(cfg.parallel).validate(heads=cfg.model.num_heads, num_tokens=tokens, world_size=world_size)


def validate_job(cfg: JobConfig) -> None:
    """Load the data (DataError if unreadable), check the mesh and the resume target (ConfigError)."""
    train_data, _ = split_dataset(cfg)
    validate_mesh(cfg, train_data.image_shape)
    check_resume(cfg)
