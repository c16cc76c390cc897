"""Analytical model of the activations one rank keeps for backward, per checkpointing policy.

Counted in D-vectors per token slot this rank holds (n = S = ceil(N/P) slots of each of b images; D
width, h heads, r MLP ratio, e bytes per element), as pitdist's PiT block saves them (autograd's saved
tensors, each storage once; what ``pitdist bench sp`` and ``pitdist bench checkpointing`` count):

    norm1: its input x and 2 statistics                     1 + 2/D
    qkv projection: its input                               1
    attention kernel: q, k, v, output, log-sum-exp (fp32)   4 + h/D
    output projection: its input; on one rank that is the kernel's output itself, under SP it is
      a tensor of its own (the all-to-all's result, or the ring's output laid out again)   0 or 1
    norm2: its input and statistics; fc1: its input         2 + 2/D
    GELU: its input; fc2: its input                         2r
  so a block keeps  B = 8 + 2r + (4 + h)/D  (+1 under SP): 16.04 for PiT-T width (D = 192, h = 4).

Per policy (pitdist.distributed.checkpointing), kept per layer after the forward, and what one
recomputed unit holds on top while backward goes through it (the peak is their sum):

    none       B                       nothing recomputed
    full       1 (the block's input)   one block: B - 1 (its input is already held)
    selective  c of the L blocks (c = L // k) keep 1, the others B; one block: B - 1
    local      x, the kernel's q, k, v, the attention output: 5 (+ h/D under a ring, whose kernel
               and its log-sum-exp stay; +1 more in the hybrid, where the ring's output and the
               all-to-all's are two tensors); the largest stage, project_out: 2 + 2r + 2/D (+1 under
               a ring alone, whose output it lays out again)

With offload (train.checkpoint_offload) the checkpointed units' inputs live in host memory: full and
selective keep 1 per checkpointed block there, local its stages' inputs (x, q, k, v, attention output:
5; under a ring only x, since the ring's own autograd function keeps q, k, v and its output on the
device). Backward copies one unit's input back while it recomputes it: +1 on the unit.

Outside the blocks: the embedding's input (C per token), the final norm's input and statistics
(1 + 2/D) and the pooled features (b * D elements). Measured on this machine (hooks, fp32) these
match to within a few per cent (tests/distributed/test_checkpointing.py); the attention kernel keeps
O(N) because it is memory-efficient (CPU's flash kernel, and flash attention on a GPU).
"""

from __future__ import annotations

from dataclasses import dataclass

from pitdist.config import ModelConfig, checkpointed_blocks
from pitdist.parallel_dims import TokenShards


@dataclass(frozen=True)
class ActivationMemory:
    """Bytes of activations one rank keeps for backward, in one step."""

    held: float  # on the device when the forward ends: what every layer keeps, plus the rest of the model
    recompute: float  # on top, during backward: the largest unit recomputed at a time
    host: float = 0.0  # in host memory (offloaded checkpoint inputs)

    @property
    def peak(self) -> float:
        return self.held + self.recompute


def block_vectors(model: ModelConfig, sp: int = 1) -> float:
    """D-vectors per token a block keeps without checkpointing (B in the module docstring)."""
    d, h, r = model.width, model.num_heads, model.mlp_ratio
    return 8 + 2 * r + (4 + h) / d + (1 if sp > 1 else 0)


def activation_memory(
    model: ModelConfig,
    tokens_per_rank: int,
    channels: int,
    policy: str = "none",
    sp: int = 1,
    ring: int = 1,
    images: int = 1,
    selective_every: int = 2,
    bytes_per_element: int = 4,
    offload: bool = False,
) -> ActivationMemory:
    """What one rank keeps for ``images`` images of which it holds ``tokens_per_rank`` tokens each
    (``offload``: the checkpointed inputs in host memory)."""
    d, h, r, layers = model.width, model.num_heads, model.mlp_ratio, model.num_layers
    block = block_vectors(model, sp)
    if policy == "local":
        hybrid = ring > 1 and sp > ring
        per_layer = layers * (5 + (h / d if ring > 1 else 0) + (1 if hybrid else 0))
        unit = 2 + 2 * r + 2 / d + (1 if ring > 1 and not hybrid else 0)
        moved = layers * (1 if ring > 1 else 5)
    else:
        c = len(checkpointed_blocks(layers, policy, selective_every))
        per_layer = c * 1 + (layers - c) * block
        unit = block - 1 if c else 0.0
        moved = c
    if not offload or policy == "none":
        moved = 0
    unit += 1 if moved else 0  # the recomputed unit's input, copied back from the host
    outside = 1 + (channels + 2) / d
    scale = images * tokens_per_rank * d * bytes_per_element
    return ActivationMemory(
        held=(per_layer - moved + outside) * scale + images * d * bytes_per_element,
        recompute=unit * scale,
        host=moved * scale,
    )


def bytes_per_token(model: ModelConfig, channels: int, policy: str, sp: int = 1, ring: int = 1, **kw) -> float:
    """Peak bytes per token held by a rank (the model is linear in tokens, up to b * D)."""
    return activation_memory(model, 1, channels, policy, sp, ring, **kw).peak


def largest_square_side(
    model: ModelConfig, cap_bytes: float, channels: int, policy: str, sp: int = 1, ring: int = 1, max_side: int = 4096
) -> int | None:
    """The largest square side (pixel tokens, patch size 1 or p) whose peak per rank stays under the cap;
    every rank holds S = ceil(tokens / P) slots, padded (pitdist.parallel_dims.TokenShards)."""
    p = model.patch_size
    best = None
    for side in range(p, max_side + 1, p):
        shards = TokenShards((side // p) ** 2, sp, model.pool == "cls")
        if activation_memory(model, shards.shard, channels, policy, sp, ring).peak > cap_bytes:
            break
        best = side
    return best
