"""The environment an embedded local Ray cluster starts with, so that a successful run reads clean.

Each setting removes a line that Ray prints on every successful one-machine run and that a newcomer
reads as something broken; none hides an error of pitdist or of the job:

- Ray 2.60 turns token authentication on for a new local cluster and warns that it did: the protection
  stays, the warning that it is on is dropped (a filter on that one message: Ray caches its auth mode
  at import, so setting ``RAY_AUTH_MODE`` here would come too late).
- ``RAY_TRAIN_ENABLE_PREEMPTION_WATCHER=0``: Ray Train's watcher for preempted (spot) nodes is an
  actor whose construction logs an error-level ``core_worker.cc`` line (ray-project/ray issue 53727);
  one machine has no node to lose to preemption.
- ``PYTHONWARNINGS``: Ray Train hands Ray Data ``ExecutionOptions.exclude_resources``, which Ray Data
  itself deprecates; the warning is about Ray's code, not the job's, and only that message is ignored.
- ``GLOO_SOCKET_IFNAME``: the cluster lives on the loopback interface; gloo would otherwise look for
  the interface the host name resolves to and, where it resolves to nothing (containers, chroots),
  warn on every worker before falling back to loopback.
- ``RAY_DATA_LOGGING_CONFIG``: Ray Data's own logging configuration with its console at WARNING, and
  without the notice that progress bars are off (pitdist turns them off: it shows its own). The log
  file in Ray's session directory keeps everything.

The settings are defaults: a variable the user has set wins. A cluster pitdist attaches to
(``--address``, ``ray job submit``) is configured by whoever started it and is left alone.
"""

from __future__ import annotations

import atexit
import copy
import logging
import os
import tempfile

RAY_DATA_DEPRECATION = "ignore:`ExecutionOptions.exclude_resources` is deprecated"


class HideAuthEnabledNotice(logging.Filter):
    """Drops Ray's "Token authentication is enabled for this Ray cluster" warning (the mode it chose)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith("Token authentication is enabled")


class HideProgressBarNotice(logging.Filter):
    """Drops Ray Data's "Progress bars disabled. To enable, ..." notice (pitdist disabled them)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith("Progress bars")


def ray_data_logging_config() -> dict:
    """Ray Data's default logging config, its console handler at WARNING and without the bar notice."""
    from ray.data._internal import logging as ray_data_logging

    config = copy.deepcopy(ray_data_logging.DEFAULT_CONFIG)
    config["filters"]["pitdist_progress_notice"] = {"()": f"{__name__}.HideProgressBarNotice"}
    console = config["handlers"]["console"]
    console["level"] = "WARNING"
    console["filters"] = [*console.get("filters", []), "pitdist_progress_notice"]
    return config


def use_embedded_cluster_env() -> None:
    """Set this process's environment (inherited by the cluster ``ray.init`` starts) as described above."""
    from ray._private.authentication import authentication_token_setup

    from pitdist.distributed.comm import bind_gloo_to_loopback

    auth_logger = logging.getLogger(authentication_token_setup.__name__)
    if not any(isinstance(f, HideAuthEnabledNotice) for f in auth_logger.filters):
        auth_logger.addFilter(HideAuthEnabledNotice())
    os.environ.setdefault("RAY_TRAIN_ENABLE_PREEMPTION_WATCHER", "0")
    bind_gloo_to_loopback()
    warnings = [w for w in os.environ.get("PYTHONWARNINGS", "").split(",") if w]
    if RAY_DATA_DEPRECATION not in warnings:
        os.environ["PYTHONWARNINGS"] = ",".join([*warnings, RAY_DATA_DEPRECATION])
    if "RAY_DATA_LOGGING_CONFIG" not in os.environ or os.environ["RAY_DATA_LOGGING_CONFIG"] == _logging_file:
        os.environ["RAY_DATA_LOGGING_CONFIG"] = _write_ray_data_logging_config()


_logging_file: str | None = None


def _write_ray_data_logging_config() -> str:
    """A temporary file, once per process, removed when the process exits: not in the run directory,
    which a run refused after the cluster started must leave empty."""
    import yaml  # Ray's dependency, and what Ray Data reads the file with

    global _logging_file
    if _logging_file is None or not os.path.exists(_logging_file):
        fd, path = tempfile.mkstemp(prefix="pitdist-ray-data-logging-", suffix=".yaml")
        with os.fdopen(fd, "w") as f:
            yaml.safe_dump(ray_data_logging_config(), f)
        atexit.register(lambda: os.path.exists(path) and os.remove(path))
        _logging_file = path
    return _logging_file
