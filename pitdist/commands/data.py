"""`pitdist data`: convert, inspect and audit datasets (pitdist.data.commands holds the subcommands)."""

from __future__ import annotations

import argparse


def add_parser(sub) -> argparse.ArgumentParser:
    from pitdist.data import commands  # light: pyarrow and datasets load inside the command

    return commands.add_parser(sub)


def main(args: argparse.Namespace, rest: list[str]) -> int:
    from pitdist.data import commands

    return commands.main(args, rest)
