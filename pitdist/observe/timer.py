"""The one owner of per-step wall time on a rank.

A step is timed as a whole (``step``) and by phase (``phase``: data, forward, backward, optimizer,
metrics, checkpoint). Entering a phase also tells the communication ledger which phase its collectives
belong to, so the seconds per phase here and the seconds per collective there describe the same
intervals: with both, ``pitdist bench steptime`` splits a step into compute, communication and data
wait. Everything that shows time (the progress bar and metrics.jsonl, the Prometheus exporter,
result.json) reads it from here; ``write`` stores it as timing/rank<r>.json.

Wall time on the host (``time.perf_counter``). On CPU that is the time the work took; on a GPU it is
the time the host spent issuing it unless something synchronises. The trainer's step does, once, at its
end: reading the global loss for the log waits for the device, so a step's total is its device time,
and the ledger's flush at the end of the step then finds the step's events complete (its notes: Time).
"""

from __future__ import annotations

import contextlib
import json
import time
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from pitdist.observe.categories import Phase


@dataclass
class StepTime:
    """Wall seconds of one training step on this rank, in total and per phase."""

    step: int
    total_s: float = 0.0
    phases: dict[str, float] = field(default_factory=lambda: defaultdict(float))

    def __getitem__(self, phase: str) -> float:
        return self.phases.get(phase, 0.0)

    @property
    def data_s(self) -> float:
        return self[Phase.DATA]

    def to_dict(self) -> dict:
        # The flat form of timing/rank<r>.json: {"step", "data_s", "forward_s", ..., "total_s"}.
        return {"step": self.step, **{f"{p}_s": s for p, s in self.phases.items()}, "total_s": self.total_s}


class StepTimer:
    """Times steps and their phases; ``ledger`` (a CommLedger, or None) follows the same phases."""

    def __init__(self, ledger=None):
        self.ledger = ledger
        self.steps: list[StepTime] = []
        self._current: StepTime | None = None
        self._first_start: float | None = None
        self._last_end: float | None = None

    @contextlib.contextmanager
    def step(self, step: int) -> Iterator[StepTime]:
        record = StepTime(step)
        if self.ledger is not None:
            self.ledger.step = step
        self._current = record
        start = time.perf_counter()
        self._first_start = start if self._first_start is None else self._first_start
        try:
            yield record
        finally:
            end = time.perf_counter()
            record.total_s = end - start
            self._last_end = end
            self._current = None
            self.steps.append(record)
            if self.ledger is not None:
                self.ledger.flush()  # the step's collective times that are known by now, without waiting

    @contextlib.contextmanager
    def phase(self, name: str) -> Iterator[None]:
        """Time ``name`` within the current step (if any) and attribute its collectives to it."""
        in_ledger = self.ledger.in_phase(name) if self.ledger is not None else contextlib.nullcontext()
        start = time.perf_counter()
        with in_ledger:
            try:
                yield
            finally:
                if self._current is not None:
                    self._current.phases[str(name)] += time.perf_counter() - start

    def outside_steps(self) -> None:
        """Collectives from here on (evaluation, consolidation) belong to no step."""
        if self.ledger is not None:
            self.ledger.step = None

    @property
    def last(self) -> StepTime:
        return self.steps[-1]

    @property
    def wall_s(self) -> float:
        """From the start of the first step timed to the end of the last (the loop's wall time)."""
        if self._first_start is None or self._last_end is None:
            return 0.0
        return self._last_end - self._first_start

    def write(self, run_dir: Path, rank: int) -> Path:
        """timing/rank<r>.json: this rank's steps, each with its wall seconds per phase."""
        path = run_dir / "timing" / f"rank{rank}.json"
        path.parent.mkdir(exist_ok=True)
        path.write_text(json.dumps({"rank": rank, "wall_s": self.wall_s, "steps": [s.to_dict() for s in self.steps]}))
        return path


def read_timing(run_dir: Path) -> list[dict]:
    """Every rank's timing/rank<r>.json of a run, in rank order."""
    files = sorted((Path(run_dir) / "timing").glob("rank*.json"), key=lambda f: int(f.stem[4:]))
    if not files:
        raise FileNotFoundError(f"{run_dir}: no timing/rank*.json (not a finished pitdist run?)")
    return [json.loads(f.read_text()) for f in files]
