"""The data ledger: which image ids every rank trained on at every step, and the checks on it.

Each rank appends ``{"step", "epoch", "ids"}`` per step to ``<run dir>/data/rank<r>.jsonl``. A step
trained twice (a worker group restored from a checkpoint replays the steps after it) appears twice;
the audit requires the replay to have taken exactly the same ids, then counts each step once.

``audit`` proves what the data path promises: within an epoch no image is trained on twice, the SP
ranks of a group agree step by step, the DP groups' shares are disjoint, and the images left out of
an epoch are only what the run reported as dropped.
"""

from __future__ import annotations

import json
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np


class IdLog:
    """Appends this rank's ids per step (append: a restored worker continues the same file)."""

    def __init__(self, run_dir: Path, rank: int):
        path = Path(run_dir) / "data"
        path.mkdir(parents=True, exist_ok=True)
        self.file = (path / f"rank{rank}.jsonl").open("a")

    def write(self, step: int, epoch: int, ids: np.ndarray) -> None:
        self.file.write(json.dumps({"step": step, "epoch": epoch, "ids": [int(i) for i in ids]}) + "\n")
        self.file.flush()

    def close(self) -> None:
        self.file.close()


@dataclass
class Audit:
    steps: int = 0  # distinct steps trained
    replayed_steps: int = 0  # steps trained again after a restore (with identical ids)
    images_per_epoch: dict[int, int] = field(default_factory=dict)  # distinct ids trained per epoch
    problems: list[str] = field(default_factory=list)  # empty = every check passed

    @property
    def ok(self) -> bool:
        return not self.problems


def read_logs(run_dir: str | Path) -> dict[int, dict[int, list[dict]]]:
    """{rank: {step: [records, in the order written]}}"""
    out: dict[int, dict[int, list[dict]]] = {}
    for path in sorted(Path(run_dir, "data").glob("rank*.jsonl")):
        steps: dict[int, list[dict]] = defaultdict(list)
        for line in path.read_text().splitlines():
            record = json.loads(line)
            steps[record["step"]].append(record)
        out[int(path.stem[len("rank") :])] = steps
    if not out:
        raise FileNotFoundError(f"{run_dir}: no data ledger (data/rank*.jsonl); was it a pitdist run?")
    return out


def audit(run_dir: str | Path, dp: int, sp: int) -> Audit:
    """Check a run's data ledger; ranks are numbered dp_rank * sp + sp_rank (pitdist's mesh)."""
    logs = read_logs(run_dir)
    result = Audit()
    missing = sorted(set(range(dp * sp)) - set(logs))
    if missing:
        result.problems.append(f"no data ledger for ranks {missing}")
        return result
    per_epoch: dict[int, Counter] = defaultdict(Counter)
    steps = sorted(set().union(*logs.values()))
    result.steps = len(steps)
    for rank, by_step in logs.items():
        for step, records in by_step.items():
            if any(r["ids"] != records[0]["ids"] for r in records[1:]):
                result.problems.append(f"rank {rank} step {step}: a replay after a restore took different ids")
            result.replayed_steps += (len(records) - 1) if rank == 0 else 0
    for step in steps:
        for q in range(dp):
            group = [logs[q * sp + s].get(step, [None])[0] for s in range(sp)]
            if any(g is None for g in group):
                result.problems.append(f"step {step}: DP group {q} has ranks with no record")
                continue
            if any(g["ids"] != group[0]["ids"] for g in group[1:]):
                result.problems.append(f"step {step}: the SP ranks of DP group {q} took different images")
            per_epoch[group[0]["epoch"]].update(group[0]["ids"])
    for epoch, counts in sorted(per_epoch.items()):
        repeated = sorted(i for i, n in counts.items() if n > 1)
        if repeated:
            result.problems.append(f"epoch {epoch}: {len(repeated)} images trained more than once, e.g. {repeated[:5]}")
        result.images_per_epoch[epoch] = len(counts)
    return result
