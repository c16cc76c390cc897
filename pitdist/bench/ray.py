"""`pitdist bench ray`: what running on Ray costs next to the local launcher, measured side by side.

Runs the same job (same seed, mesh and steps) as a user would, through `pitdist train`, with
  local             one spawned process per rank, memory-mapped data
  ray / memory      Ray Train workers, memory-mapped data
  ray / ray_data    Ray Train workers fed by Ray Data (the Ray launcher's default)
interleaved ``--repeats`` times, and reports the median time per training step (from metrics.jsonl,
the first logging window excluded: it holds the first collectives' set-up) and the start-up cost
(process wall time minus the training loop: Ray start, worker placement, model and engine set-up).
The machine is shared and noisy, so the answer is ratios of interleaved runs.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

from pitdist.bench.common import stamp, write_json
from pitdist.config import DEFAULT_JOB, default_job

SETTINGS = {
    "local": ["--launcher", "local", "--data.loader", "memory"],
    "ray / memory": ["--launcher", "ray", "--data.loader", "memory"],
    "ray / ray_data": ["--launcher", "ray", "--data.loader", "ray_data"],
}


def add_parser(sub) -> argparse.ArgumentParser:
    p = sub.add_parser(
        "ray",
        help="step time and start-up of the Ray launcher vs the local launcher",
        description="Train the same job with the local launcher and with Ray Train (memory-mapped and Ray Data "
        "loading), interleaved, and report the median step time and start-up cost of each with ratios to "
        "the local launcher. Other job settings: --SECTION.KEY VALUE.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Example\n  pitdist bench ray --sp 2 --steps 100 --repeats 2",
    )
    p.add_argument("--config", default=None, help=f"job TOML (default: {DEFAULT_JOB} when it exists)")
    p.add_argument("--dp", type=int, default=1, help="data-parallel groups Q (default 1)")
    p.add_argument("--sp", type=int, default=2, help="SP ranks P (default 2)")
    p.add_argument("--steps", type=int, default=100, help="training steps per run (default 100)")
    p.add_argument("--repeats", type=int, default=2, help="runs per setting, interleaved (default 2)")
    p.add_argument("--out", default=None, help="JSON output (default runs/bench-ray-<time>.json)")
    return p


def step_seconds(run_dir: Path, batch_size: int) -> float:
    """Median seconds per step over metrics.jsonl's logging windows after the first."""
    windows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return statistics.median(batch_size / w["images_per_s"] for w in windows[1:] or windows)


def one_run(
    config: str | None, setting: list[str], args: argparse.Namespace, overrides: list[str], out_dir: Path
) -> dict:
    cmd = [
        sys.executable,
        "-m",
        "pitdist.cli",
        "train",
        *(["--config", config] if config else []),
        "--dp",
        str(args.dp),
        "--sp",
        str(args.sp),
        "--train.steps",
        str(args.steps),
        "--train.log_every",
        str(max(1, args.steps // 10)),
        "--train.evaluate",
        "false",
        "--metrics.ledger",
        "false",
        "--train.output_dir",
        str(out_dir),
        *setting,
        *overrides,
    ]
    start = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    total = time.perf_counter() - start
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} exited {proc.returncode}:\n{proc.stderr[-3000:]}")
    run_dir = Path(next(line for line in proc.stdout.splitlines() if line.startswith("done: ")).split("| ")[-1])
    result = json.loads((run_dir / "result.json").read_text())
    batch = json.loads((run_dir / "config.json").read_text())["train"]["batch_size"]
    return {"step_s": step_seconds(run_dir, batch), "startup_s": total - result["wall_s"], "total_s": total}


def main(args: argparse.Namespace, overrides: list[str]) -> int:
    config = default_job(args.config)
    when = stamp()
    out = Path(args.out) if args.out else Path("runs") / f"bench-ray-{when}.json"
    runs_dir = out.parent / f"bench-ray-{when}-runs"
    samples: dict[str, list[dict]] = {name: [] for name in SETTINGS}
    for r in range(args.repeats):
        for name, setting in SETTINGS.items():
            print(f"[{r + 1}/{args.repeats}] {name} ...", flush=True)
            samples[name].append(one_run(config, setting, args, overrides, runs_dir))
    summary = {
        name: {key: statistics.median(s[key] for s in runs) for key in ("step_s", "startup_s", "total_s")}
        for name, runs in samples.items()
    }
    base = summary["local"]
    lines = [
        f"dp={args.dp} x sp={args.sp}, {args.steps} steps, {args.repeats} interleaved runs each (medians)",
        f"{'launcher / loader':<18}{'ms/step':>9}{'vs local':>10}{'start-up s':>12}{'total s':>9}",
    ]
    for name, s in summary.items():
        lines.append(
            f"{name:<18}{s['step_s'] * 1e3:>9.2f}{s['step_s'] / base['step_s']:>9.2f}x"
            f"{s['startup_s']:>12.1f}{s['total_s']:>9.1f}"
        )
    print("\n".join(lines))
    write_json(
        {
            "dp": args.dp,
            "sp": args.sp,
            "steps": args.steps,
            "repeats": args.repeats,
            "overrides": overrides,
            "summary": summary,
            "samples": samples,
        },
        out,
    )
    print(f"wrote {out}")
    return 0
