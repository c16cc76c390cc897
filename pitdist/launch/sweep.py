"""`pitdist comm-report`'s runs: each PE variant for a few steps at a mesh, then their report."""

from __future__ import annotations

import time
from pathlib import Path

from pitdist.config import JobConfig, load_config
from pitdist.report.comm_report import (
    crosscheck_table,
    crosscheck_verdict,
    format_blocks,
    load_run,
    summarize,
    write_outputs,
)

VARIANTS = {
    "none": ["--model.pos_embed", "none", "--model.shard_pos_embed", "false"],
    "sincos": ["--model.pos_embed", "sincos", "--model.shard_pos_embed", "false"],
    "learned": ["--model.pos_embed", "learned", "--model.shard_pos_embed", "false"],
    "learned-sharded": ["--model.pos_embed", "learned", "--model.shard_pos_embed", "true"],
}


def variant_config(
    config: str | None, overrides: list[str], variant: str, dp: int, sp: int, steps: int, out_dir: Path, ring: int = 1
) -> JobConfig:
    """``ring`` > 1: the SP ranks run ring attention over ``ring`` of them (Ulysses over sp / ring)."""
    launcher = "single" if dp * sp == 1 else "local"
    mesh = f"q{dp}p{sp}" + (f"r{ring}" if ring > 1 else "")
    return load_config(
        config,
        [
            *overrides,
            *VARIANTS[variant],
            "--parallel.dp",
            str(dp),
            "--parallel.sp",
            str(sp),
            "--parallel.ring",
            str(ring),
            "--parallel.ulysses",
            str(sp // ring if sp % ring == 0 else 0),
            "--parallel.launcher",
            launcher,
            "--train.steps",
            str(steps),
            "--metrics.crosscheck",
            "true",
            "--train.output_dir",
            str(out_dir / "runs"),
            "--name",
            f"comm-{variant}-{mesh}",
            "--train.log_every",
            str(steps),
            "--train.evaluate",
            "false",
        ],
    )


def run_sweep(configs: list[JobConfig], progress=print) -> list[str]:
    """Train each config (a few steps) and return the run directories."""
    from pitdist.launch.local import launch_local, make_run_dir
    from pitdist.train.validate import validate_job

    for cfg in configs:  # refuse a bad mesh before the first run, not after a few
        validate_job(cfg)
    run_dirs = []
    for cfg in configs:
        run_dir = make_run_dir(cfg)
        progress(f"  running {cfg.name} ({cfg.train.steps} steps, zero {cfg.parallel.zero_stage}) -> {run_dir}")
        launch_local(cfg, run_dir)
        run_dirs.append(str(run_dir))
    return run_dirs


def report(run_dirs: list[str], out_dir: Path, baseline_variant: str = "none") -> tuple[str, list[Path]]:
    runs = [load_run(d) for d in run_dirs]
    summaries = [summarize(r) for r in runs]
    checks = [c for r in runs for c in crosscheck_table(r)]
    blocks = format_blocks(summaries, baseline_variant)
    blocks.append(crosscheck_verdict(checks))
    paths = write_outputs(summaries, checks, out_dir)
    return "\n\n".join(blocks), paths


def default_out_dir() -> Path:
    return Path("runs") / f"comm-report-{time.strftime('%Y%m%d-%H%M%S')}"
