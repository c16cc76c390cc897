"""The training run every rank executes, whatever launched it (single process, local spawn, Ray).

Three parts, as in torchtitan's train.py: ``setup`` builds everything a run needs (data, model, engine,
instrumentation, restored state) into a ``Run``; ``loop`` calls pitdist.train.step.train_step once per
step, timed and logged; ``finish`` evaluates, gathers the plain model and writes the run directory.
"""

from __future__ import annotations

import contextlib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from pitdist.config import JobConfig
from pitdist.data.audit import IdLog
from pitdist.data.dataset import PixelDataset
from pitdist.data.registry import split_dataset
from pitdist.data.sharding import BatchSchedule
from pitdist.distributed import comm
from pitdist.distributed.mesh import Mesh
from pitdist.distributed.parallelize import consolidated_state_dict, gradient_elements, overlaps_ulysses, parallelize
from pitdist.models.pit import build_model
from pitdist.observe.categories import Category, Phase
from pitdist.observe.crosscheck import C10dCounter, comms_logger_totals, reset_comms_logger
from pitdist.observe.flops import flops_per_image
from pitdist.observe.ledger import CommLedger, clock_for
from pitdist.observe.prometheus import metrics_exporter
from pitdist.observe.timer import StepTimer
from pitdist.train.batches import LocalBatches, StreamedBatches
from pitdist.train.checkpoint import Checkpoints
from pitdist.train.engine import build_engine, resolve_dtype
from pitdist.train.evaluate import evaluate
from pitdist.train.step import train_step
from pitdist.train.step_log import StepLog
from pitdist.train.validate import check_offload, validate_mesh


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
    skipped_rows: int = 0  # bad rows of the source left out (data.bad_rows = skip; data/skipped.json)


@dataclass
class Run:
    """Everything one rank's run holds between setup and finish."""

    cfg: JobConfig
    mesh: Mesh
    run_dir: Path
    engine: object
    batches: LocalBatches
    train_data: PixelDataset
    val_data: PixelDataset
    checkpoints: Checkpoints
    ledger: CommLedger
    timer: StepTimer
    log: StepLog
    exporter: object
    id_log: IdLog
    image_flops: float
    first_step: int
    streamed: bool
    losses: list[float] = field(default_factory=list)
    crosscheck: dict | None = None


def train(
    cfg: JobConfig,
    mesh: Mesh,
    device: torch.device,
    run_dir: Path,
    *,
    checkpoints: Checkpoints | None = None,
    data_stream=None,
) -> RunResult:
    """Train on this rank; every rank returns the same RunResult.

    ``data_stream`` = (this worker's Ray Data shard, rows in the training split) selects the streamed
    loader; ``checkpoints`` decides where checkpoints go (default: the run directory).
    """
    ledger = CommLedger(mesh.rank, clock_for(device.type, sync=cfg.metrics.ledger_sync))
    id_log = IdLog(run_dir, mesh.rank)
    run = None
    try:
        run = setup(cfg, mesh, device, run_dir, ledger, id_log, checkpoints or Checkpoints(cfg, run_dir), data_stream)
        loop(run)
        accuracy, state = evaluate_and_gather(run)
    except BaseException:
        if run is not None:
            run.exporter.close(wait=False)  # a failed rank: no final scrape to wait for; withdraw its target
        raise
    finally:
        ledger.uninstall()
        id_log.close()
    return finish(run, accuracy, state)


def setup(
    cfg: JobConfig,
    mesh: Mesh,
    device: torch.device,
    run_dir: Path,
    ledger: CommLedger,
    id_log: IdLog,
    checkpoints: Checkpoints,
    data_stream,
) -> Run:
    train_data, val_data = split_dataset(cfg)
    validate_mesh(cfg, train_data.image_shape, world_size=mesh.world_size)
    check_offload(cfg, device.type)
    dtype = resolve_dtype(cfg.train.dtype, device)
    if cfg.metrics.ledger:
        ledger.install()
        ledger.name_groups(mesh)
    torch.manual_seed(cfg.train.seed)  # identical initial weights on every rank
    model = build_model(cfg.model, train_data.image_shape, train_data.num_classes)
    policy = cfg.train.activation_checkpointing
    overlap = overlaps_ulysses(cfg.parallel.overlap_comm, device.type, mesh.dims, policy)
    offload = cfg.train.checkpoint_offload
    model = parallelize(model, mesh, cfg.model, policy, cfg.train.selective_every, overlap, offload).to(device)
    if cfg.metrics.ledger:
        ledger.watch_layers(model.blocks)
    engine = build_engine(model, cfg, mesh, dtype)
    if data_stream is None:
        schedule = BatchSchedule(len(train_data), cfg.train.batch_size, cfg.train.seed, cfg.data.shuffle)
        batches = LocalBatches(
            train_data, schedule, mesh, cfg.model.patch_size, device, dtype, cls=cfg.model.pool == "cls"
        )
    else:
        streams, num_rows = data_stream
        batches = StreamedBatches(streams, num_rows, train_data, cfg, mesh, device, dtype)
    image_flops = flops_per_image(cfg.model, batches.num_tokens, train_data.image_shape[2], train_data.num_classes)
    first_step, losses = checkpoints.restore(engine)
    engine_elements, pe_elements = gradient_elements(engine.module)
    return Run(
        cfg=cfg,
        mesh=mesh,
        run_dir=run_dir,
        engine=engine,
        batches=batches,
        train_data=train_data,
        val_data=val_data,
        checkpoints=checkpoints,
        ledger=ledger,
        timer=StepTimer(ledger if cfg.metrics.ledger else None),
        log=StepLog(cfg, run_dir, mesh.rank == 0, batches.num_tokens, image_flops, first_step),
        exporter=metrics_exporter(
            cfg,
            mesh,
            run_dir.name,
            ledger,
            pe_elements / engine_elements,
            device=device,
            tokens_per_image=batches.num_tokens,
            image_flops=image_flops,
        ),
        id_log=id_log,
        image_flops=image_flops,
        first_step=first_step,
        streamed=data_stream is not None,
        losses=losses,
    )


