"""Apply sequence parallelism to a plain PiT, in one place.

Each rank holds S = ceil(L / P) token slots of an image's L = N (+ CLS) tokens, padded at the end
(pitdist.parallel_dims.TokenShards). Four swaps, nothing else in the model changes:
  * the sequence -> this rank's shard: its pixel tokens, the CLS token on the rank that holds it,
    zero padding up to S slots (pitdist.models.pit.TokenSequence);
  * each block's inner attention -> the mesh's sequence-parallel attention: DeepSpeed Ulysses
    (all-to-all tokens->heads, attention over all P*S slots for h/P heads, all-to-all back), ring
    attention (K/V blocks passed around the P ranks, pitdist.distributed.ring_attention), or both:
    Ulysses over a subgroup of U ranks, whose attention over its U*S slots for h/U heads is a ring
    across the R subgroups (parallel_dims explains the layout). Every block of consecutive slots
    holds real keys first and padding after, so the padded keys are masked out by attending to the
    real prefix (``KeyPrefix``; the ring slices each block it receives the same way);
  * the pool -> a sum over this rank's real pixel rows (mean) or its CLS row (cls, on the one rank
    that holds it; zeros elsewhere), all-reduced over the SP group, divided by the global N (mean);
  * optionally, a learned position table -> this rank's S rows only (``model.shard_pos_embed``),
    reduced over the DP group only (pitdist.distributed.sharded_pe).
Each rank then feeds the model its own pixel tokens with their global positions. Activation
checkpointing is applied here too, on one rank as on many (pitdist.distributed.checkpointing).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from deepspeed.sequence.layer import DistributedAttention
from torch import nn

from pitdist.config import ModelConfig
from pitdist.distributed import comm, sharded_pe
from pitdist.distributed.checkpointing import Recomputed, apply_activation_checkpointing
from pitdist.distributed.mesh import Mesh
from pitdist.distributed.ring_attention import RingAttention
from pitdist.distributed.ulysses_overlap import OverlappedUlysses
from pitdist.models.pit import PiT, TokenSequence
from pitdist.models.pos_embed import LearnedPosEmbed
from pitdist.observe.categories import Category
from pitdist.parallel_dims import ParallelDims


class UlyssesAttention(nn.Module):
    """Batch-first [b, s, h, d] Ulysses: scatter heads (dim 2), gather tokens (dim 1)."""

    def __init__(self, local_attention: nn.Module, sp_group):
        super().__init__()
        self.dist_attn = DistributedAttention(local_attention, sp_group, scatter_idx=2, gather_idx=1)

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        return self.dist_attn(q, k, v, batch_dim_idx=0)


class KeyPrefix(nn.Module):
    """Attention of every query to the first ``num_keys`` keys only: the exact key mask of a padded
    sequence whose padding comes last. [b, s, h, d] layout, as every inner attention."""

    def __init__(self, attention: nn.Module, num_keys: int):
        super().__init__()
        self.attention, self.num_keys = attention, num_keys

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        return self.attention(q, k[:, : self.num_keys], v[:, : self.num_keys])


class ShardSequence(TokenSequence):
    """A rank's shard of the sequence (TokenSequence), where a rank without the CLS token still uses
    it, at weight zero: ZeRO 2 reduces gradients in buckets filled as they arrive, which must hold the
    same parameters on every rank (a rank without a gradient for the CLS token sends a shorter bucket:
    gloo aborts on the size mismatch). The use gives it a gradient of exactly zero and leaves x as is."""

    def forward(self, x: torch.Tensor, cls_token: torch.Tensor | None) -> torch.Tensor:
        if cls_token is not None and not self.holds_cls:
            x = x + 0.0 * cls_token.to(x.dtype)
        return super().forward(x, cls_token)


class SequenceParallelPool(nn.Module):
    """The image's pooled feature when each SP rank holds a shard: the sum of this rank's ``rows`` of
    the sequence (its real pixel tokens for the mean, its CLS token for cls, none), all-reduced over
    the SP group and divided by ``divisor`` (N for the mean, 1 for cls). Padding is in no rank's rows."""

    def __init__(self, sp_group, rows: tuple[int, int], divisor: int):
        super().__init__()
        self.sp_group, self.rows, self.divisor = sp_group, rows, divisor

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        local = x[:, self.rows[0] : self.rows[1]].sum(dim=1)
        return comm.all_reduce_sum_autograd(local, self.sp_group, category=Category.POOLING) / self.divisor


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


