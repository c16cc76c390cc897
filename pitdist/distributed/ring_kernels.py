"""One block of ring attention: softmax attention of the queries to one key/value block, with its log-sum-exp.

Layout [b, h, s, d]; the key block may be shorter than the query block (s_k < s_q: keys cut to the
real prefix of a padded block). The forward returns (out [b, h, s_q, d] in the input dtype, lse
[b, h, s_q] in the accumulator dtype: fp32, float64 for float64 inputs). The backward takes the FINAL
output O and log-sum-exp L of the whole ring (pitdist.distributed.ring_attention): a flash-style
backward recomputes P_ij = exp(s_ij - L_i) and D_i = rowsum(dO_i * O_i) from them, and with the global
O and L these are the global values, so each block's result is its exact share of the gradient.

Kernels (``choose_kernel`` picks one from device type, dtype, head dim and lengths alone, so the choice is
testable without the device):

- ``cpu_flash``: any CPU tensor. ``aten::_scaled_dot_product_flash_attention_for_cpu(q, k, v,
  dropout_p=0., is_causal=False, *, attn_mask=None, scale=None) -> (output, logsumexp)``, lse [b, h, s_q]
  fp32 for fp32 and narrower inputs, float64 for float64 ones; backward ``..._for_cpu_backward(grad_out,
  q, k, v, out, logsumexp, dropout_p, is_causal, *, attn_mask=None, scale=None) -> (dq, dk, dv)``.
- ``cuda_flash``: CUDA fp16/bf16, head_dim % 8 == 0 and <= 256, compute capability >= 8.0 (what
  FlashAttention-2 in torch accepts unpadded). ``aten::_scaled_dot_product_flash_attention(q, k, v,
  dropout_p=0., is_causal=False, return_debug_mask=False, *, scale=None) -> (output, logsumexp,
  cum_seq_q, cum_seq_k, max_q, max_k, rng_state, unused, debug_attn_mask)``: lse [b, h, s_q] fp32;
  cum_seq_q/k are None for dense (non-varlen) inputs, max_q/k = s_q/s_k. Backward
  ``..._flash_attention_backward(grad_out, q, k, v, out, logsumexp, cum_seq_q, cum_seq_k, max_q, max_k,
  dropout_p, is_causal, philox_seed, philox_offset, *, scale=None) -> (dq, dk, dv)``, called as torch's
  autograd formula (derivatives.yaml) calls it; with dropout 0 the kernel never reads the seed and
  offset, so they are the placeholders torch.nn.attention.varlen passes (rng_state zeros((2,), uint64),
  unused empty(0)).
- ``cuda_efficient``: the other CUDA fp32/fp16/bf16 cases the memory-efficient (CUTLASS) kernel takes:
  head_dim % 4 == 0 for fp32, % 8 == 0 for fp16/bf16 (sdp_utils' minimum GEMM alignment on sm80+), bf16
  only on sm80+. ``aten::_scaled_dot_product_efficient_attention(q, k, v, attn_bias, compute_log_sumexp,
  dropout_p=0., is_causal=False, *, scale=None) -> (output, log_sumexp, philox_seed, philox_offset)``;
  on CUDA its lse is [b, h, ceil(s_q / 32) * 32] fp32 (the kernel writes rows in tiles of 32; the
  tail is never read back), so it is cut to s_q here and padded back before the backward
  ``..._efficient_attention_backward(grad_out, q, k, v, attn_bias, out, logsumexp, philox_seed,
  philox_offset, dropout_p, grad_input_mask, is_causal=False, *, scale=None) -> (dq, dk, dv, dbias)``,
  which reads the lse through its batch and head strides and only for rows < s_q.
- ``math``: plain matrix products in fp32 (float64 for float64), memory quadratic in the block. Taken
  for every other case: CUDA float64, CUDA head dims the fused kernels refuse (fp16/bf16 not a multiple
  of 8, fp32 not a multiple of 4, e.g. bf16 head_dim 300), bf16 before sm80, q/k/v head dims that
  differ, an empty dimension, ROCm (its fused kernels lay the lse out differently: not verified here),
  and any other device type (mps, xpu, meta, ...).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

KERNELS = ("cpu_flash", "cuda_flash", "cuda_efficient", "math")
_HALF = (torch.float16, torch.bfloat16)
_EFFICIENT_LSE_ROWS = 32  # the memory-efficient kernel's lse is padded along the queries to this


def choose_kernel(
    device_type: str,
    dtype: torch.dtype,
    head_dim: int,
    *,
    s_q: int = 1,
    s_k: int = 1,
    capability: tuple[int, int] | None = None,
) -> str:
    """The kernel for one block, from what the kernels accept (see the module docstring).

    ``head_dim``: q's, k's and v's common last dimension (pass -1 when they differ). ``capability``: the
    CUDA compute capability, None for "sm80 or newer" (every GPU this project runs on).
    """
    if device_type == "cpu":
        return "cpu_flash"
    if device_type != "cuda" or head_dim <= 0 or s_q <= 0 or s_k <= 0:
        return "math"
    ampere = capability is None or capability >= (8, 0)
    if dtype in _HALF and head_dim % 8 == 0:
        if head_dim <= 256 and ampere:
            return "cuda_flash"
        if dtype == torch.float16 or ampere:
            return "cuda_efficient"
    if dtype == torch.float32 and head_dim % 4 == 0:
        return "cuda_efficient"
    return "math"


def block_kernel(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> str:
    """``choose_kernel`` for these tensors on their device."""
    device_type = q.device.type
    capability = None
    if device_type == "cuda":
        if torch.version.hip:
            device_type = "rocm"
        else:
            capability = torch.cuda.get_device_capability(q.device)
    head_dim = q.shape[-1] if q.shape[-1] == k.shape[-1] == v.shape[-1] else -1
    return choose_kernel(device_type, q.dtype, head_dim, s_q=q.shape[-2], s_k=k.shape[-2], capability=capability)


def accumulator_dtype(t: torch.Tensor) -> torch.dtype:
    """The merge's dtype: fp32 for fp32 and narrower inputs, float64 for float64 (the exactness tests)."""
    return torch.promote_types(t.dtype, torch.float32)


