"""The training loop every rank runs, whatever launched it (single process, local spawn, Ray)."""

from __future__ import annotations

import contextlib
import json
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from pitdist.config import ConfigError, JobConfig
from pitdist.data.dataset import PixelDataset, load_dataset
from pitdist.data.sharding import BatchSchedule
from pitdist.distributed import comm, sharded_pe
from pitdist.distributed.ledger import CommLedger
from pitdist.distributed.parallel_dims import Mesh, ParallelDims
from pitdist.distributed.parallelize import consolidated_state_dict, is_sharded, parallelize
from pitdist.metrics.crosscheck import C10dCounter, comms_logger_totals, reset_comms_logger
from pitdist.metrics.flops import flops_per_image
from pitdist.models.pit import build_model, pixels_to_tokens
from pitdist.models.pos_embed import LearnedPosEmbed
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

    def tokens(self, index: np.ndarray, data: PixelDataset | None = None) -> torch.Tensor:
        """This rank's tokens of images ``index`` of ``data`` (default: the training set)."""
        pixels = torch.from_numpy((data or self.data).pixels[index])
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
        pred = model(batches.tokens(index, data), batches.positions).argmax(dim=-1).cpu()
        correct += int((pred == torch.from_numpy(data.labels[index])).sum())
    model.train()
    counts = torch.tensor([correct, len(share)], dtype=torch.float64, device=batches.device)
    comm.all_reduce_(counts, mesh.dp_group, category="eval")
    return float(counts[0] / counts[1])


class StepLog:
    """Rank 0's progress bar and metrics.jsonl: loss, images/s, tokens/s, achieved TFLOP/s."""

    def __init__(self, cfg: JobConfig, run_dir: Path, enabled: bool, tokens_per_image: int, image_flops: float):
        self.cfg, self.enabled = cfg, enabled
        self.tokens_per_image, self.image_flops = tokens_per_image, image_flops
        self.file = (run_dir / "metrics.jsonl").open("w") if enabled else None
        self.bar = tqdm(total=cfg.train.steps, desc=f"train {cfg.name}", disable=not enabled, dynamic_ncols=True,
                        mininterval=0.1 if sys.stderr.isatty() else 5.0)
        self.window_start, self.window_steps = time.perf_counter(), 0

    def step(self, step: int, loss: float, lr: float) -> None:
        self.window_steps += 1
        self.bar.update(1)
        if (step + 1) % self.cfg.train.log_every and step + 1 != self.cfg.train.steps:
            return
        images_per_s = self.window_steps * self.cfg.train.batch_size / (time.perf_counter() - self.window_start)
        record = {"step": step + 1, "loss": loss, "lr": lr, "images_per_s": images_per_s,
                  "tokens_per_s": images_per_s * self.tokens_per_image,
                  "tflops": images_per_s * self.image_flops / 1e12}
        self.bar.set_postfix(loss=f"{loss:.4f}", img_s=f"{images_per_s:.0f}")
        if self.file:
            self.file.write(json.dumps(record) + "\n")
            self.file.flush()
        self.window_start, self.window_steps = time.perf_counter(), 0

    def close(self) -> None:
        self.bar.close()
        if self.file:
            self.file.close()


