"""`pitdist submit` and `pitdist job`: run job files on a Ray cluster through Ray's Job Submission API.

`pitdist submit JOB.toml --address http://HEAD:8265` checks the job locally, then submits the
entrypoint ``pitdist train --config JOB.toml --launcher ray --address auto <overrides>`` with the
working directory (the repository checkout) as the job's ``working_dir``: the job file and the
``pitdist`` package travel with the job, and the uploaded package comes first on the job's
PYTHONPATH, so the code that runs is the code that was submitted. The cluster's Python must already
have pitdist's dependencies and the ``pitdist`` command (the cluster images install pitdist).
``--address auto`` makes the driver attach to the cluster the job runs on (Ray sets RAY_ADDRESS in
every job) instead of starting an embedded one. Datasets are not uploaded: a job's
``data.dataset`` must exist at that path on the cluster's nodes (``digits`` is bundled).

Token auth: Ray 2.60 clusters require a token by default. The token is read from ``--token-file``,
``RAY_AUTH_TOKEN_PATH``, ``RAY_AUTH_TOKEN`` or ``~/.ray/auth_token`` (Ray's loader); naming one turns
``RAY_AUTH_MODE=token`` on for this command.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shlex
import socket
import sys
import textwrap
import time
from pathlib import Path
from urllib.parse import urlparse

# Never upload these with the working directory (Ray also honours .gitignore).
EXCLUDES = ["/.git", "/.venv", "/runs", "/data", "__pycache__", "*.pyc", ".pytest_cache"]
DEFAULT_ADDRESS = "http://127.0.0.1:8265"


class ClusterError(RuntimeError):
    """The cluster cannot be reached or refused the request; the message says what to check."""


SUBMIT_EPILOG = textwrap.dedent(
    """\
    Job settings are overridden as for `pitdist train`: --SECTION.KEY VALUE (and --dp/--sp/--zero).
    The job file is checked here first (config, mesh, dataset); a bad one exits with status 2
    without submitting. --no-validate skips that (e.g. when the dataset exists only on the cluster).

    Token auth (on by default in Ray 2.60): --token-file PATH, or RAY_AUTH_TOKEN_PATH / RAY_AUTH_TOKEN.

    Examples
      pitdist submit jobs/digits.toml --address http://127.0.0.1:8265 --follow
      pitdist submit jobs/digits.toml --address http://head:8265 --token-file ~/.ray/cluster_token \\
          --dp 2 --sp 2 --train.steps 100 --train.output_dir /shared/runs
      pitdist job logs raysubmit_XXXX --follow --address http://head:8265
    Same as: ray job submit --address http://head:8265 --working-dir . -- \\
               pitdist train --config jobs/digits.toml --launcher ray --address auto
    """
)


def _add_connection_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--address",
        default=None,
        help="the head's dashboard / job API URL (default: $RAY_API_SERVER_ADDRESS, "
        f"$RAY_ADDRESS, else {DEFAULT_ADDRESS})",
    )
    p.add_argument(
        "--token-file",
        default=None,
        help="the cluster's auth token file (else RAY_AUTH_TOKEN_PATH, RAY_AUTH_TOKEN, ~/.ray/auth_token)",
    )


def add_submit_parser(sub) -> argparse.ArgumentParser:
    p = sub.add_parser(
        "submit",
        help="submit a job file to a Ray cluster (Ray Job Submission API)",
        description="Submit `pitdist train --config JOB --launcher ray` to a Ray cluster as a Ray job; "
        "the current directory (the repository) travels with it as the job's working_dir.",
        epilog=SUBMIT_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("job", help="job TOML file inside the working directory, e.g. jobs/digits.toml")
    _add_connection_args(p)
    p.add_argument(
        "--follow", action="store_true", help="stream the job's logs until it ends; exit 0 only if it SUCCEEDED"
    )
    p.add_argument("--no-validate", action="store_true", help="submit without checking the job here first")
    p.add_argument("--working-dir", default=".", help="directory uploaded as the job's working_dir (default .)")
    p.add_argument(
        "--env",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="environment variable for the job's driver and workers (repeatable), e.g. --env DS_ACCELERATOR=cpu",
    )
    p.add_argument("--submission-id", default=None, help="job ID to use (default: Ray picks raysubmit_...)")
    p.add_argument("--dp", type=int, help="data-parallel groups Q (--parallel.dp)")
    p.add_argument("--sp", type=int, help="sequence-parallel ranks P (--parallel.sp)")
    p.add_argument("--zero", type=int, help="ZeRO stage (--parallel.zero_stage)")
    return p


def add_job_parser(sub) -> argparse.ArgumentParser:
    p = sub.add_parser(
        "job",
        help="list, inspect, follow or stop jobs on a Ray cluster",
        description="Jobs on a Ray cluster (any job, not only pitdist's), as `ray job ...` does.",
        epilog="Examples\n  pitdist job list --address http://127.0.0.1:8265\n"
        "  pitdist job status raysubmit_XXXX\n  pitdist job logs raysubmit_XXXX --follow\n"
        "  pitdist job stop raysubmit_XXXX",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    subs = p.add_subparsers(dest="job_command", required=True, metavar="ACTION")
    _add_connection_args(subs.add_parser("list", help="every job of the cluster with its status"))
    for name, text in [
        ("status", "a job's status and message (exit 0 SUCCEEDED, 1 FAILED/STOPPED, 3 still running)"),
        ("logs", "a job's logs so far (--follow: until it ends)"),
        ("stop", "ask a running job to stop"),
    ]:
        q = subs.add_parser(name, help=text)
        q.add_argument("job_id", help="submission ID (raysubmit_...) as printed by `pitdist submit`")
        _add_connection_args(q)
        if name == "logs":
            q.add_argument("--follow", action="store_true", help="stream until the job ends")
    return p


# --- connection ---------------------------------------------------------------------------------


def _address(args: argparse.Namespace) -> str:
    address = (
        args.address or os.environ.get("RAY_API_SERVER_ADDRESS") or os.environ.get("RAY_ADDRESS") or DEFAULT_ADDRESS
    ).rstrip("/")
    if "://" not in address:  # "head:8265" is the dashboard here, never a GCS address
        address = "http://" + address
    return address


def connect(args: argparse.Namespace):
    """A JobSubmissionClient for the address, with a quick reachability check and token setup."""
    address = _address(args)
    url = urlparse(address)
    if url.scheme not in ("http", "https") or not url.hostname:
        raise ClusterError(f"--address {address}: expected the head's dashboard URL, e.g. {DEFAULT_ADDRESS}")
    # The SDK reads RAY_ADDRESS over its argument and has no connect timeout: decide both here.
    os.environ.pop("RAY_API_SERVER_ADDRESS", None)
    os.environ.pop("RAY_ADDRESS", None)
    try:
        socket.create_connection((url.hostname, url.port or (443 if url.scheme == "https" else 80)), 5).close()
    except OSError as exc:
        raise ClusterError(
            f"cannot reach the Ray cluster at {address} ({exc}); check that the head is "
            "running, that this is its dashboard port (ray start --dashboard-port, 8265 by "
            "default) and that --dashboard-host lets this machine in"
        ) from None
    if args.token_file:
        token = Path(args.token_file).expanduser().absolute()
        if not token.is_file():
            raise ClusterError(f"--token-file {args.token_file}: no such file")
        os.environ["RAY_AUTH_TOKEN_PATH"] = str(token)
    if os.environ.get("RAY_AUTH_TOKEN_PATH") or os.environ.get("RAY_AUTH_TOKEN"):
        os.environ.setdefault("RAY_AUTH_MODE", "token")
    from ray.job_submission import JobSubmissionClient  # after the auth variables: Ray reads them once

    return _call(address, JobSubmissionClient, address)


def _call(address: str, fn, *a, **kw):
    """Run an SDK call, turning Ray's errors into one message naming the cluster and what to check."""
    from ray.exceptions import AuthenticationError

    try:
        return fn(*a, **kw)
    except AuthenticationError as exc:
        raise ClusterError(
            f"the Ray cluster at {address} refused the request: {str(exc).splitlines()[0]} "
            "Give this command the cluster's token: --token-file PATH, RAY_AUTH_TOKEN_PATH=PATH "
            "or RAY_AUTH_TOKEN=... (the token the head was started with)."
        ) from None
    except (ConnectionError, RuntimeError) as exc:
        raise ClusterError(f"Ray cluster at {address}: {exc}") from None


