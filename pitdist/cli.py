"""`pitdist` command line: train (more subcommands arrive with later features)."""

from __future__ import annotations

import argparse
import os
import sys
import textwrap

from pitdist.config import ConfigError, load_config

DEFAULT_JOB = "jobs/digits.toml"

TRAIN_EPILOG = textwrap.dedent(
    """\
    Any setting of the job file can be overridden as --SECTION.KEY VALUE, for example
      --model.pos_embed none   --model.size tiny   --train.steps 50   --parallel.zero_stage 2
    Sections: model, data, parallel, optim, train (see pitdist/config.py for every key).

    Examples
      pitdist train                                  # the default job ({job})
      pitdist train --launcher local --sp 2          # one image's pixels split over 2 processes
      pitdist train --launcher local --dp 2 --sp 2 --parallel.zero_stage 1
    """
).format(job=DEFAULT_JOB)


def _train_parser(sub) -> argparse.ArgumentParser:
    p = sub.add_parser(
        "train",
        help="train a PiT on a dataset",
        description="Train a Pixel Transformer. Single process by default; --launcher local spawns one "
        "process per rank (gloo on CPU, nccl on GPUs) for dp x sp parallelism.",
        epilog=TRAIN_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--config", default=None, help=f"job TOML file (default: {DEFAULT_JOB} when it exists)")
    p.add_argument("--launcher", choices=["single", "local"], help="shortcut for --parallel.launcher")
    p.add_argument("--dp", type=int, help="data-parallel groups Q (shortcut for --parallel.dp)")
    p.add_argument("--sp", type=int, help="sequence-parallel ranks P per image (shortcut for --parallel.sp)")
    p.add_argument("--zero", type=int, help="ZeRO stage 0, 1 or 2 (shortcut for --parallel.zero_stage)")
    return p


def _train(args: argparse.Namespace, overrides: list[str]) -> int:
    from pitdist.distributed.parallel_dims import MeshError

    config_path = args.config
    if config_path is None and os.path.exists(DEFAULT_JOB):
        config_path = DEFAULT_JOB
    shortcuts = {"launcher": "parallel.launcher", "dp": "parallel.dp", "sp": "parallel.sp", "zero": "parallel.zero_stage"}
    for attr, key in shortcuts.items():
        value = getattr(args, attr)
        if value is not None:
            overrides += [f"--{key}", str(value)]
    # Asking for more than one rank implies the local launcher unless one was named.
    if args.launcher is None and ((args.dp or 1) * (args.sp or 1)) > 1:
        overrides += ["--parallel.launcher", "local"]
    try:
        cfg = load_config(config_path, overrides)
        # Imported late: torch/deepspeed take seconds to import, --help and config errors should not.
        from pitdist.launch.local import LaunchError, launch_local, make_run_dir
        from pitdist.train.trainer import split_dataset, validate_mesh

        train_data, _ = split_dataset(cfg)
        validate_mesh(cfg, train_data.image_shape)
    except (ConfigError, MeshError) as exc:
        print(f"pitdist train: error: {exc}", file=sys.stderr)
        return 2
    run_dir = make_run_dir(cfg)
    p = cfg.parallel
    print(
        f"pitdist: {cfg.name}: {cfg.model.size} PiT (p={cfg.model.patch_size}, pos_embed={cfg.model.pos_embed}"
        f"{', sharded' if cfg.model.shard_pos_embed else ''}) on {cfg.data.dataset}, "
        f"dp={p.dp} x sp={p.sp}, ZeRO {p.zero_stage}, launcher {p.launcher}; run dir {run_dir}",
        flush=True,
    )
    try:
        result = launch_local(cfg, run_dir)
    except LaunchError as exc:
        print(f"pitdist train: a rank failed:\n{exc}", file=sys.stderr)
        return 1
    print(
        f"done: {result.steps} steps in {result.wall_s:.1f} s | final loss {result.losses[-1]:.4f} | "
        f"val accuracy {result.val_accuracy:.2%} | {result.images_per_s:.0f} images/s, "
        f"{result.tokens_per_s:.0f} tokens/s, {result.tflops * 1e3:.2f} GFLOP/s | dropped per epoch "
        f"{result.dropped_per_epoch} | {result.run_dir}"
    )
    return 0


def build_parser() -> tuple[argparse.ArgumentParser, dict]:
    parser = argparse.ArgumentParser(
        prog="pitdist",
        description="Distributed Pixel Transformer training: DeepSpeed Ulysses sequence parallelism "
        "with per-collective communication accounting.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    handlers = {"train": (_train_parser(sub), _train)}
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