def loop(run: Run) -> None:
    """Steps first_step .. train.steps - 1, with both cross-check counters when metrics.crosscheck."""
    cfg, mesh, timer = run.cfg, run.mesh, run.timer
    with contextlib.ExitStack() as stack:
        counter = stack.enter_context(C10dCounter()) if cfg.metrics.crosscheck else None
        if counter is not None:
            reset_comms_logger()
        for step in range(run.first_step, cfg.train.steps):
            with timer.step(step):
                with timer.phase(Phase.DATA):
                    batch = run.batches(step)
                run.id_log.write(step, step // run.batches.steps_per_epoch, batch.ids)
                record = train_step(run.engine, batch, mesh, timer.phase)
                with timer.phase(Phase.METRICS):
                    # The global mean loss, for the log: one 4-byte all-reduce over the DP group.
                    total = comm.all_reduce_(record.loss.float().reshape(1), mesh.dp_group, category=Category.METRICS)
                run.losses.append(float(total) / mesh.dp)
                every = cfg.train.checkpoint_every
                if every and ((step + 1) % every == 0 or step + 1 == cfg.train.steps):
                    with timer.phase(Phase.CHECKPOINT):
                        run.checkpoints.save(run.engine, step + 1, run.losses)
            run.log.step(step, run.losses[-1], run.engine.get_lr()[0], timer.last.total_s)
            run.exporter.on_step(step, run.losses[-1], timer.last.total_s, timer.last.data_s)
    run.log.close()
    if counter is not None:
        run.crosscheck = {"c10d": dict(counter.totals), "comms_logger": comms_logger_totals()}


def evaluate_and_gather(run: Run) -> tuple[float, dict]:
    """Held-out accuracy and the plain model's state dict (whole PE table even when sharded)."""
    run.timer.outside_steps()
    with run.ledger.in_phase(Phase.EVAL):
        accuracy = (
            evaluate(run.engine.module, run.batches, run.val_data, run.cfg.train.eval_batch_size)
            if run.cfg.train.evaluate
            else float("nan")
        )
        state = consolidated_state_dict(run.engine.module, run.mesh)
    return accuracy, state


def finish(run: Run, accuracy: float, state: dict) -> RunResult:
    """Write this rank's records (and, on rank 0, the run's) and return the result."""
    cfg, mesh, batches = run.cfg, run.mesh, run.batches
    write_comm_record(run)
    run.timer.write(run.run_dir, mesh.rank)
    run.exporter.close()  # after a scrape of the final values (evaluation included), or metrics.prometheus_linger_s
    wall = run.timer.wall_s
    images_per_s = (cfg.train.steps - run.first_step) * cfg.train.batch_size / wall
    result = RunResult(
        losses=run.losses,
        val_accuracy=accuracy,
        images_per_s=images_per_s,
        tokens_per_s=images_per_s * batches.num_tokens,
        tflops=images_per_s * run.image_flops / 1e12,
        wall_s=wall,
        steps=cfg.train.steps,
        dropped_per_epoch=batches.dropped_per_epoch,
        run_dir=str(run.run_dir),
        skipped_rows=len(run.train_data.skipped),
    )
    if mesh.rank == 0:
        if run.train_data.skipped:  # the data ledger's record of what the source held but nobody trained on
            rows = [asdict(b) for b in run.train_data.skipped]
            (run.run_dir / "data" / "skipped.json").write_text(json.dumps({"count": len(rows), "rows": rows}, indent=1))
        torch.save(state, run.run_dir / "model.pt")
        (run.run_dir / "config.json").write_text(json.dumps(cfg.to_dict(), indent=1))
        (run.run_dir / "result.json").write_text(json.dumps(asdict(result), indent=1))
    return result


def write_comm_record(run: Run) -> None:
    """comm/rank<r>.json: this rank's ledger rows, plus what the report needs to attribute them."""
    mesh, data = run.mesh, run.train_data
    engine_elements, pe_elements = gradient_elements(run.engine.module)
    record = {
        "rank": mesh.rank,
        "dp_rank": mesh.dp_rank,
        "sp_rank": mesh.sp_rank,
        "dp": mesh.dp,
        "sp": mesh.sp,
        "image_shape": list(data.image_shape),
        "num_classes": data.num_classes,
        # The engine reduces these gradient elements together; the replicated PE table is one share.
        "engine_grad_elements": engine_elements,
        "replicated_pe_elements": pe_elements,
        "data_loader": "ray_data" if run.streamed else "memory",  # ray_data adds the SP groups' data gathers
        "rows": run.ledger.rows(),
        "crosscheck": run.crosscheck,
    }
    comm_dir = run.run_dir / "comm"
    comm_dir.mkdir(exist_ok=True)
    (comm_dir / f"rank{mesh.rank}.json").write_text(json.dumps(record))
