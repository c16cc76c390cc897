"""The analytical communication model: its parameter counts and DESIGN.md's worked example."""

import pytest

from pitdist.config import ModelConfig
from pitdist.models.pit import build_model
from pitdist.report.comm_model import param_counts, step_traffic
from pitdist.train.engine import param_groups


@pytest.mark.parametrize("pos_embed", ["none", "sincos", "learned"])
def test_parameter_counts_match_the_optimizer_groups_of_a_built_model(pos_embed):
    cfg = ModelConfig(pos_embed=pos_embed, depth=2)
    model = build_model(cfg, (8, 8, 3), 10)
    decay, no_decay = (sum(p.numel() for p in g["params"]) for g in param_groups(model, 0.1))
    counts = param_counts(cfg, 3, 10, 64)
    assert (counts.decay, counts.no_decay) == (decay, no_decay)
    assert counts.pos_embed == (64 * 64 if pos_embed == "learned" else 0)
    assert counts.total == sum(p.numel() for p in model.parameters())


def units(traffic, category, n=50176, d=768, e=2):
    return traffic[category].sent / (n * d * e) if category in traffic else 0.0


def test_pit_base_at_224_pixels_reproduces_the_worked_example():
    # DESIGN.md section 5: PiT-B, L=12, b=1, Q=1, replicated learned PE.
    base = ModelConfig(size="base", pos_embed="learned")
    p4 = step_traffic(base, (224, 224, 3), 1000, 1, 1, 4, 0, 1.0, bytes_per_element=2)
    assert units(p4, "attention_a2a") == pytest.approx(18.0)
    assert units(p4, "pe_grad_reduce") == pytest.approx(1.5)
    p12 = step_traffic(base, (224, 224, 3), 1000, 1, 1, 12, 0, 1.0, bytes_per_element=2)
    assert units(p12, "attention_a2a") == pytest.approx(7.33, abs=0.01)
    assert units(p12, "pe_grad_reduce") == pytest.approx(1.83, abs=0.01)
    # With 32 images per step the table is under 1% of the all-to-all traffic.
    b32 = step_traffic(base, (224, 224, 3), 1000, 32, 1, 4, 0, 1.0, bytes_per_element=2)
    assert b32["pe_grad_reduce"].sent / b32["attention_a2a"].sent < 0.01


def test_sharding_the_table_removes_its_traffic_when_there_is_no_data_parallelism():
    sharded = ModelConfig(size="base", pos_embed="learned", shard_pos_embed=True)
    q1 = step_traffic(sharded, (224, 224, 3), 1000, 1, 1, 4, 0, 1.0)
    assert q1["pe_grad_reduce"].sent == 0
    q2 = step_traffic(sharded, (224, 224, 3), 1000, 2, 2, 4, 0, 1.0)
    assert q2["pe_grad_reduce"].sent == pytest.approx(2 * (50176 // 4) * 768 * 4 * 1 / 2)


def test_no_all_to_all_without_sequence_parallelism():
    traffic = step_traffic(ModelConfig(), (8, 8, 1), 10, 8, 2, 1, 0, 1.0)
    assert "attention_a2a" not in traffic and "pooling" not in traffic
    assert traffic["grad_reduce"].sent > 0