# --- submit -------------------------------------------------------------------------------------


def build_submission(args: argparse.Namespace, overrides: list[str]) -> tuple[str, dict, list[str]]:
    """(entrypoint, runtime_env, overrides as --section.key pairs) for the job; raises ConfigError."""
    from pitdist.config import ConfigError

    working_dir = Path(args.working_dir).absolute()
    job = Path(args.job).absolute()
    if not job.is_file():
        raise ConfigError(f"job file {args.job} does not exist (job files live in jobs/)")
    if not job.is_relative_to(working_dir):
        raise ConfigError(
            f"job file {args.job} is outside the working directory {working_dir} that travels "
            "with the job; run from the repository root or pass --working-dir"
        )
    env_vars = {}
    for item in args.env:
        key, eq, value = item.partition("=")
        if not eq or not key:
            raise ConfigError(f"--env {item!r}: expected KEY=VALUE, e.g. --env DS_ACCELERATOR=cpu")
        env_vars[key] = value
    for attr, key in {"dp": "parallel.dp", "sp": "parallel.sp", "zero": "parallel.zero_stage"}.items():
        if getattr(args, attr) is not None:
            overrides = overrides + [f"--{key}", str(getattr(args, attr))]
    entrypoint = shlex.join(
        [
            "pitdist",
            "train",
            "--config",
            job.relative_to(working_dir).as_posix(),
            "--launcher",
            "ray",
            "--address",
            "auto",
            *overrides,
        ]
    )
    runtime_env = {"working_dir": str(working_dir), "excludes": EXCLUDES}
    if env_vars:
        runtime_env["env_vars"] = env_vars
    return entrypoint, runtime_env, overrides


