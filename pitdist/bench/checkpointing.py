"""`pitdist bench checkpointing`: what each activation-checkpointing policy keeps, costs and re-sends.

Real gloo ranks spawned here, the real model wrapped by ``parallelize()`` under each policy of
``train.activation_checkpointing`` and trained by a real DeepSpeed engine (ZeRO 0, fp32, AdamW), one
random image per step, one SP group of P ranks (Ulysses). Parts:

  compare  at one image size (a side, or HxW), for each P and policy: the bytes autograd holds when the forward ends
           (the saved-tensor count of `pitdist bench sp`) and what one recomputed unit holds on top
           in backward (counted by running that unit, a block or the local policy's project_out
           stage, once plainly at the same shapes), their sum (the peak), the process's peak RSS
           growth in the step (each policy in fresh processes, so no allocator is warm), and, in
           one more process group where the policies take turns step by step, the step time and
           the ledger's bytes per step (those re-sent in the recompute phase apart). Ratios to none.
  largest  the largest square image whose peak stays under --cap-gib per rank, for each P and policy,
           at full depth: probes at two reduced depths (--probe-depths, forward only, at
           --probe-side) give the bytes per token per layer and the rest; everything is linear in the
           tokens (memory-efficient attention) and in the layers, so the full-depth peak per token is
           extrapolated from them. Set beside pitdist.report.memory_model's answer.
  confirm  one full-depth training step at each --confirm P:POLICY:SIDE, measured as in compare.

Ranks run max(1, cores // P) torch threads each: with P above the core count they share cores, and
step-time ratios between policies (same P) stay fair while ratios across P do not.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import textwrap
import time

from pitdist.bench.common import (
    BenchOptionError,
    choice_list,
    cores,
    created,
    image_size,
    int_list,
    json_path,
    mem_available,
    option_error,
    patch_tokens,
    plot_path,
    publish,
    size_fields,
    size_name,
    write_json,
)
from pitdist.bench.sp.plan import DEFAULT_MODEL, GIB
from pitdist.config import ACTIVATION_CHECKPOINTING

PARTS = ("compare", "largest", "confirm")
MIB = 1024**2


def _confirm_list(text: str) -> list[tuple[int, str, tuple[int, int]]]:
    out = []
    for item in (i for i in text.replace(" ", "").split(",") if i):
        try:
            p, policy, size = item.split(":")
            out.append((int(p), policy, image_size(size)))
        except (ValueError, argparse.ArgumentTypeError):
            raise argparse.ArgumentTypeError(
                f"{item!r}: write P:POLICY:SIZE, e.g. 1:full:224 or 1:full:224x112"
            ) from None
        if policy not in ACTIVATION_CHECKPOINTING:
            raise argparse.ArgumentTypeError(f"{item!r}: policy must be one of {','.join(ACTIVATION_CHECKPOINTING)}")
    return out


def add_parser(sub) -> argparse.ArgumentParser:
    p = sub.add_parser(
        "checkpointing",
        help="activation checkpointing: memory kept, peak RSS, step time, bytes re-sent and the largest image",
        description=__doc__.split("\n\n")[1].replace("\n", " "),
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=textwrap.dedent("""\
            Model: PiT-Tiny width and depth with 4 heads (dim 192, 12 layers, sin-cos PE) unless overridden
            with --model.KEY VALUE, as for `pitdist train`.

            Examples
              pitdist bench checkpointing                                   # compare + largest, P = 1,2,4
              pitdist bench checkpointing --parts confirm --confirm 1:full:224   # one 50,176-token step
              pitdist bench checkpointing --sp 1,2 --side 16 --model.dim 64 --model.depth 4 --parts compare"""),
    )
    p.add_argument(
        "--sp", type=int_list(1, "1,2,4"), default=[1, 2, 4], metavar="LIST", help="SP sizes P (default 1,2,4)"
    )
    p.add_argument(
        "--policies",
        type=choice_list(ACTIVATION_CHECKPOINTING, "policies"),
        default=list(ACTIVATION_CHECKPOINTING),
        metavar="LIST",
        help=f"policies to compare, from {','.join(ACTIVATION_CHECKPOINTING)}; none is the baseline (default: all)",
    )
    p.add_argument(
        "--parts",
        type=choice_list(PARTS, "parts"),
        default=["compare", "largest"],
        metavar="LIST",
        help=f"from {','.join(PARTS)} (default compare,largest)",
    )
    p.add_argument(
        "--side", type=image_size, default=(56, 56), help="compare: image size, SIDE or HxW (default 56: 3,136 tokens)"
    )
    p.add_argument("--channels", type=int, default=1, help="image channels (default 1)")
    p.add_argument("--warmup", type=int, default=1, help="compare: untimed steps per policy (default 1)")
    p.add_argument("--steps", type=int, default=3, help="compare: timed steps per policy, median reported (default 3)")
    p.add_argument("--cap-gib", type=float, default=1.0, help="largest: per-rank cap on the peak, GiB (default 1)")
    p.add_argument(
        "--probe-side",
        type=image_size,
        default=(56, 56),
        help="largest: image size of the probes, SIDE or HxW (default 56)",
    )
    p.add_argument(
        "--probe-depths",
        type=int_list(1, "2,4"),
        default=[2, 4],
        metavar="D1,D2",
        help="largest: the two reduced depths probed; multiples of train.selective_every keep selective's "
        "mix of blocks (default 2,4)",
    )
    p.add_argument(
        "--confirm",
        type=_confirm_list,
        default=[(1, "full", (224, 224))],
        metavar="LIST",
        help="confirm: full-depth steps to run, P:POLICY:SIZE comma-separated, SIZE a side or HxW (default 1:full:224)",
    )
    p.add_argument("--threads-total", type=int, default=0, help="cores shared by the ranks (default: all)")
    p.add_argument("--seed", type=int, default=0, help="seed of the weights and the image (default 0)")
    p.add_argument("--out", default=None, help="JSON (default runs/bench-checkpointing-<time>.json)")
    p.add_argument("--plot", default=None, help="PNG (default: the --out path with .png)")
    return p


def plan(args: argparse.Namespace, overrides: list[str]):
    """The job config (model overrides applied), or raise ConfigError / MeshError / BenchOptionError."""
    from pitdist.bench.common import one_image_job, only_model_overrides
    from pitdist.parallel_dims import ParallelDims

    only_model_overrides(overrides, "checkpointing")
    if "none" not in args.policies:
        raise BenchOptionError("--policies: must include none, the baseline of every ratio")
    if min(args.channels, args.steps) < 1 or args.warmup < 0 or args.cap_gib <= 0:
        raise BenchOptionError("--channels and --steps must be >= 1, --warmup >= 0, --cap-gib > 0")
    if len(args.probe_depths) != 2 or args.probe_depths[0] >= args.probe_depths[1]:
        raise BenchOptionError(f"--probe-depths {args.probe_depths}: give two increasing depths, e.g. 2,4")
    cfg = one_image_job(
        DEFAULT_MODEL, overrides, "--train.seed", str(args.seed), "--optim.grad_clip", "0", "--train.dtype", "fp32"
    )
    m = cfg.model
    # Any image runs on any P (its shards are padded): refused are the P the heads cannot split and
    # the images whole patches do not tile.
    patch_tokens(args.side, m.patch_size, "--side")
    patch_tokens(args.probe_side, m.patch_size, "--probe-side")
    confirms = args.confirm if "confirm" in args.parts else []
    for _, _, size in confirms:
        patch_tokens(size, m.patch_size, "--confirm")
    for p, option in [(p, "--sp") for p in args.sp] + [(p, "--confirm") for p, _, _ in confirms]:
        try:
            ParallelDims(1, p).validate(heads=m.num_heads)
        except ValueError as exc:
            raise type(exc)(f"{option} {p}: {exc}") from None
    return cfg


# --- rank side ---------------------------------------------------------------------------------------


def recompute_unit_bytes(model, policy: str, every: int, images: int, tokens: int) -> int:
    """What one recomputed unit holds while backward goes through it, beyond what it was given: the
    largest unit ``policy`` recomputes (a whole block for full / selective, the project_out stage for
    local), run once plainly on a random block input of ``images`` x ``tokens`` under the saved-tensor
    counter. Collective under SP (the block's attention exchanges): every rank of the group calls it."""
    import torch

    from pitdist.bench.sp.memory import SavedTensorCounter, counting
    from pitdist.config import checkpointed_blocks

    gen = torch.Generator().manual_seed(7)
    x = torch.randn(images, tokens, model.embed.out_features, generator=gen).requires_grad_()
    block = model.blocks[0]
    params = list(model.parameters())
    if policy == "local":
        attended = block.attn.inner_attention(*block.project_in(x))  # the stage's inputs, not counted
        counter = SavedTensorCounter([x, attended, *params])
        with counting(counter):
            block.project_out(x, attended)
    elif checkpointed_blocks(len(model.blocks), policy, every):
        counter = SavedTensorCounter([x, *params])
        with counting(counter):
            block(x)
    else:
        return 0
    return counter.summary()["saved_bytes"]


def _measured_step(rank: int, world: int, cfg_dict: dict, size: tuple[int, int], channels: int) -> dict:
    """One training step of a fresh engine under the config's policy (pitdist bench sp's measured step:
    held bytes, peak RSS growth, time), and the policy's recompute unit."""
    from pitdist.bench.sp.steps import model_and_batch, step_job
    from pitdist.config import config_from_dict
    from pitdist.distributed.mesh import Mesh
    from pitdist.launch.local import quiet_deepspeed
    from pitdist.parallel_dims import ParallelDims

    quiet_deepspeed()
    cfg = config_from_dict(cfg_dict)
    mesh = Mesh(ParallelDims(1, world))
    step = step_job(
        cfg, mesh, {"part": "checkpointing", **size_fields(size), "warmup": 0, "steps": 1, "measure": True}, channels
    )
    model, _ = model_and_batch(cfg, mesh, size, channels)
    policy, every = cfg.train.activation_checkpointing, cfg.train.selective_every
    return {
        "tokens": step["tokens"],
        "tokens_per_rank": step["tokens_per_rank"],
        "held_bytes": step["memory"]["saved_bytes"],
        # a block runs on the rank's S slots, padding included
        "recompute_bytes": recompute_unit_bytes(model, policy, every, 1, step["tokens_per_rank"]),
        "peak_rss_delta_bytes": step["memory"]["peak_rss_delta_bytes"],
        "rss_method": step["memory"]["rss_method"],
        "step_s": step["times"][0]["total_s"],
        "loss": step["losses"][0],
    }


def _turns(rank: int, world: int, cfg_dict: dict, policies: list[str], size, channels: int, warmup, steps):
    """Every policy's engine on this rank, taking turns step by step with a ledger each."""
    from pitdist.bench.sp.steps import build
    from pitdist.bench.turns import contender, per_step, take_turns
    from pitdist.config import config_from_dict
    from pitdist.distributed.mesh import Mesh
    from pitdist.launch.local import quiet_deepspeed
    from pitdist.parallel_dims import ParallelDims

    quiet_deepspeed()
    mesh = Mesh(ParallelDims(1, world))
    runs = []
    for policy in policies:
        engine, batch, _ = build(config_from_dict(_with_policy(cfg_dict, policy)), mesh, size, channels)
        runs.append(contender(policy, mesh, engine, batch, rank))
    take_turns(runs, warmup, steps)
    return [
        {
            "policy": c.name,
            "times": c.times,
            "losses": c.losses,
            "by_category": per_step(c, warmup),
            "by_phase": per_step(c, warmup, "phase"),
        }
        for c in runs
    ]


def _probes(rank: int, world: int, cfg_dict: dict, policies: list[str], size, channels: int, depths):
    """Forward only at each reduced depth and policy: held bytes and the recompute unit."""
    import torch.nn.functional as F

    from pitdist.bench.sp.memory import SavedTensorCounter, counting
    from pitdist.bench.sp.plan import shard
    from pitdist.bench.sp.steps import model_and_batch
    from pitdist.config import config_from_dict
    from pitdist.distributed.mesh import Mesh
    from pitdist.parallel_dims import ParallelDims

    mesh = Mesh(ParallelDims(1, world))
    out = []
    for policy in policies:
        for depth in depths:
            cfg = config_from_dict({**_with_policy(cfg_dict, policy), "model": {**cfg_dict["model"], "depth": depth}})
            model, batch = model_and_batch(cfg, mesh, size, channels)
            counter = SavedTensorCounter(model.parameters())
            with counting(counter):
                F.cross_entropy(model(batch.tokens, batch.positions), batch.labels)
            n = shard(cfg.model, model.num_tokens, world)  # the slots the blocks ran on, padding included
            out.append(
                {
                    "policy": policy,
                    "depth": depth,
                    "tokens_per_rank": n,
                    "held_bytes": counter.summary()["saved_bytes"],
                    "recompute_bytes": recompute_unit_bytes(model, policy, cfg.train.selective_every, 1, n),
                }
            )
    return out


# --- driver side -------------------------------------------------------------------------------------


def _with_policy(cfg_dict: dict, policy: str) -> dict:
    return {**cfg_dict, "train": {**cfg_dict["train"], "activation_checkpointing": policy}}


def extrapolate(probes: list[dict], depth: int, sp: int, cap: float, patch: int, max_side: int = 2048) -> dict:
    """Full-depth peak bytes per token from two reduced-depth probes, and the largest square side under
    ``cap``: every side runs on every P, a rank's peak growing with its S = ceil(tokens / P) slots."""
    from pitdist.parallel_dims import TokenShards

    (a, b) = sorted(probes, key=lambda r: r["depth"])
    n = a["tokens_per_rank"]
    per_layer = (b["held_bytes"] - a["held_bytes"]) / (b["depth"] - a["depth"])
    held = a["held_bytes"] + per_layer * (depth - a["depth"])
    per_token = (held + b["recompute_bytes"]) / n
    side = None
    for s in range(patch, max_side + 1, patch):
        if TokenShards((s // patch) ** 2, sp).shard * per_token > cap:
            break
        side = s
    return {"per_token_bytes": per_token, "per_layer_token_bytes": per_layer / n, "largest_side": side}


def main(args: argparse.Namespace, overrides: list[str]) -> int:
    from pitdist.bench.spawn import BenchError, run_ranks
    from pitdist.config import ConfigError
    from pitdist.parallel_dims import MeshError
    from pitdist.report.memory_model import activation_memory, largest_square_side

    try:
        cfg = plan(args, overrides)
    except (ConfigError, MeshError, BenchOptionError) as exc:
        return option_error("checkpointing", exc)
    out, m, ncores = json_path(args.out, "checkpointing"), cfg.model, args.threads_total or cores()
    png = plot_path(args.plot, out)
    threads = {p: max(1, ncores // p) for p in sorted({*args.sp, *(c[0] for c in args.confirm)})}
    report = {
        "benchmark": "pitdist bench checkpointing",
        "created": created(),
        "command": sys.argv,
        "machine": {"cores": ncores, "mem_available_bytes": mem_available()},
        "model": {"dim": m.width, "depth": m.num_layers, "heads": m.num_heads, "pos_embed": m.pos_embed},
        "selective_every": cfg.train.selective_every,
        **size_fields(args.side),
        "policies": args.policies,
        "cap_bytes": args.cap_gib * GIB,
        "threads_per_rank": {str(p): t for p, t in threads.items()},
        "compare": [],
        "largest": [],
        "confirm": [],
    }

    def log(message: str) -> None:
        print(f"[bench checkpointing] {message}", file=sys.stderr, flush=True)

    def measured(p: int, policy: str, size: tuple[int, int]) -> dict:
        start = time.perf_counter()
        r = run_ranks(p, threads[p], _measured_step, _with_policy(cfg.to_dict(), policy), size, args.channels)
        model = activation_memory(m, r[0]["tokens_per_rank"], args.channels, policy, p)
        log(f"P={p} {policy} {size_name(size)}: one step in {time.perf_counter() - start:.0f} s")
        return {
            "sp": p,
            "policy": policy,
            **size_fields(size),
            **r[0],
            "model_held_bytes": model.held,
            "model_recompute_bytes": model.recompute,
            "peak_rss_delta_bytes_per_rank": [x["peak_rss_delta_bytes"] for x in r],
        }

    try:
        if "compare" in args.parts:
            for p in args.sp:
                rows = {policy: measured(p, policy, args.side) for policy in args.policies}
                log(f"P={p}: the policies take turns ({args.warmup} + {args.steps} steps each)")
                turns = run_ranks(
                    p,
                    threads[p],
                    _turns,
                    cfg.to_dict(),
                    args.policies,
                    args.side,
                    args.channels,
                    args.warmup,
                    args.steps,
                )
                for j, policy in enumerate(args.policies):
                    per_rank = [t[j] for t in turns]
                    step_s = [max(ts) for ts in zip(*(r["times"] for r in per_rank))]
                    rows[policy].update(
                        step_s=statistics.median(step_s),
                        steps_s=step_s,
                        sent_bytes=sum(v["sent"] for v in per_rank[0]["by_category"].values()),
                        recompute_sent_bytes=per_rank[0]["by_phase"].get("recompute", {}).get("sent", 0.0),
                        losses=per_rank[0]["losses"],
                        by_category_rank0=per_rank[0]["by_category"],
                    )
                base = rows["none"]  # keeps everything: its peak is what it holds
                for r in rows.values():
                    peak = r["held_bytes"] + r["recompute_bytes"]
                    model_peak = r["model_held_bytes"] + r["model_recompute_bytes"]
                    r.update(
                        peak_bytes=peak,
                        held_ratio=r["held_bytes"] / base["held_bytes"],
                        model_held_ratio=r["model_held_bytes"] / base["model_held_bytes"],
                        peak_ratio=peak / base["held_bytes"],
                        model_peak_ratio=model_peak / base["model_held_bytes"],
                        rss_ratio=(r["peak_rss_delta_bytes"] or 0) / max(1, base["peak_rss_delta_bytes"] or 0),
                        step_ratio=r["step_s"] / base["step_s"],
                        sent_ratio=r["sent_bytes"] / base["sent_bytes"] if base["sent_bytes"] else None,
                    )
                report["compare"] += list(rows.values())
                write_json(report, out)
        if "largest" in args.parts:
            for p in args.sp:
                log(f"P={p}: probes at depths {args.probe_depths}, {size_name(args.probe_side)}")
                probes = run_ranks(
                    p,
                    threads[p],
                    _probes,
                    cfg.to_dict(),
                    args.policies,
                    args.probe_side,
                    args.channels,
                    args.probe_depths,
                )[0]
                for policy in args.policies:
                    mine = [r for r in probes if r["policy"] == policy]
                    fit = extrapolate(mine, m.num_layers, p, args.cap_gib * GIB, m.patch_size)
                    report["largest"].append(
                        {
                            "sp": p,
                            "policy": policy,
                            "probes": mine,
                            **fit,
                            "tokens": None if fit["largest_side"] is None else fit["largest_side"] ** 2,
                            "model_largest_side": largest_square_side(m, args.cap_gib * GIB, args.channels, policy, p),
                        }
                    )
                write_json(report, out)
        if "confirm" in args.parts:
            for p, policy, size in args.confirm:
                log(f"confirm: one full-depth step, P={p} {policy} {size_name(size)} (minutes at large sizes)")
                report["confirm"].append(measured(p, policy, size))
                write_json(report, out)
    except BenchError as exc:
        print(f"pitdist bench checkpointing: a rank failed:\n{exc}", file=sys.stderr)
        return 1
    report["complete"] = True
    return publish(report, out, png, plot, render)


def _ratio(x: float | None) -> str:
    return "-" if x is None else f"{x:.2f}"


def _mib(x: float | None) -> str:
    return "-" if x is None else f"{x / MIB:,.1f}"


def render(report: dict) -> str:
    m = report["model"]
    lines = [
        f"Activation checkpointing: D={m['dim']}, L={m['depth']}, {m['heads']} heads, batch 1, fp32, gloo on "
        f"{report['machine']['cores']} cores; per rank. held = autograd's saved bytes when the forward ends; "
        "recompute = one recomputed unit on top; peak = their sum; (x) = ratio to none at the same P; "
        "model = pitdist.report.memory_model"
    ]
    if report["compare"]:
        lines.append(f"\n{report['height']}x{report['width']} ({report['compare'][0]['tokens']:,} tokens)")
        lines.append(
            f"{'P':>3} {'policy':<10}{'held MiB':>16}{'model':>8}{'recompute':>11}{'peak MiB':>16}{'model':>8}"
            f"{'RSS growth MiB':>21}{'step s':>15}{'sent/step MB':>18}{'re-sent MB':>12}"
        )
        for r in report["compare"]:
            lines.append(
                f"{r['sp']:>3} {r['policy']:<10}{_mib(r['held_bytes']):>9} ({r['held_ratio']:.2f})"
                f"{r['model_held_ratio']:>8.2f}{_mib(r['recompute_bytes']):>11}"
                f"{_mib(r['peak_bytes']):>9} ({r['peak_ratio']:.2f}){r['model_peak_ratio']:>8.2f}"
                f"{_mib(r['peak_rss_delta_bytes']):>14} ({r['rss_ratio']:.2f})"
                f"{r['step_s']:>8.2f} ({r['step_ratio']:.2f})"
                f"{r['sent_bytes'] / 1e6:>11.2f} ({_ratio(r['sent_ratio'])})"
                f"{r['recompute_sent_bytes'] / 1e6:>12.2f}"
            )
    if report["largest"]:
        lines.append(
            f"\nLargest square image under {report['cap_bytes'] / GIB:.2f} GiB peak per rank at full depth "
            "(extrapolated from the probes; model = pitdist.report.memory_model)"
        )
        lines.append(f"{'P':>3} {'policy':<10}{'KiB/token':>10}{'largest':>10}{'tokens':>10}{'x none':>8}{'model':>8}")
        base = {r["sp"]: r["tokens"] for r in report["largest"] if r["policy"] == "none"}
        for r in report["largest"]:
            side = "-" if r["largest_side"] is None else f"{r['largest_side']}x{r['largest_side']}"
            times = r["tokens"] / base[r["sp"]] if r["tokens"] and base.get(r["sp"]) else None
            lines.append(
                f"{r['sp']:>3} {r['policy']:<10}{r['per_token_bytes'] / 1024:>10.2f}{side:>10}"
                f"{r['tokens'] or 0:>10,}{_ratio(times):>8}{r['model_largest_side'] or '-':>8}"
            )
    for r in report["confirm"]:
        lines.append(
            f"\nconfirm: P={r['sp']} {r['policy']} {r['height']}x{r['width']} ({r['tokens']:,} tokens), one full-depth "
            f"step in {r['step_s']:.0f} s: held {r['held_bytes'] / GIB:.3f} GiB + recompute "
            f"{r['recompute_bytes'] / GIB:.3f} GiB = peak {(r['held_bytes'] + r['recompute_bytes']) / GIB:.3f} GiB "
            f"(model {(r['model_held_bytes'] + r['model_recompute_bytes']) / GIB:.3f}); peak RSS growth "
            f"{_mib(r['peak_rss_delta_bytes'])} MiB"
        )
    return "\n".join(lines)


def plot(report: dict, path) -> None:
    from pitdist.bench.common import figure

    with figure(path, 2, (11, 4)) as (fig, axes):
        for ax, key, label in [
            (axes[0], "peak_ratio", "peak kept for backward / none"),
            (axes[1], "step_ratio", "step time / none"),
        ]:
            for policy in report["policies"]:
                rows = [r for r in report["compare"] if r["policy"] == policy]
                ax.plot([r["sp"] for r in rows], [r[key] for r in rows], "o-", label=policy)
            ax.set_xlabel("SP ranks P")
            ax.set_ylabel(label)
            ax.set_xticks(sorted({r["sp"] for r in report["compare"]}) or [1])
            ax.legend(fontsize=8)
        axes[0].set_title(f"{report['height']}x{report['width']}, per rank", fontsize=10)
