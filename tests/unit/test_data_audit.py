"""The data ledger's audit finds every way a data path can go wrong."""

import json

import pytest

from pitdist.data.audit import IdLog, audit


def write(run_dir, rank, records):
    log = IdLog(run_dir, rank)
    for step, epoch, ids in records:
        log.write(step, epoch, ids)
    log.close()


def good_run(tmp_path):
    # dp = 2, sp = 2: ranks 0, 1 are group 0; ranks 2, 3 group 1. Two steps per epoch.
    group0 = [(0, 0, [1, 2]), (1, 0, [3, 4]), (2, 1, [4, 1])]
    group1 = [(0, 0, [5, 6]), (1, 0, [7, 8]), (2, 1, [2, 8])]
    for rank, records in enumerate([group0, group0, group1, group1]):
        write(tmp_path, rank, records)


def test_a_clean_run_passes_and_counts_each_epochs_images(tmp_path):
    good_run(tmp_path)
    report = audit(tmp_path, dp=2, sp=2)
    assert report.ok, report.problems
    assert report.steps == 3
    assert report.images_per_epoch == {0: 8, 1: 4}


def test_a_replay_with_the_same_images_is_counted_once(tmp_path):
    good_run(tmp_path)
    for rank, ids in enumerate([[3, 4], [3, 4], [7, 8], [7, 8]]):
        write(tmp_path, rank, [(1, 0, ids)])  # a restored worker group trains step 1 again
    report = audit(tmp_path, dp=2, sp=2)
    assert report.ok, report.problems
    assert report.replayed_steps == 1
    assert report.images_per_epoch == {0: 8, 1: 4}


@pytest.mark.parametrize(
    "rank, record, problem",
    [
        (0, (1, 0, [3, 9]), "rank 0 step 1: a replay after a restore took different ids"),
        (1, (3, 1, [9, 9]), "step 3: DP group 0 has ranks with no record"),
        (3, (0, 0, [6, 5]), "rank 3 step 0: a replay"),
    ],
)
def test_each_fault_is_named(tmp_path, rank, record, problem):
    good_run(tmp_path)
    write(tmp_path, rank, [record])
    report = audit(tmp_path, dp=2, sp=2)
    assert any(problem in p for p in report.problems), report.problems


def test_sp_ranks_that_disagree_and_images_repeated_in_an_epoch(tmp_path):
    write(tmp_path, 0, [(0, 0, [1, 2]), (1, 0, [2, 3])])
    write(tmp_path, 1, [(0, 0, [1, 2]), (1, 0, [3, 2])])
    report = audit(tmp_path, dp=1, sp=2)
    assert "step 1: the SP ranks of DP group 0 took different images" in report.problems
    assert any(p.startswith("epoch 0: 1 images trained more than once") for p in report.problems)


def test_missing_ranks_and_missing_ledger(tmp_path):
    write(tmp_path, 0, [(0, 0, [1])])
    assert audit(tmp_path, dp=1, sp=2).problems == ["no data ledger for ranks [1]"]
    with pytest.raises(FileNotFoundError, match="no data ledger"):
        audit(tmp_path / "elsewhere", dp=1, sp=1)


def test_pitdist_data_audit_exit_status(pitdist_cli, tmp_path):
    good_run(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({"parallel": {"dp": 2, "sp": 2}}))
    ok = pitdist_cli("data", "audit", str(tmp_path))
    assert ok.returncode == 0 and "3 steps, 0 replayed" in ok.stdout and ok.stdout.strip().endswith("ok")
    write(tmp_path, 2, [(1, 0, [1, 2])])
    bad = pitdist_cli("data", "audit", str(tmp_path))
    assert bad.returncode == 1 and "rank 2 step 1: a replay" in bad.stderr
    missing = pitdist_cli("data", "audit", str(tmp_path / "nope"))
    assert missing.returncode == 2 and "not a finished pitdist run directory" in missing.stderr
