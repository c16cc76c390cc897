"""`pitdist bench steptime`: where a training step's time goes, vs the SP size P.

For each P, a real `pitdist train` job (the trainer and launcher of the repository, one process per
rank, gloo) runs a few steps; each rank's timing/rank<r>.json then holds, per step, the wall time of
each phase (the trainer's step timer: data, forward, backward, optimizer) and comm/rank<r>.json the
ledger's seconds inside every collective by cause. A step splits into:

    data wait        fetching the batch (phase "data": indexing, slicing this rank's tokens)
    all-to-all       Ulysses' attention all-to-alls (and ring hops, if any)
    grad reduction   DeepSpeed's gradient all-reduce, the PE gradient's, ZeRO gathers, grad-norm
    other comm       pooling all-reduce, the loss all-reduce for the log, data gathers
    compute          the rest: total - data wait - every collective

Seconds in a collective include waiting for the slowest rank to arrive: on a shared CPU that is
where imbalance shows up. Each component is the mean over ranks and timed steps (warm-up steps are
left out), so the parts add up to the mean step time.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import textwrap
import time
from pathlib import Path

from pitdist.bench.common import (
    BenchOptionError,
    created,
    figure,
    int_list,
    json_path,
    option_error,
    plot_path,
    publish,
    slowest,
)

INT_LIST = int_list(1, "1,2,4")  # the list-valued options' type

PARTS = ("compute", "all_to_all", "grad_reduce", "other_comm", "data_wait")
CATEGORY_PART = {
    "attention_a2a": "all_to_all",
    "attention_ring": "all_to_all",
    "grad_reduce": "grad_reduce",
    "pe_grad_reduce": "grad_reduce",
    "zero_param_gather": "grad_reduce",
    "pe_param_gather": "grad_reduce",
    "grad_norm": "grad_reduce",
}  # anything else (pooling, metrics, data) is other_comm

EPILOG = textwrap.dedent(
    """\
    Model: nano (width 64, 4 layers, 4 heads, sin-cos PE) unless overridden with --model.KEY VALUE
    (any other job setting too: --SECTION.KEY VALUE, as for `pitdist train`). P must divide the heads
    (or add --parallel.ring); any image runs on any P, each rank's tokens padded to ceil(tokens / P).

    Outputs: a table on stdout, JSON (--out) and a PNG (--plot): stacked seconds per step vs P.

    Examples
      pitdist bench steptime --sp 1,2,4 --steps 8
      pitdist bench steptime --sp 1,2 --dataset synthetic:8x8x1:64 --steps 3 --warmup 1   # smoke run
    """
)


def add_parser(sub) -> argparse.ArgumentParser:
    p = sub.add_parser(
        "steptime",
        help="step time split into compute, all-to-all, gradient reduction and data wait, vs P",
        description="Train a few steps with `pitdist train` machinery for each SP size P (one process per rank, "
        "gloo) and split each step's time, from every rank's phase timings and communication ledger, into "
        "compute, all-to-all, gradient reduction, other communication and data wait.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--sp", type=INT_LIST, default=[1, 2, 4], metavar="LIST", help="SP sizes P (default: 1,2,4)")
    p.add_argument("--dp", type=int, default=1, help="data-parallel groups Q for every P (default: 1)")
    p.add_argument(
        "--dataset",
        default="synthetic:28x28x1:512",
        help="dataset (default: synthetic:28x28x1:512, 784 tokens per image)",
    )
    p.add_argument("--batch-size", type=int, default=8, help="images per step over all DP groups (default: 8)")
    p.add_argument("--steps", type=int, default=8, help="training steps per P (default: 8)")
    p.add_argument("--warmup", type=int, default=2, help="first steps left out of the averages (default: 2)")
    p.add_argument("--zero", type=int, default=0, choices=(0, 1, 2), help="ZeRO stage (default: 0)")
    p.add_argument("--out", default=None, metavar="PATH", help="JSON (default: runs/bench-steptime-<time>.json)")
    p.add_argument("--plot", default=None, metavar="PATH", help="PNG (default: the --out path with .png)")
    return p


def configs(args: argparse.Namespace, overrides: list[str], run_root: Path) -> list:
    from pitdist.config import load_config
    from pitdist.train.validate import validate_job

    if args.steps <= args.warmup or args.warmup < 0:
        raise BenchOptionError(
            f"--steps {args.steps} --warmup {args.warmup}: need 0 <= warmup < steps, so that some steps are timed"
        )
    if args.dp < 1 or args.batch_size < 1:
        raise BenchOptionError("--dp and --batch-size must be >= 1")
    out = []
    for p in args.sp:
        cfg = load_config(
            None,
            [
                "--model.size",
                "nano",
                "--model.pos_embed",
                "sincos",
                *overrides,
                "--data.dataset",
                args.dataset,
                "--data.loader",
                "memory",
                "--parallel.launcher",
                "local",
                "--parallel.dp",
                str(args.dp),
                "--parallel.sp",
                str(p),
                "--parallel.zero_stage",
                str(args.zero),
                "--train.steps",
                str(args.steps),
                "--train.batch_size",
                str(args.batch_size),
                "--train.log_every",
                str(args.steps),
                "--train.evaluate",
                "false",
                "--metrics.ledger",
                "true",
                "--train.output_dir",
                str(run_root),
                "--name",
                f"steptime-q{args.dp}p{p}",
            ],
        )
        try:
            validate_job(cfg)  # the mesh fits the heads and the patches tile the images: refuse before any rank starts
        except ValueError as exc:
            raise BenchOptionError(f"--sp {p}: {exc}") from None
        out.append(cfg)
    return out


def split_run(run_dir: Path, warmup: int) -> dict:
    """Mean seconds per step of each part, over ranks and the steps after ``warmup``.

    The trainer's step timer (timing/rank<r>.json) gives each step's wall time and data wait; the
    ledger's rows of the same steps (comm/rank<r>.json) give the seconds inside collectives."""
    from pitdist.observe.timer import read_timing

    ranks = sorted((run_dir / "comm").glob("rank*.json"), key=lambda f: int(f.stem[4:]))
    if not ranks:
        raise FileNotFoundError(f"{run_dir}: no comm/rank*.json (was the ledger off?)")
    per_rank = []
    for f, timing in zip(ranks, read_timing(run_dir)):
        record = json.loads(f.read_text())
        times = {t["step"]: t for t in timing["steps"] if t["step"] >= warmup}
        if not times:
            raise ValueError(f"{run_dir}/timing/rank{timing['rank']}.json: no steps after warm-up step {warmup}")
        comm = {step: dict.fromkeys(PARTS[1:4], 0.0) for step in times}
        for row in record["rows"]:
            if row["step"] in comm:
                comm[row["step"]][CATEGORY_PART.get(row["category"], "other_comm")] += row["seconds"]
        steps = []
        for step, t in sorted(times.items()):
            c = comm[step]
            parts = {"data_wait": t.get("data_s", 0.0), **c}
            parts["compute"] = t["total_s"] - sum(parts.values())
            steps.append({"step": step, "total_s": t["total_s"], **parts})
        per_rank.append(steps)
    mean = {k: statistics.fmean(s[k] for steps in per_rank for s in steps) for k in ("total_s", *PARTS)}
    per_step = slowest([[s["total_s"] for s in steps] for steps in per_rank])
    return {
        "mean": mean,
        "median_slowest_total_s": statistics.median(per_step),
        "timed_steps": len(per_rank[0]),
        "per_rank": per_rank,
    }


