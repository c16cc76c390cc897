"""Ulysses with its all-to-alls overlapped with the attention kernel (``parallel.overlap_comm``, on CUDA).

DeepSpeed's DistributedAttention exchanges q, k, v and the output one after another, each call blocking,
so the kernel waits for all of q, k and v, and the layer's output projection for the whole output. Here
the heads a rank receives are cut into n pieces (pieces of the batch when a rank receives one head), and
the exchanges are pipelined:

    forward   start a2a(qkv_0); for i: start a2a(qkv_i+1); wait qkv_i; attend piece i; start a2a(out_i)
    backward  the same, grad_out_i in and (dq, dk, dv)_i out

so piece i's kernel runs while piece i+1's inputs and piece i-1's result travel. Attention of different
heads and images is independent, so the result is Ulysses' exactly: the same kernel on the same numbers.
The bytes are the same too (a piece carries its share of the heads, and q, k, v travel as one message):
4 b S h d e per layer forward and 4 backward, as pitdist.report.comm_model counts; only the number of
calls changes (2n per layer and direction instead of 4).

Layout on one of P ranks (S slots, h heads, hl = h / P heads received, head dim d):

    x [b, S, h, d] = [b, S, P, hl, d]; piece [b', S, P, hl', d] -> send [P, ..., b', S, hl', d]
    received [P (source rank j: its S slots), ..., b', S, hl', d] -> [..., b', hl', P*S, d]

The kernel is the one ring attention uses (pitdist.distributed.ring_attention.attend_block: fused, and it
returns the log-sum-exp the backward needs), over the real keys of the P*S slots: padding comes last
(pitdist.parallel_dims.TokenShards), so the keys are cut to their real prefix as KeyPrefix does.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from pitdist.distributed import comm
from pitdist.distributed.ring_attention import attend_block, attend_block_backward
from pitdist.observe.categories import Category

CATEGORY = Category.ATTENTION_A2A


def pieces_of(batch: int, heads_received: int, wanted: int) -> tuple[str, int]:
    """What the pipeline cuts (the received heads, else the batch) and into how many pieces."""
    if heads_received >= 2:
        return "heads", min(wanted, heads_received)
    if batch >= 2:
        return "batch", min(wanted, batch)
    return "heads", 1  # one head of one image: nothing to cut, the exchanges still run asynchronously


def _start(x: torch.Tensor, group) -> comm.InFlight:
    return comm.all_to_all_start(x, group, category=CATEGORY)


class _OverlappedUlysses(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, group, num_keys, wanted):
        world = comm.get_world_size(group)
        b, s, h, d = q.shape
        hl = h // world
        cut, n = pieces_of(b, hl, wanted)
        # [3, b, S, P, hl, d]: the received heads are dim 4, the batch dim 1.
        qkv = torch.stack((q, k, v)).view(3, b, s, world, hl, d)
        sends = [p.permute(3, 0, 1, 2, 4, 5) for p in qkv.tensor_split(n, dim=4 if cut == "heads" else 1)]
        inputs = [_start(sends[0], group)]
        outputs, saved = [], []
        for i in range(n):
            if i + 1 < n:
                inputs.append(_start(sends[i + 1], group))
            received = inputs[i].wait()  # [P, 3, b', S, hl', d]
            _, _, bp, _, hp, _ = received.shape
            qi, ki, vi = received.permute(1, 2, 4, 0, 3, 5).reshape(3, bp, hp, world * s, d).unbind(0)
            out, lse = attend_block(qi, ki[:, :, :num_keys], vi[:, :, :num_keys])
            saved += [qi, ki, vi, out, lse]
            outputs.append(_start(out.view(bp, hp, world, s, d).permute(2, 0, 3, 1, 4), group))
        # Each [P (head group j), b', S, hl', d] -> [b', S, P, hl', d]; pieces back along what was cut.
        parts = [o.wait().permute(1, 2, 0, 3, 4) for o in outputs]
        ctx.save_for_backward(*saved)
        ctx.group, ctx.num_keys, ctx.cut, ctx.n = group, num_keys, cut, n
        return torch.cat(parts, dim=3 if cut == "heads" else 0).reshape(b, s, h, d)

    @staticmethod
    def backward(ctx, grad_out):
        group, num_keys, cut, n = ctx.group, ctx.num_keys, ctx.cut, ctx.n
        world = comm.get_world_size(group)
        b, s, h, d = grad_out.shape
        hl = h // world
        saved = ctx.saved_tensors
        grads = grad_out.contiguous().view(b, s, world, hl, d).tensor_split(n, dim=3 if cut == "heads" else 0)
        sends = [g.permute(2, 0, 1, 3, 4) for g in grads]  # [P, b', S, hl', d]
        incoming = [_start(sends[0], group)]
        outgoing = []
        for i in range(n):
            if i + 1 < n:
                incoming.append(_start(sends[i + 1], group))
            received = incoming[i].wait()  # [P (slots of rank j), b', S, hl', d]
            _, bp, _, hp, _ = received.shape
            g = received.permute(1, 3, 0, 2, 4).reshape(bp, hp, world * s, d)
            qi, ki, vi, out, lse = saved[5 * i : 5 * i + 5]
            dq, dk, dv = attend_block_backward(g, qi, ki[:, :, :num_keys], vi[:, :, :num_keys], out, lse)
            pad = (0, 0, 0, world * s - num_keys)  # padded keys: zero gradient
            dqkv = torch.stack((dq.to(qi.dtype), F.pad(dk, pad).to(ki.dtype), F.pad(dv, pad).to(vi.dtype)))
            outgoing.append(_start(dqkv.view(3, bp, hp, world, s, d).permute(3, 0, 1, 4, 2, 5), group))
        # Each [P (head group j), 3, b', S, hl', d] -> [3, b', S, P, hl', d].
        parts = [o.wait().permute(1, 2, 3, 0, 4, 5) for o in outgoing]
        dq, dk, dv = torch.cat(parts, dim=4 if cut == "heads" else 1).reshape(3, b, s, h, d).unbind(0)
        return dq, dk, dv, None, None, None


class OverlappedUlysses(nn.Module):
    """Ulysses attention ([b, S, h, d] token shards in and out) over ``group`` with pipelined exchanges;
    ``num_keys``: the real keys among the group's P*S slots; ``pieces``: how many pieces to pipeline."""

    def __init__(self, group, num_keys: int, pieces: int = 2):
        super().__init__()
        self.group, self.num_keys, self.pieces = group, num_keys, pieces

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        return _OverlappedUlysses.apply(q, k, v, self.group, self.num_keys, self.pieces)
