"""Saving and restoring training state: DeepSpeed's checkpoints, in the run directory or through Ray Train.

A checkpoint is DeepSpeed's (every rank's ZeRO partitions, the optimizer, the scheduler) plus a client
state holding the data position, the losses so far and the config. The data position is the step:
both loaders derive (epoch, batch within the epoch) from it (pitdist.train.batches).

``Checkpoints`` writes ``<run dir>/checkpoints/step-N`` and restores ``train.resume``.
``RayCheckpoints`` hands each checkpoint to Ray Train: every rank saves into its own temporary
directory and reports it, and Ray merges the ranks' files into one registered checkpoint (reporting
from rank 0 alone would lose the other ranks' ZeRO shards). After a worker dies, Ray restarts the
worker group and ``ray.train.get_checkpoint()`` returns the latest checkpoint that EVERY rank reported,
which may be older than the last one a rank saved; so the position comes from the checkpoint itself.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

from pitdist.config import ConfigError, JobConfig


def tag(step: int) -> str:
    return f"step-{step}"


def check_resume(cfg: JobConfig) -> None:
    """Refuse a resume target that does not exist before any rank starts."""
    if not cfg.train.resume:
        return
    root = Path(cfg.train.resume)
    want = cfg.train.resume_tag
    if not root.is_dir() or not ((root / want).is_dir() if want else (root / "latest").is_file()):
        found = sorted(p.name for p in root.iterdir() if p.is_dir()) if root.is_dir() else []
        raise ConfigError(
            f"train.resume: {root} holds no checkpoint {want or '(latest)'}; "
            f"tags there: {found or 'none'} (runs save them with --train.checkpoint_every N)"
        )


def load(engine, cfg: JobConfig, path: str, tag_name: str | None) -> tuple[int, list[float]]:
    """Load a checkpoint directory into the engine; return the step to continue from and the losses."""
    loaded, client = engine.load_checkpoint(path, tag=tag_name or None)
    if loaded is None or not client or "step" not in client:
        raise ConfigError(
            f"train.resume: no pitdist checkpoint in {path} (tag {tag_name or 'latest'}); "
            "point it at a run's checkpoints/ directory"
        )
    if client["step"] >= cfg.train.steps:
        raise ConfigError(
            f"train.resume: the checkpoint is at step {client['step']}, but train.steps = "
            f"{cfg.train.steps}; raise train.steps to train further"
        )
    return client["step"], list(client["losses"])


class Checkpoints:
    """Checkpoints in the run directory; ``train.resume`` names one to start from."""

    def __init__(self, cfg: JobConfig, run_dir: Path):
        self.cfg, self.root = cfg, run_dir / "checkpoints"

    def restore(self, engine) -> tuple[int, list[float]]:
        if not self.cfg.train.resume:
            return 0, []
        return load(engine, self.cfg, self.cfg.train.resume, self.cfg.train.resume_tag)

    def client_state(self, step: int, losses: list[float]) -> dict:
        return {"step": step, "losses": losses, "config": self.cfg.to_dict()}

    def save(self, engine, step: int, losses: list[float]) -> None:
        engine.save_checkpoint(str(self.root), tag=tag(step), client_state=self.client_state(step, losses))


class RayCheckpoints(Checkpoints):
    """Checkpoints registered with Ray Train, restored automatically when the worker group restarts."""

    def restore(self, engine) -> tuple[int, list[float]]:
        import ray.train

        checkpoint = ray.train.get_checkpoint()
        if checkpoint is None:
            return super().restore(engine)  # a fresh run, or one resuming an earlier run's checkpoint
        with checkpoint.as_directory() as path:
            return load(engine, self.cfg, path, None)

    def save(self, engine, step: int, losses: list[float]) -> None:
        import ray.train

        scratch = Path(tempfile.mkdtemp(prefix="pitdist-ckpt-"))
        try:
            engine.save_checkpoint(str(scratch), tag=tag(step), client_state=self.client_state(step, losses))
            ray.train.report(
                {"step": step, "loss": losses[-1]},
                checkpoint=ray.train.Checkpoint.from_directory(str(scratch)),
                checkpoint_dir_name=tag(step),
            )
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
