"""Activation checkpointing changes what backward keeps and recomputes, never what it computes.

Real gloo process groups and real DeepSpeed engines, the 4-head nano PiT on 8x8 images (64 tokens):
every policy against the same mesh without checkpointing, under Ulysses, ring attention and the
hybrid, for every PE variant.
"""

import pytest
from spawn import run_ranks
from workers import checkpointing_versus_none, comm_runs, loss_curve

from pitdist.report.comm_report import crosscheck_table, format_summary, load_run, summarize

VARIANTS = [("none", False), ("sincos", False), ("learned", False), ("learned", True)]
MESHES = [(1, 1, 1), (1, 2, 1), (1, 4, 1), (1, 2, 2), (1, 4, 2), (2, 2, 1)]
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module", params=MESHES, ids=["P1", "ulysses2", "ulysses4", "ring2", "ulysses2xring2", "Q2xP2"])
def compared(request):
    dp, sp, ring = request.param
    return request.param, run_ranks(dp * sp, checkpointing_versus_none, dp, sp, ring, VARIANTS)


def test_every_policy_gives_the_logits_loss_and_gradients_of_no_checkpointing(compared):
    mesh, reports = compared
    for rank, report in enumerate(reports):
        assert {r["policy"] for r in report} == {"none", "full", "selective", "local"}
        assert len(report) == 4 * len(VARIANTS)
        for entry in report:
            worst = {k: v for k, v in entry["diffs"].items() if v > 1e-6}
            assert not worst, (
                f"{mesh} rank {rank}, {entry['variant']}, {entry['policy']}: differences above 1e-6: {worst}"
            )
            assert len(entry["diffs"]) > 20  # logits, loss and every parameter's gradient


def test_what_autograd_keeps_falls_by_the_factor_the_memory_model_predicts(compared):
    mesh, reports = compared
    for entry in reports[0]:
        if entry["variant"] != "sincos":
            continue
        assert entry["held"] == pytest.approx(entry["model_held"], rel=0.10), (mesh, entry["policy"])
    held = {e["policy"]: e["held"] for e in reports[0] if e["variant"] == "sincos"}
    # The nano model (D = 64, 4 layers): none keeps ~17 D-vectors per token and layer, full 1, local 5.
    assert held["full"] < held["local"] < held["selective"] < held["none"]
    assert held["none"] / held["full"] > 5


POLICIES = ["none", "full", "selective", "local"]


@pytest.fixture(scope="module", params=[(2, 1), (2, 2), (4, 2)], ids=["ulysses2", "ring2", "ulysses2xring2"])
def policy_runs(request, tmp_path_factory):
    """Two ledger-recorded training steps per policy (sin-cos PE, ZeRO 0), read as comm-report reads them."""
    sp, ring = request.param
    out = tmp_path_factory.mktemp(f"p{sp}r{ring}")
    runs = {}
    for policy in POLICIES:
        overrides = ("--train.activation_checkpointing", policy)
        run_dir = run_ranks(sp, comm_runs, 1, sp, 0, ["sincos"], str(out / policy), ring, overrides)[0][0]
        runs[policy] = load_run(run_dir)
    return {"sp": sp, "ring": ring, "runs": runs, "summaries": {p: summarize(r) for p, r in runs.items()}}


def sent(summary, rank=0) -> float:
    return sum(r.sent for r in summary["rows"][rank])


def test_the_ledger_equals_the_model_for_every_policy(policy_runs):
    for policy, summary in policy_runs["summaries"].items():
        assert summary["activation_checkpointing"] == policy
        for rank, rows in enumerate(summary["rows"]):
            for row in rows:
                where = f"{policy}, rank {rank}, {row.category}"
                assert row.model_sent is not None, f"{where}: measured traffic the model does not know"
                assert row.handed == pytest.approx(row.model_handed, rel=0.01), where
                assert row.sent == pytest.approx(row.model_sent, rel=0.01, abs=1e-9), where
        assert summary["recompute_sent"] == pytest.approx(summary["model_recompute_sent"], rel=1e-9, abs=1e-9)


