"""`pitdist` command line: train, comm-report, comm-model, bench, data, submit, job."""

from __future__ import annotations

import argparse
import math
import os
import sys
import textwrap
from pathlib import Path

from pitdist.config import ConfigError, load_config

DEFAULT_JOB = "jobs/digits.toml"

TRAIN_EPILOG = textwrap.dedent(
    """\
    Any setting of the job file can be overridden as --SECTION.KEY VALUE, for example
      --model.pos_embed none   --model.size tiny   --train.steps 50   --parallel.zero_stage 2
    Sections: model, data, parallel, optim, train (see pitdist/config.py for every key).

    Examples
      pitdist train                                  # the default job ({job}), on an embedded Ray cluster
      pitdist train --address 10.0.0.1:6379          # the same on a running Ray cluster
      pitdist train --launcher local --sp 2          # one image's pixels split over 2 local processes, no Ray
      pitdist train --dp 2 --sp 2 --zero 1 --train.checkpoint_every 50
      pitdist train --sp 1 --launcher single         # one process, no Ray
    """
).format(job=DEFAULT_JOB)


def _train_parser(sub) -> argparse.ArgumentParser:
    p = sub.add_parser(
        "train",
        help="train a PiT on a dataset",
        description="Train a Pixel Transformer on dp x sp ranks: Ray Train workers by default (an embedded "
        "local Ray cluster, or --address), --launcher local spawns one process per rank without Ray, "
        "--launcher single runs in this process. gloo on CPU, nccl and one GPU per rank on GPUs.",
        epilog=TRAIN_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--config", default=None, help=f"job TOML file (default: {DEFAULT_JOB} when it exists)")
    p.add_argument("--launcher", choices=["single", "local", "ray"], help="shortcut for --parallel.launcher")
    p.add_argument("--address", help="Ray cluster to attach to (shortcut for --parallel.ray_address; default: "
                   "the cluster of the Ray job this runs in, else an embedded local cluster)")
    p.add_argument("--dp", type=int, help="data-parallel groups Q (shortcut for --parallel.dp)")
    p.add_argument("--sp", type=int, help="sequence-parallel ranks P per image (shortcut for --parallel.sp)")
    p.add_argument("--ring", type=int, help="of the P ranks, how many pass K/V around a ring (ring attention; "
                   "the other factor P/ring runs Ulysses); shortcut for --parallel.ring")
    p.add_argument("--zero", type=int, help="ZeRO stage 0, 1 or 2 (shortcut for --parallel.zero_stage)")
    p.add_argument("--resume", help="continue from a checkpoint: a run's checkpoints/ directory, or one Ray "
                   "checkpoint directory such as runs/ray/<run>/step-100 (shortcut for --train.resume)")
    return p


def _train(args: argparse.Namespace, overrides: list[str]) -> int:
    from pitdist.parallel_dims import MeshError

    config_path = args.config
    if config_path is None and os.path.exists(DEFAULT_JOB):
        config_path = DEFAULT_JOB
    shortcuts = {"launcher": "parallel.launcher", "dp": "parallel.dp", "sp": "parallel.sp", "ring": "parallel.ring",
                 "zero": "parallel.zero_stage", "resume": "train.resume", "address": "parallel.ray_address"}
    for attr, key in shortcuts.items():
        value = getattr(args, attr)
        if value is not None:
            overrides += [f"--{key}", str(value)]
    try:
        cfg = load_config(config_path, overrides)
        # Imported late: torch/deepspeed take seconds to import, --help and config errors should not.
        from pitdist.launch.local import LaunchError, launch_local, make_run_dir
        from pitdist.train.validate import validate_job

        validate_job(cfg)
    except (ConfigError, MeshError) as exc:
        print(f"pitdist train: error: {exc}", file=sys.stderr)
        return 2
    run_dir = make_run_dir(cfg)
    p = cfg.parallel
    print(
        f"pitdist: {cfg.name}: {cfg.model.size} PiT (p={cfg.model.patch_size}, pos_embed={cfg.model.pos_embed}"
        f"{', sharded' if cfg.model.shard_pos_embed else ''}) on {cfg.data.dataset}, "
        f"dp={p.dp} x sp={p.sp}{f' (ulysses {p.ulysses} x ring {p.ring})' if p.ring > 1 else ''}, "
        f"ZeRO {p.zero_stage}, launcher {p.launcher}; run dir {run_dir}",
        flush=True,
    )
    try:
        if p.launcher == "ray":
            from pitdist.launch.ray_launcher import launch_ray

            result = launch_ray(cfg, run_dir)
        else:
            result = launch_local(cfg, run_dir)
    except ConfigError as exc:  # found once the cluster could be asked (e.g. no GPUs on it)
        if not any(run_dir.iterdir()):
            run_dir.rmdir()
        print(f"pitdist train: error: {exc}", file=sys.stderr)
        return 2
    except LaunchError as exc:
        print(f"pitdist train: a rank failed:\n{exc}", file=sys.stderr)
        return 1
    print(
        f"done: {result.steps} steps in {result.wall_s:.1f} s | final loss {result.losses[-1]:.4f} | "
        f"val accuracy {'skipped' if math.isnan(result.val_accuracy) else f'{result.val_accuracy:.2%}'} | "
        f"{result.images_per_s:.0f} images/s, "
        f"{result.tokens_per_s:.0f} tokens/s, {result.tflops * 1e3:.2f} GFLOP/s | dropped per epoch "
        f"{result.dropped_per_epoch} | {result.run_dir}"
    )
    if cfg.metrics.ledger:
        from pitdist.report.comm_report import format_summary, load_run, summarize

        print("\ncommunication (measured by the ledger, model from pitdist.report.comm_model):")
        print(format_summary(summarize(load_run(result.run_dir))))
    return 0


def _comm_report_parser(sub) -> argparse.ArgumentParser:
    p = sub.add_parser(
        "comm-report",
        help="measure bytes and seconds per collective for each position-embedding variant",
        description="Run each PE variant for a few steps on a DP x SP mesh (local processes, gloo) and print, "
        "per rank and step, the bytes and seconds of every communication category next to the analytical "
        "model, with each variant's difference from 'none'. Every run is also counted by DeepSpeed's comms "
        "logger and a c10d dispatch counter and checked against the ledger. Writes JSON, CSV and a PNG plot. "
        "With --run, reads finished runs instead of training; with --prometheus, reads the counters the ranks "
        "exported (--metrics.prometheus_port) from a Prometheus server, live or after the run.",
        epilog="Examples\n  pitdist comm-report --sp 2\n  pitdist comm-report --sp 2,4 --zero 2 "
        "--model.size tiny --model.heads 4 --data.dataset digits\n  pitdist comm-report --run runs/digits-...\n"
        "  pitdist comm-report --prometheus http://127.0.0.1:9090 --run-id digits-...\n\n"
        "Other job settings: --SECTION.KEY VALUE as for `pitdist train`.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--config", default=None, help=f"job TOML file (default: {DEFAULT_JOB} when it exists)")
    p.add_argument("--run", nargs="+", metavar="RUN_DIR", help="report finished runs instead of training")
    p.add_argument("--prometheus", metavar="URL", help="report runs from this Prometheus instead (its HTTP API)")
    p.add_argument("--run-id", nargs="+", metavar="RUN", help="with --prometheus: the runs (run directory names; "
                   "default: every run within --lookback)")
    p.add_argument("--lookback", default="1d", help="with --prometheus: how far back to look, e.g. 2h (default 1d)")
    p.add_argument("--dp", default="1", help="data-parallel groups Q (default 1)")
    p.add_argument("--sp", default="2", help="SP ranks P; a comma list sweeps them, e.g. 1,2,4 (default 2)")
    p.add_argument("--ring", default="1", help="ring-attention ranks R of each P (Ulysses over P/R); a comma list "
                   "compares schemes, e.g. --sp 4 --ring 1,2,4 = Ulysses, hybrid 2x2, ring (default 1)")
    p.add_argument("--zero", type=int, default=None, help="ZeRO stage 0, 1 or 2 (default: the job's)")
    p.add_argument("--variants", default="none,sincos,learned,learned-sharded",
                   help="comma list of none, sincos, learned, learned-sharded (default: all four)")
    p.add_argument("--steps", type=int, default=3, help="training steps per variant (default 3)")
    p.add_argument("--out", default=None, help="output directory (default runs/comm-report-<time>)")
    return p


def _int_list(option: str, text: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        values = []
    if not values or min(values) < 1:
        raise ConfigError(f"{option}: expected positive integers separated by commas (e.g. 1,2,4), got {text!r}")
    return values


def _comm_report(args: argparse.Namespace, overrides: list[str]) -> int:
    from pitdist.parallel_dims import MeshError
    from pitdist.metrics import comm_sweep

    if args.prometheus:
        from pitdist.report.prometheus_query import PrometheusQueryError, live_report

        try:
            print(live_report(args.prometheus, args.run_id, args.lookback))
        except PrometheusQueryError as exc:
            print(f"pitdist comm-report: error: {exc}", file=sys.stderr)
            return 2
        return 0
    out_dir = Path(args.out) if args.out else comm_sweep.default_out_dir()
    try:
        if args.run:
            run_dirs = args.run
        else:
            config_path = args.config or (DEFAULT_JOB if os.path.exists(DEFAULT_JOB) else None)
            variants = [v.strip() for v in args.variants.split(",") if v.strip()]
            unknown = [v for v in variants if v not in comm_sweep.VARIANTS]
            if unknown:
                raise ConfigError(f"--variants: unknown {unknown}; choose from {', '.join(comm_sweep.VARIANTS)}")
            if args.steps < 1:
                raise ConfigError("--steps: must be >= 1")
            if args.zero is not None:
                overrides += ["--parallel.zero_stage", str(args.zero)]
            rings = _int_list("--ring", args.ring)
            sizes = [(q, p, r) for q in _int_list("--dp", args.dp) for p in _int_list("--sp", args.sp)
                     for r in rings if p % r == 0]
            if not sizes:
                raise ConfigError(f"--ring {args.ring}: no ring size divides any --sp {args.sp}")
            configs = [comm_sweep.variant_config(config_path, list(overrides), v, q, p, args.steps, out_dir, ring=r)
                       for q, p, r in sizes for v in variants]
            print(f"pitdist comm-report: {len(configs)} runs of {args.steps} steps -> {out_dir}", flush=True)
            run_dirs = comm_sweep.run_sweep(configs)
        text, paths = comm_sweep.report(run_dirs, out_dir)
    except (ConfigError, MeshError, FileNotFoundError) as exc:
        print(f"pitdist comm-report: error: {exc}", file=sys.stderr)
        return 2
    print(text)
    print("wrote " + ", ".join(str(p) for p in paths))
    return 0


# Benchmarks are modules of pitdist.bench, each with add_parser(subparsers) and main(args, overrides).
BENCHMARKS = ("sp", "ledger", "data", "ring", "ray", "accuracy", "steptime", "projection")


def _bench_parser(sub) -> argparse.ArgumentParser:
    import importlib  # the modules are light at import time: torch and deepspeed load inside the run

    p = sub.add_parser("bench", help=f"benchmarks ({', '.join(BENCHMARKS)})",
                       description="Benchmarks measured with real ranks on this machine.")
    subs = p.add_subparsers(dest="bench_command", required=True, metavar="BENCHMARK")
    for name in BENCHMARKS:
        importlib.import_module(f"pitdist.bench.{name}").add_parser(subs)
    return p


def _bench(args: argparse.Namespace, overrides: list[str]) -> int:
    import importlib

    return importlib.import_module(f"pitdist.bench.{args.bench_command}").main(args, overrides)


def _comm_model_parser(sub) -> argparse.ArgumentParser:
    p = sub.add_parser(
        "comm-model",
        help="project per-rank communication with the analytical model (no training)",
        description="Print what each rank would send per step, by cause, for the PE variants, from the "
        "analytical model that `pitdist comm-report` checks against measurements. Use it to extrapolate "
        "to image sizes and meshes this machine cannot run.",
        epilog="Examples\n  pitdist comm-model --model.size base --image 224x224x3 --sp 4,12 --batch 1\n"
        "  pitdist comm-model --model.size base --image 512x512x3 --sp 4,16,64 --schemes",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--image", default="224x224x3", help="HxWxC of the images (default 224x224x3)")
    p.add_argument("--classes", type=int, default=1000, help="number of classes (default 1000)")
    p.add_argument("--batch", type=int, default=1, help="global images per step (default 1)")
    p.add_argument("--dp", type=int, default=1, help="data-parallel groups Q (default 1)")
    p.add_argument("--sp", default="4,12", help="SP sizes P, comma separated (default 4,12)")
    p.add_argument("--zero", type=int, default=0, choices=[0, 1, 2], help="ZeRO stage (default 0)")
    p.add_argument("--bytes", type=int, default=2, choices=[2, 4], help="bytes per element: 2 = bf16 (default), 4 = fp32")
    p.add_argument("--schemes", action="store_true", help="compare Ulysses, ring attention and every Ulysses x ring "
                   "hybrid at each P (attention bytes, and the total per PE variant) instead")
    return p


def _comm_model(args: argparse.Namespace, overrides: list[str]) -> int:
    from pitdist.report.comm_model import projection_table, scheme_table
    from pitdist.launch.sweep import VARIANTS

    try:
        h, w, c = (int(v) for v in args.image.split("x"))
    except ValueError:
        print(f"pitdist comm-model: error: --image: expected HxWxC such as 224x224x3, got {args.image!r}", file=sys.stderr)
        return 2
    try:
        cfg = load_config(None, overrides + ["--train.batch_size", str(args.batch), "--parallel.dp", str(args.dp),
                                             "--parallel.launcher", "local" if args.dp > 1 else "single"])
        sps = _int_list("--sp", args.sp)
        variants = {name: load_config(None, overrides + flags).model for name, flags in VARIANTS.items()}
    except ConfigError as exc:
        print(f"pitdist comm-model: error: {exc}", file=sys.stderr)
        return 2
    if args.schemes:
        print(scheme_table(cfg.model, (h, w, c), args.classes, args.batch, args.dp, sps, args.zero, cfg.optim.grad_clip,
                           variants, args.bytes))
        return 0
    from pitdist.parallel_dims import MeshError, ParallelDims

    n = (h // cfg.model.patch_size) * (w // cfg.model.patch_size)
    for sp in sps:
        try:  # a projection may go where Ulysses cannot: say so, but still compute it
            ParallelDims(args.dp, sp).validate(heads=cfg.model.num_heads, num_tokens=n)
        except MeshError as exc:
            print(f"note: pitdist would refuse P = {sp} here: {exc}")
    print(projection_table(cfg.model, (h, w, c), args.classes, args.batch, args.dp, sps, args.zero,
                           cfg.optim.grad_clip, variants, args.bytes))
    return 0


def _data_parser(sub) -> argparse.ArgumentParser:
    from pitdist.data import commands  # light: pyarrow and datasets load inside the command

    return commands.add_parser(sub)


def _data(args: argparse.Namespace, overrides: list[str]) -> int:
    from pitdist.data import commands

    return commands.main(args, overrides)


def build_parser() -> tuple[argparse.ArgumentParser, dict]:
    parser = argparse.ArgumentParser(
        prog="pitdist",
        description="Distributed Pixel Transformer training: DeepSpeed Ulysses sequence parallelism "
        "with per-collective communication accounting.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    from pitdist.launch import submit  # light: ray loads inside the commands
    handlers = {
        "train": (_train_parser(sub), _train),
        "comm-report": (_comm_report_parser(sub), _comm_report),
        "comm-model": (_comm_model_parser(sub), _comm_model),
        "bench": (_bench_parser(sub), _bench),
        "data": (_data_parser(sub), _data),
        "submit": (submit.add_submit_parser(sub), submit.submit_main),
        "job": (submit.add_job_parser(sub), submit.job_main),
    }
    return parser, handlers


def main(argv: list[str] | None = None) -> int:
    # pitdist runs DeepSpeed on CPU unless a GPU is there; saying so up front silences its probing.
    try:
        import torch  # noqa: F401  (cheap next to deepspeed, and needed to know)

        os.environ.setdefault("DS_ACCELERATOR", "cuda" if torch.cuda.is_available() else "cpu")
    except ImportError:
        pass
    parser, handlers = build_parser()
    args, rest = parser.parse_known_args(argv)
    sub_parser, handler = handlers[args.command]
    bad = [a for a in rest if a.startswith("-") and not a.startswith("--") or a == "--"]
    if bad:
        sub_parser.error(f"unrecognized arguments: {' '.join(bad)}")
    return handler(args, list(rest))


if __name__ == "__main__":
    sys.exit(main())
