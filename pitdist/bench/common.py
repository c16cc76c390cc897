"""What the benchmarks share: option errors and parsing, output paths and atomic JSON, the machine,
tables, per-step slowest-rank times, and the matplotlib figure boilerplate.

Light at import time (argparse, json, pathlib): `pitdist --help` imports every benchmark module.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

# --- options -----------------------------------------------------------------------------------------


class BenchOptionError(ValueError):
    """A benchmark option cannot work; the message names it and what would."""


def option_error(bench: str, exc: Exception) -> int:
    """Say why ``pitdist bench <bench>`` cannot run as asked; the exit status of a bad option (2)."""
    print(f"pitdist bench {bench}: error: {exc}", file=sys.stderr)
    return 2


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


def choice_list(choices: tuple[str, ...], what: str) -> Callable[[str], list[str]]:
    """An argparse ``type``: a comma-separated subset of ``choices`` (``what`` names them in the error)."""

    def parse(text: str) -> list[str]:
        values = [v for v in text.replace(" ", "").split(",") if v]
        bad = [v for v in values if v not in choices]
        if bad or not values:
            raise argparse.ArgumentTypeError(f"unknown {what} {bad or text!r}; choose from {','.join(choices)}")
        return values

    return parse


def image_size(text: str) -> tuple[int, int]:
    """An argparse ``type``: an image size (height, width), written ``HxW`` (``30x20``) or one integer
    for a square (``28`` is 28x28). Every benchmark's size options use it, so that all of them take
    rectangles and refuse bad text in the same words."""
    parts = text.strip().lower().split("x")
    try:
        if len(parts) > 2:
            raise ValueError
        h, w = int(parts[0]), int(parts[-1])
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: write SIDE or HxW, e.g. 28 or 30x20") from None
    if min(h, w) < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: the height and width must be >= 1")
    return h, w


def image_sizes(text: str) -> list[tuple[int, int]]:
    """An argparse ``type``: comma-separated image sizes, each as ``image_size`` reads it (``28,30x20``)."""
    sizes = [image_size(v) for v in text.replace(" ", "").split(",") if v]
    if not sizes:
        raise argparse.ArgumentTypeError(f"{text!r}: give one or more sizes, e.g. 28,30x20")
    return sizes


def size_name(size: tuple[int, int]) -> str:
    """``HxW``, as the tables print a size."""
    return f"{size[0]}x{size[1]}"


def size_fields(size: tuple[int, int]) -> dict:
    """A size as results record it: height and width, and ``side`` (None for a rectangle), which the
    reports and plots of square images have always read."""
    h, w = size
    return {"side": h if h == w else None, "height": h, "width": w}


def patch_tokens(size: tuple[int, int], patch: int, option: str) -> int:
    """The tokens of an image of ``size`` in ``patch`` x ``patch`` patches; BenchOptionError naming
    ``option`` when the patches do not tile it (the model refuses such an image)."""
    h, w = size
    if h % patch or w % patch:
        raise BenchOptionError(f"{option} {size_name(size)}: not divisible by model.patch_size = {patch}")
    return (h // patch) * (w // patch)


def hwc(text: str) -> tuple[int, int, int]:
    """``HxWxC`` as three integers; ValueError when it is not that (callers word the message)."""
    h, w, c = (int(v) for v in text.split("x"))
    return h, w, c


def only_model_overrides(overrides: list[str], bench: str) -> None:
    """Refuse job settings other than --model.KEY VALUE (the benchmark sets the rest itself)."""
    from pitdist.config import ConfigError

    bad = [o for o in overrides if o.startswith("--") and not o.startswith("--model.")]
    if bad:
        raise ConfigError(
            f"{bad[0]}: `pitdist bench {bench}` takes only --model.KEY VALUE settings besides its own "
            f"options (see --help)"
        )


def one_image_job(model_defaults: list[str], overrides: list[str], *settings: str):
    """The job a spawned-rank benchmark trains: ``model_defaults`` then the user's --model overrides,
    local launcher, one image per step, learning rate warm-up of one step, then ``settings``."""
    from pitdist.config import load_config

    return load_config(
        None,
        [
            *model_defaults,
            *overrides,
            "--parallel.launcher",
            "local",
            "--train.batch_size",
            "1",
            "--optim.warmup_steps",
            "1",
            *settings,
        ],
    )


# --- outputs -----------------------------------------------------------------------------------------


def stamp() -> str:
    return time.strftime("%Y%m%d-%H%M%S")


def created() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S")


def json_path(out: str | None, bench: str) -> Path:
    """--out, else runs/bench-<bench>-<time>.json."""
    return Path(out or f"runs/bench-{bench}-{stamp()}.json")


def plot_path(plot: str | None, out: Path) -> Path:
    """--plot, else the JSON path with .png."""
    return Path(plot) if plot else out.with_suffix(".png")


def write_json(report: dict, path: Path) -> None:
    """Write through a temporary file: an interrupted benchmark never leaves half a JSON."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(report, indent=1))
    tmp.replace(path)


@contextlib.contextmanager
def figure(path: Path, ncols: int, figsize: tuple[float, float]) -> Iterator[tuple[object, list]]:
    """A row of ``ncols`` matplotlib axes (Agg, no display); laid out and saved to ``path`` as a PNG on exit."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, ncols, figsize=figsize)
    try:
        yield fig, axes
        fig.tight_layout()
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=110)
    finally:
        plt.close(fig)


def print_outputs(out: Path, png: Path) -> None:
    print(f"\nJSON: {out}\nplot: {png}")


def publish(
    report: dict, out: Path, png: Path, plot: Callable[[dict, Path], None], render: Callable[[dict], str]
) -> int:
    """The end of a benchmark: the JSON, the plot, the tables on stdout and where the files are; exit status 0."""
    write_json(report, out)
    plot(report, png)
    print(render(report))
    print_outputs(out, png)
    return 0


# --- the machine -------------------------------------------------------------------------------------


def cores() -> int:
    """The CPUs this process may use."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def mem_available() -> int | None:
    """Linux's MemAvailable in bytes (None where /proc/meminfo does not say)."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


# --- numbers -----------------------------------------------------------------------------------------


def slowest(per_rank: list[list[float]]) -> list[float]:
    """Per step, the slowest rank's seconds (ranks barrier before each step, so that is the step's)."""
    return [max(step) for step in zip(*per_rank)]


def table(headers: list[str], rows: list[list]) -> str:
    """Right-aligned columns under a header and a rule."""
    cells = [[str(c) for c in row] for row in rows]
    widths = [max(len(h), *(len(r[i]) for r in cells)) if cells else len(h) for i, h in enumerate(headers)]
    line = "  ".join(h.rjust(w) for h, w in zip(headers, widths))
    out = [line, "-" * len(line)]
    out += ["  ".join(c.rjust(w) for c, w in zip(r, widths)) for r in cells]
    return "\n".join(out)
