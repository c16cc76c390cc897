"""Pixel Transformer (PiT): a plain ViT whose patch size may be 1, so every pixel is a token.

The model knows nothing about distribution. It takes tokens and their GLOBAL positions, so a rank
that holds tokens [lo, hi) of an image runs the very same module; sequence parallelism only swaps the
inner attention, the pooling and the sequence the blocks run on (a rank's shard, padded to the
group's common length), and activation checkpointing only the functions that run a block and its
local stages (pitdist.distributed.parallelize).

The image's feature is the mean of its N pixel tokens (``pool = "mean"``, as the PiT paper) or the
output of a learned CLS token (``pool = "cls"``, ViT's). The CLS token is the LAST token of the
sequence (ViT puts it first): attention has no notion of order and the position embeddings attach to
the pixel tokens themselves, so where the CLS token sits changes nothing in the result, and putting it
last keeps every pixel token's sequence position equal to its pixel position. It has no position
embedding: it is a learned vector already.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from pitdist.config import ModelConfig
from pitdist.models.attention import Attention
from pitdist.models.pos_embed import build_pos_embed


def pixels_to_tokens(pixels: torch.Tensor, patch_size: int, token_range: tuple[int, int] | None = None) -> torch.Tensor:
    """uint8 images [B, H, W, C] -> float tokens [B, n, p*p*C] in raster order, scaled to [-1, 1].

    ``token_range`` = (lo, hi) converts only tokens lo..hi-1: a sequence-parallel rank never touches
    the rest of the image.
    """
    b, h, w, c = pixels.shape
    p = patch_size
    if h % p or w % p:
        raise ValueError(f"image {h}x{w} is not divisible into {p}x{p} patches")
    if p == 1:
        x = pixels.reshape(b, h * w, c)
    else:
        x = pixels.view(b, h // p, p, w // p, p, c).permute(0, 1, 3, 2, 4, 5).reshape(b, (h // p) * (w // p), p * p * c)
    if token_range is not None:
        x = x[:, token_range[0] : token_range[1]]
    return x.float().div_(127.5).sub_(1.0)


class MeanPool(nn.Module):
    """Average over the token dimension. Swapped for an SP-aware version under sequence parallelism."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.mean(dim=1)


