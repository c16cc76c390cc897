"""`pitdist` command line: train, comm-report, comm-model, bench, data, submit, job.

A registry: each command is a module of pitdist.commands with ``add_parser(subparsers)`` and
``main(args, rest) -> int`` (``rest``: the --SECTION.KEY VALUE job settings argparse left over).
This module builds the parser from COMMANDS and dispatches; it knows nothing else about them.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

# (command, module), in `pitdist --help` order. The modules are light at import time: torch,
# deepspeed and ray load inside main, so --help and option errors stay fast.
COMMANDS = (
    ("train", "pitdist.commands.train"),
    ("comm-report", "pitdist.commands.comm_report"),
    ("comm-model", "pitdist.commands.comm_model"),
    ("bench", "pitdist.commands.bench"),
    ("data", "pitdist.commands.data"),
    ("submit", "pitdist.commands.submit"),
    ("job", "pitdist.commands.job"),
)


def build_parser() -> tuple[argparse.ArgumentParser, dict]:
    """The `pitdist` parser and, per command, (its sub-parser, its main)."""
    parser = argparse.ArgumentParser(
        prog="pitdist",
        description="Distributed Pixel Transformer training: DeepSpeed Ulysses sequence parallelism "
        "with per-collective communication accounting.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    handlers = {}
    for name, module_name in COMMANDS:
        module = importlib.import_module(module_name)
        handlers[name] = (module.add_parser(sub), module.main)
    return parser, handlers


def main(argv: list[str] | None = None) -> int:
    # pitdist runs DeepSpeed on CPU unless a GPU is there; saying so up front silences its probing.
    try:
        import torch  # noqa: F401  (cheap next to deepspeed, and needed to know)

        os.environ.setdefault("DS_ACCELERATOR", "cuda" if torch.cuda.is_available() else "cpu")
    except ImportError:
        pass
    parser, handlers = build_parser()
    args, rest = parser.parse_known_args(argv)
    sub_parser, handler = handlers[args.command]
    bad = [a for a in rest if a.startswith("-") and not a.startswith("--") or a == "--"]
    if bad:
        sub_parser.error(f"unrecognized arguments: {' '.join(bad)}")
    return handler(args, list(rest))


if __name__ == "__main__":
    sys.exit(main())
