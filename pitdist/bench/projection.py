"""`pitdist bench projection`: the communication and memory model carried to GPU clusters.

Pure computation (no ranks, no training): pitdist.report.comm_model.step_traffic (the model every
measurement of the ledger matched to the byte on this machine) for PiT-T/S/B on 224x224x3 images
(50,176 pixel tokens) on W = 8, 64, 512 GPUs, each SP group of P ranks taking one image per step
(Q = W / P groups), bf16. For each P the attention runs as Ulysses over the largest U that divides
the heads and P, and as a ring over the rest (R = P / U), the split pitdist would pick. Reported per
rank per step: bytes sent by attention, by the learned PE table's gradient (replicated: inside the
all-reduce over all W ranks; sharded with the tokens: over the Q DP ranks only) and by the rest of
the gradient reduction.

Memory: the activations one rank keeps for backward at its peak, from pitdist.report.memory_model
for each activation-checkpointing policy (--checkpointing; the model matches what `pitdist bench sp`
and `pitdist bench checkpointing` count on this machine: about 16 D-vectors per token and layer
without checkpointing, 1 kept by full checkpointing plus one block recomputed at a time; memory-
efficient attention saves O(N), as flash attention does on a GPU), 2 bytes per element (bf16).
Model state per GPU with ZeRO-2 over W ranks in mixed precision: 2 bytes of bf16 weights per
parameter + (2 bytes of gradient + 12 of fp32 master, Adam m and v) / W. SP is needed for memory when
one image's activations plus the state do not fit a GPU: the smallest P (a power of two that the
model can split: Ulysses over the heads, the rest as a ring) whose per-rank peak + state <= the GPU's
memory x --usable. The traffic table adds what each policy's backward re-sends.
"""

from __future__ import annotations

import argparse
import math
import sys
import textwrap
from pathlib import Path

from pitdist.bench.common import (
    choice_list,
    created,
    figure,
    hwc,
    image_sizes,
    int_list,
    json_path,
    plot_path,
    publish,
    size_fields,
)
from pitdist.config import ACTIVATION_CHECKPOINTING

INT_LIST = int_list(1, "8,64,512")  # the list-valued options' type

SIZES = ("tiny", "small", "base")
GB = 1e9

EPILOG = textwrap.dedent(
    """\
    Examples
      pitdist bench projection                                  # 224x224, PiT-T/S/B, 8/64/512 GPUs
      pitdist bench projection --image 512x512x3 --gpus 64 --gpu-mem-gb 80
      pitdist bench projection --checkpointing none,full,selective,local --mem-sides 224,448,1024
    """
)


def _float_list(text: str) -> list[float]:
    try:
        values = [float(v) for v in text.replace(" ", "").split(",") if v]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a comma-separated list of numbers") from None
    if not values or min(values) <= 0:
        raise argparse.ArgumentTypeError(f"{text!r}: give one or more numbers > 0")
    return values


def _image(text: str) -> tuple[int, int, int]:
    try:
        h, w, c = hwc(text.lower())
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: write HxWxC, e.g. 224x224x3") from None
    if min(h, w, c) < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: sides and channels must be >= 1")
    return h, w, c


def add_parser(sub) -> argparse.ArgumentParser:
    p = sub.add_parser(
        "projection",
        help="project per-GPU traffic (Ulysses all-to-all vs PE gradient) and activation memory to GPU clusters",
        description="Evaluate pitdist's communication model for PiT-T/S/B on large images and W GPUs: bytes each "
        "GPU sends per step for attention and for the position-embedding gradient, and the SP size one image's "
        "activations need to fit a GPU. Pure computation.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--image", type=_image, default=(224, 224, 3), help="image HxWxC (default: 224x224x3)")
    p.add_argument("--sizes", default=",".join(SIZES), help="model sizes (default: tiny,small,base)")
    p.add_argument(
        "--gpus", type=INT_LIST, default=[8, 64, 512], metavar="LIST", help="cluster sizes W (default: 8,64,512)"
    )
    p.add_argument("--max-sp", type=int, default=64, help="largest SP size P considered (default: 64)")
    p.add_argument(
        "--gpu-mem-gb",
        type=_float_list,
        default=[24.0, 40.0, 80.0],
        metavar="LIST",
        help="GPU memory sizes in GB for the memory table (default: 24,40,80)",
    )
    p.add_argument(
        "--usable",
        type=float,
        default=0.9,
        help="share of a GPU's memory usable for activations and state (default: 0.9)",
    )
    p.add_argument(
        "--mem-sides",
        type=image_sizes,
        default=[(224, 224), (336, 336), (448, 448), (512, 512)],
        metavar="LIST",
        help="image sizes of the memory table, SIDE or HxW, comma-separated (default: 224,336,448,512)",
    )
    p.add_argument(
        "--checkpointing",
        type=choice_list(ACTIVATION_CHECKPOINTING, "activation-checkpointing policies"),
        default=["none", "full", "local"],
        metavar="LIST",
        help=f"activation-checkpointing policies to compare, from {','.join(ACTIVATION_CHECKPOINTING)} "
        "(default: none,full,local)",
    )
    p.add_argument("--out", default=None, metavar="PATH", help="JSON (default: runs/bench-projection-<time>.json)")
    p.add_argument("--plot", default=None, metavar="PATH", help="PNG (default: the --out path with .png)")
    return p


