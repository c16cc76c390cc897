"""The process groups of one rank: all of them, built from one rank grid, named for the ledger.

The grid is ``torch.arange(W).view(dp, ring, ulysses)`` (pitdist.parallel_dims explains the layout):
rank = dp_rank * P + ring_rank * U + ulysses_rank. Every group is a line or a slab of it:

    sp       grid[d]          the P ranks that share an image (Ulysses x ring)
    dp       grid[:, r, u]    the Q ranks that hold the same token slice of different images
    sdp      grid             everything: DeepSpeed's sequence-data-parallel group (gradient reduction)
    ulysses  grid[d, r, :]    U consecutive ranks: one Ulysses all-to-all group (the SP group when R = 1)
    ring     grid[d, :, u]    R ranks striding by U: one ring (the SP group when U = 1)
    pe_dp    grid[:, r, u]    the dp ranks again, as a communicator of its own: a sharded position
                              table's gradient is reduced over it (pitdist.distributed.sharded_pe), so
                              the ledger can tell that traffic from the rest of the DP group's

torch.distributed requires every rank to create every group, in the same order; the grid gives that
order.
"""

from __future__ import annotations

import torch

from pitdist.distributed import comm
from pitdist.parallel_dims import MeshError, ParallelDims, TokenShards


class Mesh:
    """This rank's coordinates and groups; also the ``mpu`` handed to deepspeed.initialize.

    DeepSpeed asks an mpu for the sequence-parallel group and the sequence-data-parallel group (over
    which it reduces gradients and partitions ZeRO state). pitdist's attention layers use
    ``ulysses_group`` and ``ring_group``, subgroups of the SP group.
    """

    def __init__(self, dims: ParallelDims):
        self.dims = dims
        self.rank = comm.get_rank()
        self.world_size = comm.get_world_size()
        if self.world_size != dims.world_size:
            raise MeshError(f"{self.world_size} processes joined but parallel.dp * parallel.sp = {dims.world_size}")
        if dims.sp % dims.ring:
            raise MeshError(f"parallel.ring = {dims.ring} does not divide parallel.sp = {dims.sp}")
        self.dp_rank, self.sp_rank = dims.coords(self.rank)
        self.ring_rank, self.ulysses_rank = dims.sp_coords(self.sp_rank)
        grid = torch.arange(self.world_size).view(dims.dp, dims.ring, dims.ulysses)
        d, r, u = self.dp_rank, self.ring_rank, self.ulysses_rank
        self.sp_group = self._own([grid[i].flatten() for i in range(dims.dp)], d)
        dp_lines = [grid[:, i, j] for i in range(dims.ring) for j in range(dims.ulysses)]
        self.dp_group = self._own(dp_lines, self.sp_rank)
        self.sdp_group = self._own([grid.flatten()], 0)
        # With one scheme only, its group is the whole SP group; a hybrid has subgroups of both.
        self.ulysses_group = self.sp_group if dims.ring == 1 else None
        self.ring_group = self.sp_group if dims.ulysses == 1 else None
        if dims.ulysses > 1 and dims.ring > 1:
            self.ulysses_group = self._own(
                [grid[i, j] for i in range(dims.dp) for j in range(dims.ring)], d * dims.ring + r
            )
            self.ring_group = self._own(
                [grid[i, :, j] for i in range(dims.dp) for j in range(dims.ulysses)], d * dims.ulysses + u
            )
        self.pe_dp_group = self._own(dp_lines, self.sp_rank) if dims.sp > 1 else None
        self.sp_ranks = grid[d].flatten().tolist()
        self.dp_ranks = grid[:, r, u].tolist()

    @staticmethod
    def _own(lines: list[torch.Tensor], mine: int):
        """Create a group for every line of ranks (collective, in order); return this rank's, line ``mine``."""
        groups = [comm.new_group(line.tolist()) for line in lines]
        return groups[mine]

    def named_groups(self) -> list[tuple[str, object]]:
        """(ledger name, group) for every group this rank is in. Hybrid subgroups come first: where one
        of them is the whole SP group, the later name "sp" wins."""
        named = [
            ("ulysses", self.ulysses_group),
            ("ring", self.ring_group),
            ("sp", self.sp_group),
            ("dp", self.dp_group),
            ("sdp", self.sdp_group),
            ("pe_dp", self.pe_dp_group),
        ]
        return [(name, group) for name, group in named if group is not None]

    @property
    def dp(self) -> int:
        return self.dims.dp

    @property
    def sp(self) -> int:
        return self.dims.sp

    @property
    def ulysses(self) -> int:
        return self.dims.ulysses

    @property
    def ring(self) -> int:
        return self.dims.ring

    def token_shards(self, num_pixels: int, cls: bool = False) -> TokenShards:
        """How an image's tokens split over this rank's SP group (its own: ``.pixels(mesh.sp_rank)``)."""
        return self.dims.shards(num_pixels, cls)

    def pixel_range(self, num_pixels: int, cls: bool = False) -> tuple[int, int]:
        """The pixel tokens [lo, hi) of an image that this rank holds (possibly fewer than its slots)."""
        return self.token_shards(num_pixels, cls).pixels(self.sp_rank)

    # --- the mpu interface DeepSpeed queries (names are DeepSpeed's) ---------------------------------
    # The "sequence-parallel group" DeepSpeed sees is always the whole SP group (Ulysses x ring): the
    # engine's gradient reduction over the sequence-data-parallel group then sums over all P ranks that
    # share an image, whichever scheme splits its attention.
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
