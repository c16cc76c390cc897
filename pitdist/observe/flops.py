"""Training FLOPs of a PiT/ViT, for throughput and MFU.

Derivation (nanoGPT / PaLM appendix B style). A matmul of a token with a weight [i, o] costs 2*i*o
FLOPs forward; backward costs twice that (gradients w.r.t. input and weight), so training costs
6 FLOPs per weight per token. Per token of an image of N tokens with width D, L blocks, MLP width H:

    embedding          p*p*C*D          weights
    each block         4*D*D + 2*D*H    weights (qkv 3*D*D, proj D*D, fc1 and fc2 D*H each)
    head               D*K              weights, applied once per image, i.e. D*K/N per token

Attention also multiplies activations with activations: q.k^T and attn.v each cost 2*N*D FLOPs per
token per layer forward (N keys, D = heads * head_dim), 4*N*D together, 12*N*D for training. So

    flops_per_token = 6 * (p*p*C*D + L*(4*D*D + 2*D*H) + D*K/N) + 12*L*N*D

Norms, softmax, GELU and the position embedding are a few FLOPs per element and are left out, as in
the usual estimate. The N term is what makes pixel tokens expensive: at 224x224 (N = 50,176) it is
~97% of the total for PiT-B.
"""

from __future__ import annotations

from pitdist.config import ModelConfig


def flops_per_token(cfg: ModelConfig, num_tokens: int, channels: int, num_classes: int) -> float:
    d = cfg.width
    hidden = int(d * cfg.mlp_ratio)
    weights = (
        cfg.patch_size**2 * channels * d + cfg.num_layers * (4 * d * d + 2 * d * hidden) + d * num_classes / num_tokens
    )
    return 6.0 * weights + 12.0 * cfg.num_layers * num_tokens * d


def flops_per_image(cfg: ModelConfig, num_tokens: int, channels: int, num_classes: int) -> float:
    return num_tokens * flops_per_token(cfg, num_tokens, channels, num_classes)
