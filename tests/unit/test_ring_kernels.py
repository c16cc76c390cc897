"""Ring attention's block kernels: which fused kernel each device, dtype and head dim gets, and that every
kernel agrees with plain matrix products, forward and backward, keys shorter than queries included."""

import pytest
import torch

from pitdist.distributed.ring_attention import (
    attend_block,
    attend_block_backward,
    attend_block_backward_math,
    attend_block_math,
)
from pitdist.distributed.ring_kernels import block_kernel, choose_kernel, compare_kernels

BF16, FP16, FP32, FP64 = torch.bfloat16, torch.float16, torch.float32, torch.float64
needs_cuda = pytest.mark.skipif(
    not torch.cuda.is_available(), reason="needs a CUDA device: the fused CUDA kernels cannot exist here"
)


@pytest.mark.parametrize(
    "device_type, dtype, head_dim, expected",
    [
        ("cpu", FP32, 64, "cpu_flash"),
        ("cpu", BF16, 300, "cpu_flash"),
        ("cpu", FP64, 8, "cpu_flash"),
        ("cuda", BF16, 64, "cuda_flash"),
        ("cuda", BF16, 128, "cuda_flash"),
        ("cuda", FP16, 64, "cuda_flash"),
        ("cuda", FP16, 128, "cuda_flash"),
        ("cuda", BF16, 256, "cuda_flash"),
        ("cuda", BF16, 264, "cuda_efficient"),  # past flash's 256, still 8-aligned
        ("cuda", FP32, 64, "cuda_efficient"),
        ("cuda", FP32, 12, "cuda_efficient"),
        ("cuda", BF16, 300, "math"),  # not a multiple of 8: neither fused kernel
        ("cuda", FP32, 30, "math"),  # not a multiple of 4
        ("cuda", FP64, 64, "math"),
        ("mps", FP32, 64, "math"),
        ("xpu", BF16, 64, "math"),
        ("meta", BF16, 64, "math"),
        ("rocm", BF16, 64, "math"),
    ],
)
def test_the_kernel_choice_follows_device_dtype_and_head_dim(device_type, dtype, head_dim, expected):
    assert choose_kernel(device_type, dtype, head_dim) == expected


def test_before_sm80_half_precision_takes_the_efficient_kernel_and_bf16_math():
    assert choose_kernel("cuda", FP16, 64, capability=(7, 5)) == "cuda_efficient"
    assert choose_kernel("cuda", BF16, 64, capability=(7, 5)) == "math"
    assert choose_kernel("cuda", BF16, 64, capability=(9, 0)) == "cuda_flash"


def test_empty_blocks_and_unequal_head_dims_take_math():
    assert choose_kernel("cuda", BF16, 64, s_k=0) == "math"
    assert choose_kernel("cuda", BF16, 64, s_q=0) == "math"
    assert choose_kernel("cuda", BF16, -1) == "math"
    q = torch.empty(1, 1, 4, 8, device="meta")
    assert block_kernel(q, q, torch.empty(1, 1, 4, 16, device="meta")) == "math"


def test_cpu_tensors_take_the_cpu_flash_kernel():
    q = torch.zeros(1, 2, 4, 64, dtype=BF16)
    assert block_kernel(q, q[:, :, :3], q[:, :, :3]) == "cpu_flash"


def qkv(dtype, s_q, s_k, b=2, h=3, d=16, seed=0, device="cpu"):
    gen = torch.Generator().manual_seed(seed)
    shapes = [(b, h, s_q, d), (b, h, s_k, d), (b, h, s_k, d), (b, h, s_q, d)]
    return [torch.randn(*s, generator=gen, dtype=FP64).to(device, dtype) for s in shapes]


def rel(a, b):
    return float((a.double() - b.double()).abs().max() / b.double().abs().max())


@pytest.mark.parametrize("s_q, s_k", [(24, 24), (24, 7), (5, 19)])
def test_cpu_kernel_matches_math_forward_and_backward_keys_shorter_or_longer(s_q, s_k):
    q, k, v, grad_out = qkv(FP32, s_q, s_k)
    out, lse = attend_block(q, k, v)
    ref_out, ref_lse = attend_block_math(q, k, v)
    assert rel(out, ref_out) < 1e-5 and rel(lse, ref_lse) < 1e-5
    grads = attend_block_backward(grad_out, q, k, v, ref_out, ref_lse)
    for g, r in zip(grads, attend_block_backward_math(grad_out, q, k, v, ref_out, ref_lse)):
        assert g.shape == r.shape
        assert rel(g, r) < 1e-5


