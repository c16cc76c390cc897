"""scripts/setup.sh on a machine without a C++ compiler: it must stop and say what to install.

DeepSpeed JIT-compiles its CPU comm op at the first init_distributed, so a set-up that "succeeds"
without it leaves every multi-rank run to crash later (a plain Debian has no compiler). Both tests run
the real script against this checkout's .venv (already installed: its pip step is skipped) with an
empty TORCH_EXTENSIONS_DIR, so the op must be built again, and a PATH that lacks or breaks the compiler.
"""

import os
import stat
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
COMPILERS = ("c++", "g++", "gcc", "cc", "clang", "clang++")


def setup_env(tmp_path: Path, path: str) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("CXX", "CC")}
    # The interpreter .venv was made from (a venv's own python has no ensurepip to offer set-up).
    env.update(
        PATH=path,
        PYTHON=os.path.realpath(sys._base_executable),
        TORCH_EXTENSIONS_DIR=str(tmp_path / "torch_extensions"),
    )
    return env


def run_setup(env: dict) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["bash", "scripts/setup.sh", "--test"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600
    )


def built_ops(tmp_path: Path) -> list[Path]:
    return list((tmp_path / "torch_extensions").rglob("*.so"))


def test_setup_without_a_compiler_stops_and_names_the_debian_packages(tmp_path):
    # Every program on PATH except compilers and apt-get (so that set-up, though root, cannot install).
    hidden = tmp_path / "bin"
    hidden.mkdir()
    for directory in os.environ["PATH"].split(os.pathsep):
        for exe in Path(directory).glob("*") if Path(directory).is_dir() else ():
            name = exe.name
            if (
                name in COMPILERS
                or name.startswith(("x86_64-linux-gnu-", "aarch64-linux-gnu-"))
                or name.startswith("apt")
                or (hidden / name).exists()
            ):
                continue
            (hidden / name).symlink_to(exe)
    proc = run_setup(setup_env(tmp_path, str(hidden)))
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "sudo apt-get install" in proc.stderr and "g++" in proc.stderr, proc.stderr
    assert built_ops(tmp_path) == []


def test_a_failed_comm_op_build_fails_setup_with_the_compiler_fix(tmp_path):
    # A compiler that is there but fails: set-up gets as far as the build, which must not be swallowed.
    broken = tmp_path / "broken"
    broken.mkdir()
    compiler = broken / "c++"
    compiler.write_text("#!/bin/sh\necho 'c++: this compiler is a broken compiler' >&2\nexit 1\n")
    compiler.chmod(compiler.stat().st_mode | stat.S_IXUSR)
    proc = run_setup(setup_env(tmp_path, os.pathsep.join([str(broken), os.environ["PATH"]])))
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "building DeepSpeed's CPU comm op failed" in proc.stderr, proc.stderr
    assert "apt-get install g++ python3-dev" in proc.stderr
    assert "c++" in (tmp_path / "torch_extensions" / "build-shm-op.log").read_text()  # the build's own error
    assert built_ops(tmp_path) == []
