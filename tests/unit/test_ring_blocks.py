"""Ring attention's per-block pieces, on one process: blocks merged by log-sum-exp are full attention,
and per-block backwards at the final output and log-sum-exp sum to full attention's gradients."""

import pytest
import torch
import torch.nn.functional as F

from pitdist.distributed.ring_attention import (
    attend_block,
    attend_block_backward,
    attend_block_backward_math,
    attend_block_math,
    merge,
)

KERNELS = {"cpu kernel": (attend_block, attend_block_backward), "math": (attend_block_math, attend_block_backward_math)}


def qkv(seed=0, b=2, h=3, n=24, d=8):
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(b, h, n, d, generator=gen, dtype=torch.float64).float() for _ in range(3)]


def rel(a, b):
    a, b = a.detach(), b.detach()
    return float((a - b).abs().max() / b.abs().max())


@pytest.mark.parametrize("kernel", KERNELS)
def test_one_block_is_sdpa_and_its_lse_the_log_sum_exp_of_the_scores(kernel):
    forward, _ = KERNELS[kernel]
    q, k, v = qkv()
    out, lse = forward(q, k, v)
    assert rel(out, F.scaled_dot_product_attention(q, k, v)) < 1e-6
    assert rel(lse, (q @ k.transpose(-1, -2) / 8**0.5).logsumexp(-1)) < 1e-6
    assert lse.dtype == torch.float32


@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize("blocks", [2, 3, 4])
def test_blocks_merged_in_ring_order_are_full_attention_forward_and_backward(kernel, blocks):
    forward, backward = KERNELS[kernel]
    q, k, v = qkv(blocks)
    full_q, full_k, full_v = (t.clone().requires_grad_() for t in (q, k, v))
    full = F.scaled_dot_product_attention(full_q, full_k, full_v)
    grad_out = torch.randn_like(full)
    full.backward(grad_out)

    ks, vs = k.chunk(blocks, dim=2), v.chunk(blocks, dim=2)
    order = [2 % blocks, *[(2 - i) % blocks for i in range(1, blocks)]]  # what rank 2 sees, hop by hop
    out, lse = forward(q, ks[order[0]], vs[order[0]])
    out = out.float()
    for j in order[1:]:
        out, lse = merge(out, lse, *forward(q, ks[j], vs[j]))
    assert rel(out, full) < 1e-5

    dq = torch.zeros_like(q)
    dk, dv = [None] * blocks, [None] * blocks
    for j in order:
        bq, dk[j], dv[j] = backward(grad_out, q, ks[j], vs[j], out, lse)
        dq += bq
    assert rel(dq, full_q.grad) < 1e-5
    assert rel(torch.cat(dk, dim=2), full_k.grad) < 1e-5
    assert rel(torch.cat(dv, dim=2), full_v.grad) < 1e-5


def test_a_block_backward_at_its_own_lse_is_not_its_share_of_the_full_gradient():
    # Why the final (out, lse) are saved: a block's own statistics give a different, wrong, share.
    q, k, v = qkv(7)
    full_q = q.clone().requires_grad_()
    full = F.scaled_dot_product_attention(full_q, k, v)
    grad_out = torch.randn_like(full)
    full.backward(grad_out)
    dq = sum(
        attend_block_backward(grad_out, q, kb, vb, *attend_block(q, kb, vb))[0]
        for kb, vb in zip(k.chunk(2, dim=2), v.chunk(2, dim=2))
    )
    assert rel(dq, full_q.grad) > 1e-2
