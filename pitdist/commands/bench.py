"""`pitdist bench BENCHMARK`: every benchmark of pitdist.bench.BENCHMARKS, each a module with the same
add_parser(subparsers) / main(args, rest) pair as the commands."""

from __future__ import annotations

import argparse
import importlib  # the benchmark modules are light at import time: torch and deepspeed load inside the run

from pitdist.bench import BENCHMARKS


def add_parser(sub) -> argparse.ArgumentParser:
    p = sub.add_parser(
        "bench",
        help=f"benchmarks ({', '.join(b.replace('_', '-') for b in BENCHMARKS)})",
        description="Benchmarks measured with real ranks on this machine.",
    )
    subs = p.add_subparsers(dest="bench_command", required=True, metavar="BENCHMARK")
    for name in BENCHMARKS:
        importlib.import_module(f"pitdist.bench.{name}").add_parser(subs)
    return p


def main(args: argparse.Namespace, rest: list[str]) -> int:
    # Module names use "_" where command names use "-" (gpu-check is pitdist.bench.gpu_check).
    return importlib.import_module(f"pitdist.bench.{args.bench_command.replace('-', '_')}").main(args, rest)
