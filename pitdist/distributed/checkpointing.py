"""Activation checkpointing of a PiT: keep less for backward, recompute the rest, and say what re-sends.

Four policies (``train.activation_checkpointing``), the first three named as torchtitan names them:

  none       autograd keeps everything it saves.
  full       every block is checkpointed whole: forward keeps only each block's input; backward re-runs
             the block's forward, its sequence-parallel exchanges included. Under Ulysses that is the
             forward's 4 all-to-alls per layer again (+50% attention bytes), under ring attention its
             R - 1 K/V hops.
  selective  torchtitan's per-layer option (selective_ac_option = "k", k = 2 here): every k-th block
             (train.selective_every, blocks k-1, 2k-1, ...) is checkpointed as ``full`` checkpoints it,
             the others keep everything; its recompute re-sends 1/k of what ``full`` re-sends.
  local      communication-aware: recompute only the local computation BETWEEN the collectives (each
             block's two local stages, ``Block.project_in`` and ``Block.project_out``, and under Ulysses
             the attention kernel), and keep what the collectives returned, so backward sends exactly
             the bytes it sends without checkpointing. Ring attention's kernel exchanges K/V blocks as
             it computes, so under a ring (and in the hybrid) the kernel and its saved output stay.

What each keeps, in D-vectors per token and layer (pitdist.report.memory_model derives them): none
about 16, selective (k = 2) 8.5, local 5, full 1; backward holds one recomputed block (local: one
stage) at a time on top.

Offload (``train.checkpoint_offload``, for GPUs): what a checkpointed unit keeps, its inputs, is packed
into host memory (pinned, so the copies run asynchronously) and copied back when backward recomputes
the unit: torch.autograd.graph.save_on_cpu around the checkpoint, whose saved inputs are the only
tensors that go through those hooks (the recompute's own intermediates are the checkpoint's). Only
what checkpointing keeps moves; blocks that are not checkpointed keep their tensors on the device.

Everything goes through torch.utils.checkpoint, non-reentrant (what DeepSpeed's ZeRO gradient hooks
and torch's own guidance need), applied through the model's ``run_block`` / ``run_stage`` slots so
parameter names, state dicts and checkpoints are those of the plain model. Each recompute runs inside
pitdist.observe.ledger.recomputing, so its collectives are counted in the ledger's ``recompute`` phase.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Any

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from pitdist.config import ACTIVATION_CHECKPOINTING, checkpointed_blocks
from pitdist.models.pit import PiT
from pitdist.observe.ledger import recomputing


def _recompute_in_its_phase() -> tuple[contextlib.AbstractContextManager, contextlib.AbstractContextManager]:
    return contextlib.nullcontext(), recomputing()


def offload_to_host() -> contextlib.AbstractContextManager:
    """Tensors saved inside are kept in host memory and copied back for backward (module docstring)."""
    return torch.autograd.graph.save_on_cpu(pin_memory=torch.cuda.is_available())


class Checkpointed:
    """A ``run`` slot's (stage, *inputs) -> stage(*inputs) that keeps only ``inputs`` for backward (in
    host memory with ``offload``) and recomputes ``stage`` there."""

    def __init__(self, offload: bool = False):
        self.offload = offload

    def __call__(self, stage: Callable[..., Any], *inputs: Any) -> Any:
        with offload_to_host() if self.offload else contextlib.nullcontext():
            return checkpoint(stage, *inputs, use_reentrant=False, context_fn=_recompute_in_its_phase)


class _Chosen:
    """``run_block`` for full and selective: checkpoint the blocks chosen, run the others plainly.

    It holds the blocks themselves (not their ids), so a deep copy of the model copies the choice too."""

    def __init__(self, chosen: list[nn.Module], run: Checkpointed):
        self.chosen, self.run = chosen, run

    def __call__(self, block: nn.Module, x: torch.Tensor) -> torch.Tensor:
        return self.run(block, x) if any(block is c for c in self.chosen) else block(x)


class Recomputed(nn.Module):
    """A module (the local attention kernel under Ulysses) checkpointed as a whole."""

    def __init__(self, inner: nn.Module, offload: bool = False):
        super().__init__()
        self.inner, self.run = inner, Checkpointed(offload)

    def forward(self, *inputs: torch.Tensor) -> torch.Tensor:
        return self.run(self.inner, *inputs)


def apply_activation_checkpointing(model: PiT, policy: str, every: int = 2, offload: bool = False) -> PiT:
    """Make ``model`` keep less for backward under ``policy`` (in host memory with ``offload``); called
    once, by parallelize (which also wraps the local attention kernel in ``Recomputed`` for ``local``,
    where it knows the kernel is local)."""
    if policy not in ACTIVATION_CHECKPOINTING:
        raise ValueError(f"activation checkpointing {policy!r}: choose one of {', '.join(ACTIVATION_CHECKPOINTING)}")
    run = Checkpointed(offload)
    if policy in ("full", "selective"):
        model.run_block = _Chosen([model.blocks[i] for i in checkpointed_blocks(len(model.blocks), policy, every)], run)
    elif policy == "local":
        for block in model.blocks:
            block.run_stage = run
    return model
