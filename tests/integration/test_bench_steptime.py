"""`pitdist bench steptime` through the CLI in a tiny configuration (8x8 images, P = 1, 2)."""

import json

import pytest


@pytest.mark.slow
def test_tiny_split_adds_up_to_the_step_and_counts_all_to_all_only_with_sp(pitdist_cli, tmp_path):
    out = tmp_path / "st.json"
    proc = pitdist_cli(
        "bench",
        "steptime",
        "--sp",
        "1,2",
        "--dataset",
        "synthetic:8x8x1:64",
        "--steps",
        "3",
        "--warmup",
        "1",
        "--model.depth",
        "1",
        "--out",
        str(out),
        timeout=400,
        check=True,
    )
    report = json.loads(out.read_text())
    assert out.with_suffix(".png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    rows = {r["sp"]: r for r in report["rows"]}
    assert set(rows) == {1, 2}
    for p, row in rows.items():
        m = row["mean"]
        parts = m["compute"] + m["all_to_all"] + m["grad_reduce"] + m["other_comm"] + m["data_wait"]
        assert parts == pytest.approx(m["total_s"], rel=1e-9) and m["compute"] > 0 and m["data_wait"] > 0
        assert len(row["per_rank"]) == p and all(len(steps) == 2 for steps in row["per_rank"])  # warm-up left out
        # The steps timed are the trainer's own (its step timer's timing/rank*.json of the run).
        record = json.loads((tmp_path / "st" / row["run_dir"].split("/")[-1] / "timing" / "rank0.json").read_text())
        assert [t["step"] for t in record["steps"]] == [0, 1, 2]
    assert rows[1]["mean"]["all_to_all"] == 0 and rows[2]["mean"]["all_to_all"] > 0
    assert "all-to-all" in proc.stdout


def test_warmup_must_leave_timed_steps(pitdist_cli, tmp_path):
    proc = pitdist_cli(
        "bench", "steptime", "--steps", "2", "--warmup", "2", "--out", str(tmp_path / "s.json"), timeout=60
    )
    assert proc.returncode == 2 and "need 0 <= warmup < steps" in proc.stderr


@pytest.mark.slow
def test_a_rectangle_whose_tokens_p_does_not_divide_trains_padded(pitdist_cli, tmp_path):
    # 7x5 = 35 tokens on P = 2 (S = 18 slots per rank, one padded; 36 with the CLS token, none padded).
    out = tmp_path / "st.json"
    for pool in ("mean", "cls"):
        pitdist_cli(
            *("bench", "steptime", "--sp", "2", "--dataset", "synthetic:7x5x1:64", "--steps", "2", "--warmup", "1"),
            *("--model.depth", "1", "--model.pool", pool, "--out", str(out)),
            timeout=300,
            check=True,
        )
        (row,) = json.loads(out.read_text())["rows"]
        assert row["sp"] == 2 and row["mean"]["all_to_all"] > 0 and len(row["per_rank"]) == 2


def test_a_p_that_does_not_divide_the_heads_is_refused(pitdist_cli, tmp_path):
    proc = pitdist_cli("bench", "steptime", "--sp", "1,3", "--out", str(tmp_path / "s.json"), timeout=60)
    assert (
        proc.returncode == 2 and "--sp 3: parallel.sp = 3 does not divide the model's 4 attention heads" in proc.stderr
    )
    assert not (tmp_path / "s.json").exists()
