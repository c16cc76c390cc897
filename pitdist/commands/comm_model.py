"""`pitdist comm-model`: project per-rank communication with the analytical model (no training)."""

from __future__ import annotations

import argparse
import sys

from pitdist.commands.common import int_list
from pitdist.config import ConfigError, load_config


def add_parser(sub) -> argparse.ArgumentParser:
    p = sub.add_parser(
        "comm-model",
        help="project per-rank communication with the analytical model (no training)",
        description="Print what each rank would send per step, by cause, for the PE variants, from the "
        "analytical model that `pitdist comm-report` checks against measurements, and how much of it "
        "carries padding (P that does not divide an image's tokens pads every shard to the same length). "
        "Use it to extrapolate to image sizes and meshes this machine cannot run.",
        epilog="Examples\n  pitdist comm-model --model.size base --image 224x224x3 --sp 4,12 --batch 1\n"
        "  pitdist comm-model --model.size base --image 512x512x3 --sp 4,16,64 --schemes\n"
        "  pitdist comm-model --sp 4 --train.activation_checkpointing full   # with what backward re-sends\n"
        "  pitdist comm-model --model.size tiny --image 28x28x1 --sp 3 --model.pool cls   # padded shards",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--image", default="224x224x3", help="HxWxC of the images (default 224x224x3)")
    p.add_argument("--classes", type=int, default=1000, help="number of classes (default 1000)")
    p.add_argument("--batch", type=int, default=1, help="global images per step (default 1)")
    p.add_argument("--dp", type=int, default=1, help="data-parallel groups Q (default 1)")
    p.add_argument("--sp", default="4,12", help="SP sizes P, comma separated (default 4,12)")
    p.add_argument("--zero", type=int, default=0, choices=[0, 1, 2], help="ZeRO stage (default 0)")
    p.add_argument(
        "--bytes", type=int, default=2, choices=[2, 4], help="bytes per element: 2 = bf16 (default), 4 = fp32"
    )
    p.add_argument(
        "--schemes",
        action="store_true",
        help="compare Ulysses, ring attention and every Ulysses x ring "
        "hybrid at each P (attention bytes, and the total per PE variant) instead",
    )
    return p


def main(args: argparse.Namespace, overrides: list[str]) -> int:
    from pitdist.launch.sweep import VARIANTS
    from pitdist.report.comm_model import projection_table, scheme_table

    try:
        h, w, c = (int(v) for v in args.image.split("x"))
    except ValueError:
        print(
            f"pitdist comm-model: error: --image: expected HxWxC such as 224x224x3, got {args.image!r}", file=sys.stderr
        )
        return 2
    try:
        cfg = load_config(
            None,
            overrides
            + [
                "--train.batch_size",
                str(args.batch),
                "--parallel.dp",
                str(args.dp),
                "--parallel.launcher",
                "local" if args.dp > 1 else "single",
            ],
        )
        sps = int_list("--sp", args.sp)
        variants = {name: load_config(None, overrides + flags).model for name, flags in VARIANTS.items()}
    except ConfigError as exc:
        print(f"pitdist comm-model: error: {exc}", file=sys.stderr)
        return 2
    if not args.schemes:
        from pitdist.parallel_dims import MeshError, ParallelDims

        for sp in sps:
            try:  # a projection may go where Ulysses cannot: say so, but still compute it
                ParallelDims(args.dp, sp).validate(heads=cfg.model.num_heads)
            except MeshError as exc:
                print(f"note: pitdist would refuse P = {sp} here: {exc}")
    table = scheme_table if args.schemes else projection_table
    print(
        table(
            cfg.model,
            (h, w, c),
            args.classes,
            args.batch,
            args.dp,
            sps,
            args.zero,
            cfg.optim.grad_clip,
            variants,
            args.bytes,
            activation_checkpointing=cfg.train.activation_checkpointing,
            selective_every=cfg.train.selective_every,
        )
    )
    return 0
