"""The DP x SP process mesh: validated once from the config, built once per process.

Rank layout: rank = dp_rank * P + sp_rank, so an SP group is P consecutive ranks (on one node when P
divides the GPUs per node: the all-to-alls stay on the fast links) and a DP group strides by P.
"""

from __future__ import annotations

from dataclasses import dataclass

from pitdist.distributed import comm


class MeshError(ValueError):
    """The requested DP x SP layout cannot run this model or this world. The message says what can."""


def valid_sp_sizes(heads: int, num_tokens: int) -> list[int]:
    """SP sizes Ulysses can use: each rank needs whole heads and an equal share of the tokens."""
    return [p for p in range(1, heads + 1) if heads % p == 0 and num_tokens % p == 0]


@dataclass(frozen=True)
class ParallelDims:
    dp: int  # Q
    sp: int  # P

    @property
    def world_size(self) -> int:
        return self.dp * self.sp

    def validate(self, *, heads: int, num_tokens: int, world_size: int | None = None) -> None:
        """Refuse a mesh before any rank starts, naming the setting and what would work."""
        if self.dp < 1 or self.sp < 1:
            raise MeshError(f"parallel.dp and parallel.sp must be >= 1, got dp = {self.dp}, sp = {self.sp}")
        if world_size is not None and world_size != self.world_size:
            raise MeshError(
                f"the job has {world_size} processes but parallel.dp * parallel.sp = {self.dp} * {self.sp} = "
                f"{self.world_size}; set dp and sp so that their product is {world_size}"
            )
        valid = valid_sp_sizes(heads, num_tokens)
        if heads % self.sp:
            raise MeshError(
                f"parallel.sp = {self.sp} does not divide the model's {heads} attention heads (Ulysses gives "
                f"each SP rank whole heads); valid sp for this model and image: {valid}"
            )
        if num_tokens % self.sp:
            raise MeshError(
                f"parallel.sp = {self.sp} does not divide the {num_tokens} tokens of an image (DeepSpeed Ulysses "
                f"would silently compute wrong attention, DeepSpeed issue 7384); valid sp: {valid}"
            )

    def coords(self, rank: int) -> tuple[int, int]:
        """(dp_rank, sp_rank) of a global rank."""
        return divmod(rank, self.sp)

    def token_range(self, sp_rank: int, num_tokens: int) -> tuple[int, int]:
        """The contiguous global token positions [lo, hi) that SP rank ``sp_rank`` owns."""
        share = num_tokens // self.sp
        return sp_rank * share, (sp_rank + 1) * share


class Mesh:
    """The process groups of one rank, created collectively by every rank in the same order.

    It doubles as the ``mpu`` handed to deepspeed.initialize: DeepSpeed asks it for the sequence-parallel
    group (for Ulysses) and the sequence-data-parallel group (over which it reduces gradients and
    partitions ZeRO state).
    """

    def __init__(self, dims: ParallelDims):
        self.dims = dims
        self.rank = comm.get_rank()
        self.world_size = comm.get_world_size()
        if self.world_size != dims.world_size:
            raise MeshError(
                f"{self.world_size} processes joined but parallel.dp * parallel.sp = {dims.world_size}"
            )
        self.dp_rank, self.sp_rank = dims.coords(self.rank)
        self.sp_group = self.dp_group = None
        for d in range(dims.dp):  # every rank must create every group, in the same order
            group = comm.new_group([d * dims.sp + s for s in range(dims.sp)])
            if d == self.dp_rank:
                self.sp_group = group
        for s in range(dims.sp):
            group = comm.new_group([d * dims.sp + s for d in range(dims.dp)])
            if s == self.sp_rank:
                self.dp_group = group
        self.sdp_group = comm.new_group(list(range(self.world_size)))

    @property
    def dp(self) -> int:
        return self.dims.dp

    @property
    def sp(self) -> int:
        return self.dims.sp

    def token_range(self, num_tokens: int) -> tuple[int, int]:
        return self.dims.token_range(self.sp_rank, num_tokens)

    # --- the mpu interface DeepSpeed queries (names are DeepSpeed's) ---------------------------------
    # DeepSpeed recognises a sequence-parallel mpu (as opposed to a Megatron tensor-parallel one) by
    # this attribute's presence: it then treats model-parallel size as 1 and reduces over SP x DP.
    def initialize_sequence_parallel(self, *_):
        raise RuntimeError("pitdist's Mesh builds its groups itself")

    def get_sequence_parallel_group(self):
        return self.sp_group

    def get_sequence_parallel_world_size(self) -> int:
        return self.sp

    def get_sequence_parallel_rank(self) -> int:
        return self.sp_rank

    def get_sequence_data_parallel_group(self):
        return self.sdp_group

    def get_sequence_data_parallel_world_size(self) -> int:
        return self.world_size

    def get_sequence_data_parallel_rank(self) -> int:
        return self.rank

    get_model_parallel_group = get_sequence_parallel_group
    get_model_parallel_world_size = get_sequence_parallel_world_size
    get_model_parallel_rank = get_sequence_parallel_rank
