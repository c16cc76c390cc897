"""scripts/gpu-check.sh in its CPU mode: every section runs and says something sane, and a failing section
is recorded while the others still run. The GPU run happens only when a GPU machine is lent, so this is
what keeps the script from rotting between loans.

The GPU machine has no Ray and no Hugging Face datasets: both runs here hide them (a package of each
name that refuses to import, first on PYTHONPATH, inherited by the accuracy subprocess too)."""

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SECTIONS = ["kernels", "precision", "ledger", "flops", "accuracy"]


def run_script(tmp_path: Path, *args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    absent = tmp_path / "absent-on-the-gpu-machine"
    for name in ("ray", "datasets"):
        (absent / name).mkdir(parents=True, exist_ok=True)
        (absent / name / "__init__.py").write_text(f"raise ImportError('{name} is not installed on the GPU machine')\n")
    env = {k: v for k, v in os.environ.items() if k != "OUT"}  # the JSON goes to --out, not $OUT
    env.update(PITDIST_PYTHON=sys.executable, PYTHONPATH=str(absent), PYTHONUNBUFFERED="1")
    return subprocess.run(
        ["bash", "scripts/gpu-check.sh", "--cpu", "--work-dir", str(tmp_path / "runs"), *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@pytest.mark.slow
def test_cpu_mode_runs_every_section_with_sane_values(tmp_path):
    out = tmp_path / "gpu-check.json"
    proc = run_script(tmp_path, "--out", str(out))
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    report = json.loads(out.read_text())
    s = report["sections"]
    assert list(s) == SECTIONS and not report["failed"]
    assert all(s[name]["status"] == "ok" and s[name]["seconds"] > 0 for name in SECTIONS), s
    assert report["machine"]["mode"] == "cpu" and report["elapsed_s"] <= report["budget_s"]

    # 1. the CPU's fused kernel against the math path: fp32 to rounding, bf16 to its precision
    cases = s["kernels"]["cases"]
    assert {c["kernel"] for c in cases} == {"cpu_flash"} and {c["dtype"] for c in cases} == {"fp32", "bf16"}
    assert s["kernels"]["max_diff"]["fp32"] < 1e-5 and s["kernels"]["max_diff"]["bf16"] < 5e-2
    assert s["kernels"]["timing"]["fused_ms"] > 0 and s["kernels"]["timing"]["math_ms"] > 0

    # 2. bf16 and fp32 train the same steps on the same data, to nearly the same losses
    p = s["precision"]
    bf16, fp32 = p["losses_bf16"], p["losses_fp32"]
    assert len(bf16) == len(fp32) == p["steps"] and p["finite"]
    assert all(math.isfinite(x) for x in bf16 + fp32)
    assert p["max_abs_loss_diff"] == pytest.approx(max(abs(a - b) for a, b in zip(bf16, fp32)), abs=1e-5)
    assert 0 <= p["max_abs_loss_diff"] < 0.2 and p["backend"] == "gloo"

    # 3. the ledger's cost: three engines in turns, on CPU both "on" clocks are the host's
    ledger = s["ledger"]
    assert ledger["clocks"] == {"off": None, "events": "host", "sync": "host"}
    assert all(r > 0 for r in ledger["ratio_to_off"].values()) and set(ledger["ratio_to_off"]) == {"events", "sync"}
    assert ledger["rounds_timed"] >= 2 and ledger["calls_per_step_events"] >= 1
    assert ledger["same_losses"]  # same weights, same batch: recording changes nothing that is computed

    # 4. throughput for every size, and the memory model against what autograd kept
    variants = s["flops"]["variants"]
    assert len(variants) == 4 and all(v["tflops"] > 0 and v["step_s"] > 0 for v in variants)
    assert all(v["predicted"]["activation_peak_bytes"] > 0 for v in variants)
    measured = [v for v in variants if "measured_saved_bytes" in v]
    assert {v["policy"] for v in measured} == {"full", "none"}
    for v in measured:
        assert v["saved_over_predicted_held"] == pytest.approx(1.0, abs=0.1), v
    full, none = sorted(measured, key=lambda v: v["policy"])
    assert full["measured_saved_bytes"] < none["measured_saved_bytes"]

    # 5. the accuracy grid ran to its end and its own JSON lies beside this one
    acc = s["accuracy"]
    assert acc["complete"] and acc["runs"] == 5 and acc["returncode"] == 0
    assert {r["key"] for r in acc["summary"]} == {
        "PiT p=1 none",
        "PiT p=1 sincos",
        "PiT p=1 learned",
        "ViT p=2 sincos",
        "ViT p=4 sincos",
    }
    assert all(0 <= r["mean"] <= 1 for r in acc["summary"])
    assert json.loads(Path(acc["json"]).read_text())["complete"] and Path(acc["json"]).parent == tmp_path

    for name in SECTIONS:
        assert f"[{name}] ok" in proc.stdout


def test_a_failing_section_is_recorded_and_the_others_still_run(tmp_path):
    out = tmp_path / "gpu-check.json"
    # precision fails for real (no such dataset), ledger on purpose (--fail); kernels runs in between.
    proc = run_script(
        tmp_path,
        "--sections",
        "precision,kernels,ledger",
        "--dataset",
        str(tmp_path / "no-such-dataset"),
        "--fail",
        "ledger",
        "--out",
        str(out),
        timeout=300,
    )
    assert proc.returncode == 1, proc.stdout[-4000:] + proc.stderr[-4000:]
    report = json.loads(out.read_text())
    s = report["sections"]
    assert report["failed"] == ["precision", "ledger"]
    assert s["precision"]["status"] == "error" and "no-such-dataset" in s["precision"]["error"]
    assert s["precision"]["traceback"]
    assert s["ledger"]["status"] == "error" and "--fail ledger" in s["ledger"]["error"]
    assert s["kernels"]["status"] == "ok" and s["kernels"]["max_diff"]["fp32"] < 1e-5
    assert "[precision] error" in proc.stdout and "[kernels] ok" in proc.stdout
