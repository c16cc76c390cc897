"""`pitdist bench ledger`: what recording every collective costs, measured side by side.

Alternates runs with the ledger on and off (same job, same seed, same mesh) and compares the
median time per training step (model set-up excluded). The machine is shared and noisy, so the
answer is a ratio of interleaved measurements, not an absolute time.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

from pitdist.bench.common import json_path, option_error, write_json
from pitdist.config import DEFAULT_JOB, default_job


def add_parser(sub) -> argparse.ArgumentParser:
    p = sub.add_parser(
        "ledger",
        help="step time with the communication ledger on vs off",
        description="Train the same job with the ledger on and off, interleaved, and report the median "
        "step time of each and their ratio. Other job settings: --SECTION.KEY VALUE.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Example\n  pitdist bench ledger --sp 2 --steps 40 --repeats 3",
    )
    p.add_argument("--config", default=None, help=f"job TOML (default: {DEFAULT_JOB} when it exists)")
    p.add_argument("--dp", type=int, default=1, help="data-parallel groups Q (default 1)")
    p.add_argument("--sp", type=int, default=2, help="SP ranks P (default 2)")
    p.add_argument("--steps", type=int, default=40, help="training steps per run (default 40)")
    p.add_argument("--repeats", type=int, default=3, help="runs per setting, interleaved (default 3)")
    p.add_argument("--out", default=None, help="JSON output (default runs/bench-ledger-<time>.json)")
    return p


def per_call_seconds(rounds: int = 30, calls: int = 200) -> tuple[float, float]:
    """Median seconds of one tiny all-reduce on a 1-rank gloo group with the ledger on and off,
    interleaved: the collective itself costs next to nothing, so the difference is the recording."""
    import torch

    from pitdist.distributed import comm
    from pitdist.observe.ledger import CommLedger

    comm.init_process_group(0, 1, "gloo", "127.0.0.1", comm.free_port())
    try:
        x = torch.zeros(1)
        times: dict[bool, list[float]] = {True: [], False: []}
        for _ in range(rounds):
            for on in (True, False):
                ledger = CommLedger().install() if on else None
                start = time.perf_counter()
                for _ in range(calls):
                    comm.all_reduce_(x, None, category="bench")
                times[on].append((time.perf_counter() - start) / calls)
                if ledger:
                    ledger.uninstall()
        return statistics.median(times[True]), statistics.median(times[False])
    finally:
        comm.destroy_process_group()


def calls_per_step(output_dir: str) -> int:
    """Collectives per training step of rank 0 in the newest ledger-on run of this benchmark."""
    from pitdist.observe.categories import per_step_totals

    newest = max(Path(output_dir).glob("ledger-True-*/comm/rank0.json"), key=lambda p: p.stat().st_mtime)
    rows = json.loads(newest.read_text())["rows"]
    return sum(t.count for t in per_step_totals(rows).values())


def main(args: argparse.Namespace, overrides: list[str]) -> int:
    from pitdist.config import ConfigError, load_config
    from pitdist.launch.local import launch_local, make_run_dir

    config = default_job(args.config)
    launcher = "single" if args.dp * args.sp == 1 else "local"
    try:
        if args.steps < 2 or args.repeats < 1:
            raise ConfigError("--steps must be >= 2 and --repeats >= 1")
        cfgs = {
            on: load_config(
                config,
                [
                    *overrides,
                    "--parallel.dp",
                    str(args.dp),
                    "--parallel.sp",
                    str(args.sp),
                    "--parallel.launcher",
                    launcher,
                    "--train.steps",
                    str(args.steps),
                    "--train.log_every",
                    str(args.steps),
                    "--metrics.ledger",
                    str(on).lower(),
                    "--train.output_dir",
                    "runs/bench-ledger",
                    "--name",
                    f"ledger-{on}",
                ],
            )
            for on in (True, False)
        }
    except ConfigError as exc:
        return option_error("ledger", exc)
    per_step: dict[bool, list[float]] = {True: [], False: []}
    for repeat in range(args.repeats):
        for on in (True, False) if repeat % 2 == 0 else (False, True):
            result = launch_local(cfgs[on], make_run_dir(cfgs[on]))
            per_step[on].append(result.wall_s / result.steps)
            print(
                f"  repeat {repeat + 1}: ledger {'on ' if on else 'off'} {per_step[on][-1] * 1e3:8.2f} ms/step",
                flush=True,
            )
    on, off = statistics.median(per_step[True]), statistics.median(per_step[False])
    call_on, call_off = per_call_seconds()
    calls = calls_per_step(cfgs[True].train.output_dir)
    from pitdist.observe.ledger import CommLedger

    summary = {
        "clock": CommLedger().clock.name,  # how the ledger timed the calls (pitdist.observe.ledger: Time)
        "per_call_us_on": call_on * 1e6,
        "per_call_us_off": call_off * 1e6,
        "calls_per_step": calls,
        "recording_ms_per_step": (call_on - call_off) * calls * 1e3,
        "recording_fraction_of_step": (call_on - call_off) * calls / off,
        "dp": args.dp,
        "sp": args.sp,
        "steps": args.steps,
        "repeats": args.repeats,
        "ms_per_step_on": [t * 1e3 for t in per_step[True]],
        "ms_per_step_off": [t * 1e3 for t in per_step[False]],
        "median_on_ms": on * 1e3,
        "median_off_ms": off * 1e3,
        "ratio_on_over_off": on / off,
    }
    print(
        f"ledger on / off, median step time: {on * 1e3:.2f} / {off * 1e3:.2f} ms = {on / off:.3f} "
        "(whole steps: dominated by machine noise when the cores are shared)"
    )
    print(
        f"recording cost, measured per call: {call_on * 1e6:.1f} vs {call_off * 1e6:.1f} us per 4-byte all-reduce "
        f"= {(call_on - call_off) * 1e6:.1f} us x {calls} collectives per step = "
        f"{(call_on - call_off) * calls * 1e3:.3f} ms per step ({(call_on - call_off) * calls / off:.2%} of a step)"
    )
    out = json_path(args.out, "ledger")
    write_json(summary, out)
    print(f"wrote {out}")
    return 0
