"""gpu-check section 5: `pitdist bench accuracy` sized to the minutes left."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

from pitdist.bench.common import write_json
from pitdist.bench.gpu_check.harness import Context

# --- 5. accuracy in the minutes left -------------------------------------------------------------------------


def accuracy_grid(ctx: Context, seconds: float, train_images: int) -> dict:
    """Steps, seeds and batch for the grid from the time left and the measured step time.

    Every cell is charged a PiT step (ViT cells are faster) plus a fixed cost (engine, evaluation);
    the most seeds (up to --acc-max-seeds) that still give every cell one whole epoch win, rounded
    down to whole epochs (at most --acc-max-epochs); without time for one epoch, one seed trains as
    many steps as fit."""
    a = ctx.plan["accuracy"]
    cells = len(a["pe"].split(",")) + len(a["patches"].split(",")) - 1
    batch = ctx.args.acc_batch_size
    if ctx.cpu:
        return {"cells": cells, "seeds": [0], "steps": 2, "batch": 8, "step_s_estimate": None, "epochs": None}
    small = ctx.measured.get("precision_step_s", 0.05)  # nano, 28x28, its batch: launch-bound on a GPU
    per_image = ctx.measured.get("nano_large_batch_image_s", 0.0)
    step_s = 1.2 * max(small, per_image * batch)
    fixed_s = 6.0  # engine set-up and scoring 10,000 images, per cell
    start_s = 20.0  # the subprocess: interpreter, torch, deepspeed, datasets opened
    per_epoch = max(1, train_images // batch)
    usable = seconds - start_s
    for seeds in range(ctx.args.acc_max_seeds, 0, -1):
        steps = int((usable / (cells * seeds) - fixed_s) / step_s)
        if steps >= per_epoch:
            epochs = min(ctx.args.acc_max_epochs, steps // per_epoch)
            return {
                "cells": cells,
                "seeds": list(range(seeds)),
                "steps": epochs * per_epoch,
                "batch": batch,
                "epochs": epochs,
                "step_s_estimate": step_s,
            }
    steps = int((usable / cells - fixed_s) / step_s)
    return {
        "cells": cells,
        "seeds": [0],
        "steps": steps,
        "batch": batch,
        "epochs": steps / per_epoch,
        "step_s_estimate": step_s,
    }


def section_accuracy(ctx: Context, record: dict, seconds: float, out: Path) -> None:
    """`pitdist bench accuracy` as a subprocess with a timeout; its JSON (finished runs) is kept."""
    from pitdist.data.registry import load_dataset

    a = ctx.plan["accuracy"]
    dataset, val = ctx.args.dataset, ctx.args.val_dataset
    train_images = len(load_dataset(dataset))
    grid = accuracy_grid(ctx, seconds, train_images)
    record.update({"dataset": dataset, "val_dataset": val, "train_images": train_images, "plan": grid})
    if grid["steps"] < 10 and not ctx.cpu:
        raise RuntimeError(f"{seconds:.0f} s left: not enough for a grid ({grid})")
    acc_json = ctx.work / "accuracy.json"
    command = [
        sys.executable,
        "-m",
        "pitdist.cli",
        "bench",
        "accuracy",
        "--dataset",
        dataset,
        "--patches",
        a["patches"],
        "--pe",
        a["pe"],
        "--seeds",
        ",".join(map(str, grid["seeds"])),
        "--steps",
        str(grid["steps"]),
        "--batch-size",
        str(grid["batch"]),
        "--warmup",
        str(max(2, grid["steps"] // 20)),
        "--out",
        str(acc_json),
        *(["--val-dataset", val] if val else ["--val-fraction", "0.25"] if ctx.cpu else []),
        *a["model"],
    ]
    record["command"] = command[2:]
    timeout = max(10.0, seconds)
    started = time.perf_counter()
    try:
        proc = subprocess.run(command, capture_output=True, text=True, timeout=timeout)
        record["returncode"] = proc.returncode
        record["output_tail"] = (proc.stdout + proc.stderr).splitlines()[-25:]
    except subprocess.TimeoutExpired as exc:
        record["returncode"] = None
        record["timed_out_after_s"] = timeout
        text = (exc.stdout or b"").decode() if isinstance(exc.stdout, bytes) else (exc.stdout or "")
        text += (exc.stderr or b"").decode() if isinstance(exc.stderr, bytes) else (exc.stderr or "")
        record["output_tail"] = text.splitlines()[-25:]
    record["subprocess_s"] = time.perf_counter() - started
    if not acc_json.is_file():
        raise RuntimeError(f"bench accuracy wrote no JSON (exit {record['returncode']}); see output_tail")
    report = json.loads(acc_json.read_text())
    keep = out.with_name(out.stem + "-accuracy.json")  # beside the main JSON: `--from-json` redraws it
    write_json(report, keep)
    record["json"] = str(keep)
    record["complete"] = report.get("complete", False)
    record["runs"] = len(report.get("runs", []))
    record["summary"] = [
        {
            k: r[k]
            for k in ("key", "tokens", "seeds", "accuracies", "mean", "std", "final_loss_mean", "images_per_s_mean")
        }
        for r in report.get("summary", [])
    ]
    record["budget"] = report.get("budget")
    if record["returncode"] not in (0, None):
        raise RuntimeError(f"bench accuracy exited {record['returncode']}; see output_tail")
