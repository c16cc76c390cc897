"""The activation-memory model: what each checkpointing policy keeps, and what that buys."""

import pytest

from pitdist.config import ModelConfig
from pitdist.report.memory_model import activation_memory, block_vectors, largest_square_side

GIB = 1024**3
PIT_T_WIDTH = ModelConfig(size="tiny", heads=4)  # D = 192, 12 layers, 4 heads: `pitdist bench sp`'s model


def test_a_block_keeps_about_16_d_vectors_per_token_and_full_checkpointing_one():
    assert block_vectors(PIT_T_WIDTH) == pytest.approx(16.04, abs=0.01)
    n, d, layers = 1000, 192, 12
    none = activation_memory(PIT_T_WIDTH, n, 1, "none")
    full = activation_memory(PIT_T_WIDTH, n, 1, "full")
    assert none.recompute == 0
    assert full.held == pytest.approx((layers + 1) * n * d * 4, rel=0.01)  # each block's input + the final norm's
    # one block at a time, recomputed from its input (held already)
    assert full.recompute == pytest.approx((block_vectors(PIT_T_WIDTH) - 1) * n * d * 4)
    local = activation_memory(PIT_T_WIDTH, n, 1, "local")
    selective = activation_memory(PIT_T_WIDTH, n, 1, "selective")
    assert full.peak < local.peak < selective.peak < none.peak


def test_under_1_gib_full_checkpointing_fits_over_5x_the_tokens_at_every_p():
    for sp, without in [(1, 84), (2, 116), (4, 164)]:  # the frontier `pitdist bench sp` measured
        assert largest_square_side(PIT_T_WIDTH, GIB, 1, "none", sp) == without
        side = largest_square_side(PIT_T_WIDTH, GIB, 1, "full", sp)
        assert side**2 >= 5 * without**2, (sp, side)
    # and a 224x224 image (50,176 tokens) trains on one rank in about 1.1 GiB
    assert activation_memory(PIT_T_WIDTH, 224 * 224, 1, "full").peak / GIB == pytest.approx(1.0, abs=0.02)
