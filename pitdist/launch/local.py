"""Run a job on this machine: in this process (world 1) or as one spawned process per rank (gloo)."""

from __future__ import annotations

import os
import time
import traceback
from pathlib import Path

import torch
import torch.multiprocessing as mp
from torch.multiprocessing.spawn import ProcessException

from pitdist.config import JobConfig, config_from_dict
from pitdist.distributed import comm
from pitdist.distributed.mesh import Mesh
from pitdist.parallel_dims import ParallelDims
from pitdist.train.engine import resolve_device
from pitdist.train.trainer import RunResult, train


def make_run_dir(cfg: JobConfig) -> Path:
    run_dir = Path(cfg.train.output_dir).absolute() / f"{cfg.name}-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}"
    run_dir.mkdir(parents=True, exist_ok=False)
    return run_dir


def threads_per_rank(cfg: JobConfig) -> int:
    return cfg.train.threads or max(1, (os.cpu_count() or 1) // cfg.parallel.world_size)


def run_rank(rank: int, cfg_dict: dict, port: int, run_dir: str, results=None) -> RunResult:
    """One rank's whole life: join the group, build the mesh, train, leave."""
    cfg = config_from_dict(cfg_dict)
    torch.set_num_threads(threads_per_rank(cfg))
    quiet_deepspeed()
    world = cfg.parallel.world_size
    backend = comm.pick_backend(cfg.parallel.backend)
    try:
        comm.init_process_group(rank, world, backend, "127.0.0.1", port)
        mesh = Mesh(ParallelDims.from_config(cfg.parallel))
        result = train(cfg, mesh, resolve_device(cfg.train.device, rank), Path(run_dir))
        comm.barrier()
    except BaseException:
        if results is not None:
            results.put((rank, "error", traceback.format_exc()))
        raise
    finally:
        comm.destroy_process_group()
    if results is not None and rank == 0:
        results.put((rank, "ok", result))
    return result


def quiet_deepspeed() -> None:
    """DeepSpeed logs at INFO/WARNING about things that are expected here (CPU accelerator, scheduler
    not started at init); keep its errors, drop the rest from pitdist's output."""
    import logging
    import warnings

    from deepspeed.utils import logger

    logger.setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", message=".*all_gather_into_tensor.*is deprecated", category=FutureWarning)


class LaunchError(RuntimeError):
    """A rank failed; the message carries its traceback."""


def launch_local(cfg: JobConfig, run_dir: Path) -> RunResult:
    """Run all Q * P ranks on this machine and return rank 0's result.

    If any rank fails, the others are terminated (none is left waiting in a collective) and the first
    failing rank's traceback is raised.
    """
    port = comm.free_port()
    world = cfg.parallel.world_size
    if cfg.parallel.launcher == "single":
        return run_rank(0, cfg.to_dict(), port, str(run_dir))
    ctx = mp.get_context("spawn")
    results = ctx.SimpleQueue()
    procs = mp.start_processes(
        run_rank, args=(cfg.to_dict(), port, str(run_dir), results), nprocs=world, join=False, start_method="spawn"
    )
    try:
        while not procs.join(timeout=1.0):
            pass
    except ProcessException as exc:
        errors = []
        while not results.empty():
            rank, status, payload = results.get()
            if status == "error":
                errors.append(f"rank {rank}:\n{payload}")
        raise LaunchError(errors[0] if errors else str(exc)) from None
    while not results.empty():
        rank, status, payload = results.get()
        if status == "ok":
            return payload
    raise LaunchError("training finished but rank 0 reported no result")
