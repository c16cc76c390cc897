"""Ring and hybrid sequence parallelism from the command line: refusals and the scheme comparison."""

import pytest


@pytest.mark.parametrize(
    "args, message",
    [
        (
            ["--sp", "6", "--model.heads", "3", "--model.dim", "48", "--data.dataset", "synthetic:6x6x1:50"],
            "parallel.sp = 6 does not divide the model's 3 attention heads (Ulysses gives each SP rank whole heads); "
            "valid sp for this model: [1, 3]; or add ring attention: valid (ulysses, ring) for sp = 6: "
            "[(3, 2), (1, 6)] (set parallel.ring)",
        ),
        (
            ["--sp", "8", "--ring", "2", "--model.heads", "6", "--model.dim", "48"],
            "parallel.ulysses = sp / ring = 8 / 2 = 4 does not divide the model's 6 attention heads",
        ),
        (["--sp", "4", "--ring", "3"], "parallel.ring: 3 does not divide parallel.sp = 4 (sp = ulysses x ring)"),
    ],
    ids=["heads", "hybrid-heads", "ring"],
)
def test_a_factorisation_that_cannot_work_is_refused_before_any_process_starts(pitdist_cli, tmp_path, args, message):
    out = tmp_path / "runs"
    proc = pitdist_cli("train", "--launcher", "local", "--train.output_dir", str(out), *args)
    assert proc.returncode == 2, proc.stderr
    assert message in proc.stderr
    assert not out.exists()


def test_comm_model_compares_ulysses_ring_and_hybrid(pitdist_cli):
    proc = pitdist_cli(
        "comm-model", "--model.size", "base", "--image", "224x224x3", "--sp", "4,64", "--schemes", check=True
    )
    rows = {
        line[6:28].strip(): line.split() for line in proc.stdout.splitlines() if line.split()[:1] in (["4"], ["64"])
    }
    assert set(rows) == {
        "ulysses 4",
        "ulysses 2 x ring 2",
        "ring 4",
        "ulysses 4 x ring 16",
        "ulysses 2 x ring 32",
        "ring 64",
    }
    assert "(18.00)" in " ".join(rows["ulysses 4"]) and "(60.00)" in " ".join(rows["ring 4"])
    assert "Ulysses alone cannot run P = 64" in proc.stdout


def test_comm_report_refuses_ring_sizes_that_divide_no_sp(pitdist_cli):
    proc = pitdist_cli("comm-report", "--sp", "2", "--ring", "3")
    assert proc.returncode == 2 and "--ring 3: no ring size divides any --sp 2" in proc.stderr