def overlaps_ulysses(overlap_comm: bool, device_type: str, dims: ParallelDims, activation_checkpointing: str) -> bool:
    """Whether Ulysses' all-to-alls run pipelined with the kernel (parallel.overlap_comm;
    pitdist.distributed.ulysses_overlap): asked for, on CUDA (on CPU the host runs the kernel and gloo's
    transfers on the same few cores: nothing to gain), Ulysses alone (a ring overlaps its own hops), and
    not under ``local`` checkpointing, which recomputes exactly the kernel between the exchanges."""
    return (
        overlap_comm
        and device_type == "cuda"
        and dims.ulysses > 1
        and dims.ring == 1
        and activation_checkpointing != "local"
    )


def parallelize(
    model: PiT,
    mesh: Mesh,
    cfg: ModelConfig,
    activation_checkpointing: str = "none",
    selective_every: int = 2,
    overlap: bool = False,
    offload: bool = False,
) -> PiT:
    """Make ``model`` compute, on this rank's token slice, its share of the single-device result,
    keeping for backward what ``activation_checkpointing`` keeps (train.activation_checkpointing and
    train.selective_every), in host memory with ``offload`` (train.checkpoint_offload); ``overlap``
    pipelines Ulysses' exchanges (``overlaps_ulysses`` decides)."""
    shards = mesh.token_shards(model.num_tokens, cls=model.cls_token is not None)
    # Real keys of the consecutive slots each attention kernel sees: Ulysses alone, all P*S slots;
    # a ring (or hybrid), the U*S slots of each ring rank's Ulysses group.
    block_keys = [shards.real(j * mesh.ulysses, mesh.ulysses) for j in range(mesh.ring)]
    for block in model.blocks:
        inner = block.attn.inner_attention
        if overlap and mesh.ulysses > 1 and mesh.ring == 1:
            block.attn.inner_attention = OverlappedUlysses(mesh.ulysses_group, block_keys[0])
            continue
        if mesh.ring == 1 and shards.padding:
            inner = KeyPrefix(inner, block_keys[0])
        if activation_checkpointing == "local" and mesh.ring == 1:
            inner = Recomputed(inner, offload)  # purely local between the all-to-alls: recompute it too
        if mesh.ring > 1:
            inner = RingAttention(mesh.ring_group, block_keys if shards.padding else None)
        if mesh.ulysses > 1:
            inner = UlyssesAttention(inner, mesh.ulysses_group)
        block.attn.inner_attention = inner
    if mesh.sp > 1:
        lo, hi = shards.pixels(mesh.sp_rank)
        holds_cls = shards.holds_cls(mesh.sp_rank)
        model.sequence = ShardSequence(holds_cls, length=shards.shard)
        if shards.cls:
            model.pool = SequenceParallelPool(mesh.sp_group, (hi - lo, hi - lo + int(holds_cls)), 1)
        else:
            model.pool = SequenceParallelPool(mesh.sp_group, (0, hi - lo), model.num_tokens)
    if cfg.shard_pos_embed and mesh.sp > 1:
        # This rank's S slots of a table padded to P * S rows: equal shards, as the engine and the
        # consolidating all-gather need; the padding rows serve no token and get no gradient.
        first = mesh.sp_rank * shards.shard
        table = F.pad(model.pos_embed.weight.detach(), (0, 0, 0, shards.padded - model.num_tokens))
        sharded_pe.register_groups(mesh)
        model.pos_embed = sharded_pe.ShardedLearnedPosEmbed(table[first : first + shards.shard], first, mesh.sp)
    return apply_activation_checkpointing(model, activation_checkpointing, selective_every, offload)


def consolidated_state_dict(model: PiT, mesh: Mesh) -> dict[str, torch.Tensor]:
    """The plain (single-device) model's state dict, gathering a sharded position table.

    Collective over the SP group when the table is sharded: every rank of the group must call it.
    """
    state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items() if not k.startswith("pos_embed.")}
    pos = model.pos_embed
    if isinstance(pos, sharded_pe.ShardedLearnedPosEmbed):
        padded = comm.all_gather_cat(pos.weight.detach(), mesh.sp_group, category=Category.CHECKPOINT)
        state["pos_embed.weight"] = padded[: model.num_tokens].cpu()
    elif isinstance(pos, LearnedPosEmbed):
        state["pos_embed.weight"] = pos.weight.detach().cpu().clone()
    return state