def _model(size: str, pos_embed: str = "learned", shard: bool = False):
    from pitdist.config import ModelConfig

    return ModelConfig(size=size, pos_embed=pos_embed, shard_pos_embed=shard)


def sp_sizes(w: int, max_sp: int) -> list[int]:
    """Powers of two up to min(W, max_sp) that divide W (any token count splits over them, padded)."""
    out, p = [], 1
    while p <= min(w, max_sp):
        if w % p == 0:
            out.append(p)
        p *= 2
    return out


def traffic_rows(args: argparse.Namespace) -> list[dict]:
    from pitdist.config import ModelConfig
    from pitdist.parallel_dims import valid_factorisations
    from pitdist.report.comm_model import attention_sent, param_counts, scheme_name, step_traffic

    h, w_img, c = args.image
    n = h * w_img
    rows = []
    for size in args.sizes:
        base = ModelConfig(size=size)
        d, layers, heads = base.width, base.num_layers, base.num_heads
        unit = n * d * 2
        params = param_counts(_model(size, "none"), c, 1000, n).total
        for w in args.gpus:
            for p in sp_sizes(w, args.max_sp):
                pairs = valid_factorisations(p, heads)
                if not pairs:
                    continue
                u, r = pairs[0]  # the largest Ulysses factor: fewest bytes (pitdist.report.comm_model.scheme_table)
                q = w // p
                t = {
                    name: step_traffic(_model(size, pe, shard), args.image, 1000, q, q, p, 2, 0.0, 2, ring=r)
                    for name, (pe, shard) in {
                        "none": ("none", False),
                        "learned": ("learned", False),
                        "sharded": ("learned", True),
                    }.items()
                }
                attn = attention_sent(t["none"])
                attn_by_policy = {
                    policy: attention_sent(
                        step_traffic(
                            _model(size, "none"),
                            args.image,
                            1000,
                            q,
                            q,
                            p,
                            2,
                            0.0,
                            2,
                            ring=r,
                            activation_checkpointing=policy,
                        )
                    )
                    for policy in args.checkpointing
                }
                grad = t["none"]["grad_reduce"].sent
                pe_rep = t["learned"]["pe_grad_reduce"].sent
                pe_sh = t["sharded"]["pe_grad_reduce"].sent + (
                    t["sharded"]["pe_param_gather"].sent if "pe_param_gather" in t["sharded"] else 0.0
                )
                total_none = sum(v.sent for v in t["none"].values())
                total_rep = sum(v.sent for v in t["learned"].values())
                rows.append(
                    {
                        "size": size,
                        "dim": d,
                        "layers": layers,
                        "heads": heads,
                        "params": params,
                        "gpus": w,
                        "dp": q,
                        "sp": p,
                        "ulysses": u,
                        "ring": r,
                        "scheme": scheme_name(p, r),
                        "tokens": n,
                        "attention_bytes": attn,
                        "attention_bytes_by_policy": attn_by_policy,
                        "grad_reduce_bytes": grad,
                        "pe_replicated_bytes": pe_rep,
                        "pe_sharded_bytes": pe_sh,
                        "total_none_bytes": total_none,
                        "total_learned_bytes": total_rep,
                        "pe_share_replicated": pe_rep / total_rep if total_rep else 0.0,
                        "attention_nde": attn / unit,
                        "pe_replicated_nde": pe_rep / unit,
                    }
                )
    return rows


