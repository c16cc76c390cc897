"""`pitdist bench accuracy`: PiT (one token per pixel) vs ViT (p x p patches), and PiT's PE variants,
at an equal training budget, over several seeds.

Every cell of the grid is a real `pitdist train` run (the trainer, DeepSpeed engine and held-out
evaluation of the repository) in this process, one after another: SP = 1, because a ViT on 7x7 or
4x4 patches has 16 or 49 tokens and the question here is accuracy, not parallelism. "Equal budget"
means the same number of training images (steps x batch), the same optimizer, schedule and seed set
for every cell; the val split is the trainer's (data.val_fraction of the dataset, drawn with the
seed), so each seed scores a different held-out subset and the spread covers both the weights'
initialisation / batch order and the choice of held-out images.

The grid runs seed by seed (every cell of seed 0, then of seed 1, ...) and the JSON is rewritten
after every run, so a run cut short still leaves whole seeds behind.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import textwrap
import time
from pathlib import Path

from pitdist.bench.common import (
    BenchOptionError,
    choice_list,
    created,
    figure,
    int_list,
    json_path,
    only_model_overrides,
    option_error,
    plot_path,
    publish,
    write_json,
)

INT_LIST = int_list(None, "0,1,2")  # the list-valued options' type

PE_VARIANTS = ("none", "sincos", "learned")
DATA_HINT = "pitdist data convert fashion-mnist --split train --out data/fmnist-train"

EPILOG = textwrap.dedent(
    f"""\
    Grid: PiT (patch 1) with every --pe variant, and ViT at every --patches size > 1 with --vit-pe;
    each for every --seeds value, trained --steps x --batch-size images, then scored on the held-out
    split. Model: nano (width 64, 4 layers, 4 heads) unless overridden with --model.KEY VALUE.

    Data (once): {DATA_HINT}

    Outputs: a table on stdout; JSON (--out, rewritten after every run) and a PNG (--plot): val
    accuracy per cell (mean, spread and every seed).

    Examples
      pitdist bench accuracy --steps 64 --seeds 0,1,2
      pitdist bench accuracy --dataset synthetic:8x8x1:96 --patches 1,2,4 --pe none,sincos \\
          --seeds 0,1 --steps 2 --batch-size 8                      # smoke run (what the test does)
    """
)


_pe_list = choice_list(PE_VARIANTS, "PE variant(s)")


def add_parser(sub) -> argparse.ArgumentParser:
    p = sub.add_parser(
        "accuracy",
        help="held-out accuracy of PiT vs ViT and of PiT's PE variants at equal training budget, over seeds",
        description="Train every cell of a PiT/ViT x PE x seed grid with `pitdist train` (one process, SP = 1) "
        "for the same number of images and report held-out accuracy: mean, spread and every seed.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--dataset",
        default="data/fmnist-train",
        help=f"dataset directory or synthetic:HxWxC:COUNT (default: data/fmnist-train; make it with `{DATA_HINT}`)",
    )
    p.add_argument(
        "--patches",
        type=INT_LIST,
        default=[1, 2, 4, 7],
        metavar="LIST",
        help="patch sizes: 1 is PiT, > 1 ViT; each must divide the image side (default: 1,2,4,7)",
    )
    p.add_argument(
        "--pe",
        type=_pe_list,
        default=list(PE_VARIANTS),
        metavar="LIST",
        help="PiT's position embeddings to compare (default: none,sincos,learned)",
    )
    p.add_argument(
        "--vit-pe", default="sincos", choices=PE_VARIANTS, help="the ViTs' position embedding (default: sincos)"
    )
    p.add_argument("--seeds", type=INT_LIST, default=[0, 1, 2], metavar="LIST", help="seeds (default: 0,1,2)")
    p.add_argument("--steps", type=int, default=64, help="training steps per cell (default: 64)")
    p.add_argument("--batch-size", type=int, default=32, help="images per step (default: 32)")
    p.add_argument("--lr", type=float, default=2e-3, help="peak learning rate, every cell (default: 2e-3)")
    p.add_argument("--warmup", type=int, default=8, help="warm-up steps, every cell (default: 8)")
    p.add_argument(
        "--val-fraction",
        type=float,
        default=0.02,
        help="held-out share of the dataset, drawn with each seed (default: 0.02 = 1,200 of "
        "Fashion-MNIST's 60,000 training images)",
    )
    p.add_argument(
        "--val-dataset",
        default=None,
        metavar="DIR",
        help="score every cell on this dataset instead (e.g. Fashion-MNIST's 10,000 test images: "
        "`pitdist data convert fashion-mnist --split test --out data/fmnist-test`); then every image of "
        "--dataset trains and --val-fraction is unused",
    )
    p.add_argument("--out", default=None, metavar="PATH", help="JSON (default: runs/bench-accuracy-<time>.json)")
    p.add_argument(
        "--resume",
        action="store_true",
        help="continue the grid in --out: keep its finished runs (same dataset and budget) and train the "
        "cells it lacks",
    )
    p.add_argument("--plot", default=None, metavar="PATH", help="PNG (default: the --out path with .png)")
    p.add_argument(
        "--from-json",
        default=None,
        metavar="PATH",
        help="train nothing: print the table and draw the plot of an earlier run's JSON (e.g. one cut "
        "short: its finished runs)",
    )
    return p


def grid(args: argparse.Namespace) -> list[dict]:
    """The cells, seed-major; PiT with sincos is both the PE comparison's and the ViT comparison's PiT."""
    cells = []
    for seed in args.seeds:
        for patch in args.patches:
            for pe in args.pe if patch == 1 else [args.vit_pe]:
                cells.append({"model": "PiT" if patch == 1 else "ViT", "patch": patch, "pos_embed": pe, "seed": seed})
    return cells


def cell_key(cell: dict) -> str:
    return f"{cell['model']} p={cell['patch']} {cell['pos_embed']}"


def configs(args: argparse.Namespace, overrides: list[str], out_dir: Path) -> list[tuple[dict, object]]:
    """(cell, JobConfig) for every cell, all validated before the first run starts."""
    from pitdist.config import ConfigError, load_config
    from pitdist.train.validate import validate_job

    only_model_overrides(overrides, "accuracy")
    if any(o in ("--model.patch_size", "--model.pos_embed") for o in overrides):
        raise ConfigError("--model.patch_size / --model.pos_embed: the grid sets them; use --patches, --pe, --vit-pe")
    for name, lowest in (("steps", 1), ("batch_size", 1), ("warmup", 1)):
        if getattr(args, name) < lowest:
            raise BenchOptionError(f"--{name.replace('_', '-')}: must be >= {lowest}, got {getattr(args, name)}")
    if 1 not in args.patches:
        raise BenchOptionError(
            f"--patches {','.join(map(str, args.patches))}: must include 1 (PiT), the model compared"
        )
    for option, name in (("--dataset", args.dataset), ("--val-dataset", args.val_dataset)):
        if name and not name.startswith("synthetic:") and not Path(name).is_dir():
            raise BenchOptionError(
                f"{option} {name}: no such dataset directory; create it with `{DATA_HINT}` "
                f"(--split test for the test images; or pass synthetic:28x28x1:1000 for a smoke run)"
            )
    out = []
    for cell in grid(args):
        cfg = load_config(
            None,
            [
                "--model.size",
                "nano",
                *overrides,
                "--model.patch_size",
                str(cell["patch"]),
                "--model.pos_embed",
                cell["pos_embed"],
                "--data.dataset",
                args.dataset,
                "--data.loader",
                "memory",
                "--data.val_fraction",
                str(args.val_fraction),
                *(["--data.val_dataset", args.val_dataset] if args.val_dataset else []),
                "--parallel.launcher",
                "single",
                "--parallel.dp",
                "1",
                "--parallel.sp",
                "1",
                "--train.steps",
                str(args.steps),
                "--train.batch_size",
                str(args.batch_size),
                "--train.seed",
                str(cell["seed"]),
                "--train.log_every",
                str(args.steps),
                "--optim.lr",
                str(args.lr),
                "--optim.warmup_steps",
                str(args.warmup),
                "--metrics.ledger",
                "false",
                "--train.output_dir",
                str(out_dir),
                "--name",
                f"acc-{cell['model'].lower()}{cell['patch']}-{cell['pos_embed']}-s{cell['seed']}",
            ],
        )
        if not out:  # the first cell reads the dataset: every cell uses the same one
            from pitdist.data.registry import split_dataset

            train_data, _ = split_dataset(cfg)
            h, w, _ = train_data.image_shape
            bad = [q for q in args.patches if h % q or w % q]
            if bad:
                raise BenchOptionError(
                    f"--patches: {'ViT p=' + str(bad[0])} does not divide the {h}x{w} images; "
                    f"use divisors of the side (for 28x28: 1, 2, 4, 7, 14)"
                )
            if len(train_data) < args.batch_size:
                raise BenchOptionError(
                    f"--batch-size {args.batch_size}: the training split has only {len(train_data)} images"
                )
        try:
            validate_job(cfg)  # dataset readable, mesh fits
        except ValueError as exc:
            raise BenchOptionError(f"{cell_key(cell)}: {exc}") from None
        out.append((cell, cfg))
    return out


def finished_runs(out: Path, report: dict) -> list[dict]:
    """The runs of an earlier, cut-short grid in ``out`` that this one can keep (BenchOptionError when
    it measured something else)."""
    if not out.is_file():
        raise BenchOptionError(f"--resume: {out} does not exist; start the grid without --resume")
    try:
        earlier = json.loads(out.read_text())
        runs = earlier["runs"]
    except (OSError, ValueError, KeyError) as exc:
        raise BenchOptionError(f"--resume: {out} is not a bench accuracy JSON ({exc})") from None
    for field in ("dataset", "val_dataset", "budget", "model", "vit_pos_embed", "val_images"):
        if earlier.get(field) != report.get(field):
            raise BenchOptionError(
                f"--resume: {out} measured {field} = {earlier.get(field)!r}, this grid {report.get(field)!r}; "
                "resume with the same options, or write a new --out"
            )
    return runs


def summarize(runs: list[dict]) -> list[dict]:
    """Mean, sample standard deviation, min and max of val accuracy per cell, over the seeds run."""
    rows = []
    for key in dict.fromkeys(r["key"] for r in runs):
        sub = [r for r in runs if r["key"] == key]
        acc = [r["val_accuracy"] for r in sub]
        rows.append(
            {
                "key": key,
                "model": sub[0]["model"],
                "patch": sub[0]["patch"],
                "pos_embed": sub[0]["pos_embed"],
                "tokens": sub[0]["tokens"],
                "seeds": [r["seed"] for r in sub],
                "accuracies": acc,
                "mean": statistics.fmean(acc),
                "std": statistics.stdev(acc) if len(acc) > 1 else 0.0,
                "min": min(acc),
                "max": max(acc),
                "final_loss_mean": statistics.fmean(r["final_loss"] for r in sub),
                "images_per_s_mean": statistics.fmean(r["images_per_s"] for r in sub),
                "wall_s_mean": statistics.fmean(r["wall_s"] for r in sub),
            }
        )
    return rows


def render(report: dict) -> str:
    b = report["budget"]
    lines = [
        f"pitdist bench accuracy: {report['dataset']}, {b['steps']} steps x {b['batch_size']} images = "
        f"{b['images']:,} training images per cell, seeds {','.join(map(str, report['seeds']))}, "
        + (
            f"scored on {report['val_dataset']}'s {report['val_images']:,} images"
            if report.get("val_dataset")
            else f"val {report['val_images']} images per seed"
        ),
        f"{'cell':<22}{'tokens':>7}{'mean acc':>10}{'std':>8}{'min':>8}{'max':>8}{'loss':>8}{'img/s':>8}"
        f"{'train s':>9}  per seed",
    ]
    for r in report["summary"]:
        lines.append(
            f"{r['key']:<22}{r['tokens']:>7}{r['mean']:>10.2%}{r['std']:>8.2%}{r['min']:>8.2%}{r['max']:>8.2%}"
            f"{r['final_loss_mean']:>8.3f}{r['images_per_s_mean']:>8.1f}{r['wall_s_mean']:>9.1f}  "
            + " ".join(f"{a:.3f}" for a in r["accuracies"])
        )
    return "\n".join(lines)


def plot(report: dict, path: Path) -> None:
    rows = report["summary"]
    vit_pe = report["vit_pos_embed"]
    panels = [
        ("PiT (p=1) vs ViT, " + vit_pe + " PE", [r for r in rows if r["pos_embed"] == vit_pe]),
        ("PiT position embeddings", [r for r in rows if r["model"] == "PiT"]),
    ]
    with figure(path, 2, (11, 4.2)) as (fig, axes):
        for ax, (title, sub) in zip(axes, panels):
            labels = [
                f"{r['model']} p={r['patch']}\n{r['tokens']} tok" if "ViT" in title else r["pos_embed"] for r in sub
            ]
            x = range(len(sub))
            ax.bar(
                x,
                [r["mean"] * 100 for r in sub],
                yerr=[r["std"] * 100 for r in sub],
                capsize=4,
                color="#9ecae1",
                label="mean +- std over seeds",
            )
            for i, r in enumerate(sub):
                ax.plot([i] * len(r["accuracies"]), [a * 100 for a in r["accuracies"]], "k.", ms=6)
            ax.set_xticks(list(x))
            ax.set_xticklabels(labels, fontsize=8)
            ax.set_ylabel("held-out accuracy %")
            ax.set_title(title, fontsize=10)
            low = min((a for r in sub for a in r["accuracies"]), default=0) * 100
            ax.set_ylim(max(0, low - 10), 100)
        b = report["budget"]
        fig.suptitle(
            f"{report['dataset_name']}: {b['images']:,} training images per run ({b['steps']} steps x "
            f"{b['batch_size']}), dots = seeds",
            fontsize=10,
        )


def main(args: argparse.Namespace, overrides: list[str]) -> int:
    from pitdist.config import ConfigError
    from pitdist.parallel_dims import MeshError

    if args.from_json:
        try:
            report = json.loads(Path(args.from_json).read_text())
            report["summary"] = summarize(report["runs"])
        except (OSError, ValueError, KeyError) as exc:
            print(
                f"pitdist bench accuracy: error: --from-json {args.from_json}: not a bench accuracy JSON ({exc})",
                file=sys.stderr,
            )
            return 2
        png = Path(args.plot) if args.plot else Path(args.from_json).with_suffix(".png")
        plot(report, png)
        print(
            render(report)
            + ("" if report.get("complete") else "\n(incomplete run: the rows above are the runs that finished)")
        )
        print(f"\nplot: {png}")
        return 0
    out = json_path(args.out, "accuracy")
    png = plot_path(args.plot, out)
    run_root = out.with_suffix("")  # the runs' own directories (result.json, metrics.jsonl, model.pt)
    try:
        cells = configs(args, overrides, run_root)
    except (ConfigError, MeshError, BenchOptionError, FileNotFoundError) as exc:
        return option_error("accuracy", exc)
    import deepspeed
    import torch

    from pitdist.data.registry import split_dataset
    from pitdist.launch.local import launch_local, make_run_dir

    out.parent.mkdir(parents=True, exist_ok=True)
    png.parent.mkdir(parents=True, exist_ok=True)
    train_data, val_data = split_dataset(cells[0][1])
    h, w, _ = train_data.image_shape
    m = cells[0][1].model
    report = {
        "benchmark": "pitdist bench accuracy",
        "created": created(),
        "complete": False,
        "command": sys.argv,
        "dataset": args.dataset,
        "dataset_name": Path(args.dataset).name or args.dataset,
        "image_shape": list(train_data.image_shape),
        "train_images_available": len(train_data),
        "val_dataset": args.val_dataset,
        "val_images": len(val_data),
        "seeds": args.seeds,
        "vit_pos_embed": args.vit_pe,
        "budget": {
            "steps": args.steps,
            "batch_size": args.batch_size,
            "images": args.steps * args.batch_size,
            "lr": args.lr,
            "warmup_steps": args.warmup,
            "optimizer": "AdamW (torch), WarmupDecayLR",
            "weight_decay": cells[0][1].optim.weight_decay,
            "grad_clip": cells[0][1].optim.grad_clip,
        },
        "model": {"dim": m.width, "depth": m.num_layers, "heads": m.num_heads, "mlp_ratio": m.mlp_ratio},
        "machine": {
            "cores": os.cpu_count(),
            "threads": torch.get_num_threads(),
            "torch": torch.__version__,
            "deepspeed": deepspeed.__version__,
        },
        "runs": [],
        "summary": [],
    }
    if args.resume:
        try:
            kept = finished_runs(out, report)
        except BenchOptionError as exc:
            return option_error("accuracy", exc)
        wanted = {(cell_key(c), c["seed"]) for c, _ in cells}
        report["runs"] = [r for r in kept if (r["key"], r["seed"]) in wanted]
    done = {(r["key"], r["seed"]) for r in report["runs"]}
    grid_order = {(cell_key(c), c["seed"]): i for i, (c, _) in enumerate(cells)}
    print(
        f"[bench accuracy] {len(cells)} runs of {args.steps} steps x {args.batch_size} images -> {out}"
        + (f" ({len(done)} kept from the earlier grid)" if done else ""),
        file=sys.stderr,
        flush=True,
    )
    started = time.perf_counter()
    for i, (cell, cfg) in enumerate(cells):
        if (cell_key(cell), cell["seed"]) in done:
            continue
        t0 = time.perf_counter()
        result = launch_local(cfg, make_run_dir(cfg))
        tail = result.losses[-max(1, len(result.losses) // 10) :]  # last 10% of steps: less noisy than one step
        report["runs"].append(
            {
                **cell,
                "key": cell_key(cell),
                "tokens": (h // cell["patch"]) * (w // cell["patch"]),
                "val_accuracy": result.val_accuracy,
                "final_loss": statistics.fmean(tail),
                "images_per_s": result.images_per_s,
                "wall_s": result.wall_s,
                "run_s": time.perf_counter() - t0,
                "run_dir": result.run_dir,
            }
        )
        report["runs"].sort(key=lambda r: grid_order[(r["key"], r["seed"])])
        report["summary"] = summarize(report["runs"])
        report["elapsed_s"] = time.perf_counter() - started
        write_json(report, out)
        print(
            f"[bench accuracy] {i + 1}/{len(cells)} {cell_key(cell)} seed {cell['seed']}: "
            f"val {result.val_accuracy:.2%}, {result.images_per_s:.1f} images/s, {time.perf_counter() - t0:.0f} s",
            file=sys.stderr,
            flush=True,
        )
    report["complete"] = True
    return publish(report, out, png, plot, render)
