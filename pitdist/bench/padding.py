"""`pitdist bench padding`: what padding an image's token shards costs, against images that need none.

One SP group of P ranks (Ulysses, or Ulysses x ring with --ring), the real model under ``parallelize()``
and a real DeepSpeed engine (ZeRO 0, fp32, AdamW, batch 1), three images taking turns step by step on
the same ranks (pitdist.bench.turns), so the shared machine's noise falls on all three alike:

  padded      the --size image, whose tokens (+ CLS) P does not divide: S = ceil(L/P) slots per
              rank, the last P*S - L of the group's slots padding
  same slots  an image of exactly P*S tokens (a rectangle of that many pixels): the same shards with
              nothing padded, so what differs from "padded" is the padding's own cost (the key prefix,
              the uneven data slice), not the slots' work
  cropped     the widest image of the same height, no wider, whose tokens P divides: what one would
              train without padding (fewer slots, less work)

Per image: tokens, slots per rank, padded slots, bytes sent per rank per step (the ledger, beside the
communication model) and the model's padding share of them, the activation bytes one forward saves
per rank, and the step time (median over the timed steps of the slowest rank), with ratios to padded.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import textwrap

from pitdist.bench.common import (
    BenchOptionError,
    cores,
    created,
    image_size,
    json_path,
    one_image_job,
    only_model_overrides,
    option_error,
    patch_tokens,
    size_fields,
    size_name,
    slowest,
    write_json,
)

NAMES = ("padded", "same slots", "cropped")
DEFAULT_MODEL = ["--model.size", "tiny"]  # PiT-T: D = 192, 12 layers, 3 heads


def add_parser(sub) -> argparse.ArgumentParser:
    p = sub.add_parser(
        "padding",
        help="what padded token shards cost against images that need no padding",
        description="Measure the cost of padding: an image whose tokens P does not divide, against an "
        "image of the same slots per rank and the widest divisible crop, taking turns on the same ranks.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=textwrap.dedent("""\
            Model: PiT-T (dim 192, 12 layers, 3 heads) unless overridden with --model.KEY VALUE, as for
            `pitdist train` (e.g. --model.pool cls adds the CLS token to the tokens to split).

            Examples
              pitdist bench padding                         # 28x28 on P = 3: shards of 262 slots, 2 padded
              pitdist bench padding --size 30x20 --sp 4 --ring 2 --model.pool cls
              pitdist bench padding --model.depth 2 --steps 3   # quick"""),
    )
    p.add_argument("--size", type=image_size, default=(28, 28), help="padded image, SIDE or HxW (default 28)")
    p.add_argument("--sp", type=int, default=3, help="SP size P (default 3)")
    p.add_argument("--ring", type=int, default=1, help="ring size R of P = U x R (default 1: Ulysses)")
    p.add_argument("--channels", type=int, default=1, help="image channels (default 1)")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps per image (default 2)")
    p.add_argument("--steps", type=int, default=7, help="timed steps per image (default 7)")
    p.add_argument("--out", default=None, help="JSON output (default runs/bench-padding-<time>.json)")
    return p


