"""`pitdist comm-report`: bytes and seconds per collective for each position-embedding variant, measured
(a sweep of short runs, or finished runs, or a Prometheus server) next to the analytical model."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from pitdist.commands.common import int_list
from pitdist.config import DEFAULT_JOB, ConfigError, default_job


def add_parser(sub) -> argparse.ArgumentParser:
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
    p.add_argument(
        "--run-id",
        nargs="+",
        metavar="RUN",
        help="with --prometheus: the runs (run directory names; default: every run within --lookback)",
    )
    p.add_argument("--lookback", default="1d", help="with --prometheus: how far back to look, e.g. 2h (default 1d)")
    p.add_argument("--dp", default="1", help="data-parallel groups Q (default 1)")
    p.add_argument("--sp", default="2", help="SP ranks P; a comma list sweeps them, e.g. 1,2,4 (default 2)")
    p.add_argument(
        "--ring",
        default="1",
        help="ring-attention ranks R of each P (Ulysses over P/R); a comma list "
        "compares schemes, e.g. --sp 4 --ring 1,2,4 = Ulysses, hybrid 2x2, ring (default 1)",
    )
    p.add_argument("--zero", type=int, default=None, help="ZeRO stage 0, 1 or 2 (default: the job's)")
    p.add_argument(
        "--variants",
        default="none,sincos,learned,learned-sharded",
        help="comma list of none, sincos, learned, learned-sharded (default: all four)",
    )
    p.add_argument("--steps", type=int, default=3, help="training steps per variant (default 3)")
    p.add_argument("--out", default=None, help="output directory (default runs/comm-report-<time>)")
    return p


def main(args: argparse.Namespace, overrides: list[str]) -> int:
    from pitdist.launch import sweep as comm_sweep
    from pitdist.parallel_dims import MeshError

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
            config_path = default_job(args.config)
            variants = [v.strip() for v in args.variants.split(",") if v.strip()]
            unknown = [v for v in variants if v not in comm_sweep.VARIANTS]
            if unknown:
                raise ConfigError(f"--variants: unknown {unknown}; choose from {', '.join(comm_sweep.VARIANTS)}")
            if args.steps < 1:
                raise ConfigError("--steps: must be >= 1")
            if args.zero is not None:
                overrides += ["--parallel.zero_stage", str(args.zero)]
            rings = int_list("--ring", args.ring)
            sizes = [
                (q, p, r)
                for q in int_list("--dp", args.dp)
                for p in int_list("--sp", args.sp)
                for r in rings
                if p % r == 0
            ]
            if not sizes:
                raise ConfigError(f"--ring {args.ring}: no ring size divides any --sp {args.sp}")
            configs = [
                comm_sweep.variant_config(config_path, list(overrides), v, q, p, args.steps, out_dir, ring=r)
                for q, p, r in sizes
                for v in variants
            ]
            print(f"pitdist comm-report: {len(configs)} runs of {args.steps} steps -> {out_dir}", flush=True)
            run_dirs = comm_sweep.run_sweep(configs)
        text, paths = comm_sweep.report(run_dirs, out_dir)
    except (ConfigError, MeshError, FileNotFoundError) as exc:
        print(f"pitdist comm-report: error: {exc}", file=sys.stderr)
        return 2
    print(text)
    print("wrote " + ", ".join(str(p) for p in paths))
    return 0
