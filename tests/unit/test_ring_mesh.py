"""Choosing Ulysses x ring: the config keys, the mesh's refusals, and the model's ring traffic."""

import pytest

from pitdist.config import ConfigError, ModelConfig, config_from_dict, load_config
from pitdist.parallel_dims import MeshError, ParallelDims, valid_factorisations
from pitdist.report.comm_model import step_traffic


def parallel(*overrides):
    return load_config(None, ["--parallel.launcher", "local", *overrides]).parallel


@pytest.mark.parametrize(
    "overrides, expected",
    [
        ((), (1, 1, 1)),
        (("--parallel.sp", "4"), (4, 4, 1)),  # sp alone: pure Ulysses, as before ring attention existed
        (("--parallel.sp", "4", "--parallel.ring", "2"), (4, 2, 2)),
        (("--parallel.ulysses", "3", "--parallel.ring", "2"), (6, 3, 2)),
        (("--parallel.ring", "4"), (4, 1, 4)),
        (("--parallel.sp", "6", "--parallel.ulysses", "3"), (6, 3, 2)),
    ],
    ids=["default", "sp", "sp+ring", "ulysses+ring", "ring", "sp+ulysses"],
)
def test_sp_ulysses_and_ring_keys(overrides, expected):
    p = parallel(*overrides)
    assert (p.sp, p.ulysses, p.ring) == expected
    again = config_from_dict(load_config(None, ["--parallel.launcher", "local", *overrides]).to_dict()).parallel
    assert (again.sp, again.ulysses, again.ring) == expected


@pytest.mark.parametrize(
    "overrides, message",
    [
        (("--parallel.sp", "4", "--parallel.ring", "3"), "parallel.ring: 3 does not divide parallel.sp = 4"),
        (
            ("--parallel.sp", "8", "--parallel.ulysses", "2", "--parallel.ring", "2"),
            "parallel.sp: 8 != parallel.ulysses x parallel.ring = 2 x 2; set two of the three",
        ),
        (("--parallel.ring", "-1"), "parallel.ring: must be >= 1"),
        (("--parallel.sp", "6", "--parallel.ulysses", "4"), "parallel.ulysses: 4 does not divide parallel.sp = 6"),
    ],
)
def test_inconsistent_keys_are_refused(overrides, message):
    with pytest.raises(ConfigError, match=None) as info:
        parallel(*overrides)
    assert message in str(info.value)


def test_valid_factorisations_put_whole_heads_on_ulysses_ranks():
    assert valid_factorisations(6, heads=3) == [(3, 2), (1, 6)]
    assert valid_factorisations(4, heads=4) == [(4, 1), (2, 2), (1, 4)]
    assert valid_factorisations(64, heads=12) == [(4, 16), (2, 32), (1, 64)]


def test_sp_beyond_the_heads_names_the_hybrids_that_would_work():
    with pytest.raises(MeshError) as info:
        ParallelDims(1, 6).validate(heads=3)
    assert "parallel.sp = 6 does not divide the model's 3 attention heads" in str(info.value)
    assert "valid (ulysses, ring) for sp = 6: [(3, 2), (1, 6)] (set parallel.ring)" in str(info.value)
    ParallelDims(1, 6, 2).validate(heads=3)  # the fix it names works
    ParallelDims(1, 6, 6).validate(heads=3)


@pytest.mark.parametrize(
    "dims, message",
    [
        (
            ParallelDims(1, 8, 2),
            "parallel.ulysses = sp / ring = 8 / 2 = 4 does not divide the model's 6 attention heads "
            "(Ulysses gives each rank of its group whole heads); valid (ulysses, ring) for sp = 8: "
            "[(2, 4), (1, 8)]",
        ),
        (
            ParallelDims(1, 8, 3),
            "parallel.ring = 3 does not divide parallel.sp = 8 (sp = ulysses x ring); valid "
            "(ulysses, ring) for sp = 8 and this model: [(2, 4), (1, 8)]",
        ),
        (ParallelDims(1, 4), "parallel.sp = 4 does not divide the model's 6 attention heads"),
    ],
)
def test_invalid_factorisations_are_refused_with_the_valid_ones(dims, message):
    with pytest.raises(MeshError) as info:
        dims.validate(heads=6)
    assert message in str(info.value)


@pytest.mark.parametrize(
    "dims", [ParallelDims(1, 5, 5), ParallelDims(1, 3), ParallelDims(2, 6, 2), ParallelDims(1, 7, 7)]
)
def test_any_token_count_runs_on_any_mesh_the_heads_allow(dims):
    dims.validate(heads=6)  # 5, 3, 6 and 7 ranks: no token count is refused, shards are padded


def test_layout_ulysses_subgroups_are_consecutive_and_each_holds_a_contiguous_block():
    dims = ParallelDims(2, 6, 2)  # Q=2, U=3, R=2
    assert dims.ulysses == 3
    assert [dims.sp_coords(s) for s in range(6)] == [(0, 0), (0, 1), (0, 2), (1, 0), (1, 1), (1, 2)]
    # SP ranks 0-2 (ring position 0) jointly hold tokens [0, 18) of 36, ranks 3-5 hold [18, 36).
    shards = dims.shards(36)
    assert [shards.pixels(s) for s in range(6)] == [(0, 6), (6, 12), (12, 18), (18, 24), (24, 30), (30, 36)]
    assert [shards.real(j * 3, 3) for j in range(2)] == [18, 18]


NANO = ModelConfig(size="nano")  # D=64, L=4, 4 heads


def traffic(sp, ring, batch=2, image=(8, 8, 1)):
    return step_traffic(NANO, image, 10, batch, 1, sp, 0, 0.0, ring=ring)


def test_model_ring_traffic_by_hand():
    # Ring of 4, b=2, N=64, D=64, e=4: one K+V block is 2*2*16*64*4 = 16 kB; 3R-2 = 10 sends per layer.
    t = traffic(4, 4)
    assert "attention_a2a" not in t
    assert t["attention_ring"].sent == 4 * 10 * 16384
    assert t["attention_ring"].handed == 2 * 4 * 10 * 16384  # the receives are handed buffers of the same size
    assert t["attention_ring"].count == 2 * 4 * 10
    # Ulysses 2 x ring 2: the all-to-alls run over 2 ranks, the ring's blocks carry half the channels.
    h = traffic(4, 2)
    assert h["attention_a2a"].sent == 8 * 4 * 2 * 64 * 64 * 4 / 4 * (1 / 2)
    assert h["attention_ring"].sent == 4 * 4 * (2 * 2 * 64 * 64 * 4 / 4)
    # ring = 1 is exactly Ulysses, whatever else the model holds.
    assert traffic(4, 1) == step_traffic(NANO, (8, 8, 1), 10, 2, 1, 4, 0, 0.0)
    assert traffic(4, 1)["attention_a2a"].sent == 8 * 4 * 2 * 64 * 64 * 4 / 4 * 3 / 4
