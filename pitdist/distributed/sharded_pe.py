"""A learned position table sharded with the tokens, its gradient reduced over the DP group only.

SP rank r holds rows [r*S, (r+1)*S) of the table padded to P*S rows (S = ceil(L/P) token slots per
rank, pitdist.parallel_dims.TokenShards; the padding rows serve no token). DeepSpeed's engine
reduces every ordinary gradient over all Q*P ranks, which would add different rows together; the one
parameter kind it reduces over a smaller group is an MoE expert parameter. So the shard is declared
as DeepSpeed expert state:

* ``ShardedLearnedPosEmbed`` subclasses deepspeed.moe.layer.MoE only as the marker the engine checks
  (``has_moe_layers``); it runs none of MoE's code. The engine then broadcasts the shard within its DP
  group (not from rank 0), reduces its gradient over the expert-data-parallel group, gives it its own
  ZeRO partition group, and saves it in per-"expert" checkpoint files (one per SP rank), all of which
  need the ``deepspeed_moe.experts.deepspeed_experts.0.weight`` key layout used here.
* ``register_groups`` gives DeepSpeed the mesh's groups as its expert groups of expert-parallel size P:
  expert groups are the SP groups, expert-data-parallel groups the mesh's ``pe_dp`` groups (DP ranks).
* ``model_parallel = True`` makes ZeRO 0's gradient clipping count the shard on every SP rank
  (other parameters are replicated over SP and counted once).

Verified exact against single-device AdamW with clipping for ZeRO 0, 1 and 2 (tests/distributed).
"""

from __future__ import annotations

import torch
from deepspeed.moe.layer import MoE
from deepspeed.utils import groups
from torch import nn

from pitdist.models.pos_embed import add_table_rows


def expert_group_name(sp: int) -> str:
    # DeepSpeed parses this exact form (groups._get_max_expert_size).
    return f"ep_size_{sp}"


def register_groups(mesh) -> None:
    """Hand DeepSpeed the mesh's groups as its expert groups for this SP size: expert-parallel = the SP
    group, expert-data-parallel = the mesh's ``pe_dp_group`` (the DP ranks). DeepSpeed keeps them in
    module-level dicts keyed by group name, where ``groups._create_expert_and_data_parallel`` would put
    groups of the same ranks that it made itself; the mesh owns every group, so it registers its own."""
    name = expert_group_name(mesh.sp)
    groups._EXPERT_PARALLEL_GROUP[name] = mesh.sp_group
    groups._EXPERT_PARALLEL_GROUP_RANKS[name] = mesh.sp_ranks
    groups._EXPERT_DATA_PARALLEL_GROUP[name] = mesh.pe_dp_group
    groups._EXPERT_DATA_PARALLEL_GROUP_RANKS[name] = mesh.dp_ranks


class ShardedLearnedPosEmbed(MoE):
    def __init__(self, rows: torch.Tensor, offset: int, sp: int):
        nn.Module.__init__(self)  # deliberately not MoE.__init__: no gate, no experts, no all-to-all
        self.offset = offset
        # Attributes the engine reads from an MoE layer: one "expert" (row block) per SP rank.
        self.ep_size = sp
        self.expert_group_name = expert_group_name(sp)
        self.num_experts = sp
        self.num_local_experts = 1
        self.use_residual = False
        holder = nn.Module()
        holder.weight = nn.Parameter(rows.detach().clone())
        self.deepspeed_moe = nn.Module()
        self.deepspeed_moe.experts = nn.Module()
        self.deepspeed_moe.experts.deepspeed_experts = nn.ModuleList([holder])
        w = holder.weight
        w.allreduce = False  # deepspeed.moe.utils.is_moe_param
        w.group_name = self.expert_group_name
        w.model_parallel = True
        w.sharded_over_sp = True

    @property
    def weight(self) -> nn.Parameter:
        return self.deepspeed_moe.experts.deepspeed_experts[0].weight

    def set_deepspeed_parallelism(self, use_data_before_expert_parallel_: bool = False) -> None:
        # The engine calls this on MoE layers to build groups; the mesh registered ours (register_groups).
        if self.expert_group_name not in groups._get_expert_data_parallel_group_dict():
            raise RuntimeError("sharded position table: call pitdist.distributed.sharded_pe.register_groups first")

    def forward(self, x: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        return add_table_rows(x, self.weight, self.offset, positions)


def fix_zero0_gradient_scale(model: nn.Module, sp: int) -> None:
    """ZeRO 0 only: the engine divides expert gradients by the size of its data-parallel group, which
    with a sequence-parallel mpu is the whole world (Q*P), not Q. Multiply by P to undo it. ZeRO 1/2
    divide by the expert-data-parallel size (Q) and must not get this hook."""
    for module in model.modules():
        if isinstance(module, ShardedLearnedPosEmbed):
            module.weight.register_hook(lambda g: g * sp)