def test_full_adds_exactly_the_recomputed_exchanges_and_local_adds_nothing(policy_runs):
    s = policy_runs["summaries"]
    sp, ring = policy_runs["sp"], policy_runs["ring"]
    assert s["none"]["recompute_sent"] == s["local"]["recompute_sent"] == 0
    assert sent(s["local"]) == sent(s["none"])  # not a byte more: the communication-aware policy
    # full re-runs every block's forward exchanges once: Ulysses 4 all-to-alls of a [b, N/P, D] shard
    # per layer, each sending (U-1)/U of it; a ring R - 1 hops of a K+V block (2 shards).
    b, n, d, e, layers, u = 8, 64, 64, 4, 4, sp // ring  # comm_runs: batch 8 of the 8x8 digits, nano model
    shard = b * n * d * e / sp
    expected = layers * (4 * shard * (u - 1) / u + (ring - 1) * 2 * shard)
    assert s["full"]["recompute_sent"] == pytest.approx(expected)
    assert sent(s["full"]) - sent(s["none"]) == pytest.approx(expected)
    # selective (every 2nd block) re-sends half of what full re-sends.
    assert s["selective"]["recompute_sent"] == pytest.approx(expected / 2)
    # and comm-report says which policy ran and what it re-sent
    table = format_summary(s["full"])
    assert "activation checkpointing=full" in table and "re-sent by backward's recompute" in table
    assert "re-sent by backward's recompute (local checkpointing, in the rows above): 0 B (model 0 B)" in (
        format_summary(s["local"])
    )


def test_recomputed_exchanges_are_counted_in_their_own_phase_and_layer(policy_runs):
    for policy, layers in [("full", {0, 1, 2, 3}), ("selective", {1, 3})]:
        rows = policy_runs["runs"][policy]["ranks"][0]["rows"]
        recomputed = [r for r in rows if r["phase"] == "recompute" and r["step"] == 1]
        assert {r["category"] for r in recomputed} <= {"attention_a2a", "attention_ring"}
        assert {r["layer"] for r in recomputed} == layers, policy
    for policy in ("none", "local"):
        assert not [r for r in policy_runs["runs"][policy]["ranks"][0]["rows"] if r["phase"] == "recompute"]


def test_recomputed_exchanges_are_seen_by_the_comms_logger_and_the_c10d_counter(policy_runs):
    rows = crosscheck_table(policy_runs["runs"]["full"])
    assert rows
    for r in rows:
        assert r["ledger"] == r["comms_logger"] == r["c10d"], r


@pytest.mark.parametrize(
    "sp, ring, zero, pe",
    [(2, 1, 2, "learned-sharded"), (2, 2, 0, "learned"), (4, 2, 1, "learned")],
    ids=["ulysses2-z2", "ring2-z0", "ulysses2xring2-z1"],
)
def test_twenty_steps_with_each_policy_give_the_loss_curve_without(sp, ring, zero, pe, tmp_path):
    pos = ["--model.pos_embed", "learned", "--model.shard_pos_embed", "true"] if pe == "learned-sharded" else []
    pos = pos or ["--model.pos_embed", pe]
    common = [
        *pos,
        "--parallel.sp",
        str(sp),
        "--parallel.ring",
        str(ring),
        "--parallel.launcher",
        "local",
        "--parallel.zero_stage",
        str(zero),
        "--optim.grad_clip",
        "0.5",
    ]
    curves = {
        policy: run_ranks(
            sp, loss_curve, [*common, "--train.activation_checkpointing", policy], str(tmp_path / policy)
        )[0]
        for policy in POLICIES
    }
    for policy, curve in curves.items():
        assert len(curve) == 20
        worst = max(abs(a - b) for a, b in zip(curve, curves["none"]))
        assert worst < 1e-5, f"{policy}: loss curve differs from no checkpointing by {worst}"
    assert sum(curves["none"][-5:]) < sum(curves["none"][:5])  # a real training curve
