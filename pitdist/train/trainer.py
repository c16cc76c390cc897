"""The training loop every rank runs, whatever launched it (single process, local spawn, Ray)."""

from __future__ import annotations

import json
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from pitdist.config import JobConfig
from pitdist.data.dataset import PixelDataset, load_dataset
from pitdist.data.sharding import BatchSchedule
from pitdist.distributed import comm
from pitdist.distributed.parallel_dims import Mesh, ParallelDims
from pitdist.distributed.parallelize import consolidated_state_dict, parallelize
from pitdist.metrics.flops import flops_per_image
from pitdist.models.pit import build_model, pixels_to_tokens
from pitdist.train.engine import build_engine, resolve_dtype


@dataclass
class RunResult:
    """What rank 0 reports when a run ends."""

    losses: list[float]  # global mean training loss of every step
    val_accuracy: float
    images_per_s: float
    tokens_per_s: float
    tflops: float  # achieved training TFLOP/s over all ranks (for MFU against a peak)
    wall_s: float
    steps: int
    dropped_per_epoch: int
    run_dir: str
    extra: dict = field(default_factory=dict)


def split_dataset(cfg: JobConfig) -> tuple[PixelDataset, PixelDataset]:
    return load_dataset(cfg.data.dataset).split(cfg.data.val_fraction, seed=cfg.train.seed)


