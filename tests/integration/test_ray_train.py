"""`pitdist train --launcher ray`: Ray Train workers compute exactly what the local launcher does."""

import json
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow


@pytest.fixture(autouse=True)
def no_cloud_probe():
    # Ray probes a cloud metadata address at start unless this file exists (DESIGN.md section 7).
    bootstrap = Path.home() / "ray_bootstrap_config.yaml"
    if not bootstrap.exists():
        bootstrap.write_text("{}\n")


def losses(proc) -> list[float]:
    done = next(line for line in proc.stdout.splitlines() if line.startswith("done: "))
    return json.loads((Path(done.split("| ")[-1]) / "result.json").read_text())["losses"]


@pytest.mark.parametrize("dp, sp", [(1, 2), (2, 2)], ids=["1x2", "2x2"])
def test_ray_run_gives_the_local_launchers_losses(pitdist_cli, tmp_path, dp, sp):
    args = ("train", "--dp", str(dp), "--sp", str(sp), "--train.steps", "8", "--model.pos_embed", "learned",
            "--model.shard_pos_embed", "true", "--train.output_dir")
    ray = pitdist_cli(*args, str(tmp_path / "ray"), "--launcher", "ray", check=True)
    local = pitdist_cli(*args, str(tmp_path / "local"), "--launcher", "local", check=True)
    assert len(losses(ray)) == 8
    assert losses(ray) == pytest.approx(losses(local), abs=1e-6)
    assert "communication (measured" in ray.stdout  # every Ray worker's ledger reached the run directory
