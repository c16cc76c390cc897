"""Padded token shards: the layout, the key mask it implies, the CLS token, and what padding costs."""

import pytest
import torch

from pitdist.config import ModelConfig
from pitdist.distributed.parallelize import KeyPrefix
from pitdist.models.attention import SDPAttention
from pitdist.models.pit import TokenSequence, build_model, pixels_to_tokens
from pitdist.parallel_dims import TokenShards
from pitdist.report.comm_model import padding_sent, padding_share, param_counts, step_traffic


def test_28x28_on_three_ranks_pads_the_last_shard_by_two():
    s = TokenShards(784, 3)
    assert (s.length, s.shard, s.padded, s.padding) == (784, 262, 786, 2)
    assert [s.pixels(r) for r in range(3)] == [(0, 262), (262, 524), (524, 784)]
    assert [s.real(r) for r in range(3)] == [262, 262, 260]
    assert s.real(0, 3) == 784  # a Ulysses group of all three: a real prefix of 784 of its 786 slots


def test_the_cls_token_sits_after_the_last_pixel_on_the_rank_whose_slots_hold_it():
    s = TokenShards(784, 3, cls=True)
    assert (s.length, s.shard, s.padding) == (785, 262, 1)
    assert [s.holds_cls(r) for r in range(3)] == [False, False, True]
    # N = 6 on 3 ranks with CLS: 7 tokens, shards of 3; the last rank holds the CLS token and no pixel.
    s = TokenShards(6, 3, cls=True)
    assert [s.pixels(r) for r in range(3)] == [(0, 3), (3, 6), (6, 6)]
    assert [s.holds_cls(r) for r in range(3)] == [False, False, True]
    assert [s.real(r) for r in range(3)] == [3, 3, 1]


def test_ranks_past_the_last_token_hold_padding_alone():
    s = TokenShards(9, 4)
    assert s.shard == 3 and [s.real(r) for r in range(4)] == [3, 3, 3, 0]
    assert s.pixels(3) == (9, 9)
    assert [s.real(2 * j, 2) for j in range(2)] == [6, 3]  # two Ulysses groups of two ranks


def test_a_divisible_image_is_not_padded():
    s = TokenShards(64, 4)
    assert s.padding == 0 and [s.pixels(r) for r in range(4)] == [(0, 16), (16, 32), (32, 48), (48, 64)]


@pytest.mark.parametrize("pool", ["mean", "cls"])
def test_a_padded_sequence_attending_to_its_real_prefix_equals_the_unpadded_model(pool):
    # One rank holding the whole image in 10 more slots than it has tokens: the key mask of padding
    # at the end is the real prefix; padded queries compute but reach nothing.
    torch.manual_seed(0)
    model = build_model(ModelConfig(pool=pool, depth=2), (5, 7, 1), 10).double()
    pixels = torch.randint(0, 256, (3, 5, 7, 1), dtype=torch.uint8)
    expected = model(pixels_to_tokens(pixels, 1).double())
    real = 35 + (pool == "cls")
    model.sequence = TokenSequence(holds_cls=pool == "cls", length=real + 10)
    for block in model.blocks:
        block.attn.inner_attention = KeyPrefix(SDPAttention(), real)
    pooled_rows = slice(0, 35) if pool == "mean" else slice(35, 36)
    model.pool = type("RealRows", (torch.nn.Module,), {"forward": lambda self, x: x[:, pooled_rows].mean(1)})()
    got = model(pixels_to_tokens(pixels, 1).double())
    torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-12)
    # and without the mask the padding would change the result
    for block in model.blocks:
        block.attn.inner_attention = SDPAttention()
    assert (model(pixels_to_tokens(pixels, 1).double()) - expected).abs().max() > 1e-4


def test_the_cls_token_is_one_learned_vector_without_position_embedding_or_weight_decay():
    from pitdist.train.engine import param_groups

    mean = build_model(ModelConfig(pos_embed="learned"), (8, 8, 1), 10)
    cls = build_model(ModelConfig(pos_embed="learned", pool="cls"), (8, 8, 1), 10)
    assert mean.cls_token is None and cls.cls_token.shape == (1, 1, 64)
    assert cls.pos_embed.weight.shape == (64, 64)  # real positions only: the pixels
    n_mean, n_cls = (sum(p.numel() for p in m.parameters()) for m in (mean, cls))
    assert (
        n_cls - n_mean
        == 64
        == param_counts(ModelConfig(pool="cls"), 1, 10, 64).total - param_counts(ModelConfig(), 1, 10, 64).total
    )
    no_decay = next(g for g in param_groups(cls, 0.05) if g["name"] == "no_decay")["params"]
    assert any(p is cls.cls_token for p in no_decay)


def test_the_comm_model_counts_padded_slots_and_their_share():
    tiny = ModelConfig(size="tiny")  # D = 192, 12 layers, 3 heads
    t = step_traffic(tiny, (28, 28, 1), 10, 1, 1, 3, 0, 0.0, bytes_per_element=2)
    # 8 all-to-alls per layer of one [1, 262, 192] shard (262 = ceil(784 / 3)), 2/3 of each sent
    assert t["attention_a2a"].handed == 8 * 12 * 262 * 192 * 2
    assert t["attention_a2a"].sent == pytest.approx(8 * 12 * 262 * 192 * 2 * 2 / 3)
    assert padding_share(tiny, (28, 28, 1), 3) == pytest.approx(2 / 786)
    assert padding_sent(t, tiny, (28, 28, 1), 3) == pytest.approx(t["attention_a2a"].sent * 2 / 786)
    # a sharded table: 262 rows on each rank (the last 2 of rank 2 pad), its reduction over DP counted
    sharded = ModelConfig(size="tiny", pos_embed="learned", shard_pos_embed=True)
    assert param_counts(sharded, 1, 10, 784, sp=3).pos_embed == 262 * 192
    assert padding_share(tiny, (224, 224, 3), 4) == 0.0
