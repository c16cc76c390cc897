"""The DP x SP mesh as numbers: validated once from the config, before any process starts.

No processes here (``pitdist.distributed.mesh.Mesh`` builds the groups), so the reports and the
communication model can reason about meshes without torch.distributed.

Rank layout: rank = dp_rank * P + sp_rank, so an SP group is P consecutive ranks (on one node when P
divides the GPUs per node: the all-to-alls stay on the fast links) and a DP group strides by P.

An SP group of P = U x R ranks runs Ulysses over U ranks and ring attention over R (``parallel.ring``;
R = 1 is plain Ulysses, U = 1 plain ring). sp_rank = ring_rank * U + ulysses_rank: a Ulysses subgroup
is U consecutive ranks (its all-to-alls stay on the fastest links), a ring strides by U. Every SP rank
still holds the contiguous tokens [sp_rank * N/P, (sp_rank + 1) * N/P), so Ulysses subgroup r jointly
holds the contiguous block [r * N/R, (r + 1) * N/R): after its all-to-all each member has that whole
block for H/U heads, and the R members with the same heads pass their blocks around the ring. Every
token's keys meet every query exactly once, so (attention being bidirectional) the result is exact for
any factorisation, and pooling, position embeddings and data feeding see the same layout as Ulysses.
"""

from __future__ import annotations

from dataclasses import dataclass


class MeshError(ValueError):
    """The requested DP x SP layout cannot run this model or this world. The message says what can."""


def valid_sp_sizes(heads: int, num_tokens: int) -> list[int]:
    """SP sizes Ulysses can use: each rank needs whole heads and an equal share of the tokens."""
    return [p for p in range(1, heads + 1) if heads % p == 0 and num_tokens % p == 0]


def valid_factorisations(sp: int, heads: int, num_tokens: int) -> list[tuple[int, int]]:
    """(ulysses, ring) pairs that can split ``sp`` ranks: Ulysses needs whole heads per rank, and every
    rank an equal share of the tokens (ring attention has no head constraint)."""
    if num_tokens % sp:
        return []
    return [(u, sp // u) for u in range(sp, 0, -1) if sp % u == 0 and heads % u == 0]


def _ring_sp_sizes(num_tokens: int, around: int, besides: list[int]) -> list[int]:
    """A few more SP sizes, up to 4x ``around``, that divide the tokens: what Ulysses x ring can use."""
    return [p for p in range(2, 4 * around + 1) if num_tokens % p == 0 and p not in besides][:8]


@dataclass(frozen=True)
class ParallelDims:
    dp: int  # Q
    sp: int  # P = ulysses x ring
    ring: int = 1  # R: ranks of the ring-attention ring; the other factor U = P / R runs Ulysses

    @classmethod
    def from_config(cls, parallel) -> ParallelDims:
        """From a pitdist.config.ParallelConfig (dp, sp, ring)."""
        return cls(parallel.dp, parallel.sp, parallel.ring)

    @property
    def ulysses(self) -> int:
        return self.sp // self.ring

    @property
    def world_size(self) -> int:
        return self.dp * self.sp

    def validate(self, *, heads: int, num_tokens: int, world_size: int | None = None) -> None:
        """Refuse a mesh before any rank starts, naming the setting and what would work."""
        if self.dp < 1 or self.sp < 1 or self.ring < 1:
            raise MeshError(
                f"parallel.dp, parallel.sp and parallel.ring must be >= 1, got dp = {self.dp}, "
                f"sp = {self.sp}, ring = {self.ring}"
            )
        if world_size is not None and world_size != self.world_size:
            raise MeshError(
                f"the job has {world_size} processes but parallel.dp * parallel.sp = {self.dp} * {self.sp} = "
                f"{self.world_size}; set dp and sp so that their product is {world_size}"
            )
        valid = valid_sp_sizes(heads, num_tokens)
        pairs = valid_factorisations(self.sp, heads, num_tokens)
        if self.sp % self.ring:
            raise MeshError(
                f"parallel.ring = {self.ring} does not divide parallel.sp = {self.sp} (sp = ulysses x ring); "
                f"valid (ulysses, ring) for sp = {self.sp} and this model and image: {pairs}"
            )
        if heads % self.ulysses:
            if self.ring == 1:
                hybrid = (
                    f"; or add ring attention: valid (ulysses, ring) for sp = {self.sp}: {pairs} (set parallel.ring)"
                    if pairs
                    else ""
                )
                raise MeshError(
                    f"parallel.sp = {self.sp} does not divide the model's {heads} attention heads (Ulysses gives "
                    f"each SP rank whole heads); valid sp for this model and image: {valid}{hybrid}"
                )
            raise MeshError(
                f"parallel.ulysses = sp / ring = {self.sp} / {self.ring} = {self.ulysses} does not divide the "
                f"model's {heads} attention heads (Ulysses gives each rank of its group whole heads); valid "
                f"(ulysses, ring) for sp = {self.sp}: {pairs}"
            )
        if num_tokens % self.sp:
            more = _ring_sp_sizes(num_tokens, self.sp, valid)
            raise MeshError(
                f"parallel.sp = {self.sp} does not divide the {num_tokens} tokens of an image (DeepSpeed Ulysses "
                f"would silently compute wrong attention, DeepSpeed issue 7384); valid sp: {valid}"
                + (f"; with ring attention (parallel.ring) also {more}" if more else "")
            )

    def coords(self, rank: int) -> tuple[int, int]:
        """(dp_rank, sp_rank) of a global rank."""
        return divmod(rank, self.sp)

    def sp_coords(self, sp_rank: int) -> tuple[int, int]:
        """(ring_rank, ulysses_rank) of an SP rank."""
        return divmod(sp_rank, self.ulysses)

    def token_range(self, sp_rank: int, num_tokens: int) -> tuple[int, int]:
        """The contiguous global token positions [lo, hi) that SP rank ``sp_rank`` owns."""
        share = num_tokens // self.sp
        return sp_rank * share, (sp_rank + 1) * share
