"""THE train step: forward on this rank's token slice, the loss / P rule, backward, optimizer step.

The trainer, every benchmark and the distributed tests train through these two functions, so the one
rule that is easy to get wrong lives in one place:

    Every SP rank of a group computes the same group loss (the pooled features are all-reduced over
    the group), and DeepSpeed's engine SUMS gradients over the P ranks of the sequence-data-parallel
    group that share an image (and averages over the Q DP groups). Backpropagating loss / P makes
    the summed gradient that of the group's mean loss, exactly the single-device gradient.

``phase`` is how a caller observes the step without the step knowing about it: a function of a phase
name that returns a context manager (pitdist.observe.timer.StepTimer.phase times it and tells the
ledger; a benchmark can count saved tensors in "forward").
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from pitdist.observe.categories import Phase

PhaseFn = Callable[[str], AbstractContextManager]


def no_phases(name: str) -> AbstractContextManager:
    return contextlib.nullcontext()


@dataclass
class Batch:
    """One step's input on this rank: its token slice of its DP group's images."""

    tokens: torch.Tensor  # [b, n, features]: this SP rank's pixel tokens of every image of the group
    positions: torch.Tensor  # [n]: their global positions (n <= S, the rank's slots; the model pads)
    labels: torch.Tensor  # [b]
    ids: np.ndarray | None = None  # the images' dataset ids (the data ledger), when known


@dataclass
class StepRecord:
    """What a step computed on this rank (detached)."""

    loss: torch.Tensor  # the group's mean loss (the same on every SP rank of the group)
    logits: torch.Tensor  # [b, classes]


def forward_backward(engine, batch: Batch, sp: int, phase: PhaseFn = no_phases) -> StepRecord:
    """Forward and backward, gradients reduced by the engine; no optimizer step (what tests inspect)."""
    with phase(Phase.FORWARD):
        logits = engine(batch.tokens, batch.positions)
        loss = F.cross_entropy(logits.float(), batch.labels)
    with phase(Phase.BACKWARD):
        engine.backward(loss / sp)  # the loss / P rule (module docstring)
    return StepRecord(loss.detach(), logits.detach())


def train_step(engine, batch: Batch, mesh, phase: PhaseFn = no_phases) -> StepRecord:
    """One training step on this rank of ``mesh``: forward, backward, optimizer step."""
    record = forward_backward(engine, batch, mesh.sp, phase)
    with phase(Phase.OPTIMIZER):
        engine.step()
    return record
