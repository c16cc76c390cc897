"""Turn finished runs' ledgers into the communication report: measured vs model, per category.

A run directory holds config.json and comm/rank<r>.json (written by the trainer). The report takes
the per-step average of every training step (init, eval and checkpoint traffic are listed apart),
splits the replicated PE table's share out of the gradient bucket, and sets each category beside
pitdist.report.comm_model. Bytes are per rank per step; "sent" is what leaves the rank under the
algorithms stated in pitdist.observe.ledger, "handed" what the collective was given.
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from pathlib import Path

from pitdist.config import config_from_dict
from pitdist.observe.categories import REPORT_ORDER, Category, Phase, Totals, ledger_totals, per_step_totals
from pitdist.report.comm_model import job_traffic, recompute_traffic, scheme_name


@dataclass
class CategoryRow:
    category: str
    count: int
    handed: float
    sent: float
    seconds: float
    model_handed: float | None
    model_sent: float | None

    @property
    def ratio(self) -> float | None:
        """measured / model of the bytes sent (handed when nothing leaves the rank)."""
        if self.model_sent is None:
            return None
        if self.model_sent == 0 and self.sent == 0:
            return 1.0 if self.model_handed == self.handed or not self.model_handed else self.handed / self.model_handed
        return self.sent / self.model_sent if self.model_sent else float("inf")


def split_pe_share(totals: dict[tuple, Totals], engine_elements: int, pe_elements: int) -> dict[tuple, Totals]:
    """Carve the replicated PE table's share out of the engine's gradient all-reduce.

    The table's gradient sits in DeepSpeed's flat bucket with all the others and every element of the
    bucket is reduced exactly once per step, so its bytes are its share of the bucket's elements.
    """
    grad = totals.get((Category.GRAD_REDUCE,))
    if not grad or not pe_elements:
        return totals
    share = pe_elements / engine_elements
    out = dict(totals)
    out[(Category.GRAD_REDUCE,)] = Totals(
        grad.count, round(grad.handed * (1 - share)), grad.sent * (1 - share), grad.seconds * (1 - share)
    )
    pe = out.get((Category.PE_GRAD_REDUCE,), Totals())
    out[(Category.PE_GRAD_REDUCE,)] = Totals(
        pe.count, pe.handed + round(grad.handed * share), pe.sent + grad.sent * share, pe.seconds + grad.seconds * share
    )
    return out


def load_run(run_dir: str | Path) -> dict:
    run_dir = Path(run_dir)
    config_file = run_dir / "config.json"
    ranks = sorted((run_dir / "comm").glob("rank*.json"), key=lambda p: int(p.stem[4:]))
    if not config_file.exists() or not ranks:
        raise FileNotFoundError(f"{run_dir} is not a finished pitdist run (needs config.json and comm/rank*.json)")
    return {
        "dir": str(run_dir),
        "config": json.loads(config_file.read_text()),
        "ranks": [json.loads(p.read_text()) for p in ranks],
    }


def variant_name(model_cfg: dict) -> str:
    name = model_cfg["pos_embed"]
    return f"{name} sharded" if model_cfg.get("shard_pos_embed") else name


def summarize(run: dict) -> dict:
    """Per-category rows for every rank of a run, and the model's numbers."""
    cfg = config_from_dict(run["config"])
    first = run["ranks"][0]
    model = job_traffic(
        cfg, tuple(first["image_shape"]), first["num_classes"], streamed_data=first.get("data_loader") == "ray_data"
    )
    per_rank = []
    for record in run["ranks"]:
        totals = per_step_totals(record["rows"], ("category",))
        totals = split_pe_share(totals, record["engine_grad_elements"], record["replicated_pe_elements"])
        rows = []
        for category in sorted({k[0] for k in totals} | set(model), key=category_key):
            t = totals.get((category,), Totals())
            m = model.get(category)
            rows.append(
                CategoryRow(
                    category, t.count, t.handed, t.sent, t.seconds, m.handed if m else None, m.sent if m else None
                )
            )
        per_rank.append(rows)
    recompute_model = recompute_traffic(
        cfg.model,
        tuple(first["image_shape"]),
        cfg.train.batch_size,
        cfg.parallel.dp,
        cfg.parallel.sp,
        cfg.parallel.ring,
        cfg.train.activation_checkpointing,
        cfg.train.selective_every,
    )
    recomputed = per_step_totals(first["rows"], ("phase",)).get((Phase.RECOMPUTE,), Totals())
    return {
        "variant": variant_name(run["config"]["model"]),
        "dp": cfg.parallel.dp,
        "sp": cfg.parallel.sp,
        "ring": cfg.parallel.ring,
        "scheme": scheme_name(cfg.parallel.sp, cfg.parallel.ring),
        "zero_stage": cfg.parallel.zero_stage,
        "activation_checkpointing": cfg.train.activation_checkpointing,
        # What rank 0 re-sent while backward recomputed checkpointed blocks, and the model's figure.
        "recompute_sent": recomputed.sent,
        "model_recompute_sent": sum(t.sent for t in recompute_model.values()),
        "batch_size": cfg.train.batch_size,
        "run_dir": run["dir"],
        "rows": per_rank,
    }


