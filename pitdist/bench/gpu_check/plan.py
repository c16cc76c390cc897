"""gpu-check's options and its plan: what each section runs, at GPU or --cpu sizes, in what budget."""

from __future__ import annotations

import argparse
import os
import textwrap
from pathlib import Path

from pitdist.bench.common import choice_list, json_path

DESCRIPTION = (
    "pitdist is tested on CPU only. This is the check a lent GPU machine runs once (scripts/gpu-check.sh "
    "prepares the interpreter and the data, then runs this), so it must finish in minutes, need no Ray and "
    "no registry, and bring back something useful even when part of it breaks: five sections (kernels, "
    "precision, ledger, flops, accuracy), each timed, each with its own budget, each guarded so a failing "
    "one records its error and the others still run."
)
SECTIONS = ("kernels", "precision", "ledger", "flops", "accuracy")

# Seconds each section plans to take (the last takes what is left). The defaults keep the GPU run,
# set-up included, under 8 minutes; --cpu sizes are toys, the budgets only a safety net.
BUDGETS = {
    "gpu": {"kernels": 30, "precision": 60, "ledger": 45, "flops": 150},
    "cpu": {"kernels": 30, "precision": 60, "ledger": 45, "flops": 90},
}
DEFAULT_TOTAL_S = {"gpu": 420.0, "cpu": 300.0}
GRACE = 1.25  # a section is stopped (SIGALRM) at GRACE x its budget + 10 s: planned to end well before
RESERVE_S = 5.0  # kept back from the accuracy section for the summary and the last JSON

GIB = 1024**3
NUM_CLASSES = 10


def add_parser(sub) -> argparse.ArgumentParser:
    p = sub.add_parser(
        "gpu-check",
        help="one prepared check of a single GPU: kernels, bf16 vs fp32, ledger cost, TFLOP/s and memory, accuracy",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=textwrap.dedent("""\
            Sections: kernels, precision, ledger, flops, accuracy (see the module docstring of
            pitdist/bench/gpu_check/). The JSON goes to --out, else $OUT/gpu-check.json when $OUT is set
            (the device tool collects $OUT), else runs/bench-gpu-check-<time>.json; every run's own
            directories go under --work-dir (default runs/gpu-check-<time>-<pid>/). Exit status 1 when a
            section failed (its error is in the JSON), 2 for a bad option.

            Examples
              bash scripts/gpu-check.sh                           # on the GPU machine: set-up, data, this
              pitdist bench gpu-check --cpu                       # toy sizes on CPU (what the test runs)
              pitdist bench gpu-check --cpu --sections kernels,flops --fail flops"""),
    )
    p.add_argument("--cpu", action="store_true", help="toy sizes on CPU with gloo (no GPU needed)")
    p.add_argument(
        "--sections",
        type=choice_list(SECTIONS, "sections"),
        default=list(SECTIONS),
        metavar="LIST",
        help=f"from {','.join(SECTIONS)} (default: all)",
    )
    p.add_argument(
        "--budget-s",
        type=float,
        default=None,
        help=f"seconds for everything (default {DEFAULT_TOTAL_S['gpu']:.0f}; --cpu {DEFAULT_TOTAL_S['cpu']:.0f})",
    )
    p.add_argument(
        "--dataset",
        default=None,
        help="training images for precision and accuracy (default data/fmnist-train; --cpu synthetic:8x8x1:256)",
    )
    p.add_argument(
        "--val-dataset",
        default=None,
        help="accuracy: score on these images (default data/fmnist-test when it exists; --cpu none)",
    )
    p.add_argument("--acc-batch-size", type=int, default=64, help="accuracy: images per step (default 64)")
    p.add_argument("--acc-max-epochs", type=int, default=10, help="accuracy: at most this many epochs (default 10)")
    p.add_argument("--acc-max-seeds", type=int, default=3, help="accuracy: at most this many seeds (default 3)")
    p.add_argument("--out", default=None, help="JSON path (default: see below)")
    p.add_argument(
        "--work-dir",
        default=None,
        help="where the runs' own directories go (default runs/gpu-check-<time>-<pid>; not under $OUT, "
        "whose files the device tool limits to 8)",
    )
    p.add_argument(
        "--fail",
        default=None,
        choices=SECTIONS,
        metavar="SECTION",
        help="make SECTION fail on purpose (the test that a failing section is recorded, not fatal)",
    )
    return p


def output_path(out: str | None) -> Path:
    """--out, else $OUT/gpu-check.json (the device tool brings $OUT back), else runs/."""
    if out:
        return Path(out)
    if os.environ.get("OUT"):
        return Path(os.environ["OUT"]) / "gpu-check.json"
    return json_path(None, "gpu-check")


