"""Several engines on the same ranks, trained step by step in turns, each with its own ledger and timer.

What `pitdist bench ring` (one engine per Ulysses x ring split) and `pitdist bench checkpointing` (one
per policy) compare: round by round every contender takes one step, so noise from a shared machine
falls on all of them alike. A step is pitdist.train.step.train_step, timed by a StepTimer that tells
the contender's ledger each phase; the ranks barrier before it, inside the step's ledger record.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class Contender:
    name: Any
    mesh: Any
    engine: Any
    batch: Any
    ledger: Any  # pitdist.observe.ledger.CommLedger
    timer: Any  # pitdist.observe.timer.StepTimer, following ``ledger``
    times: list[float] = field(default_factory=list)  # total seconds of each timed step on this rank
    losses: list[float] = field(default_factory=list)


def contender(name: Any, mesh, engine, batch, rank: int) -> Contender:
    from pitdist.observe.ledger import CommLedger
    from pitdist.observe.timer import StepTimer

    ledger = CommLedger(rank)
    return Contender(name, mesh, engine, batch, ledger, StepTimer(ledger))


def take_turns(contenders: list[Contender], warmup: int, steps: int) -> None:
    """``warmup`` untimed and ``steps`` timed steps of every contender, one step of each per round."""
    from pitdist.distributed import comm
    from pitdist.train.step import train_step

    for i in range(warmup + steps):
        for c in contenders:
            ledger = c.ledger.install()
            try:
                ledger.step = i  # the barrier counts in this step, outside its timed phases
                comm.barrier()
                with c.timer.step(i) as t:
                    record = train_step(c.engine, c.batch, c.mesh, c.timer.phase)
            finally:
                ledger.uninstall()
            if i >= warmup:
                c.times.append(t.total_s)
            c.losses.append(float(record.loss))


def per_step(c: Contender, warmup: int, by: str = "category") -> dict[str, dict]:
    """The contender's ledger over its timed steps, per step, by ``by`` (category or phase)."""
    from pitdist.observe.categories import per_step_totals

    rows = [r for r in c.ledger.rows() if r["step"] is not None and r["step"] >= warmup]
    return {
        k[0]: {"count": t.count, "handed": t.handed, "sent": t.sent, "seconds": t.seconds}
        for k, t in per_step_totals(rows, (by,)).items()
    }
