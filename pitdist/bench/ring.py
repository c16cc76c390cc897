"""`pitdist bench ring`: Ulysses, ring attention and their hybrid side by side, measured.

For each P, every (ulysses U, ring R) split of the P ranks that the model allows (U divides the heads)
runs in one spawned gloo process group on the same image: the real model parallelized by
``parallelize()``, a real DeepSpeed engine (ZeRO 0, fp32, AdamW), one image per step. Each rank's
communication ledger counts the bytes it sends per step by cause, set beside
pitdist.report.comm_model; a step's time is the slowest rank's (the ranks barrier before it), the
median over the measured steps. The schemes of one P take turns step by step, so that noise from a
shared machine falls on all of them alike.

Then the analytical model projects the same comparison to 224x224 and 512x512 images on 64 ranks
(Q = 64 / P data-parallel groups, one image per SP group per step, bf16).

Ranks run max(1, cores // P) torch threads each: with P above the core count the ranks share cores,
and step times then measure that sharing, not P devices. The bytes do not depend on it.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import textwrap
import time
from pathlib import Path

from pitdist.bench.common import (
    BenchOptionError,
    cores,
    figure,
    image_size,
    image_sizes,
    int_list,
    json_path,
    mem_available,
    one_image_job,
    option_error,
    patch_tokens,
    size_fields,
    size_name,
    slowest,
    write_json,
)

INT_LIST = int_list(2, "2,4,8")  # the list-valued options' type

NUM_CLASSES = 10
DEFAULT_MODEL = ["--model.dim", "128", "--model.depth", "4", "--model.heads", "4", "--model.pos_embed", "sincos"]
ATTENTION = ("attention_a2a", "attention_ring")


def add_parser(sub) -> argparse.ArgumentParser:
    p = sub.add_parser(
        "ring",
        help="bytes and step time of Ulysses, ring attention and their hybrid, side by side",
        description=__doc__.split("\n\n")[1].replace("\n", " "),
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=textwrap.dedent("""\
            Model: width 128, 4 layers, 4 heads, sin-cos PE unless overridden with --model.KEY VALUE (as for
            `pitdist train`). With 4 heads Ulysses alone stops at P = 4; P = 8 runs only ring and hybrids.

            Example
              pitdist bench ring --sp 2,4,8 --side 56 --steps 5"""),
    )
    p.add_argument(
        "--sp",
        type=INT_LIST,
        default=[2, 4, 8],
        help="SP sizes P (default 2,4,8; a P whose ranks "
        "would not fit in the memory available is skipped, and said so)",
    )
    p.add_argument(
        "--side", type=image_size, default=(56, 56), help="image size, SIDE or HxW (default 56: 3,136 tokens)"
    )
    p.add_argument("--channels", type=int, default=1, help="image channels (default 1)")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps per scheme (default 2)")
    p.add_argument("--steps", type=int, default=5, help="timed steps per scheme (default 5)")
    p.add_argument(
        "--project-model",
        default="base",
        choices=["tiny", "small", "base"],
        help="PiT size for the 64-rank projection (default base: 12 heads)",
    )
    p.add_argument(
        "--project-sides",
        type=image_sizes,
        default=[(224, 224), (512, 512)],
        help="image sizes to project, SIDE or HxW, comma-separated (default 224,512)",
    )
    p.add_argument("--project-world", type=int, default=64, help="ranks of the projection (default 64)")
    p.add_argument(
        "--project-sp",
        type=INT_LIST,
        default=[4, 16, 64],
        help="SP sizes P of the projection, each dividing its ranks (default 4,16,64)",
    )
    p.add_argument("--out", default=None, help="JSON output (default runs/bench-ring-<time>.json; the PNG beside it)")
    return p


# A rank is a Python process with torch and DeepSpeed loaded (measured here: about 0.45 GB) plus its
# activations; the benchmark's images are small next to that.
RANK_BYTES = int(0.8 * 1024**3)


def plan(args: argparse.Namespace, overrides: list[str]):
    """(JobConfig, {P: [ring sizes]}, skipped) or raise ConfigError / MeshError / BenchOptionError."""
    from pitdist.parallel_dims import ParallelDims, valid_factorisations

    bad = [o for o in overrides if o.startswith("--") and not o.startswith("--model.")]
    if bad:
        raise BenchOptionError(f"pitdist bench ring takes only --model.KEY VALUE besides its own options; got {bad[0]}")
    if args.channels < 1 or args.steps < 1 or args.warmup < 0:
        raise BenchOptionError("--channels and --steps must be >= 1, --warmup >= 0")
    cfg = one_image_job(DEFAULT_MODEL, overrides, "--optim.grad_clip", "0", "--metrics.ledger", "true")
    patch_tokens(args.side, cfg.model.patch_size, "--side")  # any token count runs on any P, padded
    schemes, skipped = {}, []
    available = mem_available()
    for p in args.sp:
        pairs = valid_factorisations(p, cfg.model.num_heads)
        if not pairs:  # let the mesh say why, in its words
            ParallelDims(1, p).validate(heads=cfg.model.num_heads)
        if available is not None and p * RANK_BYTES > available:
            skipped.append(
                {
                    "sp": p,
                    "reason": f"{p} ranks need about {p * RANK_BYTES / 1024**3:.1f} GiB, "
                    f"{available / 1024**3:.1f} GiB available",
                }
            )
            continue
        schemes[p] = [r for _, r in pairs]
    return cfg, schemes, skipped


def _rank_main(
    rank: int, world: int, cfg_dict: dict, rings: list[int], size, channels: int, warmup: int, steps: int
) -> dict:
    import torch

    from pitdist.bench.sp.steps import model_and_batch
    from pitdist.bench.turns import contender, per_step, take_turns
    from pitdist.config import config_from_dict
    from pitdist.distributed.mesh import Mesh
    from pitdist.launch.local import quiet_deepspeed
    from pitdist.parallel_dims import ParallelDims
    from pitdist.train.engine import build_engine

    quiet_deepspeed()
    cfg = config_from_dict(cfg_dict)
    runs = []
    for ring in rings:
        mesh = Mesh(ParallelDims(1, world, ring))
        model, batch = model_and_batch(cfg, mesh, size, channels)  # the same weights and image for every split
        runs.append(contender(ring, mesh, build_engine(model, cfg, mesh, torch.float32), batch, rank))
    take_turns(runs, warmup, steps)
    out = [{"ring": c.name, "times": c.times, "losses": c.losses, "by_category": per_step(c, warmup)} for c in runs]
    return {"rank": rank, "runs": out}


def aggregate(
    cfg, schemes: dict[int, list[int]], results: dict[int, list[dict]], size: tuple[int, int], channels: int
) -> list[dict]:
    from pitdist.report.comm_model import scheme_name, step_traffic

    rows = []
    for p, rings in schemes.items():
        ranks = results[p]
        for j, ring in enumerate(rings):
            per_rank = [r["runs"][j] for r in ranks]
            per_step = slowest([r["times"] for r in per_rank])
            measured = per_rank[0]["by_category"]  # ranks are symmetric; the JSON keeps them all
            model = step_traffic(cfg.model, (*size, channels), NUM_CLASSES, 1, 1, p, 0, 0.0, 4, ring=ring)
            attn = sum(measured[c]["sent"] for c in ATTENTION if c in measured)
            attn_model = sum(model[c].sent for c in ATTENTION if c in model)
            total = sum(v["sent"] for v in measured.values())
            total_model = sum(v.sent for v in model.values())
            rows.append(
                {
                    "sp": p,
                    "ulysses": p // ring,
                    "ring": ring,
                    "scheme": scheme_name(p, ring),
                    "attention_sent_bytes": attn,
                    "model_attention_sent_bytes": attn_model,
                    "total_sent_bytes": total,
                    "model_total_sent_bytes": total_model,
                    "ratio_to_model": total / total_model if total_model else None,
                    "attention_seconds": sum(measured[c]["seconds"] for c in ATTENTION if c in measured),
                    "step_s": statistics.median(per_step),
                    "steps_s": per_step,
                    "by_category_rank0": measured,
                    "sent_bytes_per_rank": [sum(v["sent"] for v in r["by_category"].values()) for r in per_rank],
                    "losses_rank0": per_rank[0]["losses"],
                }
            )
    return rows


def projection(args: argparse.Namespace) -> list[dict]:
    """The model's bytes per rank per step on ``--project-world`` ranks, every scheme, for each size."""
    from pitdist.config import load_config
    from pitdist.parallel_dims import valid_factorisations
    from pitdist.report.comm_model import attention_sent, scheme_name, step_traffic

    world = args.project_world
    model = load_config(None, ["--model.size", args.project_model, "--model.pos_embed", "sincos"]).model
    rows = []
    for h, w in args.project_sides:
        n = (h // model.patch_size) * (w // model.patch_size)
        for p in [p for p in args.project_sp if world % p == 0]:
            q = world // p
            for u, r in valid_factorisations(p, model.num_heads):
                t = step_traffic(model, (h, w, 3), 1000, q, q, p, 0, 1.0, 2, ring=r)
                rows.append(
                    {
                        **size_fields((h, w)),
                        "tokens": n,
                        "world": world,
                        "dp": q,
                        "sp": p,
                        "ulysses": u,
                        "ring": r,
                        "scheme": scheme_name(p, r),
                        "attention_sent_bytes": attention_sent(t),
                        "total_sent_bytes": sum(v.sent for v in t.values()),
                        "units_nde": attention_sent(t) / (n * model.width * 2),
                    }
                )
    return rows


def _size_name(r: dict) -> str:
    return size_name((r["height"], r["width"]))


def _mb(x: float) -> str:
    return f"{x / 1e9:.2f} GB" if x >= 1e9 else f"{x / 1e6:.2f} MB"


def render(report: dict) -> str:
    m = report["model"]
    lines = [
        f"Measured: {report['height']}x{report['width']}x{report['channels']} images ({report['tokens']:,} tokens), "
        f"D={m['dim']}, L={m['depth']}, {m['heads']} heads, batch 1, fp32, gloo on {report['machine']['cores']} "
        f"cores; per rank per step, median of {report['steps']} steps (slowest rank); ratio = total sent / "
        "model; attn comm s = seconds inside attention's communication calls and ring waits",
        f"{'P':>3}  {'scheme':<20}{'threads':>8}{'attention sent':>16}{'model':>12}{'total sent':>13}"
        f"{'ratio':>7}{'step s':>9}{'attn comm s':>12}",
    ]
    for r in report["rows"]:
        lines.append(
            f"{r['sp']:>3}  {r['scheme']:<20}{report['threads_per_rank'][str(r['sp'])]:>8}"
            f"{_mb(r['attention_sent_bytes']):>16}{_mb(r['model_attention_sent_bytes']):>12}"
            f"{_mb(r['total_sent_bytes']):>13}{r['ratio_to_model']:>7.3f}{r['step_s']:>9.3f}"
            f"{r['attention_seconds']:>12.3f}"
        )
    for s in report["skipped"]:
        lines.append(f"{s['sp']:>3}  skipped: {s['reason']}")
    proj = report["projection"]
    if proj:
        pm = report["projection_model"]
        lines.append(
            f"\nProjected (analytical model): PiT-{pm['size']} (D={pm['dim']}, L={pm['depth']}, {pm['heads']} "
            f"heads) on {proj[0]['world']} ranks = Q x P, one image per SP group per step, bf16; "
            "attention bytes sent per rank per step (units of N*D*e)"
        )
        lines.append(
            f"{'image':>9} {'tokens':>8} {'Q x P':>8}  {'scheme':<22}{'attention':>14}{'(N*D*e)':>9}{'total':>12}"
        )
        for r in proj:
            lines.append(
                f"{_size_name(r):>9} {r['tokens']:>8} {str(r['dp']) + ' x ' + str(r['sp']):>8}  {r['scheme']:<22}"
                f"{_mb(r['attention_sent_bytes']):>14}{r['units_nde']:>9.2f}{_mb(r['total_sent_bytes']):>12}"
            )
    return "\n".join(lines)


def plot(report: dict, path: Path) -> None:
    rows = report["rows"]
    with figure(path, 3, (16, 4.8)) as (fig, axes):
        labels = [f"P={r['sp']}\n{r['scheme']}" for r in rows]
        xs = range(len(rows))
        ax = axes[0]
        ax.bar(xs, [r["attention_sent_bytes"] / 1e6 for r in rows], label="attention (measured)")
        ax.bar(
            xs,
            [(r["total_sent_bytes"] - r["attention_sent_bytes"]) / 1e6 for r in rows],
            bottom=[r["attention_sent_bytes"] / 1e6 for r in rows],
            label="everything else",
        )
        ax.plot(xs, [r["model_total_sent_bytes"] / 1e6 for r in rows], "k_", markersize=18, label="model total")
        ax.set_xticks(list(xs), labels, fontsize=7)
        ax.set_ylabel("MB sent per rank per step")
        ax.set_title(f"{_size_name(report)} image: bytes per rank")
        ax.legend(fontsize=7)
        ax = axes[1]
        ax.bar(xs, [r["step_s"] for r in rows], color="tab:green")
        ax.set_xticks(list(xs), labels, fontsize=7)
        ax.set_ylabel("seconds per training step (median, slowest rank)")
        ax.set_title(f"step time ({report['machine']['cores']} shared cores)")
        ax = axes[2]
        for name in dict.fromkeys(_size_name(r) for r in report["projection"]):
            for kind, style in (("ulysses", "o-"), ("ring", "s--"), ("hybrid", "^:")):
                pts = []
                for p in sorted({r["sp"] for r in report["projection"] if _size_name(r) == name}):
                    cands = [
                        r
                        for r in report["projection"]
                        if _size_name(r) == name
                        and r["sp"] == p
                        and (
                            r["ring"] == 1
                            if kind == "ulysses"
                            else r["ulysses"] == 1
                            if kind == "ring"
                            else r["ring"] > 1 and r["ulysses"] > 1
                        )
                    ]
                    if cands:
                        pts.append((p, min(c["attention_sent_bytes"] for c in cands)))
                if pts:
                    ax.plot([p for p, _ in pts], [b / 1e9 for _, b in pts], style, label=f"{name} {kind}")
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel(f"P (Q = {report['projection'][0]['world'] if report['projection'] else '?'} / P)")
        ax.set_ylabel("GB attention sent per rank per step")
        ax.set_title(f"projection: PiT-{report['projection_model']['size']}, best of each kind")
        ax.legend(fontsize=7)


def main(args: argparse.Namespace, overrides: list[str]) -> int:
    from pitdist.bench.spawn import run_ranks
    from pitdist.config import ConfigError, load_config
    from pitdist.parallel_dims import MeshError

    try:
        cfg, schemes, skipped = plan(args, overrides)
    except (ConfigError, MeshError, BenchOptionError) as exc:
        return option_error("ring", exc)
    ncores = cores()
    threads = {p: max(1, ncores // p) for p in schemes}
    results = {}
    for p, rings in schemes.items():
        print(
            f"[bench ring] P={p}: {', '.join(f'ulysses {p // r} x ring {r}' for r in rings)} "
            f"({args.warmup} + {args.steps} steps each, {threads[p]} threads per rank)",
            file=sys.stderr,
            flush=True,
        )
        start = time.perf_counter()
        results[p] = run_ranks(
            p, threads[p], _rank_main, cfg.to_dict(), rings, args.side, args.channels, args.warmup, args.steps
        )
        print(f"[bench ring] P={p} done in {time.perf_counter() - start:.0f} s", file=sys.stderr, flush=True)
    pm = load_config(None, ["--model.size", args.project_model]).model
    report = {
        "argv": sys.argv[1:],
        "machine": {"cores": ncores, "mem_available_bytes": mem_available()},
        **size_fields(args.side),
        "channels": args.channels,
        "tokens": patch_tokens(args.side, cfg.model.patch_size, "--side"),
        "model": {
            "dim": cfg.model.width,
            "depth": cfg.model.num_layers,
            "heads": cfg.model.num_heads,
            "pos_embed": cfg.model.pos_embed,
        },
        "warmup": args.warmup,
        "steps": args.steps,
        "threads_per_rank": {str(p): t for p, t in threads.items()},
        "rows": aggregate(cfg, schemes, results, args.side, args.channels),
        "skipped": skipped,
        "projection_model": {
            "size": args.project_model,
            "dim": pm.width,
            "depth": pm.num_layers,
            "heads": pm.num_heads,
        },
        "projection": projection(args),
    }
    out = json_path(args.out, "ring")
    write_json(report, out)
    plot(report, out.with_suffix(".png"))
    print(render(report))
    print(f"wrote {out} and {out.with_suffix('.png')}")
    return 0