def train(cfg: JobConfig, mesh: Mesh, device: torch.device, run_dir: Path) -> RunResult:
    """Train on this rank; every rank returns the same RunResult."""
    train_data, val_data = split_dataset(cfg)
    validate_mesh(cfg, train_data.image_shape, world_size=mesh.world_size)
    dtype = resolve_dtype(cfg.train.dtype, device)

    ledger = CommLedger(mesh.rank)
    if cfg.metrics.ledger:
        ledger.install()
        for name in ("sp", "dp", "sdp"):
            ledger.name_group(getattr(mesh, f"{name}_group"), name)
    try:
        torch.manual_seed(cfg.train.seed)  # identical initial weights on every rank
        model = build_model(cfg.model, train_data.image_shape, train_data.num_classes)
        model = parallelize(model, mesh, cfg.model).to(device)
        if cfg.metrics.ledger:
            if cfg.model.shard_pos_embed and mesh.sp > 1:
                ledger.name_group(sharded_pe.pe_dp_group(mesh.sp), "pe_dp")
            ledger.watch_layers(model.blocks)
        engine = build_engine(model, cfg, mesh, dtype)

        schedule = BatchSchedule(len(train_data), cfg.train.batch_size, cfg.train.seed, cfg.data.shuffle)
        batches = LocalBatches(train_data, schedule, mesh, cfg.model.patch_size, device, dtype)
        image_flops = flops_per_image(cfg.model, batches.num_tokens, train_data.image_shape[2], train_data.num_classes)
        log = StepLog(cfg, run_dir, mesh.rank == 0, batches.num_tokens, image_flops)
        first_step, losses = resume(engine, cfg)
        with contextlib.ExitStack() as stack:
            counter = stack.enter_context(C10dCounter()) if cfg.metrics.crosscheck else None
            if counter is not None:
                reset_comms_logger()
            start = time.perf_counter()
            for step in range(first_step, cfg.train.steps):
                ledger.step = step
                _, tokens, labels = batches(step)
                with ledger.in_phase("forward"):
                    loss = F.cross_entropy(engine(tokens, batches.positions).float(), labels)
                with ledger.in_phase("backward"):
                    # Every SP rank computes the same group loss and DeepSpeed SUMS gradients over SP
                    # ranks: dividing by P makes the summed gradient that of the group's mean loss.
                    engine.backward(loss / mesh.sp)
                with ledger.in_phase("optimizer"):
                    engine.step()
                with ledger.in_phase("metrics"):
                    # The global mean loss, for the log: one 4-byte all-reduce over the DP group.
                    total = comm.all_reduce_(loss.detach().float().reshape(1), mesh.dp_group, category="metrics")
                losses.append(float(total) / mesh.dp)
                log.step(step, losses[-1], engine.get_lr()[0])
                every = cfg.train.checkpoint_every
                if every and ((step + 1) % every == 0 or step + 1 == cfg.train.steps):
                    with ledger.in_phase("checkpoint"):
                        # The batch schedule is a function of the step, so the step is the data position.
                        engine.save_checkpoint(str(run_dir / "checkpoints"), tag=f"step-{step + 1}",
                                               client_state={"step": step + 1, "losses": losses})
            wall = time.perf_counter() - start
        log.close()
        crosscheck = {"c10d": dict(counter.totals), "comms_logger": comms_logger_totals()} if counter else None
        ledger.step = None
        with ledger.in_phase("eval"):
            accuracy = (evaluate(engine.module, batches, val_data, cfg.train.eval_batch_size)
                        if cfg.train.evaluate else float("nan"))
            state = consolidated_state_dict(engine.module, mesh)  # whole PE table even when sharded
    finally:
        ledger.uninstall()

    write_comm_record(run_dir, mesh, ledger, engine, train_data, crosscheck)
    images_per_s = (cfg.train.steps - first_step) * cfg.train.batch_size / wall
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
    if mesh.rank == 0:
        torch.save(state, run_dir / "model.pt")
        (run_dir / "config.json").write_text(json.dumps(cfg.to_dict(), indent=1))
        (run_dir / "result.json").write_text(json.dumps(asdict(result), indent=1))
    return result


def validate_job(cfg: JobConfig) -> None:
    """Everything that can be refused before any rank starts: data, mesh, resume target."""
    train_data, _ = split_dataset(cfg)
    validate_mesh(cfg, train_data.image_shape)
    check_resume(cfg)


def check_resume(cfg: JobConfig) -> None:
    """Refuse a resume target that does not exist before any rank starts."""
    if not cfg.train.resume:
        return
    root = Path(cfg.train.resume)
    tag = cfg.train.resume_tag
    if not root.is_dir() or not ((root / tag).is_dir() if tag else (root / "latest").is_file()):
        found = sorted(p.name for p in root.iterdir() if p.is_dir()) if root.is_dir() else []
        raise ConfigError(f"train.resume: {root} holds no checkpoint {tag or '(latest)'}; "
                          f"tags there: {found or 'none'} (runs save them with --train.checkpoint_every N)")


def resume(engine, cfg: JobConfig) -> tuple[int, list[float]]:
    """Load ``train.resume`` into the engine; return the step to continue from and the losses so far."""
    if not cfg.train.resume:
        return 0, []
    path, client = engine.load_checkpoint(cfg.train.resume, tag=cfg.train.resume_tag or None)
    if path is None or not client or "step" not in client:
        raise ConfigError(f"train.resume: no pitdist checkpoint in {cfg.train.resume} "
                          f"(tag {cfg.train.resume_tag or 'latest'}); point it at a run's checkpoints/ directory")
    if client["step"] >= cfg.train.steps:
        raise ConfigError(f"train.resume: the checkpoint is at step {client['step']}, but train.steps = "
                          f"{cfg.train.steps}; raise train.steps to train further")
    return client["step"], list(client["losses"])


def write_comm_record(run_dir: Path, mesh: Mesh, ledger: CommLedger, engine, data: PixelDataset,
                      crosscheck: dict | None) -> None:
    """comm/rank<r>.json: this rank's ledger rows, plus what the report needs to attribute them."""
    grads = [p for p in engine.module.parameters() if p.requires_grad]
    pe = engine.module.pos_embed
    # A sharded table is a ShardedLearnedPosEmbed, reduced apart from the engine's bucket.
    replicated_pe = pe.weight.numel() if isinstance(pe, LearnedPosEmbed) else 0
    record = {
        "rank": mesh.rank, "dp_rank": mesh.dp_rank, "sp_rank": mesh.sp_rank, "dp": mesh.dp, "sp": mesh.sp,
        "image_shape": list(data.image_shape), "num_classes": data.num_classes,
        # The engine reduces these gradient elements together; the replicated PE table is one share.
        "engine_grad_elements": sum(p.numel() for p in grads if not is_sharded(p)),
        "replicated_pe_elements": replicated_pe,
        "rows": ledger.rows(),
        "crosscheck": crosscheck,
    }
    comm_dir = run_dir / "comm"
    comm_dir.mkdir(exist_ok=True)
    (comm_dir / f"rank{mesh.rank}.json").write_text(json.dumps(record))
