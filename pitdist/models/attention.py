"""Multi-head self-attention with a swappable inner attention.

The inner attention maps batch-first q, k, v of shape [b, s, h, d] to [b, s, h, d]. The plain model
uses SDPAttention; sequence parallelism swaps in DeepSpeed's DistributedAttention around it, which
turns a [b, S, h, d] token shard (S = ceil(N/P) slots) into a [b, P*S, h/P, d] head shard and back.
Nothing here knows.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class SDPAttention(nn.Module):
    """Bidirectional attention over all tokens it is given.

    No mask and no dropout, so on CPU torch picks a memory-efficient kernel whose memory grows with the
    sequence length, not its square: what makes 12,544-token images trainable here.
    """

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        out = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))
        return out.transpose(1, 2)


class Attention(nn.Module):
    def __init__(self, dim: int, heads: int):
        super().__init__()
        if dim % heads != 0:
            raise ValueError(f"attention width {dim} is not divisible by {heads} heads")
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.inner_attention: nn.Module = SDPAttention()

    def project_in(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """[b, n, dim] -> q, k, v of shape [b, n, heads, dim / heads]."""
        b, n, dim = x.shape
        q, k, v = self.qkv(x).view(b, n, 3, self.heads, dim // self.heads).unbind(dim=2)
        return q.contiguous(), k.contiguous(), v.contiguous()

    def project_out(self, attended: torch.Tensor) -> torch.Tensor:
        """The inner attention's [b, n, heads, dim / heads] -> [b, n, dim]."""
        b, n, heads, head_dim = attended.shape
        return self.proj(attended.reshape(b, n, heads * head_dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.project_out(self.inner_attention(*self.project_in(x)))
