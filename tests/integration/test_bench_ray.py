"""`pitdist bench ray` runs every launcher on the same job and writes a well-formed comparison."""

import json

import pytest

pytestmark = pytest.mark.slow


def test_bench_ray_compares_the_launchers(pitdist_cli, tmp_path):
    out = tmp_path / "bench.json"
    proc = pitdist_cli(
        "bench",
        "ray",
        "--steps",
        "6",
        "--repeats",
        "1",
        "--out",
        str(out),
        "--train.batch_size",
        "8",
        timeout=900,
        check=True,
    )
    report = json.loads(out.read_text())
    assert set(report["summary"]) == {"local", "ray / memory", "ray / ray_data"}
    for name, s in report["summary"].items():
        assert 0 < s["step_s"] < s["total_s"], name
        assert 0 < s["startup_s"] < s["total_s"], name
    assert "vs local" in proc.stdout and "1.00x" in proc.stdout  # local against itself