# --- the plan: sizes for the GPU and for --cpu --------------------------------------------------------


def plan(cpu: bool) -> dict:
    """Every size the sections use. The GPU sizes are the issue's; the CPU ones the smallest that still
    exercise the same code (a block, a checkpointed block, an engine, a subprocess grid)."""
    if not cpu:
        return {
            "kernel_cases": [
                # (dtype, b, h, s_q, s_k, d): square blocks, a ragged last block (s_k < s_q), the lse padding
                # of the memory-efficient kernel (s_q not a multiple of 32), and nano's head dim 16.
                ("fp32", 2, 4, 1024, 1024, 64),
                ("bf16", 2, 4, 1024, 1024, 64),
                ("bf16", 1, 6, 1024, 1000, 64),
                ("fp32", 1, 6, 1000, 777, 64),
                ("bf16", 4, 4, 784, 784, 16),
                ("fp32", 4, 4, 784, 784, 16),
            ],
            "kernel_timing": ("bf16", 1, 12, 8192, 8192, 64),
            "precision": {"model": ["--model.size", "nano"], "batch": 32, "steps": 300},
            "ledger": {"model": ["--model.size", "nano"], "image": (28, 28, 1), "batch": 32, "warmup": 5, "rounds": 40},
            "flops": [
                {
                    "name": "nano 28x28 batch 512",
                    "model": ["--model.size", "nano"],
                    "image": (28, 28, 1),
                    "batch": 512,
                    "policy": "none",
                    "warmup": 3,
                    "steps": 10,
                },
                {
                    "name": "PiT-S 224x224 full checkpointing",
                    "model": ["--model.size", "small"],
                    "image": (224, 224, 3),
                    "batch": 1,
                    "policy": "full",
                    "warmup": 1,
                    "steps": 3,
                },
                {
                    "name": "PiT-B 512x512 full checkpointing",
                    "model": ["--model.size", "base"],
                    "image": (512, 512, 3),
                    "batch": 1,
                    "policy": "full",
                    "warmup": 0,
                    "steps": 1,
                    "memory": True,
                },
                {
                    "name": "PiT-B 512x512 no checkpointing",
                    "model": ["--model.size", "base"],
                    "image": (512, 512, 3),
                    "batch": 1,
                    "policy": "none",
                    "warmup": 0,
                    "steps": 1,
                    "memory": True,
                },
                {
                    "name": "PiT-B 512x512 full checkpointing + offload",
                    "model": ["--model.size", "base"],
                    "image": (512, 512, 3),
                    "batch": 1,
                    "policy": "full",
                    "offload": True,
                    "warmup": 0,
                    "steps": 1,
                    "memory": True,
                    "optional": True,  # only with time left
                },
            ],
            "accuracy": {"patches": "1,2,4", "pe": "none,sincos,learned", "model": []},
        }
    tiny = ["--model.size", "nano", "--model.depth", "1"]
    return {
        "kernel_cases": [
            ("fp32", 1, 2, 64, 64, 16),
            ("bf16", 1, 2, 64, 64, 16),
            ("fp32", 1, 2, 64, 40, 16),
        ],
        "kernel_timing": ("fp32", 1, 2, 256, 256, 16),
        "precision": {"model": tiny, "batch": 16, "steps": 12},
        "ledger": {"model": tiny, "image": (8, 8, 1), "batch": 8, "warmup": 1, "rounds": 4},
        "flops": [
            {
                "name": "nano(depth 1) 8x8 batch 64",
                "model": tiny,
                "image": (8, 8, 1),
                "batch": 64,
                "policy": "none",
                "warmup": 1,
                "steps": 2,
            },
            {
                "name": "PiT-S width(depth 1) 16x16 full checkpointing",
                "model": ["--model.size", "small", "--model.depth", "1"],
                "image": (16, 16, 3),
                "batch": 1,
                "policy": "full",
                "warmup": 1,
                "steps": 2,
            },
            {
                "name": "nano(depth 2) 24x24 full checkpointing",
                "model": ["--model.size", "nano", "--model.depth", "2"],
                "image": (24, 24, 3),
                "batch": 1,
                "policy": "full",
                "warmup": 0,
                "steps": 1,
                "memory": True,
            },
            {
                "name": "nano(depth 2) 24x24 no checkpointing",
                "model": ["--model.size", "nano", "--model.depth", "2"],
                "image": (24, 24, 3),
                "batch": 1,
                "policy": "none",
                "warmup": 0,
                "steps": 1,
                "memory": True,
            },
        ],
        "accuracy": {"patches": "1,2,4", "pe": "none,sincos,learned", "model": ["--model.depth", "1"]},
    }
