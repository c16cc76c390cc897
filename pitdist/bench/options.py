"""What the benchmarks share: their option error, list-valued options, and atomic JSON output."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from collections.abc import Callable


class BenchOptionError(ValueError):
    """A benchmark option cannot work; the message names it and what would."""


def int_list(minimum: int | None = 1, example: str = "1,2,4") -> Callable[[str], list[int]]:
    """An argparse ``type``: comma-separated integers, each >= ``minimum`` (None: any integer)."""

    def parse(text: str) -> list[int]:
        try:
            values = [int(v) for v in text.replace(" ", "").split(",") if v]
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a comma-separated list of integers") from None
        if not values or (minimum is not None and min(values) < minimum):
            bound = "" if minimum is None else f" >= {minimum}"
            raise argparse.ArgumentTypeError(f"{text!r}: give one or more integers{bound}, e.g. {example}")
        return values

    return parse


def write_json(report: dict, path: Path) -> None:
    """Write through a temporary file: an interrupted benchmark never leaves half a JSON."""
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(report, indent=1))
    tmp.replace(path)