def validate_mesh(cfg: JobConfig, image_shape: tuple[int, int, int], world_size: int | None = None) -> None:
    h, w, _ = image_shape
    tokens = (h // cfg.model.patch_size) * (w // cfg.model.patch_size)
    ParallelDims(cfg.parallel.dp, cfg.parallel.sp).validate(
        heads=cfg.model.num_heads, num_tokens=tokens, world_size=world_size
    )


class LocalBatches:
    """This rank's slice of each step's batch: its DP group's images, its SP rank's tokens."""

    def __init__(self, data: PixelDataset, schedule: BatchSchedule, mesh: Mesh, patch_size: int,
                 device: torch.device, dtype: torch.dtype):
        self.data, self.schedule, self.mesh = data, schedule, mesh
        self.patch_size, self.device, self.dtype = patch_size, device, dtype
        h, w, _ = data.image_shape
        self.num_tokens = (h // patch_size) * (w // patch_size)
        self.token_range = mesh.token_range(self.num_tokens)
        self.positions = torch.arange(*self.token_range, device=device)

    def tokens(self, index: np.ndarray) -> torch.Tensor:
        pixels = torch.from_numpy(self.data.pixels[index])
        return pixels_to_tokens(pixels, self.patch_size, self.token_range).to(self.device, self.dtype)

    def __call__(self, step: int) -> tuple[np.ndarray, torch.Tensor, torch.Tensor]:
        index = self.schedule.dp_indices(step, self.mesh.dp_rank, self.mesh.dp)
        labels = torch.from_numpy(self.data.labels[index]).to(self.device)
        return self.data.ids[index], self.tokens(index), labels


@torch.no_grad()
def evaluate(model: torch.nn.Module, batches: LocalBatches, data: PixelDataset, batch_size: int) -> float:
    """Accuracy on ``data``: each DP group scores a contiguous share, counts are summed over DP."""
    mesh = batches.mesh
    model.eval()
    share = np.array_split(np.arange(len(data)), mesh.dp)[mesh.dp_rank]
    correct = 0
    for start in range(0, len(share), batch_size):
        index = share[start : start + batch_size]
        pixels = torch.from_numpy(data.pixels[index])
        tokens = pixels_to_tokens(pixels, batches.patch_size, batches.token_range).to(batches.device, batches.dtype)
        pred = model(tokens, batches.positions).argmax(dim=-1).cpu()
        correct += int((pred == torch.from_numpy(data.labels[index])).sum())
    model.train()
    counts = torch.tensor([correct, len(share)], dtype=torch.float64, device=batches.device)
    comm.all_reduce_(counts, group=mesh.dp_group)
    return float(counts[0] / counts[1])


def train(cfg: JobConfig, mesh: Mesh, device: torch.device, run_dir: Path) -> RunResult:
    """Train on this rank; every rank returns the same RunResult."""
    is_main = mesh.rank == 0
    train_data, val_data = split_dataset(cfg)
    validate_mesh(cfg, train_data.image_shape, world_size=mesh.world_size)
    dtype = resolve_dtype(cfg.train.dtype, device)

    torch.manual_seed(cfg.train.seed)  # identical initial weights on every rank
    model = build_model(cfg.model, train_data.image_shape, train_data.num_classes)
    model = parallelize(model, mesh, cfg.model).to(device)
    engine = build_engine(model, cfg, mesh, dtype)

    schedule = BatchSchedule(len(train_data), cfg.train.batch_size, cfg.train.seed, cfg.data.shuffle)
    batches = LocalBatches(train_data, schedule, mesh, cfg.model.patch_size, device, dtype)
    image_flops = flops_per_image(cfg.model, batches.num_tokens, train_data.image_shape[2], train_data.num_classes)

    metrics_file = (run_dir / "metrics.jsonl").open("w") if is_main else None
    losses: list[float] = []
    bar = tqdm(total=cfg.train.steps, desc=f"train {cfg.name}", disable=not is_main, dynamic_ncols=True,
               mininterval=0.1 if sys.stderr.isatty() else 5.0)
    window_start, window_steps = time.perf_counter(), 0
    start = time.perf_counter()
    for step in range(cfg.train.steps):
        _, tokens, labels = batches(step)
        logits = engine(tokens, batches.positions)
        loss = F.cross_entropy(logits.float(), labels)
        # Every SP rank computes the same group loss and DeepSpeed SUMS gradients over SP ranks:
        # dividing by P makes the summed gradient that of the group's mean loss.
        engine.backward(loss / mesh.sp)
        engine.step()

        # The global mean loss, for the log: one 4-byte all-reduce over the DP group.
        global_loss = comm.all_reduce_(loss.detach().float().reshape(1), group=mesh.dp_group) / mesh.dp
        losses.append(float(global_loss))
        window_steps += 1
        bar.update(1)
        if (step + 1) % cfg.train.log_every == 0 or step + 1 == cfg.train.steps:
            elapsed = time.perf_counter() - window_start
            images_per_s = window_steps * cfg.train.batch_size / elapsed
            record = {
                "step": step + 1,
                "loss": losses[-1],
                "lr": engine.get_lr()[0],
                "images_per_s": images_per_s,
                "tokens_per_s": images_per_s * batches.num_tokens,
                "tflops": images_per_s * image_flops / 1e12,
            }
            bar.set_postfix(loss=f"{record['loss']:.4f}", img_s=f"{images_per_s:.0f}")
            if metrics_file:
                metrics_file.write(json.dumps(record) + "\n")
                metrics_file.flush()
            window_start, window_steps = time.perf_counter(), 0
    wall = time.perf_counter() - start
    bar.close()

    accuracy = evaluate(engine.module, batches, val_data, cfg.train.eval_batch_size)
    state = consolidated_state_dict(engine.module, mesh)  # whole PE table even when sharded
    images_per_s = cfg.train.steps * cfg.train.batch_size / wall
    result = RunResult(
        losses=losses,
        val_accuracy=accuracy,
        images_per_s=images_per_s,
        tokens_per_s=images_per_s * batches.num_tokens,
        tflops=images_per_s * image_flops / 1e12,
        wall_s=wall,
        steps=cfg.train.steps,
        dropped_per_epoch=schedule.dropped_per_epoch,
        run_dir=str(run_dir),
    )
    if is_main:
        metrics_file.close()
        torch.save(state, run_dir / "model.pt")
        (run_dir / "result.json").write_text(json.dumps(asdict(result), indent=1))
    return result
