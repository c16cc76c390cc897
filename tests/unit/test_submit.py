"""`pitdist submit` / `pitdist job` argument handling and errors that need no cluster; job files load."""

import socket
import time
from pathlib import Path

import pytest

from pitdist.cli import build_parser
from pitdist.config import ConfigError, load_config
from pitdist.launch.submit import build_submission

ROOT = Path(__file__).resolve().parents[2]


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def parse(*argv: str):
    parser, _ = build_parser()
    return parser.parse_known_args(list(argv))


def test_entrypoint_and_runtime_env(monkeypatch):
    monkeypatch.chdir(ROOT)
    args, rest = parse("submit", "jobs/digits.toml", "--sp", "2", "--train.steps", "5", "--env", "DS_ACCELERATOR=cpu")
    entrypoint, runtime_env, _ = build_submission(args, rest)
    assert entrypoint == (
        "pitdist train --config jobs/digits.toml --launcher ray --address auto --train.steps 5 --parallel.sp 2"
    )
    assert runtime_env["working_dir"] == str(ROOT)
    assert runtime_env["env_vars"] == {"DS_ACCELERATOR": "cpu"}
    assert "/.venv" in runtime_env["excludes"] and "/data" in runtime_env["excludes"]  # not pitdist/data


def test_job_outside_working_dir_and_bad_env_are_refused(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    args, rest = parse("submit", str(ROOT / "jobs/digits.toml"))
    with pytest.raises(ConfigError, match="outside the working directory"):
        build_submission(args, rest)
    monkeypatch.chdir(ROOT)
    args, rest = parse("submit", "jobs/digits.toml", "--env", "NOEQUALS")
    with pytest.raises(ConfigError, match="KEY=VALUE"):
        build_submission(args, rest)


def test_bad_config_exits_2_before_contacting_the_cluster(pitdist_cli):
    port = closed_port()
    proc = pitdist_cli(
        "submit", "jobs/digits.toml", "--model.pos_embed", "bogus", "--address", f"http://127.0.0.1:{port}"
    )
    assert proc.returncode == 2, proc.stderr
    assert "model.pos_embed: 'bogus' is not allowed" in proc.stderr
    assert "nothing was submitted" in proc.stderr and "cannot reach" not in proc.stderr


@pytest.mark.parametrize(
    "command", [("job", "list"), ("job", "status", "raysubmit_x"), ("submit", "jobs/digits.toml", "--no-validate")]
)
def test_unreachable_cluster_is_a_clear_error(pitdist_cli, command):
    address = f"http://127.0.0.1:{closed_port()}"
    start = time.monotonic()
    proc = pitdist_cli(*command, "--address", address, timeout=60)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert f"cannot reach the Ray cluster at {address}" in proc.stderr
    assert "dashboard port" in proc.stderr
    assert time.monotonic() - start < 30


def test_missing_token_file_is_named(pitdist_cli, tmp_path):
    with socket.socket() as s:  # something listening, so the check gets past reachability
        s.bind(("127.0.0.1", 0))
        s.listen()
        proc = pitdist_cli(
            "job",
            "list",
            "--address",
            f"127.0.0.1:{s.getsockname()[1]}",
            "--token-file",
            str(tmp_path / "nope"),
            timeout=60,
        )
    assert proc.returncode == 1
    assert "--token-file" in proc.stderr and "no such file" in proc.stderr


@pytest.mark.parametrize("job", sorted(p.name for p in (ROOT / "jobs").glob("*.toml")))
def test_job_files_load(job):
    cfg = load_config(ROOT / "jobs" / job)
    assert cfg.name


def test_start_scripts_turn_settings_into_ray_start_flags(tmp_path):
    import os
    import subprocess

    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_", "PITDIST_"))}
    token = tmp_path / "token"
    token.write_text("abc")
    env.update(
        PITDIST_RAY_BIN="echo",
        PITDIST_NUM_CPUS="3",
        PITDIST_TEMP_DIR="/tmp/x",
        PITDIST_DASHBOARD_PORT="8300",
        PITDIST_METRICS_EXPORT_PORT="9100",
        RAY_AUTH_TOKEN_PATH=str(token),
    )
    head = subprocess.run(
        [ROOT / "cluster/start-head.sh", "--resources", "{}"], env=env, capture_output=True, text=True
    )
    assert head.returncode == 0, head.stderr
    argv = head.stdout.splitlines()[-1].split()  # what `ray` would have been given
    assert argv[:2] == ["start", "--block"] and "--head" in argv and argv[-2:] == ["--resources", "{}"]
    for flag, value in [
        ("--num-cpus", "3"),
        ("--temp-dir", "/tmp/x"),
        ("--dashboard-port", "8300"),
        ("--metrics-export-port", "9100"),
        ("--dashboard-host", "127.0.0.1"),
        ("--port", "6379"),
    ]:
        assert argv[argv.index(flag) + 1] == value
    assert "token auth: on" in head.stdout
    worker = subprocess.run(
        [ROOT / "cluster/start-worker.sh", f"127.0.0.1:{closed_port()}"],
        capture_output=True,
        text=True,
        env=dict(env, PITDIST_HEAD_WAIT_S="1"),
    )
    assert worker.returncode == 1 and "not reachable after 1 s" in worker.stderr
    token.write_text("")
    refused = subprocess.run([ROOT / "cluster/start-head.sh"], env=env, capture_output=True, text=True)
    assert refused.returncode == 2 and "missing or empty" in refused.stderr
