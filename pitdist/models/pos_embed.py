"""Position embeddings, indexed by GLOBAL token position.

Every variant takes the positions of the tokens it is given, not assumed to be 0..n-1, so a rank that
holds only a slice of an image's tokens embeds them exactly as the full model would. Each module adds
its embedding to x and returns the sum, so "none" is simply the identity.
"""

from __future__ import annotations

import torch
from torch import nn


class NoPosEmbed(nn.Module):
    """No position information: PiT without PE is permutation-equivariant up to the pooling."""

    def forward(self, x: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        return x


class SinCosPosEmbed(nn.Module):
    """Fixed 2-D sin-cos embedding (MAE style): half the channels encode the row, half the column.

    Computed from the positions on the fly, so it has no parameters and sequence parallelism needs no
    communication for it.
    """

    def __init__(self, grid: tuple[int, int], dim: int, temperature: float = 10000.0):
        super().__init__()
        if dim % 4 != 0:
            raise ValueError(f"sincos position embedding needs dim % 4 == 0, got dim = {dim}")
        self.grid = grid
        self.dim = dim
        quarter = dim // 4
        omega = 1.0 / temperature ** (torch.arange(quarter, dtype=torch.float64) / quarter)
        self.register_buffer("omega", omega, persistent=False)

    def table(self, positions: torch.Tensor) -> torch.Tensor:
        rows = torch.div(positions, self.grid[1], rounding_mode="floor").to(torch.float64)
        cols = (positions % self.grid[1]).to(torch.float64)
        out_r = rows[:, None] * self.omega[None, :]
        out_c = cols[:, None] * self.omega[None, :]
        # float64 then cast: the same position gives bit-identical values whatever slice it is in.
        return torch.cat([out_r.sin(), out_r.cos(), out_c.sin(), out_c.cos()], dim=1).to(torch.float32)

    def forward(self, x: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        return x + self.table(positions).to(x.dtype)


class LearnedPosEmbed(nn.Module):
    """A learned table of ``num_rows`` rows starting at global position ``offset``.

    The plain model holds all N rows (offset 0). Sequence parallelism may replace it with a shard that
    holds only one rank's rows (see pitdist.distributed.parallelize); indexing by global position keeps
    both exact.
    """

    def __init__(self, num_rows: int, dim: int, offset: int = 0):
        super().__init__()
        self.offset = offset
        self.weight = nn.Parameter(torch.empty(num_rows, dim))
        nn.init.trunc_normal_(self.weight, std=0.02)

    def forward(self, x: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        return add_table_rows(x, self.weight, self.offset, positions)


def add_table_rows(x: torch.Tensor, table: torch.Tensor, offset: int, positions: torch.Tensor) -> torch.Tensor:
    """x + the rows of ``table`` (which starts at global position ``offset``) for ``positions``."""
    local = positions - offset
    if local.numel() and (int(local.min()) < 0 or int(local.max()) >= table.shape[0]):
        raise IndexError(
            f"positions {int(positions.min())}..{int(positions.max())} fall outside this table's rows "
            f"{offset}..{offset + table.shape[0] - 1}"
        )
    return x + table[local].to(x.dtype)


def build_pos_embed(kind: str, grid: tuple[int, int], dim: int) -> nn.Module:
    if kind == "none":
        return NoPosEmbed()
    if kind == "sincos":
        return SinCosPosEmbed(grid, dim)
    if kind == "learned":
        return LearnedPosEmbed(grid[0] * grid[1], dim)
    raise ValueError(f"unknown position embedding {kind!r}; choose none, sincos or learned")
