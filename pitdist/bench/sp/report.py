"""`pitdist bench sp`, driver side: every rank's results -> the report, its tables and its plot."""

from __future__ import annotations

import statistics
from pathlib import Path

from pitdist.bench.common import figure, size_fields, size_name, slowest, table
from pitdist.bench.sp.plan import GIB


def _size(r: dict) -> tuple[int, int]:
    """A result's image size (height, width)."""
    return r["height"], r["width"]


def _median_total(ranks: list[dict]) -> dict:
    """Per step the slowest rank's time (ranks barrier before each step); median over steps."""
    out = {}
    for key in ("forward_s", "backward_s", "optimizer_s", "total_s"):
        per_step = _slowest(ranks, key)
        out[key] = statistics.median(per_step)
        if key == "total_s":
            out["steps_total_s"] = per_step
    return out


def _slowest(ranks: list[dict], key: str) -> list[float]:
    return slowest([[t[key] for t in r["times"]] for r in ranks])


def _mem(ranks: list[dict]) -> dict:
    mems = [r["memory"] for r in ranks]
    return {
        "saved_bytes_per_rank": [m["saved_bytes"] for m in mems],
        "saved_bytes_max": max(m["saved_bytes"] for m in mems),
        "naive_bytes_max": max(m["naive_bytes"] for m in mems),
        "param_bytes_saved": max(m["param_bytes_saved"] for m in mems),
        "peak_rss_delta_bytes_per_rank": [m["peak_rss_delta_bytes"] for m in mems],
        "rss_method": mems[0]["rss_method"],
    }


def aggregate(results: dict[int, list[list[dict]]], args, cfg, threads: dict[int, int]) -> dict:
    """results[P][rank][job] -> the report."""
    report: dict = {"memory": None, "time": None, "search": None, "big": None, "train": None, "skipped": []}
    mem_rows, time_rows, search_rows = [], [], []
    for p, per_rank in sorted(results.items()):
        for j in range(len(per_rank[0])):
            ranks = [per_rank[r][j] for r in range(p)]
            first = ranks[0]
            if "skipped" in first:
                report["skipped"].append(
                    {"part": first["part"], "sp": p, **size_fields(_size(first)), "reason": first["skipped"]}
                )
                continue
            if first["part"] == "step":
                if "memory" in args.parts and _size(first) == args.image_size:
                    mem_rows.append(
                        {
                            "sp": p,
                            **size_fields(_size(first)),
                            "tokens": first["tokens"],
                            "tokens_per_rank": first["tokens_per_rank"],
                            **_mem(ranks),
                        }
                    )
                if "time" in args.parts and _size(first) in args.time_sizes:
                    time_rows.append(
                        {
                            "sp": p,
                            **size_fields(_size(first)),
                            "tokens": first["tokens"],
                            "threads_per_rank": threads[p],
                            "warmup": args.warmup,
                            "steps": args.steps,
                            **_median_total(ranks),
                        }
                    )
            elif first["part"] == "search":
                row = {"sp": p, "threads_per_rank": threads[p], **{k: v for k, v in first.items() if k != "confirm"}}
                if "confirm" in first:
                    confirm = [r["confirm"] for r in ranks]
                    row["confirm"] = {
                        "side": confirm[0]["side"],
                        "tokens": confirm[0]["tokens"],
                        "step_s": _median_total(confirm)["total_s"],
                        "loss": confirm[0]["losses"][0],
                        **_mem(confirm),
                    }
                search_rows.append(row)
            else:  # big, train
                report[first["part"]] = {
                    "sp": p,
                    **size_fields(_size(first)),
                    "tokens": first["tokens"],
                    "tokens_per_rank": first["tokens_per_rank"],
                    "threads_per_rank": threads[p],
                    "steps": len(first["times"]),
                    "step_s": _slowest(ranks, "total_s"),
                    "forward_s": _slowest(ranks, "forward_s"),
                    "backward_s": _slowest(ranks, "backward_s"),
                    "losses": first["losses"],
                    **_mem(ranks),
                }
    if mem_rows:
        base = next((r["saved_bytes_max"] for r in mem_rows if r["sp"] == 1), None)
        for r in mem_rows:
            r["ratio_to_p1"] = r["saved_bytes_max"] / base if base else None
            r["ideal_ratio"] = 1 / r["sp"]
        report["memory"] = {**size_fields(args.image_size), "rows": mem_rows}
    if time_rows:
        for r in time_rows:
            base = next((b["total_s"] for b in time_rows if b["sp"] == 1 and _size(b) == _size(r)), None)
            r["ratio_to_p1"] = r["total_s"] / base if base else None
        time_rows.sort(key=lambda r: (*_size(r), r["sp"]))
        report["time"] = {"rows": time_rows}
    if search_rows:
        report["search"] = {"cap_bytes": int(args.cap_gib * GIB), "rows": search_rows}
    return report


