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

from pitdist.config import JobConfig
from pitdist.data.audit import IdLog
from pitdist.data.dataset import PixelDataset, load_dataset
from pitdist.data.sharding import BatchSchedule
from pitdist.distributed import comm, sharded_pe
from pitdist.distributed.ledger import CommLedger
from pitdist.distributed.parallel_dims import Mesh, ParallelDims
from pitdist.distributed.parallelize import consolidated_state_dict, is_sharded, parallelize
from pitdist.metrics.crosscheck import C10dCounter, comms_logger_totals, reset_comms_logger
from pitdist.metrics.flops import flops_per_image
from pitdist.metrics.prometheus import metrics_exporter
from pitdist.models.pit import build_model
from pitdist.models.pos_embed import LearnedPosEmbed
from pitdist.train.batches import LocalBatches, StreamedBatches
from pitdist.train.checkpoint import Checkpoints, check_resume
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
    ParallelDims.from_config(cfg.parallel).validate(
        heads=cfg.model.num_heads, num_tokens=tokens, world_size=world_size
    )


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

    def __init__(self, cfg: JobConfig, run_dir: Path, enabled: bool, tokens_per_image: int, image_flops: float,
                 first_step: int = 0):
        self.cfg, self.enabled = cfg, enabled
        self.tokens_per_image, self.image_flops = tokens_per_image, image_flops
        # A restored run continues the file (the steps it replays appear again, later).
        self.file = (run_dir / "metrics.jsonl").open("a" if first_step else "w") if enabled else None
        self.bar = tqdm(total=cfg.train.steps, initial=first_step, desc=f"train {cfg.name}", disable=not enabled,
                        dynamic_ncols=True, mininterval=0.1 if sys.stderr.isatty() else 5.0)
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


