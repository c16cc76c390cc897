"""Ring attention: exact bidirectional attention over a sequence split across the ranks of a ring.

Each of the R ranks holds the queries, keys and values of its own block of tokens (for the heads it
has). Key/value blocks travel around the ring in R - 1 hops; each rank attends its queries to every
block as it passes and merges the partial results with the log-sum-exp rule (online softmax)

    lse = log(exp(lse_a) + exp(lse_b)),    out = exp(lse_a - lse) * out_a + exp(lse_b - lse) * out_b,

which is softmax attention over the union of the blocks, whatever their order. PiT's attention has no
mask but padding: a block of padded token slots holds its real keys first (pitdist.parallel_dims.
TokenShards), so each block is cut to its real prefix before it is attended to (``key_counts``: the
real keys of each ring rank's block) and a block of padding alone is skipped. The next block's exchange is posted
before the current block is computed and waited for after, so the transfer overlaps the compute.

Backward, without recomputing the merge: given the final output O and log-sum-exp L (saved), one
block's share of the gradients is that block's flash-attention backward evaluated at O and L, because
P_ij = exp(s_ij - L_i) and D_i = rowsum(dO_i * O_i) are the global values. dQ sums locally over the
blocks; key/value blocks make the same R - 1 hops again, and each block's dK/dV accumulator travels
one hop behind it, collecting every rank's share, and after R hops arrives home complete.

Bytes per layer and rank, with m = one K+V block (2 * b * tokens * heads * head_dim * e): forward
R - 1 sends of m; backward R - 1 sends of K+V and R of the dK+dV accumulators: (3R - 2) * m in all
(pitdist.report.comm_model). Every send goes through pitdist.distributed.comm.ring_shift, tagged
``attention_ring`` for the ledger.

Each block is attended to by a fused kernel where one takes it (pitdist.distributed.ring_kernels: torch's
flash kernel on CPU, FlashAttention-2 or the memory-efficient kernel on CUDA, plain matrix products
otherwise); the kernels take the block in the input dtype, the merge runs in fp32 (float64 for float64).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from pitdist.distributed import comm
from pitdist.distributed.ring_kernels import (
    accumulator_dtype,
    attend_block,
    attend_block_backward,
    attend_block_backward_math,
    attend_block_math,
)
from pitdist.observe.categories import Category

CATEGORY = Category.ATTENTION_RING

# One block's kernels live in ring_kernels; their names stay importable from here.
__all__ = [
    "CATEGORY",
    "RingAttention",
    "attend_block",
    "attend_block_backward",
    "attend_block_backward_math",
    "attend_block_math",
    "merge",
]


# --- merging blocks: [b, h, s, d] layout, log-sum-exp in the accumulator dtype ----------------------


def merge(out: torch.Tensor, lse: torch.Tensor, block_out: torch.Tensor, block_lse: torch.Tensor):
    """Fold one block's (out, lse) into the running (out, lse), kept in the accumulator dtype."""
    new_lse = torch.logaddexp(lse, block_lse)
    block_out = block_out.to(out.dtype)
    out = out * torch.exp(lse - new_lse)[..., None] + block_out * torch.exp(block_lse - new_lse)[..., None]
    return out, new_lse


# --- the ring ---------------------------------------------------------------------------------


class _RingAttention(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, group, key_counts):
        world, me = comm.get_world_size(group), comm.get_rank(group)
        kv = torch.stack((k, v))  # one message per hop
        out = lse = None
        for step in range(world):
            shift = comm.ring_shift(kv, group, category=CATEGORY) if step + 1 < world else None
            keys = _real_keys(key_counts, me, step, world, kv.shape[3])
            if keys:
                block_out, block_lse = attend_block(q, kv[0, :, :, :keys], kv[1, :, :, :keys])
                if out is None:
                    out, lse = block_out.to(accumulator_dtype(q)), block_lse
                else:
                    out, lse = merge(out, lse, block_out, block_lse)
            if shift is not None:
                kv = shift.wait()
        out = out.to(q.dtype)
        ctx.save_for_backward(q, k, v, out, lse)
        ctx.group, ctx.key_counts = group, key_counts
        return out

    @staticmethod
    def backward(ctx, grad_out):
        q, k, v, out, lse = ctx.saved_tensors
        group, key_counts = ctx.group, ctx.key_counts
        world, me = comm.get_world_size(group), comm.get_rank(group)
        grad_out = grad_out.contiguous()
        kv = torch.stack((k, v))
        slots = kv.shape[3]
        dq = torch.zeros_like(q, dtype=accumulator_dtype(q))
        dkv = dkv_shift = None
        for step in range(world):
            kv_shift = comm.ring_shift(kv, group, category=CATEGORY) if step + 1 < world else None
            keys = _real_keys(key_counts, me, step, world, slots)
            if keys:
                bq, bk, bv = attend_block_backward(grad_out, q, kv[0, :, :, :keys], kv[1, :, :, :keys], out, lse)
                dq += bq
                share = F.pad(torch.stack((bk, bv)), (0, 0, 0, slots - keys))  # padded keys: zero gradient
            else:
                share = torch.zeros_like(kv)
            # The accumulator of the block held now arrives from the previous holder (posted during
            # the last hop's compute); add this rank's share and pass it on. Kept in the input dtype,
            # like the gradients of any other collective.
            dkv = share if dkv_shift is None else dkv_shift.wait() + share
            if world > 1:
                dkv_shift = comm.ring_shift(dkv, group, category=CATEGORY)
            if kv_shift is not None:
                kv = kv_shift.wait()
        if dkv_shift is not None:  # after R hops this rank's own block's accumulator is home
            dkv = dkv_shift.wait()
        return dq.to(q.dtype), dkv[0], dkv[1], None, None


def _real_keys(key_counts: list[int] | None, me: int, step: int, world: int, slots: int) -> int:
    """Real keys of the block this rank holds at ``step``: it came from ring rank (me - step) mod R."""
    return slots if key_counts is None else key_counts[(me - step) % world]


class RingAttention(nn.Module):
    """Inner attention ([b, s, h, d] -> [b, s, h, d]) for a sequence split into blocks across ``group``.

    Each rank passes its own block; the output holds its own queries' results. In the hybrid it sits
    inside Ulysses, so ``s`` is then the Ulysses group's token slots and ``h`` this rank's heads.
    ``key_counts`` (one per ring rank, None when nothing is padded): the real keys at the start of
    each rank's block; the rest are padding, never attended to.
    """

    def __init__(self, group, key_counts: list[int] | None = None):
        super().__init__()
        self.group = group
        self.key_counts = key_counts

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        q, k, v = (t.transpose(1, 2).contiguous() for t in (q, k, v))
        return _RingAttention.apply(q, k, v, self.group, self.key_counts).transpose(1, 2)
