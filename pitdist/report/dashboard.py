"""The pitdist Grafana dashboard, as code: every panel's PromQL in one readable list.

    python -m pitdist.report.dashboard > cluster/grafana/dashboards/pitdist.json

The committed JSON must equal this module's output (a test checks it), so change the panels here and
regenerate. Plain dicts rather than grafanalib or grafana-foundation-sdk: the dashboard model needs a
handful of fields, and a dependency would buy little for one dashboard. Every query is run against a
real Prometheus holding real runs in tests/integration/test_prometheus.py, with ``$run`` and
``$__rate_interval`` substituted, and must return data.

The queries read the series of pitdist.observe.prometheus (see its docstring). Per-step figures
divide a rate of bytes by the rate of steps, summed over the ranks of a run: the average per rank.
"""

from __future__ import annotations

import json
import sys

from pitdist.observe.categories import STEP_PHASES

UID = "pitdist"
RUN = 'run=~"$run"'
RATE = "[$__rate_interval]"
STEPS = f'phase=~"{"|".join(STEP_PHASES)}"'
ATTENTION = 'category=~"attention_.*"'  # Ulysses all-to-alls and ring attention's send/recv
GRADIENTS = 'category=~"grad_reduce|pe_grad_reduce|pe_param_gather|zero_param_gather|grad_norm"'
GRAD_REDUCE = 'category="grad_reduce"'
PE_OWN = 'category=~"pe_.*"'  # a sharded table's own gradient reduction and gathers

# Ray's dashboards, as Ray's head provisions them (uids from ray/dashboard/modules/metrics/dashboards).
RAY_DASHBOARDS = (
    ("Ray: cluster", "rayDefaultDashboard"),
    ("Ray: Train", "rayTrainDashboard"),
    ("Ray: Data", "rayDataDashboard"),
)


def sent_rate(selector: str = "") -> str:
    return f"rate(pitdist_comm_sent_bytes_total{{{RUN}{', ' + selector if selector else ''}}}{RATE})"


def per_step(expr: str, by: str) -> str:
    """``expr`` (a per-second rate summed ``by``) per training step per rank."""
    return f"{expr} / sum by ({by}) (rate(pitdist_steps_total{{{RUN}}}{RATE}))"


