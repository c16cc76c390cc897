"""`pitdist data convert`, `pitdist data inspect` and `pitdist data audit`."""

from __future__ import annotations

import argparse
import sys

EPILOG = """\
Sources
  digits                       scikit-learn's bundled 8x8 digits (no PATH)
  fashion-mnist [PATH]         Fashion-MNIST idx files (default /usr/share/datasets/fashion-mnist,
                               Debian package dataset-fashion-mnist); --split train|test|all
  idx PATH                     any MNIST-format directory: {train,t10k}-{images-idx3,labels-idx1}-ubyte[.gz]
  imagefolder PATH             PATH/<class name>/<image>.png|jpg (Hugging Face datasets' imagefolder)
  hf-disk PATH                 a Hugging Face dataset saved with save_to_disk (--split for a DatasetDict)
  parquet PATH                 Parquet files of PNG/JPEG bytes (Hugging Face's to_parquet layout): a file,
                               a directory of *.parquet or a glob; --image-column (default image),
                               --label-column (default label), --shape HxWxC to resize, --bad-rows skip

Examples
  pitdist data convert digits --out data/digits
  pitdist data convert fashion-mnist --split all --out data/fashion-mnist
  pitdist data convert parquet hub/fashion_mnist/train --out data/fmnist-train
  pitdist data inspect data/fashion-mnist --grid fmnist.png
  pitdist data audit runs/digits-20261125-120000-4242
  pitdist train --data.dataset data/digits --sp 2
"""


def image_shape(text: str) -> tuple[int, int, int]:
    try:
        h, w, c = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: write HxWxC, e.g. 28x28x1 or 224x224x3") from None
    if min(h, w) < 1 or c not in (1, 3):
        raise argparse.ArgumentTypeError(f"{text!r}: H and W must be >= 1 and C 1 (grey) or 3 (RGB)")
    return h, w, c


def add_parser(sub) -> argparse.ArgumentParser:
    p = sub.add_parser(
        "data",
        help="convert image sources to pitdist Arrow shards; inspect them",
        description="pitdist's pixel dataset format: Arrow IPC shards (id, label, "
        "pixels = fixed_size_binary(H*W*C) uint8) with shape and class names in the schema "
        "metadata and a manifest of row counts and sha256 checksums. Images may be rectangular (any "
        "H x W, one size per dataset); shapes print as HxWxC.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    subs = p.add_subparsers(dest="data_command", required=True, metavar="ACTION")
    c = subs.add_parser(
        "convert",
        help="write a source as a pitdist dataset directory",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    c.add_argument("source", choices=["digits", "fashion-mnist", "idx", "imagefolder", "hf-disk", "parquet"])
    c.add_argument("path", nargs="?", default=None, help="where the source is (see Sources)")
    c.add_argument("--out", required=True, help="dataset directory to create")
    c.add_argument("--split", default=None, help="train (default), test, or all (idx sources)")
    c.add_argument("--rows-per-shard", type=int, default=None, help="images per shard (default: ~--shard-mb)")
    c.add_argument("--shard-mb", type=float, default=256.0, help="target shard size in MiB (default 256)")
    c.add_argument("--image-column", default=None, help="HF sources: image column (default: the Image feature)")
    c.add_argument("--label-column", default=None, help="HF sources: label column (default: the ClassLabel)")
    c.add_argument("--class-names", default=None, help="comma-separated class names (idx sources)")
    c.add_argument(
        "--shape",
        type=image_shape,
        default=None,
        metavar="HxWxC",
        help="parquet: decode every image to this shape, resizing other sizes (default: the first image's "
        "shape, and an image of another size is a bad row)",
    )
    c.add_argument(
        "--bad-rows",
        choices=["fail", "skip"],
        default="fail",
        help="parquet: a row that does not decode to the shape stops the conversion (fail, the default) "
        "or is left out and reported (skip)",
    )
    c.add_argument("--overwrite", action="store_true", help="replace --out once the new dataset is complete")
    c.add_argument("--no-progress", action="store_true", help="no progress bar")
    i = subs.add_parser("inspect", help="print schema, counts and label histogram; write a PNG grid")
    i.add_argument("dataset", help="a directory written by `pitdist data convert`, or Parquet files of encoded images")
    i.add_argument("--grid", default=None, help="PNG file for a grid of the first images (default: none)")
    i.add_argument("--count", type=int, default=16, help="images in the grid (default 16)")
    a = subs.add_parser(
        "audit",
        help="check a run's data ledger: no image skipped or repeated",
        description="Read a finished run's data/rank*.jsonl (the ids each rank trained on per "
        "step) and check that SP ranks agreed, DP groups were disjoint, no image was trained "
        "twice in an epoch, and steps replayed after a restore took the same images.",
    )
    a.add_argument("run", help="a run directory (runs/<name>-<time>-<pid>)")
    return p


def audit_run(run: str) -> int:
    import json
    from pathlib import Path

    from pitdist.data.audit import audit

    config_file = Path(run) / "config.json"
    if not config_file.is_file():
        raise FileNotFoundError(f"{run} has no config.json: not a finished pitdist run directory")
    config = json.loads(config_file.read_text())["parallel"]
    report = audit(run, config["dp"], config["sp"])
    print(
        f"{run}: {report.steps} steps, {report.replayed_steps} replayed after a restore; distinct images "
        "per epoch: " + ", ".join(f"{e}: {n}" for e, n in report.images_per_epoch.items())
    )
    for problem in report.problems:
        print(f"  problem: {problem}", file=sys.stderr)
    print("ok" if report.ok else f"{len(report.problems)} problems")
    return 0 if report.ok else 1


def main(args: argparse.Namespace, overrides: list[str]) -> int:
    from pitdist.config import ConfigError

    if overrides:
        print(f"pitdist data: error: unrecognized arguments: {' '.join(overrides)}", file=sys.stderr)
        return 2
    from pitdist.data import convert as conv

    try:
        if args.data_command == "convert":
            names = args.class_names.split(",") if args.class_names else None
            source = conv.make_source(
                args.source,
                args.path,
                args.split,
                args.image_column,
                args.label_column,
                names,
                shape=args.shape,
                bad_rows=args.bad_rows,
            )
            out = conv.convert(
                source, args.out, args.rows_per_shard, args.shard_mb, args.overwrite, progress=not args.no_progress
            )
            print(
                f"wrote {out}: {source.num_rows - len(source.skipped)} images of "
                f"{'x'.join(map(str, source.shape))} (HxWxC), {len(source.class_names)} classes, "
                f"from {source.description}"
            )
            if source.skipped:
                print(f"skipped {len(source.skipped)} bad rows; the first: {source.skipped[0]}")
        elif args.data_command == "audit":
            return audit_run(args.run)
        else:
            print(conv.inspect(args.dataset, args.grid, args.count))
    except FileNotFoundError as exc:
        print(f"pitdist data {args.data_command}: error: {exc}", file=sys.stderr)
        return 2
    except ConfigError as exc:  # DataError included
        print(f"pitdist data {args.data_command}: error: {exc}", file=sys.stderr)
        return 2
    return 0
