"""`pitdist bench sp`, driver side: check the options and plan each P's jobs before any rank starts."""

from __future__ import annotations

import argparse

from pitdist.bench.common import BenchOptionError, mem_available, one_image_job, only_model_overrides

NUM_CLASSES = 10
# Model defaults: PiT-Tiny's width and depth (192, 12) with 4 heads so P = 1, 2, 4 all divide them.
DEFAULT_MODEL = ["--model.size", "tiny", "--model.heads", "4", "--model.pos_embed", "sincos"]
PARTS = ("memory", "time", "search", "big", "train")
GIB = 1024**3


def tokens(side: int, patch: int) -> int:
    return (side // patch) ** 2


def _estimate_rank_bytes(model_cfg, tokens_per_rank: int) -> int:
    """Rough per-rank memory of one training step: ~17 floats of D saved per token and layer (measured
    16.1 for the default model), x1.3 for backward transients, + ~0.7 GiB for the process itself."""
    saved = 17 * model_cfg.width * model_cfg.num_layers * 4 * tokens_per_rank * model_cfg.mlp_ratio / 4
    return int(1.3 * saved + 0.7 * GIB)


def _check_numbers(args: argparse.Namespace) -> None:
    for name in (
        "image_size",
        "channels",
        "warmup",
        "steps",
        "search_start",
        "search_max_side",
        "big_side",
        "big_sp",
        "train_side",
        "train_sp",
        "train_steps",
        "threads_total",
    ):
        value = getattr(args, name)
        lowest = (
            1
            if name
            in (
                "image_size",
                "channels",
                "steps",
                "search_start",
                "search_max_side",
                "big_sp",
                "train_sp",
                "train_steps",
            )
            else 0
        )
        if value < lowest:
            raise BenchOptionError(f"--{name.replace('_', '-')}: must be >= {lowest}, got {value}")
    if args.cap_gib <= 0:
        raise BenchOptionError(f"--cap-gib: must be > 0, got {args.cap_gib}")


def plan(args: argparse.Namespace, overrides: list[str]):
    """Validate options and return (JobConfig, {P: [job, ...]}, notes).

    Raises ConfigError, MeshError or BenchOptionError."""
    from pitdist.parallel_dims import ParallelDims

    only_model_overrides(overrides, "sp")
    cfg = one_image_job(
        DEFAULT_MODEL, overrides, "--train.steps", "1000", "--train.seed", str(args.seed), "--train.dtype", "fp32"
    )
    m = cfg.model
    patch = m.patch_size
    _check_numbers(args)
    sps = sorted(set(args.sp))
    if 1 not in sps:
        raise BenchOptionError(
            f"--sp {','.join(map(str, args.sp))}: must include 1, the baseline every ratio is taken against"
        )
    parts = args.parts

    def check(p: int, side: int, option: str) -> None:
        if side % patch:
            raise BenchOptionError(f"{option} {side}: not divisible by model.patch_size = {patch}")
        try:
            ParallelDims(1, p).validate(heads=m.num_heads, num_tokens=tokens(side, patch))
        except ValueError as exc:
            raise type(exc)(f"{option} {side} with P = {p}: {exc}") from None

    jobs: dict[int, list[dict]] = {p: [] for p in sps}
    step_sides = []
    if "memory" in parts:
        step_sides.append(args.image_size)
    if "time" in parts:
        step_sides += [s for s in args.time_sizes if s not in step_sides]
    for p in sps:
        for side in step_sides:
            check(p, side, "--image-size" if side == args.image_size and "memory" in parts else "--time-sizes")
            timed = "time" in parts and side in args.time_sizes
            jobs[p].append(
                {
                    "kind": "step",
                    "part": "step",
                    "side": side,
                    "warmup": args.warmup if timed else 0,
                    "steps": args.steps if timed else 1,
                    "measure": True,
                }
            )
    if "search" in parts:
        for p in sps:
            # Heads first (a side cannot fix them); sides are then filtered to tokens % P == 0.
            check(p, p * patch if p > 1 else patch, "--sp")
            jobs[p].append(
                {
                    "kind": "search",
                    "part": "search",
                    "cap_bytes": int(args.cap_gib * GIB),
                    "start": args.search_start,
                    "max_side": args.search_max_side,
                    "patch": patch,
                }
            )
    if "train" in parts and args.train_side:
        check(args.train_sp, args.train_side, "--train-side")
        jobs.setdefault(args.train_sp, []).append(
            {
                "kind": "step",
                "part": "train",
                "side": args.train_side,
                "warmup": 0,
                "steps": args.train_steps,
                "measure": True,
            }
        )
    if "big" in parts and args.big_side:
        check(args.big_sp, args.big_side, "--big-side")
        jobs.setdefault(args.big_sp, []).append(
            {"kind": "step", "part": "big", "side": args.big_side, "warmup": 0, "steps": 1, "measure": True}
        )
    return cfg, {p: j for p, j in sorted(jobs.items()) if j}, _skip_too_big(jobs, m, patch, args.force)


def _skip_too_big(jobs: dict[int, list[dict]], m, patch: int, force: bool) -> list[str]:
    """Mark the step jobs whose estimated memory exceeds what the machine has (unless --force); the notes."""
    notes = []
    available = mem_available()
    for p, p_jobs in jobs.items():
        for job in p_jobs:
            if job["kind"] != "step" or available is None:
                continue
            need = p * _estimate_rank_bytes(m, tokens(job["side"], patch) // p)
            job["estimated_total_bytes"] = need
            if need > available - GIB and not force:
                job["skip"] = (
                    f"estimated {need / GIB:.1f} GiB for {p} ranks but {available / GIB:.1f} GiB available "
                    f"(--force runs it anyway)"
                )
                notes.append(f"{job['part']} {job['side']}x{job['side']} P={p}: skipped, {job['skip']}")
    return notes
