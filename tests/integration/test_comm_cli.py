"""`pitdist comm-report` and `pitdist comm-model` as a user runs them."""

import csv
import json

import pytest


@pytest.mark.slow
def test_comm_report_measures_checks_and_writes_json_csv_png(pitdist_cli, tmp_path):
    out = tmp_path / "report"
    proc = pitdist_cli(
        "comm-report",
        "--sp",
        "2",
        "--variants",
        "none,learned",
        "--steps",
        "2",
        "--train.batch_size",
        "8",
        "--out",
        str(out),
        check=True,
    )
    assert "cross-check: ledger = DeepSpeed comms logger = c10d dispatch counter" in proc.stdout
    assert "learned: dp=1 sp=2" in proc.stdout and "vs none" in proc.stdout
    records = json.loads((out / "comm_report.json").read_text())["rows"]
    assert {r["variant"] for r in records} == {"none", "learned"}
    for r in records:
        assert r["ratio"] == pytest.approx(1.0, abs=0.01), r
    with (out / "comm_report.csv").open() as f:
        assert len(list(csv.DictReader(f))) == len(records)
    assert (out / "comm_report.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    # A finished run reads back to the same table.
    run_dirs = sorted(str(p) for p in (out / "runs").iterdir())
    again = pitdist_cli("comm-report", "--run", *run_dirs, "--out", str(tmp_path / "again"), check=True)

    def block(text, head):
        return text[text.index(head) :].split("\n\n")[0]

    for head in ("none: dp=1", "learned: dp=1"):
        assert block(proc.stdout, head) == block(again.stdout, head)


def test_comm_model_projects_pit_base_at_224_pixels(pitdist_cli):
    proc = pitdist_cli("comm-model", "--model.size", "base", "--image", "224x224x3", "--sp", "4", check=True)
    learned = next(line for line in proc.stdout.splitlines() if line.split()[:2] == ["4", "learned"])
    assert "(18.00)" in learned and "( 1.50)" in learned


def test_comm_model_says_when_ulysses_could_not_run_that_mesh(pitdist_cli):
    proc = pitdist_cli("comm-model", "--model.size", "tiny", "--sp", "4", check=True)
    assert "pitdist would refuse P = 4 here: parallel.sp = 4 does not divide the model's 3 attention heads" in (
        proc.stdout
    )
    assert "valid sp for this model: [1, 3]" in proc.stdout


def test_comm_model_projects_a_padded_mesh_and_its_padding_share(pitdist_cli):
    # 224x224 = 50,176 tokens on 12 ranks: shards of 4,182 slots, 8 of the 50,184 padding (0.016% of
    # the attention's bytes, which are 64% of the step's: 0.010% of all bytes sent)
    proc = pitdist_cli("comm-model", "--model.size", "base", "--sp", "12", check=True)
    assert "refuse" not in proc.stdout
    assert "P = 12: S = 4182, 8 padded" in proc.stdout
    rows = [line.split() for line in proc.stdout.splitlines() if line.split()[:2] == ["12", "none"]]
    assert rows and rows[0][-1] == "0.010%"


def test_comm_report_rejects_unknown_variants(pitdist_cli):
    proc = pitdist_cli("comm-report", "--variants", "rope")
    assert proc.returncode == 2 and "--variants: unknown ['rope']" in proc.stderr
