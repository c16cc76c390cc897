"""The communication ledger: every byte accounted for, by cause, and matching the model.

Each case trains every PE variant for two steps on real gloo ranks with the ledger, DeepSpeed's
comms logger and a c10d dispatch counter all recording, then reads the runs as `pitdist comm-report`
does.
"""

import pytest
from spawn import run_ranks
from workers import comm_runs

from pitdist.report.comm_report import crosscheck_table, load_run, summarize

VARIANTS = ["none", "sincos", "learned", "learned-sharded"]
pytestmark = pytest.mark.slow


@pytest.fixture(
    scope="module",
    params=[(1, 2, 0), (1, 4, 0), (1, 2, 2), (2, 2, 0), (2, 2, 1), (2, 2, 2)],
    ids=["P2-z0", "P4-z0", "P2-z2", "Q2xP2-z0", "Q2xP2-z1", "Q2xP2-z2"],
)
def mesh_runs(request, tmp_path_factory):
    dp, sp, zero = request.param
    out = tmp_path_factory.mktemp(f"q{dp}p{sp}z{zero}")
    run_dirs = run_ranks(dp * sp, comm_runs, dp, sp, zero, VARIANTS, str(out))[0]
    runs = {v: load_run(d) for v, d in zip(VARIANTS, run_dirs)}
    return {"dp": dp, "sp": sp, "zero": zero, "runs": runs, "summaries": {v: summarize(r) for v, r in runs.items()}}


def by_category(summary, rank=0):
    return {r.category: r for r in summary["rows"][rank]}


def test_every_category_matches_the_model_on_every_rank(mesh_runs):
    for variant, summary in mesh_runs["summaries"].items():
        for rank, rows in enumerate(summary["rows"]):
            for row in rows:
                where = f"{variant}, rank {rank}, {row.category}"
                assert row.model_sent is not None, f"{where}: measured traffic the model does not know"
                assert row.handed == pytest.approx(row.model_handed, rel=0.01), where
                assert row.sent == pytest.approx(row.model_sent, rel=0.01, abs=1e-9), where
        assert by_category(summary)["attention_a2a"].sent > 0


def test_ledger_agrees_with_the_comms_logger_and_the_c10d_counter(mesh_runs):
    for variant, run in mesh_runs["runs"].items():
        rows = crosscheck_table(run)
        assert len({r["rank"] for r in rows}) == mesh_runs["dp"] * mesh_runs["sp"], "a rank recorded nothing"
        for r in rows:
            assert r["ledger"] == r["comms_logger"] == r["c10d"], f"{variant}: {r}"
        assert any(r["op"] == "all_to_all_single" and r["ledger"][1] > 0 for r in rows)


def test_what_the_position_embedding_costs(mesh_runs):
    s = {v: by_category(summary) for v, summary in mesh_runs["summaries"].items()}
    dp, sp = mesh_runs["dp"], mesh_runs["sp"]
    # The all-to-alls never depend on the position embedding.
    assert s["none"]["attention_a2a"].sent == s["sincos"]["attention_a2a"].sent == s["learned"]["attention_a2a"].sent
    # sincos costs nothing.
    assert sum(r.sent for r in s["sincos"].values()) == sum(r.sent for r in s["none"].values())
    # A replicated learned table adds exactly its gradient's all-reduce over all Q*P ranks (2 N D e (W-1)/W).
    n, d, e, w = 64, 64, 4, dp * sp
    extra = {c: s["learned"][c].sent - (s["none"][c].sent if c in s["none"] else 0) for c in s["learned"]}
    assert extra.pop("pe_grad_reduce") == pytest.approx(2 * n * d * e * (w - 1) / w)
    if mesh_runs["zero"] == 0:
        assert all(v == pytest.approx(0, abs=1e-6) for v in extra.values()), extra
    # A table sharded with the tokens is reduced over the DP group only: nothing at all when Q = 1.
    sharded_pe = s["learned-sharded"]["pe_grad_reduce"].sent
    assert sharded_pe == pytest.approx(2 * (n // sp) * d * e * (dp - 1) / dp)
    if dp == 1:
        total = {v: sum(r.sent for r in rows.values()) for v, rows in s.items()}
        # ...apart from, under ZeRO 1/2, one more 4-byte gradient-norm all-reduce (the table is an
        # optimizer group of its own).
        norm_extra = s["learned-sharded"]["grad_norm"].sent - s["none"]["grad_norm"].sent
        assert norm_extra == (0 if mesh_runs["zero"] == 0 else pytest.approx(2 * 4 * (sp - 1) / sp))
        assert total["learned-sharded"] - norm_extra == pytest.approx(total["none"])


def test_layers_and_phases_are_recorded(mesh_runs):
    rows = mesh_runs["runs"]["none"]["ranks"][0]["rows"]
    a2a = [r for r in rows if r["category"] == "attention_a2a" and r["step"] == 1]
    assert {r["layer"] for r in a2a} == {0, 1, 2, 3}  # the nano model's 4 blocks
    assert {r["phase"] for r in a2a} == {"forward", "backward"}
    assert all(r["count"] == 4 for r in a2a)  # q, k, v in and the output back, per layer and phase
    assert any(r["category"] == "init_broadcast" for r in rows)
