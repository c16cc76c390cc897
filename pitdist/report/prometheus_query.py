"""Read pitdist runs back from Prometheus' HTTP API: the communication report without run files.

`pitdist comm-report --prometheus URL [--run-id RUN ...]` builds the same per-category table as
``--run RUN_DIR`` from the counters every rank exports (pitdist.observe.prometheus): for each rank,
the training-step phases' bytes, calls and seconds divided by the steps that rank trained, with a
replicated learned table's share split out of the gradient all-reduce. The model columns stay empty:
the analytical model needs the job's full configuration, which lives in the run directory.

Values are each series' last sample within ``lookback`` (``last_over_time``), so a run that
finished an hour ago reads the same as a live one. A rank restarted by Ray counts from its restart,
as its comm/rank<r>.json does.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.parse
import urllib.request
from collections import defaultdict

from pitdist.observe.categories import STEP_PHASES, Totals
from pitdist.report.comm_model import scheme_name
from pitdist.report.comm_report import CategoryRow, category_key, format_blocks, split_pe_share

COMM_METRICS = ("calls", "handed_bytes", "sent_bytes", "seconds")


class PrometheusQueryError(RuntimeError):
    """Prometheus is unreachable, refused a query, or holds no such run."""


def query(url: str, promql: str) -> list[dict]:
    """An instant query; returns the result vector (``[{"metric": {...}, "value": [t, "v"]}, ...]``)."""
    endpoint = f"{url.rstrip('/')}/api/v1/query?" + urllib.parse.urlencode({"query": promql})
    try:
        with urllib.request.urlopen(endpoint, timeout=30) as response:
            body = json.load(response)
    except urllib.error.HTTPError as exc:  # Prometheus explains a bad query in the body
        detail = json.loads(exc.read() or b"{}").get("error", exc.reason)
        raise PrometheusQueryError(f"Prometheus at {url} refused {promql!r}: {detail}") from None
    except (urllib.error.URLError, OSError) as exc:
        raise PrometheusQueryError(
            f"cannot reach Prometheus at {url} ({getattr(exc, 'reason', exc)}); "
            "check --prometheus (e.g. http://127.0.0.1:9090)"
        ) from None
    if body.get("status") != "success":
        raise PrometheusQueryError(f"Prometheus at {url}: {body.get('error', body)}")
    return body["data"]["result"]


def _last(url: str, metric: str, run: str, lookback: str) -> list[dict]:
    return query(url, f'last_over_time({metric}{{run="{run}"}}[{lookback}])')


def run_ids(url: str, lookback: str) -> list[str]:
    """Runs that exported anything within ``lookback``, oldest first."""
    found = query(url, f"min by (run) (timestamp(last_over_time(pitdist_run_info[{lookback}])))")
    return [r["metric"]["run"] for r in sorted(found, key=lambda r: float(r["value"][1]))]


def comm_totals(url: str, run: str, lookback: str = "1d") -> dict[tuple[int, str, str, str], Totals]:
    """Whole-run ledger totals per (rank, phase, category, collective) as Prometheus holds them."""
    out: dict[tuple[int, str, str, str], Totals] = defaultdict(Totals)
    for field in COMM_METRICS:
        for series in _last(url, f"pitdist_comm_{field}_total", run, lookback):
            m, value = series["metric"], float(series["value"][1])
            t = out[(int(m["rank"]), m["phase"], m["category"], m["collective"])]
            if field in ("calls", "handed_bytes"):
                value = int(value)  # exact: integers below 2**53 survive the float round trip
            setattr(t, {"calls": "count", "handed_bytes": "handed", "sent_bytes": "sent"}.get(field, field), value)
    return dict(out)


def live_summary(url: str, run: str, lookback: str = "1d") -> dict:
    """The per-category, per-step summary of one run, shaped like comm_report.summarize's."""
    info = {int(r["metric"]["rank"]): r["metric"] for r in _last(url, "pitdist_run_info", run, lookback)}
    if not info:
        raise PrometheusQueryError(
            f"Prometheus at {url} has no run {run!r} in the last {lookback} "
            f"(runs there: {', '.join(run_ids(url, lookback)) or 'none'})"
        )
    steps = {
        int(r["metric"]["rank"]): int(float(r["value"][1])) for r in _last(url, "pitdist_steps_total", run, lookback)
    }
    fraction = {
        int(r["metric"]["rank"]): float(r["value"][1])
        for r in _last(url, "pitdist_replicated_pe_grad_fraction", run, lookback)
    }
    by_rank: dict[int, dict[tuple, Totals]] = defaultdict(lambda: defaultdict(Totals))
    for (rank, phase, category, _), t in comm_totals(url, run, lookback).items():
        if phase in STEP_PHASES:
            by_rank[rank][(category,)].add(t)
    rows = []
    for rank in sorted(info):
        n = max(1, steps.get(rank, 0))
        totals = {k: Totals(t.count // n, t.handed // n, t.sent / n, t.seconds / n) for k, t in by_rank[rank].items()}
        totals = split_pe_share(totals, 1.0, fraction.get(rank, 0.0))  # share = fraction / 1
        rows.append(
            [
                CategoryRow(k[0], t.count, t.handed, t.sent, t.seconds, None, None)
                for k, t in sorted(totals.items(), key=lambda kv: category_key(kv[0][0]))
            ]
        )
    first = info[min(info)]
    sp, ring = int(first["sp"]), int(first.get("ring", 1))
    return {
        "variant": first["pos_embed"].replace("-", " "),
        "dp": int(first["dp"]),
        "sp": sp,
        "ring": ring,
        "scheme": scheme_name(sp, ring),
        "zero_stage": int(first["zero_stage"]),
        "batch_size": int(first["batch_size"]),
        "run_dir": f"{url} run={run}",
        "rows": rows,
    }


def live_report(url: str, runs: list[str] | None, lookback: str = "1d") -> str:
    """The comm-report text for ``runs`` (default: every run within ``lookback``)."""
    runs = runs or run_ids(url, lookback)
    if not runs:
        raise PrometheusQueryError(
            f"Prometheus at {url} holds no pitdist run from the last {lookback} "
            "(do the ranks export? --metrics.prometheus_port)"
        )
    summaries = [live_summary(url, run, lookback) for run in runs]
    return "\n\n".join(f"run {run} (from Prometheus)\n{block}" for run, block in zip(runs, format_blocks(summaries)))