# (title, unit, description, [(expr, legend)]); a None title starts a row, the unit is its name.
PANELS: list[tuple] = [
    (None, "Communication (the ledger)", None, []),
    (
        "Bytes sent per second, by cause",
        "Bps",
        "Bytes leaving the ranks per second, all ranks of the selected runs, by ledger category.",
        [(f"sum by (category) ({sent_rate()})", "{{category}}")],
    ),
    (
        "Bytes sent per rank per step, by PE variant",
        "decbytes",
        "Training-step traffic (phases " + ", ".join(STEP_PHASES) + ") per rank per step: the variants side by side.",
        [(per_step(f"sum by (run, pos_embed) ({sent_rate(STEPS)})", "run, pos_embed"), "{{pos_embed}} {{run}}")],
    ),
    (
        "Position-embedding traffic per rank per step",
        "decbytes",
        "A replicated learned table's gradient rides in the gradient all-reduce (its share of the engine's "
        "gradient elements, pitdist_replicated_pe_grad_fraction); a sharded table has its own categories (pe_*). "
        "Zero for none and sincos.",
        [
            (
                per_step(
                    f"sum by (run, pos_embed) (({sent_rate(GRAD_REDUCE)} "
                    f"* on (run, rank) group_left () pitdist_replicated_pe_grad_fraction{{{RUN}}}) "
                    f"or {sent_rate(PE_OWN)})",
                    "run, pos_embed",
                ),
                "{{pos_embed}} {{run}}",
            )
        ],
    ),
    (
        "Attention all-to-all vs gradient traffic",
        "Bps",
        "Attention traffic (Ulysses all-to-alls, ring attention's exchanges: per layer, grows with tokens) against "
        "gradient reduction and ZeRO gathers (once per step, grows with parameters).",
        [
            (f"sum by (run) ({sent_rate(ATTENTION)})", "attention {{run}}"),
            (f"sum by (run) ({sent_rate(GRADIENTS)})", "gradients + ZeRO {{run}}"),
        ],
    ),
    (
        "Bytes sent per second, per rank",
        "Bps",
        "Every rank's outgoing traffic: the ranks of a run should match.",
        [(f"sum by (run, rank) ({sent_rate()})", "rank {{rank}} {{run}}")],
    ),
    (
        "Rank imbalance (max / min over ranks)",
        "none",
        "1.0 = balanced. Bytes sent, time in collectives and step time, max over min across a run's ranks.",
        [
            (
                f"max by (run) (sum by (run, rank) ({sent_rate()}))"
                f" / min by (run) (sum by (run, rank) ({sent_rate()}))",
                "bytes {{run}}",
            ),
            (
                f"max by (run) (sum by (run, rank) (rate(pitdist_comm_seconds_total{{{RUN}}}{RATE}))) / "
                f"min by (run) (sum by (run, rank) (rate(pitdist_comm_seconds_total{{{RUN}}}{RATE})))",
                "comm time {{run}}",
            ),
            (
                f"max by (run) (rate(pitdist_step_seconds_total{{{RUN}}}{RATE})) / "
                f"min by (run) (rate(pitdist_step_seconds_total{{{RUN}}}{RATE}))",
                "step time {{run}}",
            ),
        ],
    ),
    (
        "Share of wall time in collectives, by cause",
        "percentunit",
        "Seconds inside collectives per second, averaged over a run's ranks.",
        [
            (
                "avg by (run, category) (sum by (run, rank, category) "
                f"(rate(pitdist_comm_seconds_total{{{RUN}}}{RATE})))",
                "{{category}} {{run}}",
            )
        ],
    ),
    (
        "Collective calls per second, by collective",
        "ops",
        "Calls per second over all ranks, by the DeepSpeed backend operation.",
        [(f"sum by (collective) (rate(pitdist_comm_calls_total{{{RUN}}}{RATE}))", "{{collective}}")],
    ),
    (None, "Training", None, []),
    (
        "Loss",
        "none",
        "Global mean training loss of the last step.",
        [(f"max by (run, pos_embed) (pitdist_loss{{{RUN}}})", "{{pos_embed}} {{run}}")],
    ),
    (
        "Images per second",
        "short",
        "Whole job: each DP group's images counted once (SP rank 0).",
        [(f'sum by (run) (rate(pitdist_images_total{{{RUN}, sp_rank="0"}}{RATE}))', "{{run}}")],
    ),
    (
        "Tokens per second",
        "short",
        "Whole job: every rank's own tokens.",
        [(f"sum by (run) (rate(pitdist_tokens_total{{{RUN}}}{RATE}))", "{{run}}")],
    ),
    (
        "MFU",
        "percentunit",
        "Achieved training FLOP/s per device over its peak (metrics.peak_tflops; known GPUs by default, "
        "absent on CPU unless set).",
        [(f"avg by (run) (pitdist_mfu{{{RUN}}})", "{{run}}")],
    ),
    (
        "Step time, per rank",
        "s",
        "Mean wall time per step over the rate window.",
        [
            (
                f"sum by (run, rank) (rate(pitdist_step_seconds_total{{{RUN}}}{RATE})) / "
                f"sum by (run, rank) (rate(pitdist_steps_total{{{RUN}}}{RATE}))",
                "rank {{rank}} {{run}}",
            )
        ],
    ),
    (
        "Data-loader wait, share of step time",
        "percentunit",
        "Time spent getting each step's batch over the step's wall time, per rank.",
        [
            (
                f"sum by (run, rank) (rate(pitdist_data_wait_seconds_total{{{RUN}}}{RATE})) / "
                f"sum by (run, rank) (rate(pitdist_step_seconds_total{{{RUN}}}{RATE}))",
                "rank {{rank}} {{run}}",
            )
        ],
    ),
    (
        "Memory, per rank",
        "bytes",
        "Resident set (now and peak) of each rank's process; CUDA allocations on GPUs.",
        [(f"max by (run, rank, kind) (pitdist_memory_bytes{{{RUN}}})", "{{kind}} rank {{rank}} {{run}}")],
    ),
]


