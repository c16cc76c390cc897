"""`pitdist bench sp`, driver side: check the options and plan each P's jobs before any rank starts."""

from __future__ import annotations

import argparse

from pitdist.bench.common import (
    BenchOptionError,
    mem_available,
    one_image_job,
    only_model_overrides,
    patch_tokens,
    size_fields,
    size_name,
)

NUM_CLASSES = 10
# Model defaults: PiT-Tiny's width and depth (192, 12) with 4 heads so P = 1, 2, 4 all divide them.
DEFAULT_MODEL = ["--model.size", "tiny", "--model.heads", "4", "--model.pos_embed", "sincos"]
PARTS = ("memory", "time", "search", "big", "train")
GIB = 1024**3


def tokens(side: int, patch: int) -> int:
    """The tokens of a square image (the search part's sides)."""
    return (side // patch) ** 2


def shard(model_cfg, num_tokens: int, p: int) -> int:
    """S: the token slots each of P ranks runs an image of ``num_tokens`` pixel tokens on (padded; the
    CLS token counts when the model pools by it)."""
    from pitdist.parallel_dims import TokenShards

    return TokenShards(num_tokens, p, cls=model_cfg.pool == "cls").shard


def _estimate_rank_bytes(model_cfg, tokens_per_rank: int) -> int:
    """Rough per-rank memory of one training step: ~17 floats of D saved per token and layer (measured
    16.1 for the default model), x1.3 for backward transients, + ~0.7 GiB for the process itself."""
    saved = 17 * model_cfg.width * model_cfg.num_layers * 4 * tokens_per_rank * model_cfg.mlp_ratio / 4
    return int(1.3 * saved + 0.7 * GIB)


def _check_numbers(args: argparse.Namespace) -> None:
    for name in (
        "channels",
        "warmup",
        "steps",
        "search_start",
        "search_max_side",
        "big_sp",
        "train_sp",
        "train_steps",
        "threads_total",
    ):
        value = getattr(args, name)
        lowest = (
            1
            if name
            in (
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

    def check(p: int, size: tuple[int, int] | None, option: str) -> None:
        """Any image runs on any P (its shards are padded); what is refused is a P the heads cannot
        split, and an image the patches do not tile."""
        if size is not None:
            patch_tokens(size, patch, option)
        try:
            ParallelDims(1, p).validate(heads=m.num_heads)
        except ValueError as exc:
            where = f"{option} {size_name(size)} with P = {p}" if size is not None else f"{option} {p}"
            raise type(exc)(f"{where}: {exc}") from None

    jobs: dict[int, list[dict]] = {p: [] for p in sps}
    step_sizes = []
    if "memory" in parts:
        step_sizes.append(args.image_size)
    if "time" in parts:
        step_sizes += [s for s in args.time_sizes if s not in step_sizes]
    for p in sps:
        for size in step_sizes:
            check(p, size, "--image-size" if size == args.image_size and "memory" in parts else "--time-sizes")
            timed = "time" in parts and size in args.time_sizes
            jobs[p].append(
                {
                    "kind": "step",
                    "part": "step",
                    **size_fields(size),
                    "warmup": args.warmup if timed else 0,
                    "steps": args.steps if timed else 1,
                    "measure": True,
                }
            )
    if "search" in parts:
        for p in sps:
            check(p, None, "--sp")  # the heads (every side then runs, padded)
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
    if "train" in parts:
        check(args.train_sp, args.train_side, "--train-side")
        jobs.setdefault(args.train_sp, []).append(
            {
                "kind": "step",
                "part": "train",
                **size_fields(args.train_side),
                "warmup": 0,
                "steps": args.train_steps,
                "measure": True,
            }
        )
    if "big" in parts:
        check(args.big_sp, args.big_side, "--big-side")
        jobs.setdefault(args.big_sp, []).append(
            {"kind": "step", "part": "big", **size_fields(args.big_side), "warmup": 0, "steps": 1, "measure": True}
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
            num_tokens = (job["height"] // patch) * (job["width"] // patch)
            need = p * _estimate_rank_bytes(m, shard(m, num_tokens, p))
            job["estimated_total_bytes"] = need
            if need > available - GIB and not force:
                job["skip"] = (
                    f"estimated {need / GIB:.1f} GiB for {p} ranks but {available / GIB:.1f} GiB available "
                    f"(--force runs it anyway)"
                )
                notes.append(f"{job['part']} {job['height']}x{job['width']} P={p}: skipped, {job['skip']}")
    return notes
