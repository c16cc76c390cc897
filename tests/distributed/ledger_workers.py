"""Rank code for the ledger's clock tests: real gloo collectives timed by a CPU stand-in for CUDA events."""

from __future__ import annotations

import itertools
import time

import torch

from pitdist.distributed import comm
from pitdist.observe.categories import Phase
from pitdist.observe.ledger import CommLedger, EventClock
from pitdist.observe.timer import StepTimer


class StandInEvent:
    """torch.cuda.Event's interface on the host. ``record`` reads the host clock; the event counts as
    complete (``query``) only once the "device" has got past it: ``reach`` moves the device on, and
    ``synchronize`` waits for it, as a real event's would."""

    _numbers = itertools.count()
    reached = -1  # the number of the last event the device has completed

    def __init__(self, enable_timing: bool = False):
        assert enable_timing, "the ledger must ask for timing events"
        self.number = next(self._numbers)
        self.at: float | None = None

    def record(self) -> None:
        self.at = time.perf_counter()

    def query(self) -> bool:
        return self.number <= StandInEvent.reached

    def synchronize(self) -> None:
        StandInEvent.reached = max(StandInEvent.reached, self.number)

    def elapsed_time(self, end: StandInEvent) -> float:
        assert self.query() and end.query(), "elapsed_time of an event that has not completed"
        return (end.at - self.at) * 1000.0

    @classmethod
    def reach(cls, event: StandInEvent) -> None:
        cls.reached = max(cls.reached, event.number)


def _seconds(ledger: CommLedger) -> dict[str, float]:
    out: dict[str, float] = {}
    for (_, _, _, op, _, _), totals in ledger.records.items():
        out[op] = out.get(op, 0.0) + totals.seconds
    return out


def _bytes(ledger: CommLedger) -> dict[str, int]:
    out: dict[str, int] = {}
    for (_, _, _, op, _, _), totals in ledger.records.items():
        out[op] = out.get(op, 0) + totals.handed
    return out


def event_clock_bookkeeping(rank: int) -> dict:
    """A step of an all-reduce and a ring exchange, timed by stand-in events while any
    torch.cuda.synchronize raises; what the ledger knew after the calls, after a step-end flush with
    nothing complete, after the device passed the all-reduce, and after rows()."""

    def forbidden() -> None:
        raise AssertionError("torch.cuda.synchronize() called on the ledger's default path")

    torch.cuda.synchronize = forbidden  # this spawned rank only
    ledger = CommLedger(rank, EventClock(StandInEvent)).install()
    timer = StepTimer(ledger)
    out: dict = {}
    try:
        with timer.step(0), timer.phase(Phase.FORWARD):
            comm.all_reduce_(torch.ones(256), None, category="pooling")
            all_reduce_end = ledger._pending[-1][2]
            shift = comm.ring_shift(torch.ones(1024), torch.distributed.group.WORLD, category="attention_ring")
            time.sleep(0.01)  # "compute" while the exchange travels
            shift.wait()
            out["after_calls"] = {"bytes": _bytes(ledger), "seconds": _seconds(ledger), "pending": len(ledger._pending)}
        # The step ended (its flush ran) with no event complete: nothing resolved, nothing lost.
        out["after_step"] = {"seconds": _seconds(ledger), "pending": len(ledger._pending)}
        StandInEvent.reach(all_reduce_end)
        ledger.flush()
        out["after_all_reduce_done"] = {"seconds": _seconds(ledger), "pending": len(ledger._pending)}
        rows = ledger.rows()
        out["rows"] = [{k: r[k] for k in ("op", "count", "handed_bytes", "seconds", "category")} for r in rows]
        out["pending_after_rows"] = len(ledger._pending)
    finally:
        ledger.uninstall()
    return out