def compared_sizes(size: tuple[int, int], patch: int, sp: int, cls: bool) -> dict[str, tuple[int, int]]:
    """The three images (module docstring), in pixels; BenchOptionError if ``size`` needs no padding."""
    from pitdist.parallel_dims import TokenShards

    h, w = size
    n = patch_tokens(size, patch, "--size")
    shards = TokenShards(n, sp, cls)
    if not shards.padding:
        raise BenchOptionError(
            f"--size {size_name(size)}: P = {sp} divides its {shards.length} tokens, so nothing is padded; "
            f"pick a size whose tokens P does not divide (e.g. {h}x{w + patch})"
        )
    pixels = shards.padded - int(cls)  # an image of that many tokens fills the same slots exactly
    rows = max(d for d in range(1, int(pixels**0.5) + 1) if pixels % d == 0)
    sizes = {"padded": size, "same slots": (rows * patch, pixels // rows * patch)}
    width = next((c for c in range(w // patch - 1, 0, -1) if ((h // patch) * c + int(cls)) % sp == 0), None)
    if width is not None:
        sizes["cropped"] = (h, width * patch)
    return sizes


def _rank_main(rank: int, world: int, cfg_dict: dict, ring: int, sizes: dict, channels: int, warmup: int, steps: int):
    import torch

    from pitdist.bench.sp.memory import SavedTensorCounter, counting
    from pitdist.bench.sp.steps import model_and_batch
    from pitdist.bench.turns import contender, per_step, take_turns
    from pitdist.config import config_from_dict
    from pitdist.distributed.mesh import Mesh
    from pitdist.launch.local import quiet_deepspeed
    from pitdist.parallel_dims import ParallelDims
    from pitdist.train.engine import build_engine

    quiet_deepspeed()
    cfg = config_from_dict(cfg_dict)
    mesh = Mesh(ParallelDims(1, world, ring))
    runs, saved = [], {}
    for name, size in sizes.items():
        model, batch = model_and_batch(cfg, mesh, tuple(size), channels)
        counter = SavedTensorCounter(model.parameters())
        with counting(counter):
            model(batch.tokens, batch.positions)  # one forward's saves; its graph is dropped at once
        saved[name] = counter.summary()["saved_bytes"]
        runs.append(contender(name, mesh, build_engine(model, cfg, mesh, torch.float32), batch, rank))
    take_turns(runs, warmup, steps)
    return [
        {"name": c.name, "times": c.times, "by_category": per_step(c, warmup), "saved": saved[c.name]} for c in runs
    ]


def aggregate(cfg, sp: int, ring: int, sizes: dict, channels: int, ranks: list[list[dict]]) -> list[dict]:
    from pitdist.bench.sp.plan import NUM_CLASSES
    from pitdist.report.comm_model import padding_sent, shards_of, step_traffic

    rows = []
    for j, (name, size) in enumerate(sizes.items()):
        per_rank = [r[j] for r in ranks]
        image = (*size, channels)
        model = step_traffic(cfg.model, image, NUM_CLASSES, 1, 1, sp, 0, 0.0, 4, ring=ring)
        shards = shards_of(cfg.model, image, sp)
        sent = [sum(v["sent"] for v in r["by_category"].values()) for r in per_rank]
        rows.append(
            {
                "image": name,
                **size_fields(size),
                "tokens": shards.length,
                "slots_per_rank": shards.shard,
                "padded_slots": shards.padding,
                "sent_bytes": statistics.mean(sent),
                "sent_bytes_per_rank": sent,
                "model_sent_bytes": sum(v.sent for v in model.values()),
                "model_padding_sent_bytes": padding_sent(model, cfg.model, image, sp),
                "saved_bytes_per_rank": [r["saved"] for r in per_rank],
                "step_s": statistics.median(slowest([r["times"] for r in per_rank])),
            }
        )
    return rows


def render(report: dict) -> str:
    m, rows = report["model"], report["rows"]
    base = rows[0]
    lines = [
        f"Padding's cost: D={m['dim']}, L={m['depth']}, {m['heads']} heads, pool {m['pool']}, P = {report['sp']} "
        f"(ring {report['ring']}), batch 1, fp32, gloo on {report['machine']['cores']} cores; the images take "
        f"turns on the same ranks ({report['steps']} timed steps each); ratios to padded",
        f"{'image':<11}{'size':>9}{'tokens':>8}{'slots':>7}{'padded':>7}{'sent/rank':>12}{'model':>12}"
        f"{'padding':>9}{'saved/rank':>12}{'ratio':>7}{'step s':>8}{'ratio':>7}",
    ]
    for r in rows:
        saved = max(r["saved_bytes_per_rank"])
        lines.append(
            f"{r['image']:<11}{size_name((r['height'], r['width'])):>9}{r['tokens']:>8}{r['slots_per_rank']:>7}"
            f"{r['padded_slots']:>7}{r['sent_bytes'] / 1e6:>9.3f} MB{r['model_sent_bytes'] / 1e6:>9.3f} MB"
            f"{r['model_padding_sent_bytes'] / r['model_sent_bytes']:>9.3%}{saved / 2**20:>8.2f} MiB"
            f"{saved / max(base['saved_bytes_per_rank']):>7.3f}{r['step_s']:>8.3f}{r['step_s'] / base['step_s']:>7.3f}"
        )
    if len(rows) < len(NAMES):
        lines.append("(no narrower image of this height has a token count P divides: nothing to crop to)")
    lines.append("saved/rank: activation bytes one forward saves on the rank that saves most; padding: the share")
    lines.append("of the bytes sent that carries padded slots (communication model, equal to the ledger's bytes)")
    return "\n".join(lines)


def main(args: argparse.Namespace, overrides: list[str]) -> int:
    from pitdist.bench.spawn import BenchError, run_ranks
    from pitdist.config import ConfigError
    from pitdist.parallel_dims import MeshError, ParallelDims

    try:
        only_model_overrides(overrides, "padding")
        if args.sp < 2 or args.ring < 1 or args.channels < 1 or args.steps < 1 or args.warmup < 0:
            raise BenchOptionError("--sp must be >= 2, --ring, --channels and --steps >= 1, --warmup >= 0")
        cfg = one_image_job(DEFAULT_MODEL, overrides, "--optim.grad_clip", "0", "--metrics.ledger", "true")
        ParallelDims(1, args.sp, args.ring).validate(heads=cfg.model.num_heads)
        sizes = compared_sizes(args.size, cfg.model.patch_size, args.sp, cfg.model.pool == "cls")
    except (ConfigError, MeshError, BenchOptionError) as exc:
        return option_error("padding", exc)
    out, ncores = json_path(args.out, "padding"), cores()
    threads = max(1, ncores // args.sp)
    print(
        f"[bench padding] P={args.sp}: {', '.join(f'{k} {size_name(v)}' for k, v in sizes.items())} "
        f"({args.warmup} + {args.steps} steps each, {threads} threads per rank)",
        file=sys.stderr,
        flush=True,
    )
    try:
        ranks = run_ranks(
            args.sp, threads, _rank_main, cfg.to_dict(), args.ring, sizes, args.channels, args.warmup, args.steps
        )
    except BenchError as exc:
        print(f"pitdist bench padding: a rank failed:\n{exc}", file=sys.stderr)
        return 1
    m = cfg.model
    report = {
        "benchmark": "pitdist bench padding",
        "created": created(),
        "command": sys.argv,
        "machine": {"cores": ncores},
        "model": {
            "dim": m.width,
            "depth": m.num_layers,
            "heads": m.num_heads,
            "pos_embed": m.pos_embed,
            "pool": m.pool,
        },
        "sp": args.sp,
        "ring": args.ring,
        "channels": args.channels,
        "warmup": args.warmup,
        "steps": args.steps,
        "threads_per_rank": threads,
        "rows": aggregate(cfg, args.sp, args.ring, sizes, args.channels, ranks),
    }
    write_json(report, out)
    print(render(report))
    print(f"JSON: {out}")
    return 0
