"""What every gpu-check section runs inside: a time limit, the guard that records a failure, the
process group, and the engine and batch of a job."""

from __future__ import annotations

import argparse
import contextlib
import gc
import signal
import threading
import time
import traceback
from collections.abc import Callable, Iterator
from pathlib import Path

from pitdist.bench.common import BenchOptionError
from pitdist.bench.gpu_check.plan import GRACE, NUM_CLASSES, plan


class SectionTimeout(Exception):
    """A section ran past its budget (SIGALRM); what it measured before that is kept."""


class InjectedFailure(RuntimeError):
    """--fail SECTION: the section fails on purpose (the test of the guard)."""


# --- options -----------------------------------------------------------------------------------------


# --- the guard -----------------------------------------------------------------------------------------


@contextlib.contextmanager
def time_limit(seconds: float) -> Iterator[None]:
    """Raise SectionTimeout in this (main) thread after ``seconds``. A blocking C call (a CUDA sync, a
    collective) is not interrupted; the exception comes when it returns, which is soon on one rank."""
    if seconds <= 0 or threading.current_thread() is not threading.main_thread() or not hasattr(signal, "setitimer"):
        yield
        return

    def on_alarm(signum, frame):
        raise SectionTimeout(f"stopped after {seconds:.0f} s, past its budget")

    previous = signal.signal(signal.SIGALRM, on_alarm)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def run_section(name: str, fn: Callable[[dict], None], budget: float, fail: bool) -> dict:
    """Run one section into a record of its own: status ok / error, seconds, its budget, and whatever
    ``fn`` wrote into the record before it finished or failed (a failing section keeps its partial
    results). Never raises, except KeyboardInterrupt."""
    record: dict = {"status": "running", "budget_s": round(budget, 1)}
    start = time.perf_counter()
    try:
        with time_limit(budget * GRACE + 10):
            if fail:
                raise InjectedFailure(f"--fail {name}: this section fails on purpose")
            fn(record)
        record["status"] = "ok"
    except KeyboardInterrupt:
        raise
    except BaseException as exc:  # noqa: BLE001 - the point: record anything, keep going
        record["status"] = "error"
        record["error"] = f"{type(exc).__name__}: {exc}"
        record["traceback"] = traceback.format_exc().splitlines()[-12:]
    finally:
        record["seconds"] = round(time.perf_counter() - start, 2)
        free_device_memory()
    return record


def free_device_memory() -> None:
    gc.collect()
    try:
        import torch

        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    except Exception:  # noqa: BLE001 - a broken CUDA context shows up in the next section's error
        pass


@contextlib.contextmanager
def process_group(backend: str) -> Iterator[None]:
    """A one-rank process group (deepspeed.comm) for the in-process engines of one section."""
    from pitdist.distributed import comm

    comm.init_process_group(0, 1, backend, "127.0.0.1", comm.free_port())
    try:
        yield
    finally:
        comm.destroy_process_group()


# --- shared pieces ---------------------------------------------------------------------------------------


class Context:
    """What the sections share: device, dtype, backend, where runs go, and what earlier sections measured."""

    def __init__(self, args: argparse.Namespace, work: Path):
        import torch

        self.cpu = args.cpu
        if not args.cpu and not torch.cuda.is_available():
            raise BenchOptionError("no CUDA device is visible; run with --cpu for the CPU check")
        self.device = torch.device("cpu") if args.cpu else torch.device("cuda", 0)
        if not args.cpu:
            torch.cuda.set_device(0)
        self.device_kind = "cpu" if args.cpu else "cuda"
        self.backend = "gloo" if args.cpu else "nccl"
        self.dtype = torch.float32 if args.cpu else torch.bfloat16  # what training uses here by default
        self.dtype_name = "fp32" if args.cpu else "bf16"
        self.plan = plan(args.cpu)
        self.work = work
        self.args = args
        self.measured: dict = {}  # step times the accuracy section sizes its grid from


def job(ctx: Context, model: list[str], *settings: str):
    """A validated one-rank job on this device (the bench's sizes set the rest)."""
    from pitdist.config import load_config

    return load_config(
        None,
        [
            *model,
            "--parallel.launcher",
            "single",
            "--parallel.sp",
            "1",
            "--parallel.backend",
            ctx.backend,
            "--train.device",
            ctx.device_kind,
            "--optim.warmup_steps",
            "1",
            "--train.output_dir",
            str(ctx.work),
            *settings,
        ],
    )


def engine_and_batch(ctx: Context, cfg, image: tuple[int, int, int], batch: int, dtype):
    """(mesh, engine, a random Batch on the device) for ``cfg``: one rank, the job's checkpointing policy."""
    import torch

    from pitdist.distributed.mesh import Mesh
    from pitdist.distributed.parallelize import parallelize
    from pitdist.models.pit import build_model, pixels_to_tokens
    from pitdist.parallel_dims import ParallelDims
    from pitdist.train.engine import build_engine
    from pitdist.train.step import Batch

    mesh = Mesh(ParallelDims(1, 1))
    torch.manual_seed(cfg.train.seed)
    h, w, c = image
    model = build_model(cfg.model, image, NUM_CLASSES)
    model = parallelize(
        model,
        mesh,
        cfg.model,
        cfg.train.activation_checkpointing,
        cfg.train.selective_every,
        offload=cfg.train.checkpoint_offload,
    ).to(ctx.device)
    engine = build_engine(model, cfg, mesh, dtype)
    gen = torch.Generator().manual_seed(cfg.train.seed + 1)
    pixels = torch.randint(0, 256, (batch, h, w, c), dtype=torch.uint8, generator=gen)
    labels = torch.randint(0, NUM_CLASSES, (batch,), generator=gen)
    tokens = pixels_to_tokens(pixels, cfg.model.patch_size).to(ctx.device, dtype)
    positions = torch.arange(tokens.shape[1], device=ctx.device)
    return mesh, engine, Batch(tokens, positions, labels.to(ctx.device))


def synchronize(ctx: Context) -> None:
    if not ctx.cpu:
        import torch

        torch.cuda.synchronize()


def dtype_of(name: str):
    import torch

    return {"fp32": torch.float32, "bf16": torch.bfloat16}[name]