def category_key(category: str) -> tuple[int, str]:
    """Sort key: REPORT_ORDER first, anything else after it, by name."""
    return (REPORT_ORDER.index(category) if category in REPORT_ORDER else len(REPORT_ORDER), category)


def crosscheck_table(run: dict) -> list[dict]:
    """Per rank and op: ledger vs comms logger vs c10d counter (training steps only)."""
    out = []
    for record in run["ranks"]:
        check = record.get("crosscheck")
        if not check:
            continue
        rows = [r for r in record["rows"] if r["step"] is not None]
        ledger = ledger_totals(rows)
        for op in sorted(set(ledger) | set(check["c10d"]) | set(check["comms_logger"])):
            out.append(
                {
                    "rank": record["rank"],
                    "op": op,
                    "ledger": ledger.get(op, [0, 0]),
                    "comms_logger": check["comms_logger"].get(op, [0, 0]),
                    "c10d": check["c10d"].get(op, [0, 0]),
                }
            )
    return out


# --- presentation -------------------------------------------------------------------------------


def _fmt_bytes(n: float | None) -> str:
    if n is None:
        return "-"
    for unit, size in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if abs(n) >= size:
            return f"{n / size:.3f} {unit}"
    return f"{n:.0f} B"


def format_summary(summary: dict, baseline: dict | None = None) -> str:
    """The table for rank 0 of one run (ranks are symmetric; the JSON has all of them)."""
    rows = summary["rows"][0]
    base = {r.category: r.sent for r in baseline["rows"][0]} if baseline else None
    scheme = summary.get("scheme", scheme_name(summary["sp"]))
    checkpointing = summary.get("activation_checkpointing", "none")
    head = (
        f"{summary['variant']}: dp={summary['dp']} sp={summary['sp']} ({scheme}) zero={summary['zero_stage']} "
        f"batch={summary['batch_size']} activation checkpointing={checkpointing}"
        "  (rank 0, per step; sent = bytes leaving the rank)"
    )
    lines = [
        head,
        f"{'category':<18}{'calls':>6}{'handed':>13}{'sent':>13}{'model sent':>13}{'ratio':>7}"
        f"{'seconds':>10}" + (f"{'vs none':>13}" if base else ""),
    ]
    for r in rows:
        ratio = "-" if r.ratio is None else f"{r.ratio:.3f}"
        line = (
            f"{r.category:<18}{r.count:>6}{_fmt_bytes(r.handed):>13}{_fmt_bytes(r.sent):>13}"
            f"{_fmt_bytes(r.model_sent):>13}{ratio:>7}{r.seconds:>10.4f}"
        )
        if base is not None:
            line += f"{_fmt_bytes(r.sent - base.get(r.category, 0.0)):>13}"
        lines.append(line)
    total = sum(r.sent for r in rows)
    pe = sum(r.sent for r in rows if r.category.startswith("pe_"))
    lines.append(
        f"{'total':<18}{sum(r.count for r in rows):>6}{_fmt_bytes(sum(r.handed for r in rows)):>13}"
        f"{_fmt_bytes(total):>13}{'':>13}{'':>7}{sum(r.seconds for r in rows):>10.4f}"
    )
    lines.append(f"position embedding share of bytes sent: {pe / total:.2%}" if total else "nothing sent")
    if checkpointing != "none":
        lines.append(
            f"re-sent by backward's recompute ({checkpointing} checkpointing, in the rows above): "
            f"{_fmt_bytes(summary['recompute_sent'])} (model {_fmt_bytes(summary['model_recompute_sent'])})"
        )
    return "\n".join(lines)


