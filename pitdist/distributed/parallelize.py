"""Apply sequence parallelism to a plain PiT, in one place.

Three swaps, nothing else in the model changes:
  * each block's inner attention -> the mesh's sequence-parallel attention: DeepSpeed Ulysses
    (all-to-all tokens->heads, attention over all N tokens for h/P heads, all-to-all back), ring
    attention (K/V blocks passed around the P ranks, pitdist.distributed.ring_attention), or both:
    Ulysses over a subgroup of U ranks, whose attention over its N/R tokens for h/U heads is a ring
    across the R subgroups (parallel_dims explains the layout);
  * the mean pool -> a sum over local tokens, all-reduced over the SP group, divided by the global N;
  * optionally, a learned position table -> this rank's rows only (``model.shard_pos_embed``),
    reduced over the DP group only (pitdist.distributed.sharded_pe).
Each rank then feeds the model its own token slice with the slice's global positions. Activation
checkpointing is applied here too, on one rank as on many (pitdist.distributed.checkpointing).
"""

from __future__ import annotations

import torch
from deepspeed.sequence.layer import DistributedAttention
from torch import nn

from pitdist.config import ModelConfig
from pitdist.distributed import comm, sharded_pe
from pitdist.distributed.checkpointing import Recomputed, apply_activation_checkpointing
from pitdist.distributed.mesh import Mesh
from pitdist.distributed.ring_attention import RingAttention
from pitdist.models.pit import PiT
from pitdist.models.pos_embed import LearnedPosEmbed
from pitdist.observe.categories import Category


class UlyssesAttention(nn.Module):
    """Batch-first [b, s, h, d] Ulysses: scatter heads (dim 2), gather tokens (dim 1)."""

    def __init__(self, local_attention: nn.Module, sp_group):
        super().__init__()
        self.dist_attn = DistributedAttention(local_attention, sp_group, scatter_idx=2, gather_idx=1)

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        return self.dist_attn(q, k, v, batch_dim_idx=0)


class SequenceParallelMeanPool(nn.Module):
    """Mean over all N tokens of an image when each SP rank holds N/P of them."""

    def __init__(self, sp_group, num_tokens: int):
        super().__init__()
        self.sp_group = sp_group
        self.num_tokens = num_tokens

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return comm.all_reduce_sum_autograd(x.sum(dim=1), self.sp_group, category=Category.POOLING) / self.num_tokens


def is_sharded(param: torch.Tensor) -> bool:
    """True for a parameter that holds different rows on each SP rank."""
    return getattr(param, "sharded_over_sp", False)


def gradient_elements(model: nn.Module) -> tuple[int, int]:
    """(gradient elements the engine reduces together, of which a replicated learned PE table): the
    split by which reports attribute the engine's gradient bytes to the table. A sharded table is
    reduced apart from the engine's buckets and counts in neither."""
    engine = sum(p.numel() for p in model.parameters() if p.requires_grad and not is_sharded(p))
    pe = getattr(model, "pos_embed", None)
    return engine, pe.weight.numel() if isinstance(pe, LearnedPosEmbed) else 0


def parallelize(
    model: PiT, mesh: Mesh, cfg: ModelConfig, activation_checkpointing: str = "none", selective_every: int = 2
) -> PiT:
    """Make ``model`` compute, on this rank's token slice, its share of the single-device result,
    keeping for backward what ``activation_checkpointing`` keeps (train.activation_checkpointing and
    train.selective_every)."""
    for block in model.blocks:
        inner = block.attn.inner_attention
        if activation_checkpointing == "local" and mesh.ring == 1:
            inner = Recomputed(inner)  # purely local between the all-to-alls: recompute it too
        if mesh.ring > 1:
            inner = RingAttention(mesh.ring_group)
        if mesh.ulysses > 1:
            inner = UlyssesAttention(inner, mesh.ulysses_group)
        block.attn.inner_attention = inner
    if mesh.sp > 1:
        model.pool = SequenceParallelMeanPool(mesh.sp_group, model.num_tokens)
    if cfg.shard_pos_embed and mesh.sp > 1:
        lo, hi = mesh.token_range(model.num_tokens)
        sharded_pe.register_groups(mesh)
        model.pos_embed = sharded_pe.ShardedLearnedPosEmbed(model.pos_embed.weight[lo:hi], lo, mesh.sp)
    return apply_activation_checkpointing(model, activation_checkpointing, selective_every)


def consolidated_state_dict(model: PiT, mesh: Mesh) -> dict[str, torch.Tensor]:
    """The plain (single-device) model's state dict, gathering a sharded position table.

    Collective over the SP group when the table is sharded: every rank of the group must call it.
    """
    state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items() if not k.startswith("pos_embed.")}
    pos = model.pos_embed
    if isinstance(pos, sharded_pe.ShardedLearnedPosEmbed):
        state["pos_embed.weight"] = comm.all_gather_cat(
            pos.weight.detach(), mesh.sp_group, category=Category.CHECKPOINT
        ).cpu()
    elif isinstance(pos, LearnedPosEmbed):
        state["pos_embed.weight"] = pos.weight.detach().cpu().clone()
    return state
