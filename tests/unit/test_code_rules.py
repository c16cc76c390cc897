"""The code's own rules, checked by the tools made for them (configured in pyproject.toml).

- import-linter: imports only point down the layers (cli -> bench -> launch -> train | report ->
  data | distributed -> observe -> models -> config), models are plain torch, reports read run
  directories with nothing but config, mesh arithmetic and the ledger's categories.
- ruff: formatted, and its lint rules pass.
"""

import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent


def run(tool: str, *args: str, cwd: Path = ROOT, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([str(BIN / tool), *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


def test_imports_follow_the_layer_contracts():
    proc = run("lint-imports")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "0 broken" in proc.stdout


def test_an_upward_import_breaks_the_layer_contract(tmp_path):
    # A copy of the package in which the model imports the trainer: the check must refuse it.
    shutil.copytree(ROOT / "pitdist", tmp_path / "pitdist", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path)
    pos_embed = tmp_path / "pitdist" / "models" / "pos_embed.py"
    pos_embed.write_text(pos_embed.read_text() + "\nfrom pitdist.train import trainer  # noqa: E402,F401\n")
    proc = run("lint-imports", cwd=tmp_path, env={"PYTHONPATH": str(tmp_path), "PATH": str(BIN)})
    assert proc.returncode != 0, proc.stdout
    assert "pitdist.models is not allowed to import pitdist.train" in proc.stdout, proc.stdout


def test_code_is_ruff_formatted():
    proc = run("ruff", "format", "--check", "pitdist", "tests")
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_code_passes_ruff_check():
    proc = run("ruff", "check", "pitdist", "tests")
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_no_module_imports_itself_through_others():
    # grimp (import-linter's graph) counts imports inside functions too: a cycle there is a cycle.
    import grimp

    graph = grimp.build_graph("pitdist")
    cycles = []
    for module in sorted(graph.modules):
        for imported in graph.find_modules_directly_imported_by(module):
            chain = graph.find_shortest_chain(importer=imported, imported=module)
            if chain:
                cycles.append(" -> ".join((module, *chain)))
    assert cycles == [], "\n".join(cycles)
