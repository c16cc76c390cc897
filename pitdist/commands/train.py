"""`pitdist train`: train a PiT on a dataset (one job file, --SECTION.KEY VALUE overrides, a launcher)."""

from __future__ import annotations

import argparse
import math
import sys
import textwrap

from pitdist.config import DEFAULT_JOB, ConfigError, default_job, load_config

TRAIN_EPILOG = textwrap.dedent(
    """\
    Any setting of the job file can be overridden as --SECTION.KEY VALUE, for example
      --model.pos_embed none   --model.size tiny   --train.steps 50   --parallel.zero_stage 2
    Sections: model, data, parallel, optim, train, metrics (see pitdist/config.py for every key).

    Examples
      pitdist train                                  # the default job ({job}), on an embedded Ray cluster
      pitdist train --address 10.0.0.1:6379          # the same on a running Ray cluster
      pitdist train --launcher local --sp 2          # one image's pixels split over 2 local processes, no Ray
      pitdist train --dp 2 --sp 2 --zero 1 --train.checkpoint_every 50
      pitdist train --sp 1 --launcher single         # one process, no Ray
      pitdist train --launcher local --sp 2 --train.activation_checkpointing local
                                                     # recompute in backward what lies between the
                                                     # all-to-alls (none | full | selective | local)
    """
).format(job=DEFAULT_JOB)


def add_parser(sub) -> argparse.ArgumentParser:
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
    p.add_argument(
        "--address",
        help="Ray cluster to attach to (shortcut for --parallel.ray_address; default: "
        "the cluster of the Ray job this runs in, else an embedded local cluster)",
    )
    p.add_argument("--dp", type=int, help="data-parallel groups Q (shortcut for --parallel.dp)")
    p.add_argument("--sp", type=int, help="sequence-parallel ranks P per image (shortcut for --parallel.sp)")
    p.add_argument(
        "--ring",
        type=int,
        help="of the P ranks, how many pass K/V around a ring (ring attention; "
        "the other factor P/ring runs Ulysses); shortcut for --parallel.ring",
    )
    p.add_argument("--zero", type=int, help="ZeRO stage 0, 1 or 2 (shortcut for --parallel.zero_stage)")
    p.add_argument(
        "--resume",
        help="continue from a checkpoint: a run's checkpoints/ directory, or one Ray "
        "checkpoint directory such as runs/ray/<run>/step-100 (shortcut for --train.resume)",
    )
    return p


def main(args: argparse.Namespace, overrides: list[str]) -> int:
    from pitdist.parallel_dims import MeshError

    config_path = default_job(args.config)
    shortcuts = {
        "launcher": "parallel.launcher",
        "dp": "parallel.dp",
        "sp": "parallel.sp",
        "ring": "parallel.ring",
        "zero": "parallel.zero_stage",
        "resume": "train.resume",
        "address": "parallel.ray_address",
    }
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
    if result.skipped_rows:
        print(
            f"skipped {result.skipped_rows} bad rows of {cfg.data.dataset} (data.bad_rows = skip), "
            f"listed in {result.run_dir}/data/skipped.json"
        )
    if cfg.metrics.ledger:
        from pitdist.report.comm_report import format_summary, load_run, summarize

        print("\ncommunication (measured by the ledger, model from pitdist.report.comm_model):")
        print(format_summary(summarize(load_run(result.run_dir))))
    return 0