# --- forward and backward of one block ------------------------------------------------------------


def attend_block(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, kernel: str | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Softmax attention of q to one key/value block: (out [b, h, s_q, d], lse [b, h, s_q] accumulator dtype).

    ``kernel``: one of KERNELS, None for ``block_kernel``'s choice.
    """
    kernel = kernel or block_kernel(q, k, v)
    if kernel == "cpu_flash":
        out, lse = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(q, k, v)
    elif kernel == "cuda_flash":
        out, lse, *_ = torch.ops.aten._scaled_dot_product_flash_attention(q, k, v, 0.0, False, False, scale=None)
    elif kernel == "cuda_efficient":
        out, lse, _, _ = torch.ops.aten._scaled_dot_product_efficient_attention(
            q, k, v, None, True, 0.0, False, scale=None
        )
        lse = lse[..., : q.shape[-2]]  # drop the padded tail rows (see the module docstring)
    elif kernel == "math":
        return attend_block_math(q, k, v)
    else:
        raise ValueError(f"unknown block kernel {kernel!r}; expected one of {KERNELS}")
    return out, lse.to(accumulator_dtype(q))


def attend_block_backward(
    grad_out: torch.Tensor,
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    out: torch.Tensor,
    lse: torch.Tensor,
    kernel: str | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(dq, dk, dv) of one block, given the FINAL output and log-sum-exp over all blocks."""
    kernel = kernel or block_kernel(q, k, v)
    if kernel == "cpu_flash":
        return torch.ops.aten._scaled_dot_product_flash_attention_for_cpu_backward(
            grad_out, q, k, v, out, lse, 0.0, False
        )
    if kernel == "math":
        return attend_block_backward_math(grad_out, q, k, v, out, lse)
    # The CUDA kernels read out in q's dtype and the lse as contiguous fp32 rows.
    grad_out, out, lse = grad_out.contiguous(), out.to(q.dtype).contiguous(), lse.float().contiguous()
    s_q, s_k = q.shape[-2], k.shape[-2]
    if kernel == "cuda_flash":
        rng_state = torch.zeros((2,), dtype=torch.uint64, device=q.device)
        unused = torch.empty(0, device=q.device)
        dq, dk, dv = torch.ops.aten._scaled_dot_product_flash_attention_backward(
            grad_out, q, k, v, out, lse, None, None, s_q, s_k, 0.0, False, rng_state, unused, scale=None
        )
        return dq, dk, dv
    if kernel == "cuda_efficient":
        rows = -(-s_q // _EFFICIENT_LSE_ROWS) * _EFFICIENT_LSE_ROWS
        # The padded rows are never read; +inf is what the kernel's own comments would put there
        # (P = exp(s - inf) = 0), so a read could not change a gradient.
        lse = F.pad(lse, (0, rows - s_q), value=float("inf"))
        seed = torch.zeros((), dtype=torch.long, device=q.device)
        offset = torch.zeros((), dtype=torch.long, device=q.device)
        dq, dk, dv, _ = torch.ops.aten._scaled_dot_product_efficient_attention_backward(
            grad_out, q, k, v, None, out, lse, seed, offset, 0.0, [True, True, True, False], False, scale=None
        )
        return dq, dk, dv
    raise ValueError(f"unknown block kernel {kernel!r}; expected one of {KERNELS}")


def attend_block_math(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The same in plain matrix products (any device; memory grows with s_q * s_k)."""
    acc = accumulator_dtype(q)
    scores = (q.to(acc) @ k.to(acc).transpose(-1, -2)) * q.shape[-1] ** -0.5
    lse = scores.logsumexp(dim=-1)
    return (torch.exp(scores - lse[..., None]) @ v.to(acc)).to(q.dtype), lse


def attend_block_backward_math(grad_out, q, k, v, out, lse):
    acc = accumulator_dtype(q)
    scale = q.shape[-1] ** -0.5
    g, q32, k32, v32 = grad_out.to(acc), q.to(acc), k.to(acc), v.to(acc)
    p = torch.exp((q32 @ k32.transpose(-1, -2)) * scale - lse.to(acc)[..., None])
    dv = p.transpose(-1, -2) @ g
    ds = p * (g @ v32.transpose(-1, -2) - (g * out.to(acc)).sum(dim=-1, keepdim=True))
    dq = (ds @ k32) * scale
    dk = (ds.transpose(-1, -2) @ q32) * scale
    return dq.to(q.dtype), dk.to(k.dtype), dv.to(v.dtype)


# --- a check a GPU script can call ------------------------------------------------------------------


def compare_kernels(
    device: str | torch.device, dtype: torch.dtype, b: int, h: int, s_q: int, s_k: int, d: int, seed: int = 0
) -> dict:
    """The kernel chosen for these shapes and its max abs differences from math: out, lse, dq, dk, dv.

    Both backwards get the same (out, lse): math's, as the ring passes one final pair to every block, so
    the gradient differences are the backward kernel's own.
    """
    gen = torch.Generator().manual_seed(seed)
    q, k, v, grad_out = (
        torch.randn(b, h, n, d, generator=gen, dtype=torch.float64).to(device, dtype) for n in (s_q, s_k, s_k, s_q)
    )
    kernel = block_kernel(q, k, v)
    out, lse = attend_block(q, k, v, kernel)
    ref_out, ref_lse = attend_block_math(q, k, v)
    grads = attend_block_backward(grad_out, q, k, v, ref_out, ref_lse, kernel)
    ref_grads = attend_block_backward_math(grad_out, q, k, v, ref_out, ref_lse)

    def diff(a, b):
        return float((a.double() - b.double()).abs().max())

    result = {"kernel": kernel, "out": diff(out, ref_out), "lse": diff(lse, ref_lse)}
    result.update({name: diff(g, r) for name, g, r in zip(("dq", "dk", "dv"), grads, ref_grads)})
    return result
