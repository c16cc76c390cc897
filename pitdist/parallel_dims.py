"""The DP x SP mesh as numbers: validated once from the config, before any process starts.

No processes here (``pitdist.distributed.mesh.Mesh`` builds the groups), so the reports and the
communication model can reason about meshes without torch.distributed.

Rank layout: rank = dp_rank * P + sp_rank, so an SP group is P consecutive ranks (on one node when P
divides the GPUs per node: the all-to-alls stay on the fast links) and a DP group strides by P.

An SP group of P = U x R ranks runs Ulysses over U ranks and ring attention over R (``parallel.ring``;
R = 1 is plain Ulysses, U = 1 plain ring). sp_rank = ring_rank * U + ulysses_rank: a Ulysses subgroup
is U consecutive ranks (its all-to-alls stay on the fastest links), a ring strides by U. Every SP rank
still holds S = ceil(L / P) contiguous token slots [sp_rank * S, (sp_rank + 1) * S) of the image's L
tokens, padded at the end (TokenShards), so Ulysses subgroup r jointly holds the contiguous block
[r * U * S, (r + 1) * U * S): after its all-to-all each member has that whole block for H/U heads, and
the R members with the same heads pass their blocks around the ring. Every real key meets every query
exactly once, so (attention being bidirectional) the result is exact for any factorisation, and
pooling, position embeddings and data feeding see the same layout as Ulysses.
"""

from __future__ import annotations

from dataclasses import dataclass


class MeshError(ValueError):
    """The requested DP x SP layout cannot run this model or this world. The message says what can."""


def valid_sp_sizes(heads: int) -> list[int]:
    """SP sizes plain Ulysses can use: each rank needs whole heads (any token count pads, see TokenShards)."""
    return [p for p in range(1, heads + 1) if heads % p == 0]


def valid_factorisations(sp: int, heads: int) -> list[tuple[int, int]]:
    """(ulysses, ring) pairs that can split ``sp`` ranks: Ulysses needs whole heads per rank; ring
    attention has no head constraint."""
    return [(u, sp // u) for u in range(sp, 0, -1) if sp % u == 0 and heads % u == 0]


@dataclass(frozen=True)
class TokenShards:
    """How an image's L = N (+ 1 CLS) tokens split over the P ranks of an SP group.

    Every rank holds S = ceil(L / P) token slots; slot j of SP rank r is sequence position r * S + j.
    The L real tokens fill positions [0, L) (the N pixel tokens in raster order, then the CLS token
    when the model pools by it) and the P * S - L padding slots come last. So rank r holds the real
    tokens [r * S, min((r + 1) * S, L)) at the start of its shard and padding after them: the first
    ranks are full, at most one is partly padded, and any after it hold only padding.

    Because the padding is at the end of the sequence, any run of consecutive ranks (a Ulysses group
    gathering its members' shards, a ring block) holds a real PREFIX followed by padding. Masking the
    padded keys out of attention is then attending to that prefix: no mask tensor at all (nothing
    grows with N x N, and every fused kernel accepts it, flash included, which takes no mask).
    """

    num_pixels: int  # N: the image's pixel (or patch) tokens
    sp: int  # P
    cls: bool = False  # the model appends a CLS token (model.pool = "cls")

    @property
    def length(self) -> int:
        """L: the real tokens of the sequence."""
        return self.num_pixels + int(self.cls)

    @property
    def shard(self) -> int:
        """S: the token slots of every rank."""
        return -(-self.length // self.sp)

    @property
    def padded(self) -> int:
        return self.shard * self.sp

    @property
    def padding(self) -> int:
        return self.padded - self.length

    def real(self, first: int, ranks: int = 1) -> int:
        """Real tokens held by ``ranks`` consecutive SP ranks from ``first``: the prefix of their slots."""
        return max(0, min(self.length - first * self.shard, ranks * self.shard))

    def pixels(self, sp_rank: int) -> tuple[int, int]:
        """The pixel tokens [lo, hi) SP rank ``sp_rank`` holds (hi = lo when it holds none)."""
        lo = min(sp_rank * self.shard, self.num_pixels)
        return lo, min((sp_rank + 1) * self.shard, self.num_pixels)

    def holds_cls(self, sp_rank: int) -> bool:
        """True for the one rank whose slots include the CLS token (sequence position N)."""
        return self.cls and sp_rank * self.shard <= self.num_pixels < (sp_rank + 1) * self.shard


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

    def validate(self, *, heads: int, world_size: int | None = None) -> None:
        """Refuse a mesh before any rank starts, naming the setting and what would work.

        Only what cannot run is refused: an image of any token count runs on any SP size, its shards
        padded to a common length (TokenShards)."""
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
        valid = valid_sp_sizes(heads)
        pairs = valid_factorisations(self.sp, heads)
        if self.sp % self.ring:
            raise MeshError(
                f"parallel.ring = {self.ring} does not divide parallel.sp = {self.sp} (sp = ulysses x ring); "
                f"valid (ulysses, ring) for sp = {self.sp} and this model: {pairs}"
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
                    f"each SP rank whole heads); valid sp for this model: {valid}{hybrid}"
                )
            raise MeshError(
                f"parallel.ulysses = sp / ring = {self.sp} / {self.ring} = {self.ulysses} does not divide the "
                f"model's {heads} attention heads (Ulysses gives each rank of its group whole heads); valid "
                f"(ulysses, ring) for sp = {self.sp}: {pairs}"
            )

    def coords(self, rank: int) -> tuple[int, int]:
        """(dp_rank, sp_rank) of a global rank."""
        return divmod(rank, self.sp)

    def sp_coords(self, sp_rank: int) -> tuple[int, int]:
        """(ring_rank, ulysses_rank) of an SP rank."""
        return divmod(sp_rank, self.ulysses)

    def shards(self, num_pixels: int, cls: bool = False) -> TokenShards:
        """How an image of ``num_pixels`` tokens (+ CLS) splits over this mesh's SP ranks."""
        return TokenShards(num_pixels, self.sp, cls)