def render(report: dict) -> str:
    lines = [
        f"pitdist bench steptime: {report['model']}, {report['dataset']}, batch {report['batch_size']}, "
        f"Q = {report['dp']}, ZeRO {report['zero_stage']}; mean over ranks and {report['timed_steps']} timed steps",
        f"{'P':>3}{'threads':>8}{'step s':>9}{'compute':>9}{'all-to-all':>11}{'grad red.':>10}{'other comm':>11}"
        f"{'data wait':>10}{'comm %':>8}",
    ]
    for r in report["rows"]:
        m = r["mean"]
        comm = m["all_to_all"] + m["grad_reduce"] + m["other_comm"]
        lines.append(
            f"{r['sp']:>3}{r['threads_per_rank']:>8}{m['total_s']:>9.3f}{m['compute']:>9.3f}{m['all_to_all']:>11.3f}"
            f"{m['grad_reduce']:>10.3f}{m['other_comm']:>11.3f}{m['data_wait']:>10.4f}{comm / m['total_s']:>8.1%}"
        )
    return "\n".join(lines)


def plot(report: dict, path: Path) -> None:
    rows = report["rows"]
    with figure(path, 2, (11, 4.2)) as (fig, axes):
        labels = [f"P={r['sp']}" for r in rows]
        names = {
            "compute": "compute",
            "all_to_all": "all-to-all",
            "grad_reduce": "gradient reduction",
            "other_comm": "other comm",
            "data_wait": "data wait",
        }
        for ax, share in zip(axes, (False, True)):
            bottom = [0.0] * len(rows)
            for part in PARTS:
                vals = [r["mean"][part] / (r["mean"]["total_s"] if share else 1) * (100 if share else 1) for r in rows]
                ax.bar(labels, vals, bottom=bottom, label=names[part])
                bottom = [b + v for b, v in zip(bottom, vals)]
            ax.set_ylabel("% of step" if share else "seconds per step")
            ax.set_title("share of the step" if share else "step time by part (mean over ranks)", fontsize=10)
        axes[0].legend(fontsize=8)
        fig.suptitle(
            f"{report['model']}, {report['dataset']}, batch {report['batch_size']}, "
            f"{report['machine']['cores']} CPU cores shared by the P ranks",
            fontsize=9,
        )