def to_records(summaries: list[dict]) -> list[dict]:
    out = []
    for s in summaries:
        for rank, rows in enumerate(s["rows"]):
            for r in rows:
                out.append(
                    {
                        "variant": s["variant"],
                        "dp": s["dp"],
                        "sp": s["sp"],
                        "ring": s.get("ring", 1),
                        "zero_stage": s["zero_stage"],
                        "activation_checkpointing": s.get("activation_checkpointing", "none"),
                        "batch_size": s["batch_size"],
                        "rank": rank,
                        "category": r.category,
                        "calls": r.count,
                        "handed_bytes": r.handed,
                        "sent_bytes": r.sent,
                        "model_handed_bytes": r.model_handed,
                        "model_sent_bytes": r.model_sent,
                        "ratio": r.ratio,
                        "seconds": r.seconds,
                    }
                )
    return out


def write_outputs(summaries: list[dict], crosschecks: list[dict], out_dir: Path) -> list[Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    records = to_records(summaries)
    paths = [out_dir / "comm_report.json", out_dir / "comm_report.csv", out_dir / "comm_report.png"]
    paths[0].write_text(json.dumps({"rows": records, "crosscheck": crosschecks}, indent=1))
    with paths[1].open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(records[0]))
        writer.writeheader()
        writer.writerows(records)
    plot(summaries, paths[2])
    return paths


def plot(summaries: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(13, 4.8))
    # Left: bytes sent per category, one stacked bar per (variant, mesh).
    labels = [
        f"{s['variant']}\nQ{s['dp']}xP{s['sp']}{'' if s.get('ring', 1) == 1 else 'r' + str(s['ring'])} "
        f"z{s['zero_stage']}"
        for s in summaries
    ]
    categories = sorted({r.category for s in summaries for r in s["rows"][0]}, key=category_key)
    bottom = [0.0] * len(summaries)
    for category in categories:
        values = [next((r.sent for r in s["rows"][0] if r.category == category), 0.0) / 1e6 for s in summaries]
        left.bar(labels, values, bottom=bottom, label=category)
        bottom = [b + v for b, v in zip(bottom, values)]
    left.set_ylabel("MB sent per rank per step")
    left.set_title("Bytes leaving rank 0, by cause")
    left.legend(fontsize=7)
    left.tick_params(axis="x", labelsize=7)

    # Right: total bytes vs P, one line per variant and attention scheme (measured dots, model line).
    def line_of(s):  # ring attention's share of the SP ranks: none (Ulysses), all (ring) or some (hybrid)
        r = s.get("ring", 1)
        return s["variant"] + ("" if r == 1 or s["sp"] == 1 else " ring" if r == s["sp"] else f" hybrid r{r}")

    for variant in dict.fromkeys(line_of(s) for s in summaries):
        pts = sorted(
            (s["sp"], sum(r.sent for r in s["rows"][0]), sum(r.model_sent or 0 for r in s["rows"][0]))
            for s in summaries
            if line_of(s) == variant
        )
        (line,) = right.plot([p for p, _, _ in pts], [m / 1e6 for _, _, m in pts], "-", alpha=0.6)
        right.plot([p for p, _, _ in pts], [b / 1e6 for _, b, _ in pts], "o", color=line.get_color(), label=variant)
    right.set_xticks(sorted({s["sp"] for s in summaries}))
    right.set_xlabel("SP ranks P")
    right.set_ylabel("MB sent per rank per step")
    right.set_title("Total vs P (dots measured, lines model)")
    right.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def crosscheck_verdict(rows: list[dict]) -> str:
    if not rows:
        return "cross-check: not recorded for these runs (train with --metrics.crosscheck true)"
    bad = [r for r in rows if not (r["ledger"] == r["comms_logger"] == r["c10d"])]
    if not bad:
        ops = sorted({r["op"] for r in rows})
        return (
            f"cross-check: ledger = DeepSpeed comms logger = c10d dispatch counter (calls and handed bytes) "
            f"on every rank for {', '.join(ops)}"
        )
    lines = ["cross-check MISMATCH (rank op: ledger / comms logger / c10d as [calls, bytes]):"]
    lines += [f"  rank {r['rank']} {r['op']}: {r['ledger']} / {r['comms_logger']} / {r['c10d']}" for r in bad]
    return "\n".join(lines)


def format_blocks(summaries: list[dict], baseline_variant: str = "none") -> list[str]:
    """One table per summary, each with its difference from the baseline variant at the same mesh."""
    blocks = []
    for s in summaries:
        base = next(
            (
                b
                for b in summaries
                if b["variant"] == baseline_variant
                and b["dp"] == s["dp"]
                and b["sp"] == s["sp"]
                and b.get("ring") == s.get("ring")
                and b["zero_stage"] == s["zero_stage"]
                and b.get("activation_checkpointing") == s.get("activation_checkpointing")
                and b["batch_size"] == s["batch_size"]
            ),
            None,
        )
        blocks.append(format_summary(s, base if base is not s else None))
    return blocks
