"""`pitdist bench sp`, rank side: build the engine for one image size and run full training steps.

A step is pitdist.train.step.train_step, timed by phase with a StepTimer; on a measured step the
forward also runs under a SavedTensorCounter (``phases``). Used by the memory, time, big and train
parts, and by the search part to confirm its answer.
"""

from __future__ import annotations

import contextlib

from pitdist.bench.common import size_fields
from pitdist.bench.sp.memory import SavedTensorCounter, counting, rss_delta, rss_mark
from pitdist.bench.sp.plan import NUM_CLASSES, shard


def model_and_batch(cfg, mesh, size: tuple[int, int], channels: int):
    """(the model parallelized for ``mesh`` under the job's checkpointing policy, this rank's Batch of one
    random image of ``size`` = (height, width)): the same weights and the same image on every rank.

    The Batch holds the rank's pixel tokens (fewer than its S slots on a padded shard, none on a rank
    of padding only); the parallelized model pads them to S itself."""
    import torch

    from pitdist.distributed.parallelize import parallelize
    from pitdist.models.pit import build_model, pixels_to_tokens
    from pitdist.train.step import Batch

    torch.manual_seed(cfg.train.seed)  # identical weights on every rank
    h, w = size
    model = build_model(cfg.model, (h, w, channels), NUM_CLASSES)
    model = parallelize(model, mesh, cfg.model, cfg.train.activation_checkpointing, cfg.train.selective_every)
    gen = torch.Generator().manual_seed(cfg.train.seed * 100_003 + h * 1_009 + w)  # same image on every rank
    pixels = torch.randint(0, 256, (1, h, w, channels), dtype=torch.uint8, generator=gen)
    label = torch.randint(0, NUM_CLASSES, (1,), generator=gen)
    lo, hi = mesh.pixel_range(model.num_tokens, cls=cfg.model.pool == "cls")
    return model, Batch(pixels_to_tokens(pixels, cfg.model.patch_size, (lo, hi)), torch.arange(lo, hi), label)


def build(cfg, mesh, size: tuple[int, int], channels: int):
    """(engine, this rank's Batch of one random image, tokens per image): the same weights and image on every rank."""
    import torch

    from pitdist.train.engine import build_engine

    model, batch = model_and_batch(cfg, mesh, size, channels)
    engine = build_engine(model, cfg, mesh, torch.float32)
    # DeepSpeed's WarmupDecayLR gives lr 0 to the first two steps even with a 1-step warm-up. Advance
    # it so every step the bench runs updates the weights (AdamW does the same work either way).
    for _ in range(3):
        if engine.lr_scheduler.get_lr()[0] >= cfg.optim.lr * 0.99:
            break
        engine.lr_scheduler.step()
    return engine, batch, model.num_tokens


def phases(timer, counter: SavedTensorCounter | None):
    """The step's phase function: ``timer`` times every phase; ``counter`` (if any) sees the forward's saves."""
    from pitdist.observe.categories import Phase

    @contextlib.contextmanager
    def phase(name: str):
        with timer.phase(name), counting(counter) if name == Phase.FORWARD else contextlib.nullcontext():
            yield

    return phase


def step_job(cfg, mesh, job: dict, channels: int) -> dict:
    """Full training steps (forward, backward, optimizer step); saved bytes counted on the first."""
    import gc

    from pitdist.distributed import comm
    from pitdist.observe.timer import StepTimer
    from pitdist.train.step import train_step

    engine, batch, num_tokens = build(cfg, mesh, (job["height"], job["width"]), channels)
    timer = StepTimer()
    times, losses, memory = [], [], None
    for i in range(job["warmup"] + job["steps"]):
        measure = job["measure"] and i == 0
        counter = SavedTensorCounter(engine.module.parameters()) if measure else None
        comm.barrier()
        mark = rss_mark() if measure else None
        with timer.step(i) as t:
            record = train_step(engine, batch, mesh, phases(timer, counter))
        if measure:
            memory = {**counter.summary(), **rss_delta(mark)}
        if i >= job["warmup"]:
            times.append(
                {
                    "forward_s": t["forward"],
                    "backward_s": t["backward"],
                    "optimizer_s": t["optimizer"],
                    "total_s": t.total_s,
                }
            )
        losses.append(float(record.loss))
    del engine, batch, record
    gc.collect()
    return {
        "kind": "step",
        "part": job["part"],
        **size_fields((job["height"], job["width"])),
        "tokens": num_tokens,
        "tokens_per_rank": shard(cfg.model, num_tokens, mesh.sp),  # S slots, padding included
        "times": times,
        "losses": losses,
        "memory": memory,
    }
