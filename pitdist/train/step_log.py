"""Rank 0's progress bar and metrics.jsonl: loss, images/s, tokens/s, achieved TFLOP/s."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from tqdm import tqdm

from pitdist.config import JobConfig


class StepLog:
    """Shows and logs every ``train.log_every`` steps the rates over the steps since the last line,
    from the step timer's times (pitdist.observe.timer): the time a step took, not the log's own."""

    def __init__(
        self,
        cfg: JobConfig,
        run_dir: Path,
        enabled: bool,
        tokens_per_image: int,
        image_flops: float,
        first_step: int = 0,
    ):
        self.cfg, self.enabled = cfg, enabled
        self.tokens_per_image, self.image_flops = tokens_per_image, image_flops
        # A restored run continues the file (the steps it replays appear again, later).
        self.file = (run_dir / "metrics.jsonl").open("a" if first_step else "w") if enabled else None
        self.bar = tqdm(
            total=cfg.train.steps,
            initial=first_step,
            desc=f"train {cfg.name}",
            disable=not enabled,
            dynamic_ncols=True,
            mininterval=0.1 if sys.stderr.isatty() else 5.0,
        )
        self.window_s, self.window_steps = 0.0, 0

    def step(self, step: int, loss: float, lr: float, step_s: float) -> None:
        self.window_steps += 1
        self.window_s += step_s
        self.bar.update(1)
        if (step + 1) % self.cfg.train.log_every and step + 1 != self.cfg.train.steps:
            return
        images_per_s = self.window_steps * self.cfg.train.batch_size / max(self.window_s, 1e-9)
        record = {
            "step": step + 1,
            "loss": loss,
            "lr": lr,
            "images_per_s": images_per_s,
            "tokens_per_s": images_per_s * self.tokens_per_image,
            "tflops": images_per_s * self.image_flops / 1e12,
        }
        self.bar.set_postfix(loss=f"{loss:.4f}", img_s=f"{images_per_s:.0f}")
        if self.file:
            self.file.write(json.dumps(record) + "\n")
            self.file.flush()
        self.window_s, self.window_steps = 0.0, 0

    def close(self) -> None:
        self.bar.close()
        if self.file:
            self.file.close()