def validate_locally(job: str, overrides: list[str]) -> None:
    """What `pitdist train` would refuse, refused before anything is submitted."""
    from pitdist.config import load_config
    from pitdist.train.validate import validate_job  # imports torch: seconds, but only here

    validate_job(load_config(job, overrides + ["--parallel.launcher", "ray"]))


def submit_main(args: argparse.Namespace, overrides: list[str]) -> int:
    from pitdist.config import ConfigError
    from pitdist.parallel_dims import MeshError

    try:
        entrypoint, runtime_env, overrides = build_submission(args, overrides)
        if not args.no_validate:
            validate_locally(args.job, overrides)
    except (ConfigError, MeshError) as exc:
        print(
            f"pitdist submit: error: {exc}\npitdist submit: nothing was submitted (the job was checked "
            "here; --no-validate skips the check, e.g. when the dataset exists only on the cluster)",
            file=sys.stderr,
        )
        return 2
    try:
        client = connect(args)
        address = _address(args)
        job_id = _call(
            address,
            client.submit_job,
            entrypoint=entrypoint,
            runtime_env=runtime_env,
            submission_id=args.submission_id,
            metadata={"pitdist_job": args.job},
        )
        print(
            f"pitdist submit: submitted job {job_id} to {address}\n  entrypoint: {entrypoint}\n"
            f"  follow: pitdist job logs {job_id} --follow --address {address}\n"
            f"  stop:   pitdist job stop {job_id} --address {address}",
            flush=True,
        )
        return _follow(client, address, job_id) if args.follow else 0
    except ClusterError as exc:
        print(f"pitdist submit: error: {exc}", file=sys.stderr)
        return 1


def _follow(client, address: str, job_id: str) -> int:
    """Stream logs until the job ends; exit status 0 SUCCEEDED, 1 otherwise."""

    async def tail():
        async for lines in client.tail_job_logs(job_id):
            print(lines, end="", flush=True)

    try:
        _call(address, asyncio.run, tail())
    except KeyboardInterrupt:
        print(
            f"\npitdist: stopped following; job {job_id} keeps running (pitdist job stop {job_id} --address {address})",
            file=sys.stderr,
        )
        return 130
    info = _call(address, client.get_job_info, job_id)
    while not info.status.is_terminal():  # the log stream can close a moment before the status flips
        time.sleep(0.5)
        info = _call(address, client.get_job_info, job_id)
    print(f"pitdist: job {job_id} {info.status}" + (f": {info.message}" if info.message else ""), flush=True)
    return 0 if info.status == "SUCCEEDED" else 1


# --- job list / status / logs / stop ------------------------------------------------------------


def job_main(args: argparse.Namespace, overrides: list[str]) -> int:
    if overrides:
        print(f"pitdist job {args.job_command}: error: unrecognized arguments: {' '.join(overrides)}", file=sys.stderr)
        return 2
    try:
        client = connect(args)
        address = _address(args)
        if args.job_command == "list":
            jobs = sorted(_call(address, client.list_jobs), key=lambda j: j.start_time or 0)
            print(f"{'submission id':<30} {'status':<10} {'started':<19}  entrypoint")
            for j in jobs:
                started = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime((j.start_time or 0) / 1000))
                print(f"{j.submission_id or j.job_id:<30} {j.status:<10} {started}  {j.entrypoint}")
            return 0
        if args.job_command == "status":
            info = _call(address, client.get_job_info, args.job_id)
            print(f"{args.job_id}: {info.status}" + (f": {info.message}" if info.message else ""))
            return {"SUCCEEDED": 0, "FAILED": 1, "STOPPED": 1}.get(str(info.status), 3)
        if args.job_command == "logs":
            if args.follow:
                return _follow(client, address, args.job_id)
            print(_call(address, client.get_job_logs, args.job_id), end="")
            return 0
        stopped = _call(address, client.stop_job, args.job_id)
        print(f"{args.job_id}: " + ("stop requested" if stopped else "was not running"))
        return 0
    except ClusterError as exc:
        print(f"pitdist job {args.job_command}: error: {exc}", file=sys.stderr)
        return 1
