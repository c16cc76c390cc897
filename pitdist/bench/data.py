"""`pitdist bench data`: how fast pixel shards become one rank's tokens, next to how fast training eats them.

For each image size (28x28x1 from Fashion-MNIST when its idx files are installed, else generated; and
larger generated images) the benchmark converts a dataset into pitdist Arrow shards, then times one
epoch of what one SP rank does per step (rank 0 of P, so its S = ceil(N/P) tokens per image; any N
runs on any P, the last ranks' shards padded):

  local    memory-mapped shards -> the rank's DP share of a seeded shuffled global batch (BatchSchedule)
           -> uint8 gather -> pixels_to_tokens(pixels(0)): exactly LocalBatches' path. "gather" is the
           uint8 part alone.
  ray      Ray Data (ray_dataset + iter_pixel_batches, one consumer = one worker) -> pixels_to_tokens;
           timed from the first batch (the wait for it is reported apart, as it is a per-epoch start-up).
           Then whole epochs of the training plan (pitdist.data.ray_epochs) with the fixed order and
           with a new seeded order every epoch, in turns: the per-epoch shuffle's cost as a ratio.
  parquet  the same images as Parquet files of encoded bytes (PNG; JPEG too for RGB; row groups of 256)
           decoded into pitdist rows: by one process (what one Ray Data task does: images/s per CPU
           worker) and by Ray Data tasks, 1 and 2 at a time (an epoch of pitdist.data.ray_epochs,
           the training path for data.dataset = Parquet), timed from the first batch. Generated images
           are uniform noise, the worst case for both codecs; Fashion-MNIST's are real.
  train    fwd + bwd + AdamW of the plain PiT (one process, all cores) on the same image size; above
           --train-max-tokens it is measured at the largest square side below and scaled by the FLOPs
           ratio (flops_per_image), marked "estimated".

Each rank runs with one torch thread (ranks share the cores in a real run). The machine may be shared:
the JSON records the load average before and after.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import tempfile
import time
import warnings
from pathlib import Path

from pitdist.bench.common import hwc, json_path, option_error, write_json

FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"
GOALS = {"local_images_per_s_28x28": 1_000_000, "ray_images_per_s_per_worker_28x28": 100_000}


def _shape(text: str) -> tuple[int, int, int]:
    try:
        h, w, c = hwc(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected HxWxC such as 224x224x3, got {text!r}") from None
    if min(h, w, c) < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: sides and channels must be >= 1")
    return h, w, c


def add_parser(sub) -> argparse.ArgumentParser:
    p = sub.add_parser(
        "data",
        help="data loading: images/s and tokens/s from shards to per-rank tokens, local and Ray Data",
        description=__doc__.split("\n\n", 1)[1],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Example\n  pitdist bench data --sizes 28x28x1,224x224x3 --rows 4096 --out runs/bench-data.json",
    )
    p.add_argument(
        "--sizes",
        type=lambda t: [_shape(s) for s in t.split(",")],
        default=[(28, 28, 1), (224, 224, 3)],
        help="image sizes HxWxC, comma-separated (default 28x28x1,224x224x3)",
    )
    p.add_argument(
        "--rows",
        type=int,
        default=4096,
        help="generated images per size (default 4096); 28x28x1 uses all 70,000 Fashion-MNIST images when available",
    )
    p.add_argument("--fashion-mnist", default=FASHION_MNIST_DIR, help="idx directory for 28x28x1 ('' = generate)")
    p.add_argument("--batch-size", type=int, default=1024, help="global images per step (default 1024)")
    p.add_argument("--sp", type=int, default=2, help="SP ranks P: the timed rank converts ceil(N/P) tokens (default 2)")
    p.add_argument("--shard-mb", type=float, default=16.0, help="shard size of the converted datasets (default 16)")
    p.add_argument("--no-ray", action="store_true", help="skip the Ray Data measurements")
    p.add_argument("--no-parquet", action="store_true", help="skip the Parquet decode measurements")
    p.add_argument("--train-steps", type=int, default=3, help="timed training steps (default 3, after 1 warm-up)")
    p.add_argument("--train-batch", type=int, default=8, help="images per training step (default 8)")
    p.add_argument(
        "--train-max-tokens",
        type=int,
        default=3136,
        help="largest image (tokens) trained directly; larger sizes are estimated (default 3136 = 56x56)",
    )
    p.add_argument("--work-dir", default=None, help="where the datasets are written (default: a temporary directory)")
    p.add_argument("--out", default=None, help="JSON output (default runs/bench-data-<time>.json)")
    return p


def _dataset(root: Path, shape, rows: int, fmnist: str, shard_mb: float) -> tuple[Path, str]:
    import numpy as np

    from pitdist.data.arrow import DatasetWriter
    from pitdist.data.convert import convert, make_source

    out = root / "x".join(map(str, shape))
    if shape == (28, 28, 1) and fmnist and Path(fmnist).is_dir():
        convert(make_source("fashion-mnist", fmnist, "all"), out, shard_mb=shard_mb, progress=False)
        return out, f"Fashion-MNIST ({fmnist}, train+test)"
    image_bytes = math.prod(shape)
    rng = np.random.default_rng(0)
    with DatasetWriter(
        out, shape, [str(i) for i in range(10)], max(1, int(shard_mb * 2**20) // image_bytes), source="generated"
    ) as writer:
        chunk = max(1, min(rows, 2**26 // image_bytes))
        for start in range(0, rows, chunk):
            k = min(chunk, rows - start)
            writer.write(rng.integers(0, 10, k), rng.integers(0, 256, (k, *shape), dtype=np.uint8))
        writer.close()
    return out, "generated"


def _local(path: Path, batch: int, sp: int) -> dict:
    import torch

    from pitdist.data.registry import load_dataset
    from pitdist.data.sharding import BatchSchedule
    from pitdist.models.pit import pixels_to_tokens
    from pitdist.parallel_dims import TokenShards

    t0 = time.perf_counter()
    data = load_dataset(str(path))
    open_s = time.perf_counter() - t0
    h, w, c = data.image_shape
    token_range = TokenShards(h * w, sp).pixels(0)
    schedule = BatchSchedule(len(data), min(batch, len(data)), seed=0)
    steps = range(schedule.steps_per_epoch)
    schedule.dp_indices(0, 0, 1)  # the epoch's permutation, once
    t0 = time.perf_counter()
    for step in steps:
        data.pixels[schedule.dp_indices(step, 0, 1)]
    gather_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    for step in steps:
        tokens = pixels_to_tokens(torch.from_numpy(data.pixels[schedule.dp_indices(step, 0, 1)]), 1, token_range)
    tokens_s = time.perf_counter() - t0
    images = len(steps) * schedule.global_batch
    n_rank = token_range[1] - token_range[0]
    assert tokens.shape == (schedule.global_batch, n_rank, c)
    return {
        "images": images,
        "open_and_validate_s": open_s,
        "dropped": schedule.dropped_per_epoch,
        "gather_images_per_s": images / gather_s,
        "images_per_s": images / tokens_s,
        "tokens_per_s": images * n_rank / tokens_s,
        "tokens_per_image_per_rank": n_rank,
    }


def _ray(path: Path, batch: int, sp: int) -> dict:
    import torch

    from pitdist.data.ray_reader import iter_pixel_batches, ray_dataset
    from pitdist.models.pit import pixels_to_tokens
    from pitdist.parallel_dims import TokenShards

    warnings.filterwarnings("ignore", "The given NumPy array is not writable")  # Ray's buffers are read-only
    ds, shape, _ = ray_dataset(path)
    token_range = TokenShards(shape[0] * shape[1], sp).pixels(0)
    n_rank = token_range[1] - token_range[0]
    t0 = time.perf_counter()
    first = None
    images = 0
    for pixels, ids, _ in iter_pixel_batches(ds, shape, batch):
        pixels_to_tokens(torch.from_numpy(pixels), 1, token_range)
        if first is None:
            first, t1 = time.perf_counter() - t0, time.perf_counter()
        else:
            images += len(ids)
    steady = time.perf_counter() - t1
    return {
        "images": images,
        "first_batch_s": first,
        "epoch_s": time.perf_counter() - t0,
        "images_per_s": images / steady if steady > 0 and images else None,
        "tokens_per_s": images * n_rank / steady if steady > 0 and images else None,
    }


PARQUET_ROW_GROUP = 256


def _epoch_orders(path: Path, batch: int, block_rows: int = 512, epochs: int = 2) -> dict:
    """images/s of whole epochs of the training plan (pitdist.data.ray_epochs) with today's fixed order and
    with a new seeded order every epoch, in turns (fixed, shuffled, fixed, ...): the per-epoch shuffle's cost."""
    from pitdist.data.ray_epochs import epoch_plan
    from pitdist.data.ray_reader import iter_pixel_batches
    from pitdist.data.registry import load_dataset

    data = load_dataset(str(path))
    rates: dict[str, list[float]] = {"fixed": [], "shuffled": []}
    for epoch in range(epochs):
        for name in rates:
            plan, _ = epoch_plan(data, str(path), seed=0, shuffle=name == "shuffled", block_rows=block_rows)
            t0, images = time.perf_counter(), 0
            for _, ids, _ in iter_pixel_batches(plan.dataset(epoch), data.image_shape, batch):
                images += len(ids)
            rates[name].append(images / (time.perf_counter() - t0))
    fixed, shuffled = (sorted(r)[len(r) // 2] for r in rates.values())
    return {"block_rows": block_rows, "epochs": epochs, "images_per_s": rates, "shuffled_over_fixed": shuffled / fixed}


def _parquet_copy(arrow: Path, out: Path, fmt: str) -> Path:
    """The images of the Arrow dataset ``arrow`` as one Parquet file of ``fmt`` bytes in Hugging Face's layout."""
    import io

    import pyarrow as pa
    import pyarrow.parquet as pq
    from PIL import Image

    from pitdist.data.arrow import open_arrow_dataset

    ds = open_arrow_dataset(arrow)
    image_type = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
    out.mkdir(parents=True)
    with pq.ParquetWriter(out / "part-0.parquet", pa.schema([("image", image_type), ("label", pa.int64())])) as w:
        for start in range(0, len(ds.ids), PARQUET_ROW_GROUP):
            cells = []
            for pixels in ds.pixels[start : start + PARQUET_ROW_GROUP]:
                buf = io.BytesIO()
                Image.fromarray(pixels[..., 0] if pixels.shape[-1] == 1 else pixels).save(buf, format=fmt, quality=90)
                cells.append({"bytes": buf.getvalue(), "path": None})
            labels = ds.labels[start : start + PARQUET_ROW_GROUP]
            w.write_table(pa.table({"image": pa.array(cells, image_type), "label": pa.array(labels, pa.int64())}))
    return out


def _parquet(arrow: Path, fmt: str, batch: int, ray) -> dict:
    from pitdist.data.parquet_pixels import decode_row_group
    from pitdist.data.ray_epochs import epoch_plan
    from pitdist.data.ray_reader import iter_pixel_batches
    from pitdist.data.registry import load_dataset

    path = _parquet_copy(arrow, arrow.with_name(f"{arrow.name}-{fmt}"), fmt)
    data = load_dataset(str(path))
    pixels = data.pixels
    row = {"format": fmt, "bytes_per_image": (path / "part-0.parquet").stat().st_size / len(data)}
    t0 = time.perf_counter()
    for group in pixels.groups:
        decode_row_group(pixels.images, group)
    row["decode_images_per_s_1_process"] = len(data) / (time.perf_counter() - t0)
    plan, _ = epoch_plan(data, str(path), seed=0, shuffle=True, block_rows=PARQUET_ROW_GROUP)
    for workers in (1, 2) if ray is not None else ():
        # Timed over the whole epoch, start-up included: decoding is the work, and most of it happens
        # before a first batch of ``batch`` images is ready.
        plan.workers = workers
        t0, first, images = time.perf_counter(), None, 0
        for _, ids, _ in iter_pixel_batches(plan.dataset(0), data.image_shape, batch):
            first = time.perf_counter() - t0 if first is None else first
            images += len(ids)
        epoch = time.perf_counter() - t0
        row[f"ray_{workers}_workers"] = {"images": images, "first_batch_s": first, "epoch_s": epoch,
                                         "images_per_s": images / epoch}  # fmt: skip
    return row


def _train_rate(model_cfg, shape, batch: int, steps: int, max_tokens: int) -> dict:
    import torch
    import torch.nn.functional as F

    from pitdist.models.pit import build_model
    from pitdist.observe.flops import flops_per_image

    h, w, c = shape
    measured = shape
    if h * w > max_tokens:
        side = int(math.isqrt(max_tokens))
        measured = (side, side, c)
    torch.manual_seed(0)
    model = build_model(model_cfg, measured, 10)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    pixels = torch.randint(0, 256, (batch, *measured), dtype=torch.uint8)
    labels = torch.randint(0, 10, (batch,))
    times = []
    for i in range(steps + 1):
        t0 = time.perf_counter()
        F.cross_entropy(model.forward_images(pixels), labels).backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        if i:  # the first step warms up
            times.append(time.perf_counter() - t0)
    rate = batch / (sum(times) / len(times))
    scale = flops_per_image(model_cfg, measured[0] * measured[1], c, 10) / flops_per_image(model_cfg, h * w, c, 10)
    return {
        "measured_shape": list(measured),
        "estimated": measured != shape,
        "batch": batch,
        "steps": steps,
        "threads": torch.get_num_threads(),
        "measured_images_per_s": rate,
        "images_per_s": rate * scale,
        "tokens_per_s": rate * scale * h * w,
    }


def main(args: argparse.Namespace, overrides: list[str]) -> int:
    from pitdist.config import ConfigError, load_config

    try:
        if any(not o.startswith("--model.") for o in overrides[::2]):
            raise ConfigError(
                f"bench data takes only --model.KEY VALUE settings besides its own options, got {overrides}"
            )
        model_cfg = load_config(None, list(overrides)).model
        if min(args.rows, args.batch_size, args.sp, args.train_steps, args.train_batch) < 1:
            raise ConfigError("--rows, --batch-size, --sp, --train-steps and --train-batch must be >= 1")
    except ConfigError as exc:
        return option_error("data", exc)
    import torch

    out = json_path(args.out, "data")
    cores = os.cpu_count() or 1
    report = {
        "machine": {"cores": cores, "loadavg_before": os.getloadavg()},
        "batch_size": args.batch_size,
        "sp": args.sp,
        "model": {"dim": model_cfg.width, "depth": model_cfg.num_layers, "heads": model_cfg.num_heads},
        "goals": GOALS,
        "sizes": [],
    }
    ray = None
    with tempfile.TemporaryDirectory(dir=args.work_dir) as tmp:
        try:
            if not args.no_ray:
                os.environ.setdefault("RAY_AUTH_MODE", "disabled")
                import ray

                ray.init(num_cpus=4, include_dashboard=False, log_to_driver=False)
            for shape in args.sizes:
                name = "x".join(map(str, shape))
                t0 = time.perf_counter()
                path, source = _dataset(Path(tmp), shape, args.rows, args.fashion_mnist, args.shard_mb)
                row = {
                    "shape": list(shape),
                    "source": source,
                    "convert_s": time.perf_counter() - t0,
                    "rows": json.loads((path / "manifest.json").read_text())["num_rows"],
                    "shards": len(json.loads((path / "manifest.json").read_text())["shards"]),
                }
                torch.set_num_threads(1)  # one rank's share of the machine
                row["local"] = _local(path, args.batch_size, args.sp)
                if ray is not None:
                    row["ray"] = _ray(path, args.batch_size, args.sp)
                    row["ray_epoch_order"] = _epoch_orders(path, args.batch_size)
                if not args.no_parquet:
                    formats = ("PNG", "JPEG") if shape[2] == 3 else ("PNG",)
                    row["parquet"] = [_parquet(path, fmt, args.batch_size, ray) for fmt in formats]
                torch.set_num_threads(cores)
                row["train"] = _train_rate(model_cfg, shape, args.train_batch, args.train_steps, args.train_max_tokens)
                row["local_over_train"] = row["local"]["images_per_s"] / row["train"]["images_per_s"]
                if ray is not None and row["ray"]["images_per_s"]:
                    row["ray_over_train"] = row["ray"]["images_per_s"] / row["train"]["images_per_s"]
                report["sizes"].append(row)
                print(_line(name, row), flush=True)
        finally:
            if ray is not None:
                ray.shutdown()
    report["machine"]["loadavg_after"] = os.getloadavg()
    write_json(report, out)
    print(f"wrote {out}")
    return 0


def _line(name: str, row: dict) -> str:
    loc, tr = row["local"], row["train"]
    text = (
        f"{name} ({row['source']}, {row['rows']} images): local {loc['images_per_s']:,.0f} images/s "
        f"({loc['tokens_per_s']:,.0f} tokens/s; uint8 gather {loc['gather_images_per_s']:,.0f} images/s)"
    )
    if "ray" in row:
        r = row["ray"]
        rate = f"{r['images_per_s']:,.0f}" if r["images_per_s"] else "n/a"
        text += f" | Ray Data {rate} images/s after a {r['first_batch_s']:.1f} s first batch"
        text += f" (a new order every epoch: {row['ray_epoch_order']['shuffled_over_fixed']:.2f}x the fixed one's rate)"
    for pq in row.get("parquet", []):
        text += f" | Parquet {pq['format']} decode {pq['decode_images_per_s_1_process']:,.0f} images/s per worker"
        for workers in (1, 2):
            rate = pq.get(f"ray_{workers}_workers", {}).get("images_per_s")
            text += f", Ray Data x{workers} {rate:,.0f}" if rate else ""
    text += (
        f" | training {tr['images_per_s']:.3g} images/s{' (estimated)' if tr['estimated'] else ''}"
        f" -> local data is {row['local_over_train']:,.0f}x faster"
    )
    return text