def train(cfg: JobConfig, mesh: Mesh, device: torch.device, run_dir: Path, *,
          checkpoints: Checkpoints | None = None, data_stream=None) -> RunResult:
    """Train on this rank; every rank returns the same RunResult.

    ``data_stream`` = (this worker's Ray Data shard, rows in the training split) selects the streamed
    loader; ``checkpoints`` decides where checkpoints go (default: the run directory).
    """
    train_data, val_data = split_dataset(cfg)
    validate_mesh(cfg, train_data.image_shape, world_size=mesh.world_size)
    dtype = resolve_dtype(cfg.train.dtype, device)
    checkpoints = checkpoints or Checkpoints(cfg, run_dir)

    ledger = CommLedger(mesh.rank)
    if cfg.metrics.ledger:
        ledger.install()
        # Hybrid SP's subgroups (None without a hybrid) first: where one is the whole SP group, "sp" wins.
        for name in ("ulysses", "ring"):
            if getattr(mesh, f"{name}_group") is not None:
                ledger.name_group(getattr(mesh, f"{name}_group"), name)
        for name in ("sp", "dp", "sdp"):
            ledger.name_group(getattr(mesh, f"{name}_group"), name)
    id_log = IdLog(run_dir, mesh.rank)
    exporter = None
    try:
        torch.manual_seed(cfg.train.seed)  # identical initial weights on every rank
        model = build_model(cfg.model, train_data.image_shape, train_data.num_classes)
        model = parallelize(model, mesh, cfg.model).to(device)
        if cfg.metrics.ledger:
            if cfg.model.shard_pos_embed and mesh.sp > 1:
                ledger.name_group(sharded_pe.pe_dp_group(mesh.sp), "pe_dp")
            ledger.watch_layers(model.blocks)
        engine = build_engine(model, cfg, mesh, dtype)

        if data_stream is None:
            schedule = BatchSchedule(len(train_data), cfg.train.batch_size, cfg.train.seed, cfg.data.shuffle)
            batches = LocalBatches(train_data, schedule, mesh, cfg.model.patch_size, device, dtype)
        else:
            shard, num_rows = data_stream
            batches = StreamedBatches(shard, num_rows, train_data, cfg, mesh, device, dtype)
        image_flops = flops_per_image(cfg.model, batches.num_tokens, train_data.image_shape[2], train_data.num_classes)
        first_step, losses = checkpoints.restore(engine)
        log = StepLog(cfg, run_dir, mesh.rank == 0, batches.num_tokens, image_flops, first_step)
        exporter = metrics_exporter(cfg, mesh, run_dir.name, ledger, engine.module, device=device,
                                    tokens_per_image=batches.num_tokens, image_flops=image_flops)
        with contextlib.ExitStack() as stack:
            counter = stack.enter_context(C10dCounter()) if cfg.metrics.crosscheck else None
            if counter is not None:
                reset_comms_logger()
            start = time.perf_counter()
            step_times: list[dict] = []
            for step in range(first_step, cfg.train.steps):
                ledger.step = step
                step_start = time.perf_counter()
                with ledger.in_phase("data"):
                    ids, tokens, labels = batches(step)
                t_data = time.perf_counter()
                data_wait = t_data - step_start
                id_log.write(step, step // batches.steps_per_epoch, ids)
                with ledger.in_phase("forward"):
                    loss = F.cross_entropy(engine(tokens, batches.positions).float(), labels)
                t_fwd = time.perf_counter()
                with ledger.in_phase("backward"):
                    # Every SP rank computes the same group loss and DeepSpeed SUMS gradients over SP
                    # ranks: dividing by P makes the summed gradient that of the group's mean loss.
                    engine.backward(loss / mesh.sp)
                t_bwd = time.perf_counter()
                with ledger.in_phase("optimizer"):
                    engine.step()
                t_opt = time.perf_counter()
                with ledger.in_phase("metrics"):
                    # The global mean loss, for the log: one 4-byte all-reduce over the DP group.
                    total = comm.all_reduce_(loss.detach().float().reshape(1), mesh.dp_group, category="metrics")
                losses.append(float(total) / mesh.dp)
                log.step(step, losses[-1], engine.get_lr()[0])
                # Wall time of each phase on this rank; with the ledger's seconds per category this
                # splits a step into compute, communication and data wait (pitdist bench steptime).
                step_s = time.perf_counter() - step_start
                step_times.append({"step": step, "data_s": data_wait, "forward_s": t_fwd - t_data,
                                   "backward_s": t_bwd - t_fwd, "optimizer_s": t_opt - t_bwd, "total_s": step_s})
                exporter.on_step(step, losses[-1], step_s, data_wait)
                every = cfg.train.checkpoint_every
                if every and ((step + 1) % every == 0 or step + 1 == cfg.train.steps):
                    with ledger.in_phase("checkpoint"):
                        checkpoints.save(engine, step + 1, losses)
            wall = time.perf_counter() - start
        log.close()
        crosscheck = {"c10d": dict(counter.totals), "comms_logger": comms_logger_totals()} if counter else None
        ledger.step = None
        with ledger.in_phase("eval"):
            accuracy = (evaluate(engine.module, batches, val_data, cfg.train.eval_batch_size)
                        if cfg.train.evaluate else float("nan"))
            state = consolidated_state_dict(engine.module, mesh)  # whole PE table even when sharded
    except BaseException:
        if exporter is not None:
            exporter.close(wait=False)  # a failed rank: no final scrape to wait for; withdraw its target
        raise
    finally:
        ledger.uninstall()
        id_log.close()

    write_comm_record(run_dir, mesh, ledger, engine, train_data, crosscheck, streamed=data_stream is not None,
                      step_times=step_times)
    exporter.close()  # after a scrape of the final values (evaluation included), or metrics.prometheus_linger_s
    images_per_s = (cfg.train.steps - first_step) * cfg.train.batch_size / wall
    result = RunResult(
        losses=losses,
        val_accuracy=accuracy,
        images_per_s=images_per_s,
        tokens_per_s=images_per_s * batches.num_tokens,
        tflops=images_per_s * image_flops / 1e12,
        wall_s=wall,
        steps=cfg.train.steps,
        dropped_per_epoch=batches.dropped_per_epoch,
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


def write_comm_record(run_dir: Path, mesh: Mesh, ledger: CommLedger, engine, data: PixelDataset,
                      crosscheck: dict | None, streamed: bool, step_times: list[dict] | None = None) -> None:
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
        "data_loader": "ray_data" if streamed else "memory",  # ray_data adds the SP groups' data gathers
        "rows": ledger.rows(),
        "crosscheck": crosscheck,
        "step_times": step_times or [],  # this rank's wall seconds per phase, per training step
    }
    comm_dir = run_dir / "comm"
    comm_dir.mkdir(exist_ok=True)
    (comm_dir / f"rank{mesh.rank}.json").write_text(json.dumps(record))
