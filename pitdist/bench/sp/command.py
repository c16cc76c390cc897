"""`pitdist bench sp`: its options and its driver (plan, spawn the ranks of each P, report)."""

from __future__ import annotations

import argparse
import sys
import textwrap

from pitdist.bench.common import (
    BenchOptionError,
    choice_list,
    cores,
    created,
    image_size,
    image_sizes,
    int_list,
    json_path,
    mem_available,
    option_error,
    plot_path,
    publish,
    write_json,
)
from pitdist.bench.sp.plan import NUM_CLASSES, PARTS, plan

INT_LIST = int_list(1, "1,2,4")  # the list-valued options' type
_parts = choice_list(PARTS, "part(s)")

EPILOG = textwrap.dedent(
    """\
    Model: PiT-Tiny width and depth with 4 heads (dim 192, 12 layers, 4 heads, MLP ratio 4, sin-cos
    position embedding) unless overridden with --model.KEY VALUE, exactly as for `pitdist train`:
      --model.size {nano,tiny,small,base}  --model.dim D  --model.depth L  --model.heads H
      --model.mlp_ratio R  --model.pos_embed {none,sincos,learned}  --model.patch_size p
    Every P must divide the heads (checked before any rank starts); an image of any token count runs
    on any P, each rank's share padded to S = ceil(tokens / P) slots. Sizes are a side (a square) or
    HxW (e.g. 30x20); the search part looks for the largest square.

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
    p.add_argument(
        "--sp",
        type=INT_LIST,
        default=[1, 2, 4],
        metavar="LIST",
        help="SP sizes P to compare, comma-separated; must include 1, the baseline of every ratio (default: 1,2,4)",
    )
    p.add_argument(
        "--parts",
        type=_parts,
        default=list(PARTS),
        metavar="LIST",
        help=f"which measurements to run, comma-separated from {','.join(PARTS)} (default: all)",
    )
    p.add_argument(
        "--image-size",
        type=image_size,
        default=(28, 28),
        metavar="SIZE",
        help="image size (SIDE or HxW, pixels) of the activation-memory part (default: 28, i.e. 784 tokens)",
    )
    p.add_argument("--channels", type=int, default=1, metavar="C", help="image channels C (default: 1)")
    p.add_argument(
        "--time-sizes",
        type=image_sizes,
        default=[(28, 28), (56, 56)],
        metavar="LIST",
        help="image sizes (SIDE or HxW) of the step-time part, comma-separated (default: 28,56)",
    )
    p.add_argument(
        "--warmup", type=int, default=2, metavar="N", help="untimed warm-up steps before timing (default: 2)"
    )
    p.add_argument(
        "--steps",
        type=int,
        default=5,
        metavar="N",
        help="timed steps per (P, size); the median is reported (default: 5)",
    )
    p.add_argument(
        "--cap-gib",
        type=float,
        default=1.0,
        metavar="GIB",
        help="search part: per-rank cap on saved-activation bytes, in GiB (default: 1.0; with P=4 "
        "ranks that keeps the machine near 4 x cap + ~0.6 GiB per process)",
    )
    p.add_argument(
        "--search-start",
        type=int,
        default=28,
        metavar="SIDE",
        help="search part: first probed side; probes double it while a fit predicts it fits (default: 28)",
    )
    p.add_argument(
        "--search-max-side",
        type=int,
        default=512,
        metavar="SIDE",
        help="search part: never probe a side above this (default: 512)",
    )
    p.add_argument(
        "--big-side",
        type=image_size,
        default=(224, 224),
        metavar="SIZE",
        help="big part: image size (SIDE or HxW) of the one-step run (default: 224, i.e. 50,176 tokens)",
    )
    p.add_argument("--big-sp", type=int, default=4, metavar="P", help="big part: SP size (default: 4)")
    p.add_argument(
        "--train-side",
        type=image_size,
        default=(112, 112),
        metavar="SIZE",
        help="train part: image size (SIDE or HxW) of the few-step training run (default: 112, i.e. 12,544 tokens)",
    )
    p.add_argument("--train-sp", type=int, default=4, metavar="P", help="train part: SP size (default: 4)")
    p.add_argument("--train-steps", type=int, default=3, metavar="N", help="train part: training steps (default: 3)")
    p.add_argument(
        "--threads-total",
        type=int,
        default=0,
        metavar="N",
        help="cores shared by the ranks; each rank gets max(1, N // P) torch threads "
        "(default: 0 = the CPUs this process may use)",
    )
    p.add_argument(
        "--seed", type=int, default=0, metavar="N", help="seed of the weights and random images (default: 0)"
    )
    p.add_argument("--out", default=None, metavar="PATH", help="JSON results file (default: runs/bench-sp-<time>.json)")
    p.add_argument("--plot", default=None, metavar="PATH", help="PNG plot file (default: the --out path with .png)")
    p.add_argument(
        "--force",
        action="store_true",
        help="run jobs even when their estimated memory exceeds what the machine has available "
        "(default: such jobs are skipped and reported as skipped)",
    )
    return p


def main(args: argparse.Namespace, overrides: list[str]) -> int:
    """`pitdist bench sp`: returns the exit status."""
    from pitdist.config import ConfigError
    from pitdist.parallel_dims import MeshError

    try:
        cfg, jobs, notes = plan(args, overrides)
    except (ConfigError, MeshError, BenchOptionError) as exc:
        return option_error("sp", exc)
    import deepspeed
    import torch

    from pitdist.bench.sp.jobs import rank_main
    from pitdist.bench.sp.report import aggregate, plot, render
    from pitdist.bench.spawn import BenchError, run_ranks
    from pitdist.models.pit import build_model

    out = json_path(args.out, "sp")
    png = plot_path(args.plot, out)
    out.parent.mkdir(parents=True, exist_ok=True)
    png.parent.mkdir(parents=True, exist_ok=True)
    ncores = args.threads_total or cores()
    threads = {p: max(1, ncores // p) for p in jobs}
    m = cfg.model
    params = sum(t.numel() for t in build_model(m, (*args.image_size, args.channels), NUM_CLASSES).parameters())
    header = {
        "benchmark": "pitdist bench sp",
        "created": created(),
        "complete": False,
        "command": sys.argv,
        "options": {k: v for k, v in vars(args).items() if k not in ("command", "bench_command")},
        "model": {
            "dim": m.width,
            "depth": m.num_layers,
            "heads": m.num_heads,
            "mlp_ratio": m.mlp_ratio,
            "pos_embed": m.pos_embed,
            "patch_size": m.patch_size,
            "params": params,
            "num_classes": NUM_CLASSES,
        },
        "engine": {
            "zero_stage": 0,
            "dtype": "fp32",
            "batch_size": 1,
            "optimizer": "AdamW (torch)",
            "grad_clip": cfg.optim.grad_clip,
        },
        "machine": {
            "cores": ncores,
            "mem_available_bytes": mem_available(),
            "torch": torch.__version__,
            "deepspeed": deepspeed.__version__,
            "backend": "gloo",
        },
        "threads_per_rank": {str(p): t for p, t in threads.items()},
        "method": {
            "saved_bytes": "torch.autograd.graph.saved_tensors_hooks pack hook during one forward + loss; each "
            "distinct untyped storage (by data_ptr) counted once with its nbytes; parameter storages excluded "
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
    print(
        f"[bench sp] {sum(len(j) for j in jobs.values())} jobs on P = {', '.join(map(str, jobs))}; "
        f"threads per rank {threads}; results -> {out}",
        file=sys.stderr,
        flush=True,
    )
    results: dict[int, list[list[dict]]] = {}
    report = header
    for p, p_jobs in jobs.items():
        try:
            results[p] = run_ranks(p, threads[p], rank_main, cfg.to_dict(), p_jobs, args.channels)
        except BenchError as exc:
            print(f"pitdist bench sp: a rank failed with P = {p}:\n{exc}", file=sys.stderr)
            return 1
        report = {**header, **aggregate(results, args, cfg, threads), "raw": {str(k): v for k, v in results.items()}}
        write_json(report, out)
    report["complete"] = True
    return publish(report, out, png, plot, render)
