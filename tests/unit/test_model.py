"""The plain PiT/ViT: shapes, sizes, and what position embeddings do to pixel order."""

import pytest
import torch

from pitdist.config import MODEL_PRESETS, ModelConfig
from pitdist.models.pit import PiT, build_model, pixels_to_tokens
from pitdist.models.pos_embed import LearnedPosEmbed, SinCosPosEmbed

torch.manual_seed(0)


def images(b=3, h=8, w=8, c=1):
    return torch.randint(0, 256, (b, h, w, c), dtype=torch.uint8)


def expected_params(d, depth, mlp_ratio, in_features, classes, pos_rows):
    hidden = int(d * mlp_ratio)
    block = 4 * d + (3 * d * d + 3 * d) + (d * d + d) + (d * hidden + hidden) + (hidden * d + d)
    return in_features * d + d + pos_rows * d + depth * block + 2 * d + d * classes + classes


@pytest.mark.parametrize("size", list(MODEL_PRESETS))
@pytest.mark.parametrize("pos_embed", ["none", "sincos", "learned"])
def test_sizes_and_parameter_counts(size, pos_embed):
    cfg = ModelConfig(size=size, pos_embed=pos_embed)
    d, depth, heads = MODEL_PRESETS[size]
    # Small 8x8 images keep the big sizes cheap to build; the count formula is independent of it.
    model = build_model(cfg, (8, 8, 3), num_classes=10)
    assert (model.embed.out_features, len(model.blocks), model.blocks[0].attn.heads) == (d, depth, heads)
    rows = 64 if pos_embed == "learned" else 0
    assert sum(p.numel() for p in model.parameters()) == expected_params(d, depth, 4.0, 3, 10, rows)
    if size == "nano":
        assert model.forward_images(images(c=3)).shape == (3, 10)


def test_vit_patch_2_versus_pit_on_the_same_image():
    x = images(b=2, h=8, w=8, c=3)
    pit = build_model(ModelConfig(patch_size=1, pos_embed="learned"), (8, 8, 3), 10)
    vit = build_model(ModelConfig(patch_size=2, pos_embed="learned"), (8, 8, 3), 10)
    assert (pit.num_tokens, vit.num_tokens) == (64, 16)
    assert pixels_to_tokens(x, 1).shape == (2, 64, 3) and pixels_to_tokens(x, 2).shape == (2, 16, 12)
    assert pit.forward_images(x).shape == vit.forward_images(x).shape == (2, 10)
    # Same transformer; only the token embedding (p*p*C inputs) and the number of PE rows differ.
    n_pit = sum(p.numel() for p in pit.parameters())
    n_vit = sum(p.numel() for p in vit.parameters())
    d = 64
    assert n_vit - n_pit == (12 - 3) * d + (16 - 64) * d


def test_patches_are_raster_ordered_pixel_blocks():
    x = torch.arange(4 * 4, dtype=torch.uint8).view(1, 4, 4, 1)
    tokens = pixels_to_tokens(x, 2)
    first_patch = (torch.tensor([0, 1, 4, 5]).float() / 127.5) - 1
    assert torch.equal(tokens[0, 0], first_patch)


def test_token_range_converts_only_that_slice():
    x = images(b=2, h=8, w=8, c=3)
    for p in (1, 2):
        full = pixels_to_tokens(x, p)
        n = full.shape[1]
        assert torch.equal(pixels_to_tokens(x, p, (n // 4, n // 2)), full[:, n // 4 : n // 2])


def _logits_under_permutation(pos_embed):
    model = build_model(ModelConfig(pos_embed=pos_embed), (8, 8, 1), 10).eval()
    x = images(b=4)
    tokens = pixels_to_tokens(x, 1)
    perm = torch.randperm(64)
    with torch.no_grad():
        return model(tokens), model(tokens[:, perm])


def test_no_pe_pit_is_permutation_invariant():
    original, permuted = _logits_under_permutation("none")
    torch.testing.assert_close(original, permuted, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("pos_embed", ["sincos", "learned"])
def test_position_embeddings_break_permutation_invariance(pos_embed):
    original, permuted = _logits_under_permutation(pos_embed)
    assert (original - permuted).abs().max() > 1e-3


@pytest.mark.parametrize("pos_embed", ["none", "sincos", "learned"])
def test_a_slice_embedded_at_global_positions_equals_that_slice_of_the_full_embedding(pos_embed):
    model = build_model(ModelConfig(pos_embed=pos_embed), (8, 8, 1), 10)
    tokens = pixels_to_tokens(images(), 1)
    full = model.pos_embed(model.embed(tokens), torch.arange(64))
    lo, hi = 16, 48
    part = model.pos_embed(model.embed(tokens[:, lo:hi]), torch.arange(lo, hi))
    assert torch.equal(part, full[:, lo:hi])


def test_sincos_encodes_rows_and_columns():
    pe = SinCosPosEmbed((4, 5), 8)
    table = pe.table(torch.arange(20))
    # Same row -> same first half; same column -> same second half.
    assert torch.equal(table[0, :4], table[4, :4]) and not torch.equal(table[0, 4:], table[4, 4:])
    assert torch.equal(table[0, 4:], table[5, 4:]) and not torch.equal(table[0, :4], table[5, :4])


def test_learned_shard_refuses_positions_it_does_not_own():
    shard = LearnedPosEmbed(16, 8, offset=16)
    shard(torch.zeros(1, 16, 8), torch.arange(16, 32))
    with pytest.raises(IndexError, match="outside this table's rows 16..31"):
        shard(torch.zeros(1, 16, 8), torch.arange(0, 16))


def test_the_model_imports_nothing_distributed():
    import ast
    from pathlib import Path

    import pitdist.models as models

    for path in Path(models.__file__).parent.glob("*.py"):
        tree = ast.parse(path.read_text())
        names = [a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names]
        names += [n.module or "" for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)]
        assert not [n for n in names if "distributed" in n or n.startswith("deepspeed")], path


def test_image_must_tile_into_patches():
    with pytest.raises(ValueError, match="not divisible into 3x3 patches"):
        PiT((8, 8), 1, 10, patch_size=3)