def _panel(
    panel_id: int, title: str, unit: str, description: str, queries: list[tuple[str, str]], x: int, y: int
) -> dict:
    return {
        "id": panel_id,
        "type": "timeseries",
        "title": title,
        "description": description,
        "datasource": {"type": "prometheus", "uid": "${datasource}"},
        "gridPos": {"h": 8, "w": 12, "x": x, "y": y},
        "fieldConfig": {"defaults": {"unit": unit, "custom": {"lineWidth": 1, "fillOpacity": 0}}, "overrides": []},
        "options": {
            "legend": {"displayMode": "table", "placement": "bottom", "calcs": ["lastNotNull", "max"]},
            "tooltip": {"mode": "multi", "sort": "desc"},
        },
        "targets": [
            {
                "refId": chr(ord("A") + i),
                "datasource": {"type": "prometheus", "uid": "${datasource}"},
                "expr": expr,
                "legendFormat": legend,
                "range": True,
            }
            for i, (expr, legend) in enumerate(queries)
        ],
    }


def dashboard() -> dict:
    panels, y, column = [], 0, 0
    for title, unit, description, queries in PANELS:
        panel_id = len(panels) + 1
        if title is None:  # a row: starts on a new line
            y += 8 if column else 0
            panels.append(
                {
                    "id": panel_id,
                    "type": "row",
                    "title": unit,
                    "collapsed": False,
                    "panels": [],
                    "gridPos": {"h": 1, "w": 24, "x": 0, "y": y},
                }
            )
            y, column = y + 1, 0
            continue
        panels.append(_panel(panel_id, title, unit, description, queries, 12 * column, y))
        y, column = (y + 8, 0) if column else (y, 1)
    links = [
        {
            "title": title,
            "type": "link",
            "url": f"/d/{uid}",
            "icon": "dashboard",
            "tooltip": "Ray's own dashboard",
            "targetBlank": False,
            "asDropdown": False,
            "includeVars": False,
            "keepTime": True,
            "tags": [],
        }
        for title, uid in RAY_DASHBOARDS
    ]
    return {
        "uid": UID,
        "title": "pitdist: communication and training",
        "description": "Per-rank metrics of pitdist runs (pitdist.observe.prometheus); generated by "
        "pitdist/report/dashboard.py.",
        "tags": ["pitdist"],
        "editable": False,
        "timezone": "browser",
        "schemaVersion": 39,
        "version": 1,
        "refresh": "5s",
        "time": {"from": "now-30m", "to": "now"},
        "links": links,
        "annotations": {"list": []},
        "templating": {
            "list": [
                {
                    "name": "datasource",
                    "label": "Prometheus",
                    "type": "datasource",
                    "query": "prometheus",
                    "hide": 0,
                    "current": {},
                },
                {
                    "name": "run",
                    "label": "run",
                    "type": "query",
                    "datasource": {"type": "prometheus", "uid": "${datasource}"},
                    "query": {"query": "label_values(pitdist_run_info, run)", "refId": "runs"},
                    "definition": "label_values(pitdist_run_info, run)",
                    "refresh": 2,
                    "sort": 2,
                    "multi": True,
                    "includeAll": True,
                    "allValue": ".+",
                    "current": {},
                    "hide": 0,
                },
            ]
        },
        "panels": panels,
    }


def queries(board: dict) -> list[tuple[str, str]]:
    """(panel title, PromQL) of every target in a dashboard."""
    return [(p["title"], t["expr"]) for p in board["panels"] for t in p.get("targets", [])]


def render() -> str:
    return json.dumps(dashboard(), indent=2) + "\n"


if __name__ == "__main__":
    sys.stdout.write(render())
