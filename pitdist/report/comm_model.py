"""Analytical model of what one rank communicates per training step (DESIGN.md section 5).

Notation: b images per SP group per step, N tokens per image, D width, L layers, P SP ranks, Q DP
ranks, W = Q*P, e bytes per element; P = U x R when Ulysses runs over U ranks and ring attention over
R. Every rank holds S = ceil((N + cls) / P) token slots (pitdist.parallel_dims.TokenShards), padded at
the end, and sends whole shards: the formulas below write N/P for S, exact when P divides N (and no
CLS token), otherwise counting the P*S - N - cls padded slots as they travel. ``padding_share`` is
the fraction of those bytes that is padding. Every category gives the bytes a collective is HANDED
(the tensor passed to it) and the bytes that LEAVE the rank under the algorithm named in
pitdist.observe.ledger (ring all-reduce 2n(W-1)/W, all-gather s(W-1), all-to-all n(W-1)/W).

    attention_a2a     8 per layer (q, k, v, out; forward and backward), each a [b, N/P, D] shard:
                      handed 8*L*b*N*D*e/P, sent that * (U-1)/U (U = P for plain Ulysses).
                      Same for every PE variant. Activation checkpointing that re-runs c blocks
                      whole (full: c = L; selective: L // k) adds their forward's 4 each in backward.
    attention_ring    ring attention over R ranks (U = 1: plain ring; U > 1: after Ulysses). One
                      message is a K+V block, N/R tokens x D/U channels: m = 2*b*N*D*e/P. Per layer
                      forward R-1 hops, backward R-1 hops of K+V and R of the dK+dV accumulators:
                      3R-2 isends of m (sent) and as many irecvs of m (handed, nothing sent);
                      a block re-run by activation checkpointing adds its forward's R-1.
    pooling           sum all-reduce of [b, D] over the SP group, forward and backward.
    grad_reduce       DeepSpeed 0.19 all-reduces every gradient over the W ranks of the
                      sequence-data-parallel group in one bucket (ZeRO 0, 1 and 2 alike).
    pe_grad_reduce    learned, replicated: the N*D table's share of that bucket.
                      learned, sharded with the tokens: the (N/P)*D shard, all-reduced by pitdist
                      over the DP group only (its own collective): zero bytes sent when Q = 1.
    zero_param_gather ZeRO 1/2: all-gather of the updated partitions, one per optimizer param group;
                      DeepSpeed pads each group to a multiple of 2*W elements, shard = padded/W.
    pe_param_gather   ZeRO 1/2 with a sharded table: the table is its own group, partitioned over
                      the Q DP ranks, and gathered over them (no call at all when Q = 1).
    grad_norm         4-byte all-reduces of the gradient norm DeepSpeed makes in the optimizer step:
                      ZeRO 0 with clipping: one over the SP group, one over all W ranks;
                      ZeRO 1/2: one per param group over the W ranks, clipping or not (a sharded
                      table adds one over W and one over its DP group).
    metrics           the 4-byte loss all-reduce over the DP group that the trainer logs.
sincos and none add nothing: sincos is computed locally from global positions.
"""

from __future__ import annotations

from dataclasses import dataclass

from pitdist.config import JobConfig, ModelConfig, checkpointed_blocks
from pitdist.observe.categories import LAYER_CATEGORIES, Category
from pitdist.parallel_dims import TokenShards


@dataclass(frozen=True)
class Traffic:
    count: int
    handed: float
    sent: float


@dataclass(frozen=True)
class ParamCounts:
    decay: int  # weights with ndim >= 2 (optimizer group 1)
    no_decay: int  # biases, norms, position table (optimizer group 2)
    pos_embed: int  # rows * D of the learned table this rank holds (0 for none / sincos)

    @property
    def total(self) -> int:
        return self.decay + self.no_decay


