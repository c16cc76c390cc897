"""Ulysses with its all-to-alls pipelined with the kernel (pitdist.distributed.ulysses_overlap,
``parallel.overlap_comm``): on real gloo ranks, exactly the single-device model, and the same bytes in the
ledger as the comm model counts. The trainer applies it on CUDA only; these tests build it on CPU."""

import json
from pathlib import Path

import pytest
from spawn import run_ranks
from workers import one_step_versus_single_device, overlapped_comm_runs

from pitdist.distributed.parallelize import overlaps_ulysses
from pitdist.distributed.ulysses_overlap import pieces_of
from pitdist.parallel_dims import ParallelDims
from pitdist.report.comm_report import crosscheck_table, load_run, summarize

VARIANTS = [("none", False), ("sincos", False), ("learned", False), ("learned", True)]
SMALL = ("--model.dim", "32", "--model.depth", "2")


def test_the_overlap_applies_on_cuda_to_ulysses_alone_and_not_under_local_checkpointing():
    ulysses2, hybrid = ParallelDims(1, 2), ParallelDims(1, 4, ring=2)
    assert overlaps_ulysses(True, "cuda", ulysses2, "none")
    assert overlaps_ulysses(True, "cuda", ulysses2, "full")
    assert not overlaps_ulysses(True, "cpu", ulysses2, "none")
    assert not overlaps_ulysses(False, "cuda", ulysses2, "none")
    assert not overlaps_ulysses(True, "cuda", hybrid, "none")
    assert not overlaps_ulysses(True, "cuda", ParallelDims(1, 1), "none")
    assert not overlaps_ulysses(True, "cuda", ulysses2, "local")


def test_the_pipeline_cuts_the_received_heads_else_the_batch():
    assert pieces_of(batch=4, heads_received=6, wanted=2) == ("heads", 2)
    assert pieces_of(batch=4, heads_received=1, wanted=2) == ("batch", 2)
    assert pieces_of(batch=1, heads_received=1, wanted=2) == ("heads", 1)
    assert pieces_of(batch=8, heads_received=3, wanted=4) == ("heads", 3)


@pytest.mark.slow
@pytest.mark.parametrize(
    "sp, image, model",
    [
        (2, (8, 8, 1), ("--model.heads", "4", *SMALL)),  # 2 heads received: 2 pieces of heads
        (3, (7, 7, 1), ("--model.heads", "3", "--model.dim", "48", "--model.depth", "2")),  # 1 head: the batch
    ],
    ids=["8x8-ulysses2-heads", "7x7-ulysses3-padded-batch"],
)
def test_overlapped_ulysses_matches_one_device_for_every_pe_and_both_pools(sp, image, model):
    reports = run_ranks(
        sp, one_step_versus_single_device, 1, sp, VARIANTS, 1, image, model, ("mean", "cls"), True, True
    )
    for rank, report in enumerate(reports):
        assert len(report) == 8
        for entry in report:
            worst = {k: v for k, v in entry["diffs"].items() if v > 1e-5}
            assert not worst, f"rank {rank}, {entry['pool']} {entry['variant']}: above 1e-5: {worst}"
            assert len(entry["diffs"]) > 10


@pytest.mark.slow
def test_overlapped_ulysses_sends_what_the_model_counts_and_every_counter_agrees(tmp_path):
    ranks = run_ranks(2, overlapped_comm_runs, str(tmp_path), ("--model.heads", "4", *SMALL))
    run_dirs = ranks[0]["run_dirs"]
    for rank, result in enumerate(ranks):  # every all-to-all the ledger saw was started by the pipeline
        calls = sum(
            r["count"]
            for d in run_dirs
            for r in json.loads((Path(d) / "comm" / f"rank{rank}.json").read_text())["rows"]
            if r["op"] == "all_to_all_single"
        )
        assert calls == result["started"] > 0
    for run_dir in run_dirs:
        run = load_run(run_dir)
        for rank, rows in enumerate(summarize(run)["rows"]):
            for row in rows:
                where = f"{run_dir}, rank {rank}, {row.category}"
                assert row.model_sent is not None, f"{where}: traffic the model does not know"
                assert row.handed == pytest.approx(row.model_handed, rel=0.01), where
                assert row.sent == pytest.approx(row.model_sent, rel=0.01, abs=1e-9), where
        assert any(r.category == "attention_a2a" and r.sent > 0 for r in summarize(run)["rows"][0])
        for r in crosscheck_table(run):
            assert r["ledger"] == r["comms_logger"] == r["c10d"], f"{run_dir}: {r}"