def test_bf16_blocks_keep_bf16_outputs_and_an_fp32_lse():
    q, k, v, grad_out = qkv(BF16, 16, 9)
    out, lse = attend_block(q, k, v)
    assert out.dtype == BF16 and lse.dtype == FP32 and lse.shape == (2, 3, 16)
    ref_out, ref_lse = attend_block_math(q, k, v)
    assert ref_lse.dtype == FP32
    assert rel(out, ref_out) < 2e-2 and rel(lse, ref_lse) < 1e-3
    dq, dk, dv = attend_block_backward(grad_out, q, k, v, out, lse)
    assert (dq.dtype, dk.dtype, dv.dtype) == (BF16, BF16, BF16)


def test_float64_blocks_keep_a_float64_lse_on_every_kernel():
    q, k, v, _ = qkv(FP64, 8, 5)
    assert attend_block(q, k, v)[1].dtype == FP64
    assert attend_block_math(q, k, v)[1].dtype == FP64


def test_compare_kernels_reports_the_cpu_kernel_and_small_differences():
    result = compare_kernels("cpu", FP32, 2, 3, 20, 11, 16, seed=1)
    assert result["kernel"] == "cpu_flash"
    assert set(result) == {"kernel", "out", "lse", "dq", "dk", "dv"}
    assert all(result[name] < 1e-4 for name in ("out", "lse", "dq", "dk", "dv")), result


@pytest.mark.parametrize("kernel, dtype", [("cuda_flash", BF16), ("cuda_efficient", FP32), ("cuda_efficient", BF16)])
@pytest.mark.parametrize("s_q, s_k", [(40, 24), (33, 64)])
def test_cuda_kernel_calls_bind_to_their_schemas_on_meta_tensors(kernel, dtype, s_q, s_k):
    # Meta tensors run torch's shape functions for the CUDA ops: the argument lists, the efficient
    # kernel's padded lse (cut to s_q, padded back) and the gradients' shapes, without a GPU.
    q, k, v, grad_out = (torch.empty(2, 3, n, 64, dtype=dtype, device="meta") for n in (s_q, s_k, s_k, s_q))
    out, lse = attend_block(q, k, v, kernel)
    assert out.shape == q.shape and out.dtype == dtype
    assert lse.shape == (2, 3, s_q) and lse.dtype == FP32
    dq, dk, dv = attend_block_backward(grad_out, q, k, v, out, lse, kernel)
    assert (dq.shape, dk.shape, dv.shape) == (q.shape, k.shape, v.shape)
    assert dq.dtype == dtype


def test_an_unknown_kernel_name_is_refused():
    q, k, v, grad_out = qkv(FP32, 4, 4)
    with pytest.raises(ValueError, match="unknown block kernel"):
        attend_block(q, k, v, "triton")
    with pytest.raises(ValueError, match="unknown block kernel"):
        attend_block_backward(grad_out, q, k, v, q, q[..., 0], "triton")


@needs_cuda
@pytest.mark.parametrize("dtype, tolerance", [(FP32, 1e-4), (BF16, 2e-2)])
@pytest.mark.parametrize("s_q, s_k", [(40, 24), (33, 70)])
def test_cuda_fused_kernel_matches_math_forward_and_backward(dtype, tolerance, s_q, s_k):
    q, k, v, grad_out = qkv(dtype, s_q, s_k, d=64, device="cuda")
    kernel = block_kernel(q, k, v)
    assert kernel == ("cuda_efficient" if dtype == FP32 else "cuda_flash")
    out, lse = attend_block(q, k, v)
    ref_out, ref_lse = attend_block_math(q, k, v)
    assert lse.dtype == FP32 and lse.shape == ref_lse.shape
    assert rel(out, ref_out) < tolerance and rel(lse, ref_lse) < 1e-4
    grads = attend_block_backward(grad_out, q, k, v, ref_out, ref_lse)
    for g, r in zip(grads, attend_block_backward_math(grad_out, q, k, v, ref_out, ref_lse)):
        assert g.shape == r.shape and g.dtype == dtype
        assert rel(g, r) < tolerance
    # The efficient kernel takes bf16 too (head dims past flash's 256): check it as well.
    if dtype == BF16:
        out, lse = attend_block(q, k, v, "cuda_efficient")
        assert rel(out, ref_out) < tolerance and rel(lse, ref_lse) < 1e-4
        grads = attend_block_backward(grad_out, q, k, v, ref_out, ref_lse, "cuda_efficient")
        for g, r in zip(grads, attend_block_backward_math(grad_out, q, k, v, ref_out, ref_lse)):
            assert rel(g, r) < tolerance


@needs_cuda
def test_compare_kernels_on_cuda_reports_the_fused_kernel():
    result = compare_kernels("cuda", BF16, 2, 3, 40, 24, 64, seed=0)
    assert result["kernel"] == "cuda_flash"
    assert result["lse"] < 1e-3