def memory_rows(args: argparse.Namespace) -> list[dict]:
    """Per model, image size and checkpointing policy: one image's peak activations and the smallest P that fits
    each GPU."""
    from pitdist.config import ModelConfig
    from pitdist.parallel_dims import TokenShards, valid_factorisations
    from pitdist.report.comm_model import param_counts
    from pitdist.report.memory_model import activation_memory

    c = args.image[2]
    w = max(args.gpus)
    rows = []
    for size in args.sizes:
        m = ModelConfig(size=size)
        for image in args.mem_sides:
            n = image[0] * image[1]
            params = param_counts(_model(size, "learned"), c, 1000, n).total
            state = params * (2 + (2 + 12) / w)
            meshes = [(p, valid_factorisations(p, m.num_heads)) for p in sp_sizes(w, args.max_sp)]
            meshes = [(p, pairs[0][1]) for p, pairs in meshes if pairs]  # (P, ring of the fewest-bytes split)
            for policy in args.checkpointing:

                def peak(p: int, ring: int, m=m, n=n, policy=policy) -> float:
                    shard = TokenShards(n, p, cls=m.pool == "cls").shard  # a rank's slots, padding included
                    return activation_memory(m, shard, c, policy, p, ring, bytes_per_element=2).peak

                act = peak(1, 1)
                need, images = {}, {}
                for mem in args.gpu_mem_gb:
                    room = mem * GB * args.usable - state
                    images[str(mem)] = max(0, int(room // act))  # whole images per GPU without SP
                    need[str(mem)] = next((p for p, r in meshes if room > 0 and peak(p, r) <= room), None)
                rows.append(
                    {
                        "size": size,
                        **size_fields(image),
                        "tokens": n,
                        "checkpointing": policy,
                        "activation_bytes_per_image": act,
                        "state_bytes_per_gpu": state,
                        "min_sp": need,
                        "images_without_sp": images,
                        "heads": m.num_heads,
                        "ulysses_alone_ok": {k: (v is not None and m.num_heads % v == 0) for k, v in need.items()},
                    }
                )
    return rows


def _gb(x: float) -> str:
    return f"{x / GB:.2f} GB" if x >= 1e8 else f"{x / 1e6:.1f} MB"


def render(report: dict) -> str:
    h, w, c = report["image"]
    recomputing = [p for p in report["checkpointing"] if p != "none"]
    out = [
        f"Per GPU per step, {h}x{w}x{c} ({h * w:,} tokens), one image per SP group, bf16, ZeRO 2 "
        f"(bytes sent; N*D*e = one image's activations; 'attn +X' = attention with X activation checkpointing)",
        f"{'model':<6}{'W':>5}{'Q x P':>10}  {'scheme':<20}{'attention':>11}{'(NDe)':>7}{'PE grad repl.':>14}"
        f"{'(NDe)':>7}{'PE sharded':>12}{'other grads':>12}{'PE share':>9}"
        + "".join(f"{'attn +' + p:>16}" for p in recomputing),
    ]
    for r in report["traffic"]:
        out.append(
            f"{r['size']:<6}{r['gpus']:>5}{str(r['dp']) + ' x ' + str(r['sp']):>10}  {r['scheme']:<20}"
            f"{_gb(r['attention_bytes']):>11}{r['attention_nde']:>7.2f}{_gb(r['pe_replicated_bytes']):>14}"
            f"{r['pe_replicated_nde']:>7.2f}{_gb(r['pe_sharded_bytes']):>12}{_gb(r['grad_reduce_bytes']):>12}"
            f"{r['pe_share_replicated']:>9.1%}"
            + "".join(f"{_gb(r['attention_bytes_by_policy'][p]):>16}" for p in recomputing)
        )
    mems = list(report["memory"][0]["min_sp"]) if report["memory"] else []
    out.append(
        "\nPeak activations one image keeps for backward (bf16, pitdist.report.memory_model), per "
        f"activation-checkpointing policy, and the smallest P that fits it on one GPU ({report['usable']:.0%} "
        f"of memory usable, ZeRO-2 state over {max(report['gpus'])} GPUs)"
    )
    out.append(
        f"{'model':<6}{'image':>11}{'tokens':>11}  {'checkpointing':<14}{'act./image':>12}{'state/GPU':>11}"
        + "".join(f"{'P @ ' + m + ' GB':>14}" for m in mems)
    )
    for r in report["memory"]:
        cells = []
        for m in mems:
            p = r["min_sp"][m]
            cells.append(
                "-"
                if p is None
                else f"{p}{'' if r['ulysses_alone_ok'][m] else '*'}"
                + (f" ({r['images_without_sp'][m]} img)" if p == 1 else "")
            )
        out.append(
            f"{r['size']:<6}{str(r['height']) + 'x' + str(r['width']):>11}{r['tokens']:>11,}  {r['checkpointing']:<14}"
            f"{_gb(r['activation_bytes_per_image']):>12}{_gb(r['state_bytes_per_gpu']):>11}"
            + "".join(f"{c:>14}" for c in cells)
        )
    out.append(
        "(P = 1 (k img): no SP needed, k images fit one GPU; * P exceeds what Ulysses alone allows for the "
        "model's heads: needs ring attention or a hybrid; - no P up to --max-sp fits)"
    )
    return "\n".join(out)


def plot(report: dict, path: Path) -> None:
    with figure(path, 2, (12, 4.4)) as (fig, axes):
        ax = axes[0]
        w = 64 if 64 in report["gpus"] else report["gpus"][len(report["gpus"]) // 2]
        for size in dict.fromkeys(r["size"] for r in report["traffic"]):
            sub = [r for r in report["traffic"] if r["size"] == size and r["gpus"] == w]

            def pts(key, sub=sub):
                # zeros (no attention traffic at P = 1, no sharded PE traffic at Q = 1) left off the log axis
                return [r["sp"] for r in sub if r[key] > 0], [r[key] / GB for r in sub if r[key] > 0]

            (line,) = ax.plot(*pts("attention_bytes"), "o-", label=f"{size}: attention")
            ax.plot(
                *pts("pe_replicated_bytes"),
                "s--",
                color=line.get_color(),
                label=f"{size}: learned PE grad (replicated)",
            )
            ax.plot(*pts("pe_sharded_bytes"), "^:", color=line.get_color(), label=f"{size}: learned PE grad (sharded)")
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel(f"SP ranks P (Q = {w} / P)")
        ax.set_ylabel("GB sent per GPU per step")
        h, wi, _ = report["image"]
        ax.set_title(f"{h}x{wi} on {w} GPUs, 1 image per SP group, bf16", fontsize=10)
        ax.legend(fontsize=6)
        ax = axes[1]
        # x: the side, or for a rectangle the side of the square with as many pixels
        sides = sorted({math.sqrt(r["tokens"]) for r in report["memory"]})
        styles = {"none": "o-", "full": "s--", "selective": "^-.", "local": "d:"}
        for size in dict.fromkeys(r["size"] for r in report["memory"]):
            for policy in report["checkpointing"]:
                sub = [r for r in report["memory"] if r["size"] == size and r["checkpointing"] == policy]
                ax.plot(
                    [math.sqrt(r["tokens"]) for r in sub],
                    [r["activation_bytes_per_image"] / GB for r in sub],
                    styles[policy],
                    label=f"{size}, {policy}",
                )
        for mem in report["memory"][0]["min_sp"] if report["memory"] else []:
            ax.axhline(float(mem) * report["usable"], color="grey", lw=0.7, ls="--")
            ax.text(sides[0], float(mem) * report["usable"] * 1.05, f"{mem} GB GPU", fontsize=7, color="grey")
        ax.set_yscale("log")
        ax.set_xlabel("image side, sqrt(H x W) for a rectangle (pixels, one token each)")
        ax.set_ylabel("activations per image, GB (bf16)")
        ax.set_title("one image's activations vs a GPU: above a line, SP is needed", fontsize=10)
        ax.legend(fontsize=8)


def main(args: argparse.Namespace, overrides: list[str]) -> int:
    if overrides:
        print(f"pitdist bench projection: error: unknown option {overrides[0]} (see --help)", file=sys.stderr)
        return 2
    args.sizes = [s for s in args.sizes.replace(" ", "").split(",") if s]
    bad = [s for s in args.sizes if s not in SIZES]
    if bad or not args.sizes:
        print(
            f"pitdist bench projection: error: --sizes {bad or args.sizes}: choose from {','.join(SIZES)}",
            file=sys.stderr,
        )
        return 2
    if not 0 < args.usable <= 1 or args.max_sp < 1:
        print(
            "pitdist bench projection: error: --usable must be in (0, 1], --max-sp >= 1",
            file=sys.stderr,
        )
        return 2
    out = json_path(args.out, "projection")
    png = plot_path(args.plot, out)
    report = {
        "benchmark": "pitdist bench projection",
        "created": created(),
        "command": sys.argv,
        "image": list(args.image),
        "gpus": args.gpus,
        "bytes_per_element": 2,
        "zero_stage": 2,
        "images_per_sp_group": 1,
        "usable": args.usable,
        "checkpointing": args.checkpointing,
        "traffic": traffic_rows(args),
        "memory": memory_rows(args),
    }
    return publish(report, out, png, plot, render)