def main(args: argparse.Namespace, overrides: list[str]) -> int:
    import os

    from pitdist.config import ConfigError
    from pitdist.parallel_dims import MeshError

    out = json_path(args.out, "steptime")
    png = plot_path(args.plot, out)
    run_root = out.with_suffix("")
    try:
        cfgs = configs(args, overrides, run_root)
    except (ConfigError, MeshError, BenchOptionError, FileNotFoundError) as exc:
        return option_error("steptime", exc)
    from pitdist.launch.local import LaunchError, launch_local, make_run_dir, threads_per_rank

    out.parent.mkdir(parents=True, exist_ok=True)
    m = cfgs[0].model
    report = {
        "benchmark": "pitdist bench steptime",
        "created": created(),
        "command": sys.argv,
        "dataset": args.dataset,
        "batch_size": args.batch_size,
        "dp": args.dp,
        "zero_stage": args.zero,
        "steps": args.steps,
        "warmup": args.warmup,
        "timed_steps": args.steps - args.warmup,
        "model": f"PiT {m.width}x{m.num_layers}L {m.num_heads}h {m.pos_embed}",
        "machine": {"cores": os.cpu_count()},
        "rows": [],
    }
    started = time.perf_counter()
    for cfg in cfgs:
        t0 = time.perf_counter()
        run_dir = make_run_dir(cfg)
        print(
            f"[bench steptime] P = {cfg.parallel.sp}: {cfg.train.steps} steps -> {run_dir}", file=sys.stderr, flush=True
        )
        try:
            launch_local(cfg, run_dir)
        except LaunchError as exc:
            print(f"pitdist bench steptime: P = {cfg.parallel.sp} failed:\n{exc}", file=sys.stderr)
            return 1
        split = split_run(run_dir, args.warmup)
        report["rows"].append(
            {
                "sp": cfg.parallel.sp,
                "threads_per_rank": threads_per_rank(cfg),
                "run_dir": str(run_dir),
                "run_s": time.perf_counter() - t0,
                **split,
            }
        )
    report["elapsed_s"] = time.perf_counter() - started
    return publish(report, out, png, plot, render)