def param_counts(cfg: ModelConfig, in_features: int, num_classes: int, num_tokens: int, sp: int = 1) -> ParamCounts:
    """Parameters of pitdist's PiT, split as pitdist.train.engine.param_groups splits them. A table
    sharded over P > 1 ranks holds S rows on each (its share of a table padded to P * S rows)."""
    d, hidden = cfg.width, int(cfg.width * cfg.mlp_ratio)
    decay = in_features * d + cfg.num_layers * (4 * d * d + 2 * d * hidden) + d * num_classes
    no_decay = d + cfg.num_layers * (4 * d + 3 * d + d + hidden + d) + 2 * d + num_classes
    no_decay += d if cfg.pool == "cls" else 0  # the CLS token
    pos = 0
    if cfg.pos_embed == "learned":
        pos = num_tokens * d
        if cfg.shard_pos_embed and sp > 1:
            pos = TokenShards(num_tokens, sp, cfg.pool == "cls").shard * d
    return ParamCounts(decay, no_decay + pos, pos)


def shards_of(model: ModelConfig, image_shape: tuple[int, ...], sp: int) -> TokenShards:
    """How the images' tokens split over ``sp`` ranks under ``model`` (patch size, pooling)."""
    h, w = image_shape[0], image_shape[1]
    return TokenShards((h // model.patch_size) * (w // model.patch_size), sp, model.pool == "cls")


def padding_share(model: ModelConfig, image_shape: tuple[int, ...], sp: int) -> float:
    """The fraction of the token slots of an SP group that is padding: (P*S - N - cls) / (P*S). Of
    every per-token exchange (the attention's all-to-alls and ring hops, a sharded table's gradient),
    this is the share of the group's bytes that carries padding."""
    shards = shards_of(model, image_shape, sp)
    return shards.padding / shards.padded


def padding_sent(traffic: dict[str, Traffic], model: ModelConfig, image_shape: tuple[int, ...], sp: int) -> float:
    """Bytes of ``traffic`` (one rank's step, the SP group's average) that carry padded token slots."""
    per_token = [*LAYER_CATEGORIES]
    if model.pos_embed == "learned" and model.shard_pos_embed and sp > 1:
        per_token.append(Category.PE_GRAD_REDUCE)
    return padding_share(model, image_shape, sp) * sum(traffic[c].sent for c in per_token if c in traffic)


def _ring_allreduce(n: float, w: int) -> float:
    return 2.0 * n * (w - 1) / w if w > 1 else 0.0


def step_traffic(
    model: ModelConfig,
    image_shape: tuple[int, int, int],
    num_classes: int,
    batch_size: int,
    dp: int,
    sp: int,
    zero_stage: int,
    grad_clip: float,
    bytes_per_element: int = 4,
    streamed_data: bool = False,
    ring: int = 1,
    activation_checkpointing: str = "none",
    selective_every: int = 2,
) -> dict[str, Traffic]:
    """Per-rank, per-step traffic by category. ``batch_size`` is the global batch (b = batch / Q).

    ``activation_checkpointing``: the blocks it checkpoints whole re-send their forward's exchanges in
    backward (``attention_traffic``; the ledger's recompute phase); ``local`` re-sends nothing.

    ``streamed_data``: the Ray Data loader, whose SP group all-gathers each worker's b/P images
    (uint8 pixels, then id and label as two int64) so that every SP rank holds the group's batch.
    """
    h, w, c = image_shape
    p_, q, e = sp, dp, bytes_per_element
    world = p_ * q
    n = (h // model.patch_size) * (w // model.patch_size)
    slots = shards_of(model, image_shape, p_).shard  # S: N / P when it divides
    d, layers = model.width, model.num_layers
    b = batch_size // q
    params = param_counts(model, model.patch_size**2 * c, num_classes, n, p_)
    sharded = model.pos_embed == "learned" and model.shard_pos_embed and p_ > 1
    out: dict[str, Traffic] = {}

    if p_ > 1:
        recomputed = len(checkpointed_blocks(layers, activation_checkpointing, selective_every))
        out.update(attention_traffic(b * slots * d * e, p_, ring, layers, recomputed))
        pool = 2 * b * d * e
        out[Category.POOLING] = Traffic(2, pool, 2 * pool * (p_ - 1) / p_)

    # Everything the engine reduces; a sharded table leaves the engine's bucket.
    engine_elems = params.total - (params.pos_embed if sharded else 0)
    bucket = engine_elems * e
    replicated_pe = params.pos_embed if model.pos_embed == "learned" and not sharded else 0
    share = replicated_pe / engine_elems
    out[Category.GRAD_REDUCE] = Traffic(1, bucket * (1 - share), _ring_allreduce(bucket, world) * (1 - share))
    if replicated_pe:
        out[Category.PE_GRAD_REDUCE] = Traffic(0, bucket * share, _ring_allreduce(bucket, world) * share)
    if sharded:
        shard = params.pos_embed * e
        out[Category.PE_GRAD_REDUCE] = Traffic(1, shard, _ring_allreduce(shard, q))

    if zero_stage in (1, 2):
        groups = [params.decay, params.no_decay - (params.pos_embed if sharded else 0)]
        shards = [_zero_partition(g, world) * e for g in groups]
        out[Category.ZERO_PARAM_GATHER] = Traffic(len(groups), sum(shards), sum(s * (world - 1) for s in shards))
        norms = len(groups) + (1 if sharded else 0)  # the table is an optimizer group of its own
        norm_sent = norms * _ring_allreduce(4, world)
        if sharded:
            # ...partitioned over its DP group (gathered only when that group has more than one rank),
            # whose norms DeepSpeed averages over that group.
            if q > 1:
                shard = _zero_partition(params.pos_embed, q) * e
                out[Category.PE_PARAM_GATHER] = Traffic(1, shard, shard * (q - 1))
            norm_sent += _ring_allreduce(4, q)
        out[Category.GRAD_NORM] = Traffic(norms + sharded, 4 * (norms + sharded), norm_sent)
    elif grad_clip > 0:
        out[Category.GRAD_NORM] = Traffic(2, 8, _ring_allreduce(4, p_) + _ring_allreduce(4, world))

    out[Category.METRICS] = Traffic(1, 4, _ring_allreduce(4, q))
    if streamed_data and p_ > 1:
        handed = (b // p_) * (h * w * c + 16)
        out[Category.DATA] = Traffic(2, handed, handed * (p_ - 1))
    return out


def attention_traffic(shard: float, sp: int, ring: int, layers: int, recomputed: int) -> dict[str, Traffic]:
    """Attention's exchanges in a step of ``layers`` layers (forward and backward) of which ``recomputed``
    re-run their forward in backward; ``shard`` = b * S * D * e, one [b, S, D] shard (S = N/P when P
    divides N).

    A Ulysses layer sends 4 all-to-alls of a shard forward and 4 backward; a ring layer R - 1 K/V hops
    of m = 2 * shard forward and 2R - 1 backward. A recomputed forward repeats the forward's: 4 more
    all-to-alls, R - 1 more hops.
    """
    u = sp // ring
    out: dict[str, Traffic] = {}
    if u > 1:
        calls = 8 * layers + 4 * recomputed
        out[Category.ATTENTION_A2A] = Traffic(calls, calls * shard, calls * shard * (u - 1) / u)
    if ring > 1:
        m, hops = 2 * shard, (3 * ring - 2) * layers + (ring - 1) * recomputed
        out[Category.ATTENTION_RING] = Traffic(2 * hops, 2 * hops * m, hops * m)
    return out


def recompute_traffic(
    model: ModelConfig,
    image_shape: tuple[int, int, int],
    batch_size: int,
    dp: int,
    sp: int,
    ring: int,
    activation_checkpointing: str,
    selective_every: int = 2,
    bytes_per_element: int = 4,
) -> dict[str, Traffic]:
    """The part of ``step_traffic`` sent in the recompute phase: checkpointed blocks' forward exchanges."""
    if sp == 1:
        return {}
    recomputed = len(checkpointed_blocks(model.num_layers, activation_checkpointing, selective_every))
    if not recomputed:
        return {}
    shard = (batch_size // dp) * shards_of(model, image_shape, sp).shard * model.width * bytes_per_element
    return {k: v for k, v in attention_traffic(shard, sp, ring, 0, recomputed).items() if v.count}


def _zero_partition(elements: int, ranks: int) -> int:
    """Elements of one rank's ZeRO partition: DeepSpeed pads a group to a multiple of 2 * ranks."""
    return -(-elements // (2 * ranks)) * 2 * ranks // ranks


def job_traffic(
    cfg: JobConfig, image_shape: tuple[int, int, int], num_classes: int, streamed_data: bool | None = None
) -> dict[str, Traffic]:
    """The job's per-step traffic; ``streamed_data`` defaults to what the job's loader setting implies."""
    streamed = cfg.data_loader == "ray_data" if streamed_data is None else streamed_data
    return step_traffic(
        cfg.model,
        image_shape,
        num_classes,
        cfg.train.batch_size,
        cfg.parallel.dp,
        cfg.parallel.sp,
        cfg.parallel.zero_stage,
        cfg.optim.grad_clip,
        streamed_data=streamed,
        ring=cfg.parallel.ring,
        activation_checkpointing=cfg.train.activation_checkpointing,
        selective_every=cfg.train.selective_every,
    )


def _table_settings(
    image_shape, num_classes, batch, dp, zero_stage, grad_clip, bytes_per_element, activation_checkpointing, every
) -> dict:
    """step_traffic's keyword arguments that a table holds fixed while it varies the variant and the mesh."""
    return {
        "image_shape": image_shape,
        "num_classes": num_classes,
        "batch_size": batch,
        "dp": dp,
        "zero_stage": zero_stage,
        "grad_clip": grad_clip,
        "bytes_per_element": bytes_per_element,
        "activation_checkpointing": activation_checkpointing,
        "selective_every": every,
    }


def projection_table(
    model: ModelConfig,
    image_shape: tuple[int, int, int],
    num_classes: int,
    batch: int,
    dp: int,
    sps: list[int],
    zero_stage: int,
    grad_clip: float,
    variants: dict[str, ModelConfig],
    bytes_per_element: int = 2,
    activation_checkpointing: str = "none",
    selective_every: int = 2,
) -> str:
    """Bytes each rank sends per step, by category, for each P and PE variant, with the PE's share and
    the padding's (the share of the step's bytes that carries padded token slots, ``padding_sent``).

    Also expressed in units of N*D*e (one image's activations), the unit of DESIGN.md's worked example.
    """
    h, w, _ = image_shape
    n = (h // model.patch_size) * (w // model.patch_size)
    unit = n * model.width * bytes_per_element
    lines = [
        f"model projection: {model.size} (D={model.width}, L={model.num_layers}, heads={model.num_heads}) on "
        f"{h}x{w} images (N={n} tokens), global batch {batch}, dp={dp}, ZeRO {zero_stage}, "
        f"{bytes_per_element}-byte elements, activation checkpointing {activation_checkpointing}; "
        "per rank per step, bytes sent (and in units of N*D*e)"
    ]
    lines.append(
        f"{'P':>4} {'variant':<16}{'attention_a2a':>22}{'PE traffic':>22}{'all other':>22}{'PE share':>10}"
        f"{'padding':>10}"
    )
    common = _table_settings(
        image_shape,
        num_classes,
        batch,
        dp,
        zero_stage,
        grad_clip,
        bytes_per_element,
        activation_checkpointing,
        selective_every,
    )
    for sp in sps:
        for name, variant in variants.items():
            t = step_traffic(variant, sp=sp, **common)
            a2a = t[Category.ATTENTION_A2A].sent if Category.ATTENTION_A2A in t else 0.0
            pe = sum(v.sent for k, v in t.items() if k.startswith("pe_"))
            rest = sum(v.sent for k, v in t.items() if not k.startswith("pe_") and k != Category.ATTENTION_A2A)
            total = a2a + pe + rest

            def cell(x: float) -> str:
                return f"{x / 1e9:9.3f} GB ({x / unit:5.2f})" if x >= 1e8 else f"{x / 1e6:9.3f} MB ({x / unit:5.2f})"

            padding = padding_sent(t, variant, image_shape, sp)
            lines.append(
                f"{sp:>4} {name:<16}{cell(a2a):>22}{cell(pe):>22}{cell(rest):>22}{(pe / total if total else 0):>9.1%}"
                f"{(padding / total if total else 0):>9.3%}"
            )
    lines.append(_padding_note(model, image_shape, sps, "all bytes sent"))
    return "\n".join(lines)


def _padding_note(model: ModelConfig, image_shape: tuple[int, ...], sps: list[int], of: str) -> str:
    """What the padding column counts (a share ``of`` what), with each P's shard length."""
    shards = [shards_of(model, image_shape, sp) for sp in sps]
    each = ", ".join(f"P = {s.sp}: S = {s.shard}, {s.padding} padded" for s in shards if s.sp > 1)
    return (
        f"padding: the share of {of} that carries padded token slots (an image's {shards[0].length} "
        f"tokens split into P shards of S slots; {each or 'none at P = 1'})"
    )


def scheme_name(sp: int, ring: int = 1) -> str:
    """How P SP ranks split attention: 'ulysses 4', 'ring 4', 'ulysses 2 x ring 2'."""
    if sp == 1:
        return "none"
    if ring == 1:
        return f"ulysses {sp}"
    return f"ring {ring}" if ring == sp else f"ulysses {sp // ring} x ring {ring}"


def attention_sent(traffic: dict[str, Traffic]) -> float:
    """Bytes the attention layers send: Ulysses all-to-alls plus ring hops."""
    return sum(traffic[c].sent for c in LAYER_CATEGORIES if c in traffic)


def scheme_table(
    model: ModelConfig,
    image_shape: tuple[int, int, int],
    num_classes: int,
    batch: int,
    dp: int,
    sps: list[int],
    zero_stage: int,
    grad_clip: float,
    variants: dict[str, ModelConfig],
    bytes_per_element: int = 2,
    activation_checkpointing: str = "none",
    selective_every: int = 2,
) -> str:
    """Ulysses, ring and their hybrids side by side, per rank per step.

    For each P, every (ulysses U, ring R) split pitdist can run (U divides the heads): the bytes
    attention sends (and the share of them that carries padded slots) and the total each PE variant
    sends, also in units of N*D*e. Ulysses
    sends 8bND e (U-1)/(U P) per layer, falling with P; a ring sends (3R-2) 2bND e / P, which tends to
    6bND e: the ring costs more bytes than Ulysses at every P > 1 and buys the freedom to pass the
    head count, and its hops overlap the block computations.
    """
    from pitdist.parallel_dims import valid_factorisations

    h, w, _ = image_shape
    n = (h // model.patch_size) * (w // model.patch_size)
    unit = n * model.width * bytes_per_element

    def cell(x: float) -> str:
        return f"{x / 1e9:8.3f} GB ({x / unit:5.2f})" if x >= 1e8 else f"{x / 1e6:8.3f} MB ({x / unit:5.2f})"

    lines = [
        f"Ulysses vs ring vs hybrid: {model.size} (D={model.width}, L={model.num_layers}, heads={model.num_heads}) "
        f"on {h}x{w} images (N={n} tokens), global batch {batch}, dp={dp}, ZeRO {zero_stage}, "
        f"{bytes_per_element}-byte elements, activation checkpointing {activation_checkpointing}; "
        "bytes sent per rank per step (in units of N*D*e)",
        f"{'P':>4}  {'scheme':<22}{'attention':>22}{'vs fewest':>11}{'padding':>9}"
        + "".join(f"{'total ' + name:>24}" for name in variants),
    ]
    common = _table_settings(
        image_shape,
        num_classes,
        batch,
        dp,
        zero_stage,
        grad_clip,
        bytes_per_element,
        activation_checkpointing,
        selective_every,
    )
    for sp in sps:
        pairs = valid_factorisations(sp, model.num_heads)
        rows = []
        for _, r in pairs:
            totals = []
            for variant in variants.values():
                t = step_traffic(variant, sp=sp, ring=r, **common)
                totals.append(sum(v.sent for v in t.values()))
            rows.append((r, attention_sent(t), totals))
        fewest = min(attn for _, attn, _ in rows)
        padding = padding_share(model, image_shape, sp)
        for r, attn, totals in rows:
            lines.append(
                f"{sp:>4}  {scheme_name(sp, r):<22}{cell(attn):>22}{attn / fewest:10.2f}x{padding:>9.3%}"
                + "".join(f"{cell(x):>24}" for x in totals)
            )
        if all(r > 1 for r, _, _ in rows):
            lines.append(
                f"{'':>4}  (Ulysses alone cannot run P = {sp}: it does not divide the {model.num_heads} heads)"
            )
    lines.append(_padding_note(model, image_shape, sps, "the attention's bytes"))
    return "\n".join(lines)
