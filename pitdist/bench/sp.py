"""`pitdist bench sp`: what DeepSpeed-Ulysses sequence parallelism buys a PiT on this machine.

Every figure comes from real gloo ranks spawned here, each running the real pitdist model, wrapped
by ``parallelize()`` and trained by a real DeepSpeed engine (``build_engine``: ZeRO 0, fp32, AdamW),
batch 1 of a random uint8 image, one SP group of P ranks (dp = 1). Parts:

  memory   bytes autograd saves for backward during one forward, per rank, for each P, at one image
           size: counted with torch.autograd.graph.saved_tensors_hooks. Each distinct storage counts
           once (deduplicated by untyped_storage().data_ptr(), its whole nbytes, as that is what is
           kept alive); parameters that autograd saves (weights kept for the input gradient) are
           replicated on every rank, are not activations, and are reported apart. The naive sum
           (every saved tensor's own bytes, every time it is saved) is reported too. Also the
           process-level peak RSS growth of each rank during that step (Linux VmHWM, reset through
           /proc/self/clear_refs; ru_maxrss growth where that reset is not allowed).
  time     wall time of forward + backward + optimizer step, median over steps after warm-up, for
           each P and image size; a step's time is the slowest rank's (ranks barrier before it).
  search   the largest square image side each P can train under a per-rank cap on saved-activation
           bytes: probes (forward only, aborted at the next block once the cap is crossed, so the
           machine never holds more than about cap x P) at doubling sides, then a walk from the side
           a linear fit (bytes = a + b * tokens) predicts; the winner is confirmed by one full
           forward + backward + step.
  big      one full training step at a large image (default 224x224 = 50,176 tokens over 4 ranks).
  train    a few real training steps at a medium image (default 112x112 = 12,544 tokens, P = 4).

Ranks run ``max(1, cores // P)`` torch threads each: with P above the core count they oversubscribe
the cores, and step-time ratios then measure that, not what P devices would do.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import textwrap
import time
from pathlib import Path

from pitdist.bench.options import BenchOptionError, int_list, write_json

INT_LIST = int_list(1, "1,2,4")  # the list-valued options' type

NUM_CLASSES = 10
# Model defaults: PiT-Tiny's width and depth (192, 12) with 4 heads so P = 1, 2, 4 all divide them.
DEFAULT_MODEL = ["--model.size", "tiny", "--model.heads", "4", "--model.pos_embed", "sincos"]
PARTS = ("memory", "time", "search", "big", "train")
GIB = 1024**3


# --- command line ------------------------------------------------------------------------------------


def _parts(text: str) -> list[str]:
    values = [v for v in text.replace(" ", "").split(",") if v]
    bad = [v for v in values if v not in PARTS]
    if bad or not values:
        raise argparse.ArgumentTypeError(f"unknown part(s) {bad or text!r}; choose from {','.join(PARTS)}")
    return values


EPILOG = textwrap.dedent(
    """\
    Model: PiT-Tiny width and depth with 4 heads (dim 192, 12 layers, 4 heads, MLP ratio 4, sin-cos
    position embedding) unless overridden with --model.KEY VALUE, exactly as for `pitdist train`:
      --model.size {nano,tiny,small,base}  --model.dim D  --model.depth L  --model.heads H
      --model.mlp_ratio R  --model.pos_embed {none,sincos,learned}  --model.patch_size p
    Every P must divide the heads and every image's token count (checked before any rank starts).

    Outputs: a table per part on stdout; JSON (--out, rewritten after every group of ranks so a long
    run leaves its finished parts behind) and a PNG plot (--plot) of saved bytes per rank and
    step-time ratio against P.

    Timing on this machine: ranks get max(1, cores // P) threads, so P above the core count
    oversubscribes. Attention cost grows with tokens^2: a 224x224 step (50,176 tokens) takes minutes.

    Examples
      pitdist bench sp                                   # everything, default sizes
      pitdist bench sp --parts memory,time --sp 1,2      # quick
      pitdist bench sp --parts search --cap-gib 2        # largest trainable side under 2 GiB/rank
      pitdist bench sp --image-size 8 --time-sizes 8 --model.dim 64 --model.depth 2 --sp 1,2 \\
          --parts memory,time                            # tiny smoke run (what the test does)
    """
)


def add_parser(sub) -> argparse.ArgumentParser:
    """Register `sp` on the `pitdist bench` sub-command parser."""
    p = sub.add_parser(
        "sp",
        help="sequence parallelism: activation memory, step time and largest trainable image vs P",
        description="Benchmark DeepSpeed-Ulysses sequence parallelism with real gloo ranks on this machine: "
        "saved-activation bytes per rank, step time and the largest trainable image for each SP size P, "
        "using the real pitdist model, parallelize() and a DeepSpeed engine (ZeRO 0, fp32, batch 1 of a "
        "random uint8 image).",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--sp", type=INT_LIST, default=[1, 2, 4], metavar="LIST",
                   help="SP sizes P to compare, comma-separated; must include 1, the baseline of every ratio "
                        "(default: 1,2,4)")
    p.add_argument("--parts", type=_parts, default=list(PARTS), metavar="LIST",
                   help=f"which measurements to run, comma-separated from {','.join(PARTS)} (default: all)")
    p.add_argument("--image-size", type=int, default=28, metavar="SIDE",
                   help="image side (pixels) of the activation-memory part (default: 28, i.e. 784 tokens)")
    p.add_argument("--channels", type=int, default=1, metavar="C", help="image channels C (default: 1)")
    p.add_argument("--time-sizes", type=INT_LIST, default=[28, 56], metavar="LIST",
                   help="image sides of the step-time part, comma-separated (default: 28,56)")
    p.add_argument("--warmup", type=int, default=2, metavar="N", help="untimed warm-up steps before timing (default: 2)")
    p.add_argument("--steps", type=int, default=5, metavar="N", help="timed steps per (P, size); the median is reported "
                                                          "(default: 5)")
    p.add_argument("--cap-gib", type=float, default=1.0, metavar="GIB",
                   help="search part: per-rank cap on saved-activation bytes, in GiB (default: 1.0; with P=4 "
                        "ranks that keeps the machine near 4 x cap + ~0.6 GiB per process)")
    p.add_argument("--search-start", type=int, default=28, metavar="SIDE",
                   help="search part: first probed side; probes double it while a fit predicts it fits "
                        "(default: 28)")
    p.add_argument("--search-max-side", type=int, default=512, metavar="SIDE",
                   help="search part: never probe a side above this (default: 512)")
    p.add_argument("--big-side", type=int, default=224, metavar="SIDE",
                   help="big part: side of the one-step run (default: 224, i.e. 50,176 tokens)")
    p.add_argument("--big-sp", type=int, default=4, metavar="P", help="big part: SP size (default: 4)")
    p.add_argument("--train-side", type=int, default=112, metavar="SIDE",
                   help="train part: side of the few-step training run (default: 112, i.e. 12,544 tokens)")
    p.add_argument("--train-sp", type=int, default=4, metavar="P", help="train part: SP size (default: 4)")
    p.add_argument("--train-steps", type=int, default=3, metavar="N", help="train part: training steps (default: 3)")
    p.add_argument("--threads-total", type=int, default=0, metavar="N",
                   help="cores shared by the ranks; each rank gets max(1, N // P) torch threads "
                        "(default: 0 = the CPUs this process may use)")
    p.add_argument("--seed", type=int, default=0, metavar="N", help="seed of the weights and random images (default: 0)")
    p.add_argument("--out", default=None, metavar="PATH",
                   help="JSON results file (default: runs/bench-sp-<time>.json)")
    p.add_argument("--plot", default=None, metavar="PATH",
                   help="PNG plot file (default: the --out path with .png)")
    p.add_argument("--force", action="store_true",
                   help="run jobs even when their estimated memory exceeds what the machine has available "
                        "(default: such jobs are skipped and reported as skipped)")
    return p


# --- planning (driver) -------------------------------------------------------------------------------


def _tokens(side: int, patch: int) -> int:
    return (side // patch) ** 2


def _cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def _mem_available() -> int | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def _estimate_rank_bytes(model_cfg, tokens_per_rank: int) -> int:
    """Rough per-rank memory of one training step: ~17 floats of D saved per token and layer (measured
    16.1 for the default model), x1.3 for backward transients, + ~0.7 GiB for the process itself."""
    saved = 17 * model_cfg.width * model_cfg.num_layers * 4 * tokens_per_rank * model_cfg.mlp_ratio / 4
    return int(1.3 * saved + 0.7 * GIB)


def plan(args: argparse.Namespace, overrides: list[str]):
    """Validate options and return (JobConfig, {P: [job, ...]}, notes). Raises ConfigError/MeshError/BenchOptionError."""
    from pitdist.config import ConfigError, load_config
    from pitdist.parallel_dims import ParallelDims

    bad = [o for o in overrides if o.startswith("--") and not o.startswith("--model.")]
    if bad:
        raise ConfigError(f"{bad[0]}: `pitdist bench sp` takes only --model.KEY VALUE settings besides its own "
                          f"options (see --help)")
    cfg = load_config(None, [*DEFAULT_MODEL, *overrides,
                             "--parallel.launcher", "local", "--train.batch_size", "1", "--train.steps", "1000",
                             "--train.seed", str(args.seed), "--optim.warmup_steps", "1", "--train.dtype", "fp32"])
    m = cfg.model
    patch = m.patch_size
    for name in ("image_size", "channels", "warmup", "steps", "search_start", "search_max_side", "big_side",
                 "big_sp", "train_side", "train_sp", "train_steps", "threads_total"):
        value = getattr(args, name)
        lowest = 1 if name in ("image_size", "channels", "steps", "search_start", "search_max_side", "big_sp",
                               "train_sp", "train_steps") else 0
        if value < lowest:
            raise BenchOptionError(f"--{name.replace('_', '-')}: must be >= {lowest}, got {value}")
    if args.cap_gib <= 0:
        raise BenchOptionError(f"--cap-gib: must be > 0, got {args.cap_gib}")
    sps = sorted(set(args.sp))
    if 1 not in sps:
        raise BenchOptionError(f"--sp {','.join(map(str, args.sp))}: must include 1, the baseline every ratio is "
                               f"taken against")
    parts = args.parts

    def check(p: int, side: int, option: str) -> None:
        if side % patch:
            raise BenchOptionError(f"{option} {side}: not divisible by model.patch_size = {patch}")
        try:
            ParallelDims(1, p).validate(heads=m.num_heads, num_tokens=_tokens(side, patch))
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
            jobs[p].append({"kind": "step", "part": "step", "side": side, "warmup": args.warmup if timed else 0,
                            "steps": args.steps if timed else 1, "measure": True})
    if "search" in parts:
        for p in sps:
            # Heads first (a side cannot fix them); sides are then filtered to tokens % P == 0.
            check(p, p * patch if p > 1 else patch, "--sp")
            jobs[p].append({"kind": "search", "part": "search", "cap_bytes": int(args.cap_gib * GIB),
                            "start": args.search_start, "max_side": args.search_max_side, "patch": patch})
    if "train" in parts and args.train_side:
        check(args.train_sp, args.train_side, "--train-side")
        jobs.setdefault(args.train_sp, []).append({"kind": "step", "part": "train", "side": args.train_side,
                                                   "warmup": 0, "steps": args.train_steps, "measure": True})
    if "big" in parts and args.big_side:
        check(args.big_sp, args.big_side, "--big-side")
        jobs.setdefault(args.big_sp, []).append({"kind": "step", "part": "big", "side": args.big_side,
                                                 "warmup": 0, "steps": 1, "measure": True})
    notes = []
    available = _mem_available()
    for p, p_jobs in jobs.items():
        for job in p_jobs:
            if job["kind"] != "step" or available is None:
                continue
            need = p * _estimate_rank_bytes(m, _tokens(job["side"], patch) // p)
            job["estimated_total_bytes"] = need
            if need > available - GIB and not args.force:
                job["skip"] = (f"estimated {need / GIB:.1f} GiB for {p} ranks but {available / GIB:.1f} GiB available "
                               f"(--force runs it anyway)")
                notes.append(f"{job['part']} {job['side']}x{job['side']} P={p}: skipped, {job['skip']}")
    return cfg, {p: j for p, j in sorted(jobs.items()) if j}, notes


# --- rank side ---------------------------------------------------------------------------------------


class _CapExceeded(RuntimeError):
    pass


class SavedTensorCounter:
    """Pack hook that counts what autograd saves for backward, without changing it.

    Distinct storages (by data pointer) count once with their full nbytes; parameter storages are kept
    apart. With ``cap_bytes`` it raises a flag once the distinct activation bytes exceed the cap.
    """

    def __init__(self, params, cap_bytes: int | None = None):
        self.param_ptrs = {p.untyped_storage().data_ptr() for p in params}
        self.cap = cap_bytes
        self.storages: dict[int, int] = {}
        self.param_storages: dict[int, int] = {}
        self.naive = 0
        self.saves = 0
        self.distinct = 0
        self.over = False

    def pack(self, t):
        self.saves += 1
        storage = t.untyped_storage()
        ptr, nbytes = storage.data_ptr(), storage.nbytes()
        if ptr in self.param_ptrs:
            self.param_storages[ptr] = nbytes
        else:
            self.naive += t.numel() * t.element_size()
            if nbytes and ptr not in self.storages:
                self.storages[ptr] = nbytes
                self.distinct += nbytes
                if self.cap is not None and self.distinct > self.cap:
                    self.over = True
        # A detached alias (same storage, no copy): returning ``t`` itself would make an output saved by
        # its own grad_fn a reference cycle through the autograd graph, which gc cannot break when no
        # backward follows (a forward-only probe would leak its whole graph).
        return t.detach()

    @staticmethod
    def unpack(t):
        return t

    def summary(self) -> dict:
        return {"saved_bytes": self.distinct, "naive_bytes": self.naive, "param_bytes_saved": sum(self.param_storages.values()),
                "saved_tensors": self.saves, "distinct_storages": len(self.storages)}


def _status_bytes(key: str) -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def _rss_mark() -> dict:
    """Start a peak-RSS window: reset Linux's VmHWM to the current RSS if allowed, else note ru_maxrss."""
    import resource

    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        method = "VmHWM"
    except OSError:
        method = "ru_maxrss"
    return {"method": method, "rss0": _status_bytes("VmRSS"),
            "maxrss0": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}


def _rss_delta(mark: dict) -> dict:
    import resource

    if mark["method"] == "VmHWM":
        peak = _status_bytes("VmHWM")
        delta = None if peak is None or mark["rss0"] is None else peak - mark["rss0"]
    else:  # growth of the lifetime peak: 0 when this step stayed under an earlier peak
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        delta = peak - mark["maxrss0"]
    return {"peak_rss_delta_bytes": delta, "peak_rss_bytes": peak, "rss_method": mark["method"]}


def _build(cfg, mesh, side: int, channels: int):
    import torch

    from pitdist.distributed.parallelize import parallelize
    from pitdist.models.pit import build_model, pixels_to_tokens
    from pitdist.train.engine import build_engine

    torch.manual_seed(cfg.train.seed)  # identical weights on every rank
    model = build_model(cfg.model, (side, side, channels), NUM_CLASSES)
    model = parallelize(model, mesh, cfg.model)
    engine = build_engine(model, cfg, mesh, torch.float32)
    # DeepSpeed's WarmupDecayLR gives lr 0 to the first two steps even with a 1-step warm-up. Advance
    # it so every step the bench runs updates the weights (AdamW does the same work either way).
    for _ in range(3):
        if engine.lr_scheduler.get_lr()[0] >= cfg.optim.lr * 0.99:
            break
        engine.lr_scheduler.step()
    gen = torch.Generator().manual_seed(cfg.train.seed * 100_003 + side)  # same image on every rank
    pixels = torch.randint(0, 256, (1, side, side, channels), dtype=torch.uint8, generator=gen)
    label = torch.randint(0, NUM_CLASSES, (1,), generator=gen)
    lo, hi = mesh.token_range(model.num_tokens)
    tokens = pixels_to_tokens(pixels, cfg.model.patch_size, (lo, hi))
    return engine, tokens, torch.arange(lo, hi), label, model.num_tokens


def _forward(engine, tokens, positions, label, counter=None):
    import contextlib

    import torch
    import torch.nn.functional as F

    hooks = (torch.autograd.graph.saved_tensors_hooks(counter.pack, counter.unpack) if counter
             else contextlib.nullcontext())
    with hooks:
        logits = engine(tokens, positions)
        return F.cross_entropy(logits, label)


def _step_job(cfg, mesh, job: dict, channels: int) -> dict:
    """Full training steps (forward, backward, optimizer step); saved bytes counted on the first."""
    import gc

    from pitdist.distributed import comm

    engine, tokens, positions, label, num_tokens = _build(cfg, mesh, job["side"], channels)
    times, losses, memory = [], [], None
    for i in range(job["warmup"] + job["steps"]):
        measure = job["measure"] and i == 0
        counter = SavedTensorCounter(engine.module.parameters()) if measure else None
        comm.barrier()
        mark = _rss_mark() if measure else None
        t0 = time.perf_counter()
        loss = _forward(engine, tokens, positions, label, counter)
        t1 = time.perf_counter()
        engine.backward(loss / mesh.sp)  # the engine sums gradients over the SP ranks (see trainer.py)
        t2 = time.perf_counter()
        engine.step()
        t3 = time.perf_counter()
        if measure:
            memory = {**counter.summary(), **_rss_delta(mark)}
        if i >= job["warmup"]:
            times.append({"forward_s": t1 - t0, "backward_s": t2 - t1, "optimizer_s": t3 - t2, "total_s": t3 - t0})
        losses.append(float(loss.detach()))
    del engine, tokens, loss
    gc.collect()
    return {"kind": "step", "part": job["part"], "side": job["side"], "tokens": num_tokens,
            "tokens_per_rank": num_tokens // mesh.sp, "times": times, "losses": losses, "memory": memory}


def _probe(cfg, mesh, side: int, channels: int, cap: int) -> dict:
    """Forward only, counting saved bytes; abort at the next block once the cap is crossed.

    Every rank holds the same shapes, so every rank crosses the cap in the same block and aborts before
    that block's all-to-alls: no rank is left waiting. The verdict is then agreed over the SP group.
    """
    import gc

    import torch

    from pitdist.distributed import comm

    engine, tokens, positions, label, num_tokens = _build(cfg, mesh, side, channels)
    counter = SavedTensorCounter(engine.module.parameters(), cap_bytes=cap)

    def guard(module, inputs):
        if counter.over:
            raise _CapExceeded

    handles = [b.register_forward_pre_hook(guard) for b in engine.module.blocks]
    handles.append(engine.module.head.register_forward_pre_hook(guard))
    comm.barrier()
    t0 = time.perf_counter()
    loss = None
    try:
        # The module the engine trains, called directly: a probe never runs backward, so it needs
        # none of the backward hooks engine.forward hangs on the output.
        loss = _forward(engine.module, tokens, positions, label, counter)
    except _CapExceeded:
        pass
    elapsed = time.perf_counter() - t0
    for h in handles:
        h.remove()
    over = counter.over
    local = counter.summary()
    del engine, tokens, loss, counter
    gc.collect()
    verdict = torch.tensor([[float(local["saved_bytes"]), float(over)]], dtype=torch.float64)
    everyone = comm.all_gather_cat(verdict, mesh.sp_group, category="bench")
    return {"side": side, "tokens": num_tokens, "saved_bytes": int(everyone[:, 0].max()),
            "over_cap": bool(everyone[:, 1].max() > 0), "aborted": over, "forward_s": elapsed}


def _search_job(cfg, mesh, job: dict, channels: int, log) -> dict:
    import numpy as np

    cap, patch, p = job["cap_bytes"], job["patch"], mesh.sp
    valid = [s for s in range(patch, job["max_side"] + 1, patch) if _tokens(s, patch) % p == 0]
    if not valid:
        return {"kind": "search", "part": "search", "error": f"no side <= {job['max_side']} has tokens % {p} == 0"}
    probes: dict[int, dict] = {}

    def probe(side: int) -> dict:
        if side not in probes:
            probes[side] = _probe(cfg, mesh, side, channels, cap)
            r = probes[side]
            log(f"search P={p}: {side}x{side} {'OVER' if r['over_cap'] else 'under'} cap "
                f"({r['saved_bytes'] / GIB:.3f} GiB{' at abort' if r['aborted'] else ''}, {r['forward_s']:.1f} s)")
        return probes[side]

    def fit():
        pts = [(r["tokens"], r["saved_bytes"]) for r in probes.values() if not r["over_cap"]]
        if len(pts) >= 2:
            b, a = np.polyfit([t for t, _ in pts], [v for _, v in pts], 1)
            return float(a), float(b)
        if pts:
            return 0.0, pts[0][1] / pts[0][0]
        return None

    def predicted(side: int) -> float | None:
        ab = fit()
        return None if ab is None else ab[0] + ab[1] * _tokens(side, patch)

    # Coarse: doubling sides while the fit does not predict a clear overshoot.
    side = min(valid, key=lambda s: abs(s - job["start"]))
    if probe(side)["over_cap"]:  # the start is already too big: halve until a side fits
        while probe(side)["over_cap"] and side > valid[0]:
            side = max((s for s in valid if s <= side // 2), default=valid[0])
    else:
        while True:
            side = min((s for s in valid if s >= 2 * side), default=None)
            if side is None:
                break
            guess = predicted(side)
            if len([r for r in probes.values() if not r["over_cap"]]) >= 2 and guess is not None and guess > 1.5 * cap:
                break
            if probe(side)["over_cap"]:
                break
    # Refine: start at the largest side the fit says fits, then walk to the boundary.
    ab = fit()
    if ab is None:
        best = None
    else:
        fits = [s for s in valid if ab[0] + ab[1] * _tokens(s, patch) <= cap]
        s = max(fits) if fits else valid[0]
        idx = valid.index(s)
        if not probe(s)["over_cap"]:
            while idx + 1 < len(valid) and not probe(valid[idx + 1])["over_cap"]:
                idx += 1
        else:
            while idx > 0 and probe(valid[idx - 1])["over_cap"]:
                idx -= 1
            idx -= 1
        under = [r["side"] for r in probes.values() if not r["over_cap"]]
        best = max(under) if under else None
    over_sides = [r["side"] for r in probes.values() if r["over_cap"] and (best is None or r["side"] > best)]
    result = {"kind": "search", "part": "search", "cap_bytes": cap, "probes": [probes[s] for s in sorted(probes)],
              "largest_side": best, "smallest_over_side": min(over_sides) if over_sides else None,
              "fit_bytes_per_token": None if ab is None else ab[1], "fit_constant_bytes": None if ab is None else ab[0]}
    if best is not None:  # prove it: one full forward + backward + optimizer step at that side
        log(f"search P={p}: confirming {best}x{best} with a full training step")
        result["confirm"] = _step_job(cfg, mesh, {"part": "search", "side": best, "warmup": 0, "steps": 1,
                                                   "measure": True}, channels)
    return result


def _rank_main(rank: int, world: int, cfg_dict: dict, jobs: list[dict], channels: int) -> list[dict]:
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
            log(f"P={world}: {job['part']} {job['side']}x{job['side']} ({job['warmup']} warm-up + {job['steps']} steps)")
            result = _step_job(cfg, mesh, job, channels)
        else:
            result = _search_job(cfg, mesh, job, channels, log)
        result["wall_s"] = time.perf_counter() - start
        log(f"P={world}: {job['part']} done in {result['wall_s']:.1f} s")
        out.append(result)
    return out


# --- aggregation, report -----------------------------------------------------------------------------


def _median_total(ranks: list[dict]) -> dict:
    """Per step the slowest rank's time (ranks barrier before each step); median over steps."""
    n = len(ranks[0]["times"])
    out = {}
    for key in ("forward_s", "backward_s", "optimizer_s", "total_s"):
        per_step = [max(r["times"][i][key] for r in ranks) for i in range(n)]
        out[key] = statistics.median(per_step)
        if key == "total_s":
            out["steps_total_s"] = per_step
    return out


def _mem(ranks: list[dict]) -> dict:
    mems = [r["memory"] for r in ranks]
    return {
        "saved_bytes_per_rank": [m["saved_bytes"] for m in mems],
        "saved_bytes_max": max(m["saved_bytes"] for m in mems),
        "naive_bytes_max": max(m["naive_bytes"] for m in mems),
        "param_bytes_saved": max(m["param_bytes_saved"] for m in mems),
        "peak_rss_delta_bytes_per_rank": [m["peak_rss_delta_bytes"] for m in mems],
        "rss_method": mems[0]["rss_method"],
    }


def aggregate(results: dict[int, list[list[dict]]], args, cfg, threads: dict[int, int]) -> dict:
    """results[P][rank][job] -> the report."""
    report: dict = {"memory": None, "time": None, "search": None, "big": None, "train": None, "skipped": []}
    mem_rows, time_rows, search_rows = [], [], []
    for p, per_rank in sorted(results.items()):
        for j in range(len(per_rank[0])):
            ranks = [per_rank[r][j] for r in range(p)]
            first = ranks[0]
            if "skipped" in first:
                report["skipped"].append({"part": first["part"], "sp": p, "side": first.get("side"),
                                          "reason": first["skipped"]})
                continue
            if first["part"] == "step":
                if "memory" in args.parts and first["side"] == args.image_size:
                    mem_rows.append({"sp": p, "side": first["side"], "tokens": first["tokens"],
                                     "tokens_per_rank": first["tokens_per_rank"], **_mem(ranks)})
                if "time" in args.parts and first["side"] in args.time_sizes:
                    time_rows.append({"sp": p, "side": first["side"], "tokens": first["tokens"],
                                      "threads_per_rank": threads[p], "warmup": args.warmup,
                                      "steps": args.steps, **_median_total(ranks)})
            elif first["part"] == "search":
                row = {"sp": p, "threads_per_rank": threads[p], **{k: v for k, v in first.items() if k != "confirm"}}
                if "confirm" in first:
                    confirm = [r["confirm"] for r in ranks]
                    row["confirm"] = {"side": confirm[0]["side"], "tokens": confirm[0]["tokens"],
                                      "step_s": _median_total(confirm)["total_s"], "loss": confirm[0]["losses"][0],
                                      **_mem(confirm)}
                search_rows.append(row)
            else:  # big, train
                report[first["part"]] = {
                    "sp": p, "side": first["side"], "tokens": first["tokens"], "tokens_per_rank": first["tokens_per_rank"],
                    "threads_per_rank": threads[p], "steps": len(first["times"]),
                    "step_s": [max(r["times"][i]["total_s"] for r in ranks) for i in range(len(first["times"]))],
                    "forward_s": [max(r["times"][i]["forward_s"] for r in ranks) for i in range(len(first["times"]))],
                    "backward_s": [max(r["times"][i]["backward_s"] for r in ranks) for i in range(len(first["times"]))],
                    "losses": first["losses"], **_mem(ranks)}
    if mem_rows:
        base = next((r["saved_bytes_max"] for r in mem_rows if r["sp"] == 1), None)
        for r in mem_rows:
            r["ratio_to_p1"] = r["saved_bytes_max"] / base if base else None
            r["ideal_ratio"] = 1 / r["sp"]
        report["memory"] = {"side": args.image_size, "rows": mem_rows}
    if time_rows:
        for r in time_rows:
            base = next((b["total_s"] for b in time_rows if b["sp"] == 1 and b["side"] == r["side"]), None)
            r["ratio_to_p1"] = r["total_s"] / base if base else None
        time_rows.sort(key=lambda r: (r["side"], r["sp"]))
        report["time"] = {"rows": time_rows}
    if search_rows:
        report["search"] = {"cap_bytes": int(args.cap_gib * GIB), "rows": search_rows}
    return report


def _table(headers: list[str], rows: list[list]) -> str:
    cells = [[str(c) for c in row] for row in rows]
    widths = [max(len(h), *(len(r[i]) for r in cells)) if cells else len(h) for i, h in enumerate(headers)]
    line = "  ".join(h.rjust(w) for h, w in zip(headers, widths))
    out = [line, "-" * len(line)]
    out += ["  ".join(c.rjust(w) for c, w in zip(r, widths)) for r in cells]
    return "\n".join(out)


def _mib(n) -> str:
    return "-" if n is None else f"{n / 2**20:.1f}"


def render(report: dict) -> str:
    out = []
    m = report["model"]
    out.append(f"pitdist bench sp: PiT dim {m['dim']}, {m['depth']} layers, {m['heads']} heads, mlp {m['mlp_ratio']}, "
               f"pos_embed {m['pos_embed']}, patch {m['patch_size']}, {m['params']:,} parameters; ZeRO 0, fp32, batch 1; "
               f"gloo ranks on {report['machine']['cores']} cores, torch threads per rank = max(1, "
               f"{report['machine']['cores']} // P): " + ", ".join(f"P={p}: {t}" for p, t in report["threads_per_rank"].items())
               + (" (P above the core count oversubscribes)" if max(map(int, report["threads_per_rank"])) > report["machine"]["cores"] else ""))
    if report["memory"]:
        mem = report["memory"]
        out.append(f"\nActivation memory per rank, {mem['side']}x{mem['side']} image ({mem['rows'][0]['tokens']} tokens): bytes "
                   f"autograd saves in one forward (distinct storages, parameters excluded)")
        out.append(_table(
            ["P", "tokens/rank", "saved MiB/rank", "ratio to P=1", "ideal 1/P", "naive sum MiB", "saved params MiB",
             "peak RSS delta MiB (process, per rank)"],
            [[r["sp"], r["tokens_per_rank"], _mib(r["saved_bytes_max"]), f"{r['ratio_to_p1']:.3f}", f"{1 / r['sp']:.3f}",
              _mib(r["naive_bytes_max"]), _mib(r["param_bytes_saved"]),
              " ".join(_mib(x) for x in r["peak_rss_delta_bytes_per_rank"])] for r in mem["rows"]]))
        out.append(f"(peak RSS delta: whole-process resident-set growth during that step, method {mem['rows'][0]['rss_method']}; "
                   f"includes gradients, optimizer state and allocator slack, not only activations)")
    if report["time"]:
        out.append("\nStep time (forward + backward + AdamW step, slowest rank, median of timed steps)")
        out.append(_table(["image", "tokens", "P", "threads/rank", "fwd s", "bwd s", "opt s", "step s", "ratio to P=1"],
                          [[f"{r['side']}x{r['side']}", r["tokens"], r["sp"], r["threads_per_rank"], f"{r['forward_s']:.3f}",
                            f"{r['backward_s']:.3f}", f"{r['optimizer_s']:.3f}", f"{r['total_s']:.3f}",
                            f"{r['ratio_to_p1']:.2f}"] for r in report["time"]["rows"]]))
    if report["search"]:
        s = report["search"]
        out.append(f"\nLargest trainable square image under {s['cap_bytes'] / GIB:.3g} GiB of saved activations per rank")
        rows = []
        for r in s["rows"]:
            c = r.get("confirm") or {}
            rows.append([r["sp"], r.get("largest_side") or "-", c.get("tokens", "-"), _mib(c.get("saved_bytes_max")),
                         r.get("smallest_over_side") or "-",
                         "-" if r.get("fit_bytes_per_token") is None else f"{r['fit_bytes_per_token'] / 1024:.1f}",
                         f"{c['step_s']:.1f}" if c else "-", len(r.get("probes", []))])
        out.append(_table(["P", "largest side", "tokens", "saved MiB/rank", "first side over", "KiB/token/rank (fit)",
                           "confirm step s", "probes"], rows))
    for part, title in (("big", "One full training step"), ("train", "Training steps")):
        r = report[part]
        if r:
            out.append(f"\n{title}: {r['side']}x{r['side']} image ({r['tokens']:,} tokens), P={r['sp']} "
                       f"({r['tokens_per_rank']:,} tokens/rank, {r['threads_per_rank']} thread(s)/rank)")
            out.append(_table(["step", "step s", "fwd s", "bwd s", "loss"],
                              [[i + 1, f"{t:.1f}", f"{f:.1f}", f"{b:.1f}", f"{l:.4f}"]
                               for i, (t, f, b, l) in enumerate(zip(r["step_s"], r["forward_s"], r["backward_s"], r["losses"]))]))
            out.append(f"saved activations per rank MiB: {' '.join(_mib(x) for x in r['saved_bytes_per_rank'])}; "
                       f"peak RSS delta per rank MiB (process): {' '.join(_mib(x) for x in r['peak_rss_delta_bytes_per_rank'])}")
    for s in report["skipped"]:
        out.append(f"\nSKIPPED {s['part']} P={s['sp']} side={s['side']}: {s['reason']}")
    return "\n".join(out)


def plot(report: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    ax = axes[0]
    if report["memory"]:
        rows = report["memory"]["rows"]
        ps = [r["sp"] for r in rows]
        ax.plot(ps, [r["saved_bytes_max"] / 2**20 for r in rows], "o-", label="measured (max over ranks)")
        base = next((r["saved_bytes_max"] for r in rows if r["sp"] == 1), None)
        if base:
            ax.plot(ps, [base / p / 2**20 for p in ps], "k--", lw=1, label="P=1 / P")
        ax.set_title(f"Saved activations per rank, {report['memory']['side']}x{report['memory']['side']}")
        ax.set_xticks(ps)
    ax.set_xlabel("SP ranks P")
    ax.set_ylabel("MiB per rank")
    if ax.lines:
        ax.legend(loc="upper right")
    ax = axes[1]
    if report["time"]:
        rows = report["time"]["rows"]
        for side in sorted({r["side"] for r in rows}):
            sub = [r for r in rows if r["side"] == side]
            ax.plot([r["sp"] for r in sub], [r["ratio_to_p1"] for r in sub], "o-", label=f"{side}x{side}")
        ps = sorted({r["sp"] for r in rows})
        ax.plot(ps, [1 / p for p in ps], "k--", lw=1, label="ideal 1/P")
        ax.axhline(1.0, color="grey", lw=0.5)
        ax.set_xticks(ps)
        ax.set_title(f"Step time / step time at P=1 ({report['machine']['cores']} CPU cores)")
    ax.set_xlabel("SP ranks P")
    ax.set_ylabel("ratio to P=1")
    if ax.lines:
        ax.legend(loc="upper left")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(args: argparse.Namespace, overrides: list[str]) -> int:
    """`pitdist bench sp`: returns the exit status."""
    from pitdist.config import ConfigError
    from pitdist.parallel_dims import MeshError

    try:
        cfg, jobs, notes = plan(args, overrides)
    except (ConfigError, MeshError, BenchOptionError) as exc:
        print(f"pitdist bench sp: error: {exc}", file=sys.stderr)
        return 2
    import deepspeed
    import torch

    from pitdist.bench.spawn import BenchError, run_ranks
    from pitdist.models.pit import build_model

    stamp = time.strftime("%Y%m%d-%H%M%S")
    out = Path(args.out or f"runs/bench-sp-{stamp}.json")
    png = Path(args.plot) if args.plot else out.with_suffix(".png")
    out.parent.mkdir(parents=True, exist_ok=True)
    png.parent.mkdir(parents=True, exist_ok=True)
    cores = args.threads_total or _cores()
    threads = {p: max(1, cores // p) for p in jobs}
    m = cfg.model
    params = sum(t.numel() for t in build_model(m, (args.image_size, args.image_size, args.channels), NUM_CLASSES).parameters())
    header = {
        "benchmark": "pitdist bench sp", "created": time.strftime("%Y-%m-%dT%H:%M:%S"), "complete": False,
        "command": sys.argv, "options": {k: v for k, v in vars(args).items() if k not in ("command", "bench_command")},
        "model": {"dim": m.width, "depth": m.num_layers, "heads": m.num_heads, "mlp_ratio": m.mlp_ratio,
                  "pos_embed": m.pos_embed, "patch_size": m.patch_size, "params": params, "num_classes": NUM_CLASSES},
        "engine": {"zero_stage": 0, "dtype": "fp32", "batch_size": 1, "optimizer": "AdamW (torch)",
                   "grad_clip": cfg.optim.grad_clip},
        "machine": {"cores": cores, "mem_available_bytes": _mem_available(), "torch": torch.__version__,
                    "deepspeed": deepspeed.__version__, "backend": "gloo"},
        "threads_per_rank": {str(p): t for p, t in threads.items()},
        "method": {
            "saved_bytes": "torch.autograd.graph.saved_tensors_hooks pack hook during one forward + loss; each distinct "
                           "untyped storage (by data_ptr) counted once with its nbytes; parameter storages excluded "
                           "(reported as param_bytes_saved); naive_bytes = sum of numel*element_size of every saved "
                           "non-parameter tensor, every time it is saved",
            "peak_rss": "process-level: VmHWM reset via /proc/self/clear_refs before the step, VmHWM - VmRSS(start) "
                        "after it (ru_maxrss growth if the reset is refused)",
            "step_time": "per step the slowest rank (barrier before each step), median over timed steps",
            "search": "forward-only probes abort at the next block once the per-rank cap is crossed; largest side "
                      "confirmed with a full forward+backward+step",
        },
        "notes": notes,
    }
    for note in notes:
        print(f"[bench sp] note: {note}", file=sys.stderr)
    print(f"[bench sp] {sum(len(j) for j in jobs.values())} jobs on P = {', '.join(map(str, jobs))}; "
          f"threads per rank {threads}; results -> {out}", file=sys.stderr, flush=True)
    results: dict[int, list[list[dict]]] = {}
    report = header
    for p, p_jobs in jobs.items():
        try:
            results[p] = run_ranks(p, threads[p], _rank_main, cfg.to_dict(), p_jobs, args.channels)
        except BenchError as exc:
            print(f"pitdist bench sp: a rank failed with P = {p}:\n{exc}", file=sys.stderr)
            return 1
        report = {**header, **aggregate(results, args, cfg, threads), "raw": {str(k): v for k, v in results.items()}}
        write_json(report, out)
    report["complete"] = True
    write_json(report, out)
    plot(report, png)
    print(render(report))
    print(f"\nJSON: {out}\nplot: {png}")
    return 0