def _mib(n) -> str:
    return "-" if n is None else f"{n / 2**20:.1f}"


def render(report: dict) -> str:
    out = []
    m = report["model"]
    out.append(
        f"pitdist bench sp: PiT dim {m['dim']}, {m['depth']} layers, {m['heads']} heads, mlp {m['mlp_ratio']}, "
        f"pos_embed {m['pos_embed']}, patch {m['patch_size']}, {m['params']:,} parameters; ZeRO 0, fp32, batch 1; "
        f"gloo ranks on {report['machine']['cores']} cores, torch threads per rank = max(1, "
        f"{report['machine']['cores']} // P): "
        + ", ".join(f"P={p}: {t}" for p, t in report["threads_per_rank"].items())
        + (
            " (P above the core count oversubscribes)"
            if max(map(int, report["threads_per_rank"])) > report["machine"]["cores"]
            else ""
        )
    )
    if report["memory"]:
        mem = report["memory"]
        out.append(
            f"\nActivation memory per rank, {size_name(_size(mem))} image ({mem['rows'][0]['tokens']} tokens): "
            f"bytes autograd saves in one forward (distinct storages, parameters excluded)"
        )
        out.append(
            table(
                [
                    "P",
                    "tokens/rank",
                    "saved MiB/rank",
                    "ratio to P=1",
                    "ideal 1/P",
                    "naive sum MiB",
                    "saved params MiB",
                    "peak RSS delta MiB (process, per rank)",
                ],
                [
                    [
                        r["sp"],
                        r["tokens_per_rank"],
                        _mib(r["saved_bytes_max"]),
                        f"{r['ratio_to_p1']:.3f}",
                        f"{1 / r['sp']:.3f}",
                        _mib(r["naive_bytes_max"]),
                        _mib(r["param_bytes_saved"]),
                        " ".join(_mib(x) for x in r["peak_rss_delta_bytes_per_rank"]),
                    ]
                    for r in mem["rows"]
                ],
            )
        )
        out.append(
            "(peak RSS delta: whole-process resident-set growth during that step, method "
            f"{mem['rows'][0]['rss_method']}; includes gradients, optimizer state and allocator slack, "
            "not only activations)"
        )
    if report["time"]:
        out.append("\nStep time (forward + backward + AdamW step, slowest rank, median of timed steps)")
        out.append(
            table(
                ["image", "tokens", "P", "threads/rank", "fwd s", "bwd s", "opt s", "step s", "ratio to P=1"],
                [
                    [
                        size_name(_size(r)),
                        r["tokens"],
                        r["sp"],
                        r["threads_per_rank"],
                        f"{r['forward_s']:.3f}",
                        f"{r['backward_s']:.3f}",
                        f"{r['optimizer_s']:.3f}",
                        f"{r['total_s']:.3f}",
                        f"{r['ratio_to_p1']:.2f}",
                    ]
                    for r in report["time"]["rows"]
                ],
            )
        )
    if report["search"]:
        s = report["search"]
        out.append(
            f"\nLargest trainable square image under {s['cap_bytes'] / GIB:.3g} GiB of saved activations per rank"
        )
        rows = []
        for r in s["rows"]:
            c = r.get("confirm") or {}
            rows.append(
                [
                    r["sp"],
                    r.get("largest_side") or "-",
                    c.get("tokens", "-"),
                    _mib(c.get("saved_bytes_max")),
                    r.get("smallest_over_side") or "-",
                    "-" if r.get("fit_bytes_per_token") is None else f"{r['fit_bytes_per_token'] / 1024:.1f}",
                    f"{c['step_s']:.1f}" if c else "-",
                    len(r.get("probes", [])),
                ]
            )
        out.append(
            table(
                [
                    "P",
                    "largest side",
                    "tokens",
                    "saved MiB/rank",
                    "first side over",
                    "KiB/token/rank (fit)",
                    "confirm step s",
                    "probes",
                ],
                rows,
            )
        )
    for part, title in (("big", "One full training step"), ("train", "Training steps")):
        r = report[part]
        if r:
            out.append(
                f"\n{title}: {size_name(_size(r))} image ({r['tokens']:,} tokens), P={r['sp']} "
                f"({r['tokens_per_rank']:,} tokens/rank, {r['threads_per_rank']} thread(s)/rank)"
            )
            out.append(
                table(
                    ["step", "step s", "fwd s", "bwd s", "loss"],
                    [
                        [i + 1, f"{t:.1f}", f"{f:.1f}", f"{b:.1f}", f"{loss:.4f}"]
                        for i, (t, f, b, loss) in enumerate(
                            zip(r["step_s"], r["forward_s"], r["backward_s"], r["losses"])
                        )
                    ],
                )
            )
            out.append(
                f"saved activations per rank MiB: {' '.join(_mib(x) for x in r['saved_bytes_per_rank'])}; "
                "peak RSS delta per rank MiB (process): "
                f"{' '.join(_mib(x) for x in r['peak_rss_delta_bytes_per_rank'])}"
            )
    for s in report["skipped"]:
        out.append(f"\nSKIPPED {s['part']} P={s['sp']} {size_name(_size(s))}: {s['reason']}")
    return "\n".join(out)


