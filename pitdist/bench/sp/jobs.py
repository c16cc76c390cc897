"""`pitdist bench sp`, rank side: what each spawned rank runs, its P's jobs in order."""

from __future__ import annotations

import sys
import time

from pitdist.bench.sp.largest import search_job
from pitdist.bench.sp.steps import step_job


def rank_main(rank: int, world: int, cfg_dict: dict, jobs: list[dict], channels: int) -> list[dict]:
    import logging

    import deepspeed

    from pitdist.config import config_from_dict
    from pitdist.distributed.mesh import Mesh
    from pitdist.parallel_dims import ParallelDims

    deepspeed.utils.logger.setLevel(logging.WARNING)
    cfg = config_from_dict(cfg_dict)
    mesh = Mesh(ParallelDims(1, world))

    def log(message: str) -> None:
        if rank == 0:
            print(f"[bench sp] {message}", file=sys.stderr, flush=True)

    out = []
    for job in jobs:
        if job.get("skip"):
            out.append({**job, "skipped": job["skip"]})
            continue
        start = time.perf_counter()
        if job["kind"] == "step":
            log(
                f"P={world}: {job['part']} {job['height']}x{job['width']} "
                f"({job['warmup']} warm-up + {job['steps']} steps)"
            )
            result = step_job(cfg, mesh, job, channels)
        else:
            result = search_job(cfg, mesh, job, channels, log)
        result["wall_s"] = time.perf_counter() - start
        log(f"P={world}: {job['part']} done in {result['wall_s']:.1f} s")
        out.append(result)
    return out
