"""What the ledger's rows mean: the cause of a collective (category), the phase of the step it ran in,
and per-step totals over rows. Everything a report needs to read a run directory, without torch.

Categories and phases are string enums: a row stored as JSON holds the plain string, and a string read
back compares equal to its member.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from enum import StrEnum


class Category(StrEnum):
    """Why a collective was issued. pitdist tags its own calls; DeepSpeed's are classified by the ledger."""

    ATTENTION_A2A = "attention_a2a"  # Ulysses all-to-alls (forward and backward)
    ATTENTION_RING = "attention_ring"  # ring attention's K/V blocks and dK/dV accumulators
    POOLING = "pooling"  # the SP group's sum of the mean pool (and its backward)
    DATA = "data"  # an SP group's gather of its streamed images (Ray Data feeding)
    GRAD_REDUCE = "grad_reduce"  # the engine's gradient reduction over DP x SP
    PE_GRAD_REDUCE = "pe_grad_reduce"  # a sharded position table's gradient, over its DP group only
    PE_PARAM_GATHER = "pe_param_gather"  # ZeRO 1/2: gathering the sharded table's updated partitions
    ZERO_PARAM_GATHER = "zero_param_gather"  # ZeRO 1/2: gathering the updated parameter partitions
    GRAD_NORM = "grad_norm"  # the optimizer's 4-byte gradient-norm all-reduce
    OPTIMIZER = "optimizer"  # anything else the optimizer step sends
    METRICS = "metrics"  # the global mean loss for the log
    EVAL = "eval"  # held-out accuracy counts
    CHECKPOINT = "checkpoint"  # gathering a sharded table for the consolidated model
    INIT_BROADCAST = "init_broadcast"  # the engine's broadcast of the initial parameters
    INIT = "init"  # anything else at start-up
    BENCH = "bench"  # a benchmark's own collectives
    OTHER = "other"


class Phase(StrEnum):
    """Where in a run a collective happened (set by the step timer, pitdist.observe.timer)."""

    INIT = "init"
    DATA = "data"
    FORWARD = "forward"
    BACKWARD = "backward"
    # Inside backward: activation checkpointing re-running a forward (pitdist.distributed.checkpointing).
    RECOMPUTE = "recompute"
    OPTIMIZER = "optimizer"
    METRICS = "metrics"
    CHECKPOINT = "checkpoint"
    EVAL = "eval"


# The phases of a training step; init, eval and checkpoint traffic are not per-step.
STEP_PHASES = (Phase.DATA, Phase.FORWARD, Phase.BACKWARD, Phase.RECOMPUTE, Phase.OPTIMIZER, Phase.METRICS)

# Categories whose records say which transformer block they belong to.
LAYER_CATEGORIES = (Category.ATTENTION_A2A, Category.ATTENTION_RING)

# The order of a report's rows: per-layer traffic first, then per-step, then the rest.
REPORT_ORDER = (
    Category.ATTENTION_A2A,
    Category.ATTENTION_RING,
    Category.POOLING,
    Category.GRAD_REDUCE,
    Category.PE_GRAD_REDUCE,
    Category.ZERO_PARAM_GATHER,
    Category.GRAD_NORM,
    Category.METRICS,
    Category.DATA,
)


@dataclass
class Totals:
    count: int = 0
    handed: int = 0
    sent: float = 0.0
    seconds: float = 0.0

    def add(self, other: Totals) -> None:
        self.count += other.count
        self.handed += other.handed
        self.sent += other.sent
        self.seconds += other.seconds


def per_step_totals(rows: list[dict], by: tuple[str, ...] = ("category",)) -> dict[tuple, Totals]:
    """Average per training step of the rows of one rank (init and eval are not steps)."""
    steps = {r["step"] for r in rows if r["step"] is not None and r["phase"] in STEP_PHASES}
    out: dict[tuple, Totals] = defaultdict(Totals)
    for r in rows:
        if r["step"] not in steps or r["phase"] not in STEP_PHASES:
            continue
        out[tuple(r[k] for k in by)].add(Totals(r["count"], r["handed_bytes"], r["sent_bytes"], r["seconds"]))
    n = max(1, len(steps))
    return {k: Totals(t.count // n, t.handed // n, t.sent / n, t.seconds / n) for k, t in out.items()}


# The c10d dispatcher has one op per direction, blocking or not: isend/irecv reach it as send/recv.
SAME_AT_C10D = {"isend": "send", "irecv": "recv"}


def ledger_totals(rows: list[dict]) -> dict[str, list[int]]:
    """A run's ledger rows folded as the cross-check counters count: {op: [count, handed bytes]}."""
    out: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    for r in rows:
        op = SAME_AT_C10D.get(r["op"], r["op"])
        out[op][0] += r["count"]
        out[op][1] += r["handed_bytes"]
    return dict(out)
