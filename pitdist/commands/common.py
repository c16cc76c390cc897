"""What the command modules share: comma-separated integer options."""

from __future__ import annotations

from pitdist.config import ConfigError


def int_list(option: str, text: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        values = []
    if not values or min(values) < 1:
        raise ConfigError(f"{option}: expected positive integers separated by commas (e.g. 1,2,4), got {text!r}")
    return values
