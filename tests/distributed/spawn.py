"""Run a function on W real gloo ranks (spawned processes) and collect what each returns."""

from __future__ import annotations

import traceback

import torch
import torch.multiprocessing as mp
from torch.multiprocessing.spawn import ProcessException

from pitdist.distributed import comm


def _entry(rank: int, world: int, port: int, fn, args, results) -> None:
    torch.set_num_threads(1)
    try:
        comm.init_process_group(rank, world, "gloo", "127.0.0.1", port)
        results.put((rank, "ok", fn(rank, *args)))
    except BaseException:
        results.put((rank, "error", traceback.format_exc()))
        raise
    finally:
        comm.destroy_process_group()


def run_ranks(world: int, fn, *args) -> list:
    """fn(rank, *args) on every rank of a fresh process group; returns the results in rank order."""
    ctx = mp.get_context("spawn")
    results = ctx.SimpleQueue()
    procs = mp.start_processes(
        _entry, args=(world, comm.free_port(), fn, args, results), nprocs=world, join=False, start_method="spawn"
    )
    received: dict[int, tuple[str, object]] = {}

    def drain() -> None:
        # As results arrive, not after the join: a rank blocks writing a result larger than the pipe
        # holds (as little as one page when the user's pipe quota is used up) until it is read.
        while not results.empty():
            rank, status, payload = results.get()
            received[rank] = (status, payload)

    try:
        while not procs.join(timeout=1.0):
            drain()
    except ProcessException:
        drain()
        errors = [f"--- rank {r} ---\n{p}" for r, (s, p) in sorted(received.items()) if s == "error"]
        raise AssertionError("a rank failed:\n" + "\n".join(errors)) from None
    drain()
    return [received[r][1] for r in range(world)]
