"""Run a function on W real gloo ranks spawned on this machine and collect what each returns.

The benchmarks' own launcher (the tests have a similar one; pitdist's package never imports tests).
Each rank is a fresh ``spawn`` process with ``threads`` torch intra-op threads, joined to a new gloo
process group on a free localhost port. If any rank fails, the others are terminated (none is left
waiting in a collective) and the failing ranks' tracebacks are raised as BenchError.
"""

from __future__ import annotations

import traceback


class BenchError(RuntimeError):
    """A benchmark rank failed; the message carries its traceback."""


def _entry(rank: int, world: int, port: int, threads: int, fn, args, results) -> None:
    import torch

    from pitdist.distributed import comm

    torch.set_num_threads(threads)
    try:
        comm.init_process_group(rank, world, "gloo", "127.0.0.1", port)
        results.put((rank, "ok", fn(rank, world, *args)))
    except BaseException:
        results.put((rank, "error", traceback.format_exc()))
        raise
    finally:
        comm.destroy_process_group()


def run_ranks(world: int, threads: int, fn, *args) -> list:
    """``fn(rank, world, *args)`` on every rank of a fresh gloo group; the results in rank order."""
    import torch.multiprocessing as mp

    from pitdist.distributed import comm

    ctx = mp.get_context("spawn")
    results = ctx.SimpleQueue()
    procs = mp.start_processes(
        _entry,
        args=(world, comm.free_port(), threads, fn, args, results),
        nprocs=world,
        join=False,
        start_method="spawn",
    )
    out: dict[int, object] = {}
    try:
        while not procs.join(timeout=1.0):
            while not results.empty():  # drain as we go: a full pipe would block a finishing rank
                rank, status, payload = results.get()
                out[rank] = (status, payload)
    except (mp.ProcessRaisedException, mp.ProcessExitedException) as exc:
        while not results.empty():
            rank, status, payload = results.get()
            out[rank] = (status, payload)
        errors = [f"--- rank {r} ---\n{p}" for r, (s, p) in sorted(out.items()) if s == "error"]
        raise BenchError("\n".join(errors) if errors else str(exc)) from None
    while not results.empty():
        rank, status, payload = results.get()
        out[rank] = (status, payload)
    missing = [r for r in range(world) if r not in out]
    if missing:
        raise BenchError(f"ranks {missing} finished without reporting a result")
    return [out[r][1] for r in range(world)]