def plot(report: dict, path: Path) -> None:
    with figure(path, 2, (11, 4.2)) as (fig, axes):
        ax = axes[0]
        if report["memory"]:
            rows = report["memory"]["rows"]
            ps = [r["sp"] for r in rows]
            ax.plot(ps, [r["saved_bytes_max"] / 2**20 for r in rows], "o-", label="measured (max over ranks)")
            base = next((r["saved_bytes_max"] for r in rows if r["sp"] == 1), None)
            if base:
                ax.plot(ps, [base / p / 2**20 for p in ps], "k--", lw=1, label="P=1 / P")
            ax.set_title(f"Saved activations per rank, {size_name(_size(report['memory']))}")
            ax.set_xticks(ps)
        ax.set_xlabel("SP ranks P")
        ax.set_ylabel("MiB per rank")
        if ax.lines:
            ax.legend(loc="upper right")
        ax = axes[1]
        if report["time"]:
            rows = report["time"]["rows"]
            for size in sorted({_size(r) for r in rows}):
                sub = [r for r in rows if _size(r) == size]
                ax.plot([r["sp"] for r in sub], [r["ratio_to_p1"] for r in sub], "o-", label=size_name(size))
            ps = sorted({r["sp"] for r in rows})
            ax.plot(ps, [1 / p for p in ps], "k--", lw=1, label="ideal 1/P")
            ax.axhline(1.0, color="grey", lw=0.5)
            ax.set_xticks(ps)
            ax.set_title(f"Step time / step time at P=1 ({report['machine']['cores']} CPU cores)")
        ax.set_xlabel("SP ranks P")
        ax.set_ylabel("ratio to P=1")
        if ax.lines:
            ax.legend(loc="upper left")