class ClsPool(nn.Module):
    """The CLS token's output: the last token of the sequence (see the module docstring)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x[:, -1]


class TokenSequence(nn.Module):
    """What the blocks run on: the embedded pixel tokens, then the CLS token if this sequence holds it,
    then zero padding up to ``length`` slots.

    The plain model holds the whole image, unpadded (``length`` None). Under sequence parallelism each
    rank holds one shard of S slots (pitdist.parallel_dims.TokenShards): its pixel tokens, the CLS
    token on the one rank whose slots include it, and padding. A padded slot is never a key (the
    attention attends to real keys only) and never pooled, so it adds nothing to the result and gets a
    gradient of exactly zero; zeros keep it finite.
    """

    def __init__(self, holds_cls: bool, length: int | None = None):
        super().__init__()
        self.holds_cls, self.length = holds_cls, length

    def forward(self, x: torch.Tensor, cls_token: torch.Tensor | None) -> torch.Tensor:
        if self.holds_cls:
            x = torch.cat([x, cls_token.to(x.dtype).expand(x.shape[0], -1, -1)], dim=1)
        if self.length is not None and x.shape[1] < self.length:
            x = F.pad(x, (0, 0, 0, self.length - x.shape[1]))
        return x


class MLP(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


def run(stage: Callable[..., Any], *inputs: Any) -> Any:
    """Run a piece of the model as it is written: the default of the ``run_block`` / ``run_stage`` slots."""
    return stage(*inputs)


class Block(nn.Module):
    """Pre-norm transformer block, written as two local stages around the inner attention:

        q, k, v  = project_in(x)                        norm1, qkv projection
        attended = attn.inner_attention(q, k, v)        the only part that may talk to other ranks
        y        = project_out(x, attended)             output projection, residual, norm2, MLP, residual

    ``run_stage(stage, *inputs)`` runs each local stage; activation checkpointing swaps it (and the
    model's ``run_block``) for one that recomputes in backward (pitdist.distributed.checkpointing), as
    sequence parallelism swaps the inner attention.
    """

    def __init__(self, dim: int, heads: int, mlp_ratio: float):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = Attention(dim, heads)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = MLP(dim, int(dim * mlp_ratio))
        self.run_stage: Callable[..., Any] = run

    def project_in(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return self.attn.project_in(self.norm1(x))

    def project_out(self, x: torch.Tensor, attended: torch.Tensor) -> torch.Tensor:
        x = x + self.attn.project_out(attended)
        return x + self.mlp(self.norm2(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q, k, v = self.run_stage(self.project_in, x)
        return self.run_stage(self.project_out, x, self.attn.inner_attention(q, k, v))


class PiT(nn.Module):
    def __init__(
        self,
        image_size: tuple[int, int],
        channels: int,
        num_classes: int,
        patch_size: int = 1,
        dim: int = 64,
        depth: int = 4,
        heads: int = 4,
        mlp_ratio: float = 4.0,
        pos_embed: str = "sincos",
        pool: str = "mean",
    ):
        super().__init__()
        h, w = image_size
        if h % patch_size or w % patch_size:
            raise ValueError(f"image {h}x{w} is not divisible into {patch_size}x{patch_size} patches")
        self.patch_size = patch_size
        self.grid = (h // patch_size, w // patch_size)
        self.num_tokens = self.grid[0] * self.grid[1]
        self.embed = nn.Linear(channels * patch_size * patch_size, dim)
        self.pos_embed = build_pos_embed(pos_embed, self.grid, dim)
        if pool not in ("mean", "cls"):
            raise ValueError(f"unknown pooling {pool!r}; choose mean or cls")
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim)) if pool == "cls" else None
        self.sequence = TokenSequence(holds_cls=pool == "cls")
        self.blocks = nn.ModuleList(Block(dim, heads, mlp_ratio) for _ in range(depth))
        self.run_block: Callable[..., Any] = run  # (block, x) -> block(x); see Block
        self.norm = nn.LayerNorm(dim)
        self.pool: nn.Module = MeanPool() if pool == "mean" else ClsPool()
        self.head = nn.Linear(dim, num_classes)
        self.apply(_init_weights)
        if self.cls_token is not None:
            nn.init.trunc_normal_(self.cls_token, std=0.02)
        # A pixel token has only C inputs: the truncated-normal 0.02 init would leave its intensity a
        # whisper next to the position embedding. Xavier (as MAE inits its patch embedding) fixes that
        # and trains digits ~4x faster.
        nn.init.xavier_uniform_(self.embed.weight)

    def forward(self, tokens: torch.Tensor, positions: torch.Tensor | None = None) -> torch.Tensor:
        """tokens [B, n, p*p*C] at global ``positions`` [n] (default: all N tokens) -> logits [B, classes]."""
        if positions is None:
            if tokens.shape[1] != self.num_tokens:
                raise ValueError(f"got {tokens.shape[1]} tokens without positions; the image has {self.num_tokens}")
            positions = torch.arange(self.num_tokens, device=tokens.device)
        x = self.sequence(self.pos_embed(self.embed(tokens), positions), self.cls_token)
        for block in self.blocks:
            x = self.run_block(block, x)
        return self.head(self.pool(self.norm(x)))

    def forward_images(self, pixels: torch.Tensor) -> torch.Tensor:
        """Whole uint8 images [B, H, W, C] -> logits: the single-device reference path."""
        return self(pixels_to_tokens(pixels, self.patch_size))


def _init_weights(module: nn.Module) -> None:
    if isinstance(module, nn.Linear):
        nn.init.trunc_normal_(module.weight, std=0.02)
        nn.init.zeros_(module.bias)
    elif isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)


def build_model(cfg: ModelConfig, image_shape: tuple[int, int, int], num_classes: int) -> PiT:
    """A PiT (patch_size 1) or ViT for images of ``image_shape`` = (H, W, C)."""
    h, w, c = image_shape
    return PiT(
        image_size=(h, w),
        channels=c,
        num_classes=num_classes,
        patch_size=cfg.patch_size,
        dim=cfg.width,
        depth=cfg.num_layers,
        heads=cfg.num_heads,
        mlp_ratio=cfg.mlp_ratio,
        pos_embed=cfg.pos_embed,
        pool=cfg.pool,
    )
