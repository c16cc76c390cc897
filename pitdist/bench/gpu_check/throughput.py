"""gpu-check section 4: achieved TFLOP/s and MFU, and peak memory against the memory model."""

from __future__ import annotations

import statistics
import time
import traceback

from pitdist.bench.gpu_check.harness import (
    Context,
    SectionTimeout,
    engine_and_batch,
    free_device_memory,
    job,
    process_group,
    synchronize,
)
from pitdist.bench.gpu_check.plan import NUM_CLASSES

# --- 4. TFLOP/s, MFU and memory ---------------------------------------------------------------------------------


def peak_tflops(cfg, device) -> tuple[float | None, str]:
    """(peak dense TFLOP/s of this device, where the number comes from); None on CPU."""
    from pitdist.observe.prometheus import peak_flops

    known = peak_flops(cfg, device)
    if known:
        return known / 1e12, "metrics.peak_tflops or pitdist.observe.prometheus.GPU_PEAK_TFLOPS"
    return None, "unknown (no MFU): set metrics.peak_tflops"


def recompute_factor(policy: str, depth: int, every: int) -> float:
    """Hardware over model FLOPs: a checkpointed block runs its forward twice (6 -> 8 FLOPs per weight)."""
    from pitdist.config import checkpointed_blocks

    if policy == "none":
        return 1.0
    if policy == "local":
        return 1.0  # recomputes the cheap stages between collectives: well under a block's forward
    return 1.0 + len(checkpointed_blocks(depth, policy, every)) / depth / 3.0


def measure_variant(ctx: Context, variant: dict) -> dict:
    """Warm-up and timed training steps of one size; memory against the model when ``memory``."""
    import torch

    from pitdist.bench.sp.memory import SavedTensorCounter
    from pitdist.bench.sp.steps import phases
    from pitdist.observe.flops import flops_per_image
    from pitdist.observe.timer import StepTimer
    from pitdist.report.memory_model import activation_memory
    from pitdist.train.step import train_step

    h, w, c = variant["image"]
    settings = ["--train.dtype", ctx.dtype_name, "--train.activation_checkpointing", variant["policy"]]
    if variant.get("offload"):
        settings += ["--train.checkpoint_offload", "true"]
    cfg = job(ctx, variant["model"], *settings)
    m = cfg.model
    tokens = (h // m.patch_size) * (w // m.patch_size)
    image_flops = flops_per_image(m, tokens, c, NUM_CLASSES)
    element = 2 if ctx.dtype_name == "bf16" else 4
    predicted = activation_memory(
        m,
        tokens,
        c,
        variant["policy"],
        images=variant["batch"],
        selective_every=cfg.train.selective_every,
        bytes_per_element=element,
        offload=bool(variant.get("offload")),
    )
    out = {
        "name": variant["name"],
        "model": {"dim": m.width, "depth": m.num_layers, "heads": m.num_heads},
        "image": [h, w, c],
        "tokens": tokens,
        "batch": variant["batch"],
        "policy": variant["policy"],
        "offload": bool(variant.get("offload")),
        "dtype": ctx.dtype_name,
        "model_tflop_per_step": image_flops * variant["batch"] / 1e12,
        "predicted": {
            "activation_held_bytes": predicted.held,
            "activation_peak_bytes": predicted.peak,
            "host_bytes": predicted.host,
            "model": "pitdist.report.memory_model.activation_memory",
        },
    }
    mesh, engine, batch = engine_and_batch(ctx, cfg, variant["image"], variant["batch"], ctx.dtype)
    params = sum(p.numel() for p in engine.module.parameters())
    # DeepSpeed's states: bf16 weights and gradients, fp32 master weights and gradients, Adam's two
    # moments (20 bytes per parameter); fp32 training keeps weights, gradients and moments (16).
    out["params"] = params
    out["predicted"]["model_state_bytes"] = params * (20 if element == 2 else 16)
    # Does it fit at all: activations at their peak on top of the engine's states (an OOM says why).
    out["predicted"]["device_total_bytes"] = predicted.peak + out["predicted"]["model_state_bytes"]
    timer = StepTimer()
    times, losses = [], []
    try:
        for i in range(variant["warmup"] + variant["steps"]):
            counter = SavedTensorCounter(engine.module.parameters()) if variant.get("memory") and i == 0 else None
            synchronize(ctx)
            if not ctx.cpu:
                before = torch.cuda.memory_allocated()
                torch.cuda.reset_peak_memory_stats()
            with timer.step(i) as t:
                record = train_step(engine, batch, mesh, phases(timer, counter))
                losses.append(float(record.loss))  # waits for the device: the step's time is its device time
            if counter is not None:
                out["measured_saved_bytes"] = counter.summary()["saved_bytes"]  # what autograd kept, on any device
                if not ctx.cpu:
                    out["allocated_before_step_bytes"] = before
                    out["max_allocated_bytes"] = torch.cuda.max_memory_allocated()
                    out["measured_step_peak_bytes"] = torch.cuda.max_memory_allocated() - before
                    out["peak_over_predicted"] = out["measured_step_peak_bytes"] / predicted.peak
                out["saved_over_predicted_held"] = out["measured_saved_bytes"] / predicted.held
            if i >= variant["warmup"]:
                times.append(t.total_s)
    except torch.cuda.OutOfMemoryError as exc:
        out["oom"] = str(exc).splitlines()[0]
        out["max_allocated_bytes"] = torch.cuda.max_memory_allocated()
        return out
    finally:
        del engine, batch
        free_device_memory()
    step_s = statistics.median(times)
    tflops = image_flops * variant["batch"] / step_s / 1e12
    factor = recompute_factor(variant["policy"], m.num_layers, cfg.train.selective_every)
    peak, source = peak_tflops(cfg, ctx.device)
    out.update(
        {
            "step_s": step_s,
            "step_times_s": times,
            "losses": losses,
            "images_per_s": variant["batch"] / step_s,
            "tokens_per_s": variant["batch"] * tokens / step_s,
            "tflops": tflops,  # model FLOPs (pitdist.observe.flops): no recompute counted
            "hardware_tflops": tflops * factor,  # with checkpointing's second forward
            "peak_tflops": peak,
            "peak_source": source,
            "mfu": tflops / peak if peak else None,
            "hfu": tflops * factor / peak if peak else None,
        }
    )
    return out


def section_flops(ctx: Context, record: dict, budget: float) -> None:
    """Each size in turn; a size predicted not to fit the time left is skipped, saying so."""
    start = time.perf_counter()
    record["variants"] = []
    with process_group(ctx.backend):
        flops_variants(ctx, record, budget, start)
    errors = [v for v in record["variants"] if "error" in v]
    if errors:
        raise RuntimeError(f"{len(errors)} size(s) failed, first {errors[0]['name']}: {errors[0]['error']}")


def flops_variants(ctx: Context, record: dict, budget: float, start: float) -> None:
    achieved = None  # hardware TFLOP/s of the last long-sequence size: predicts the next one's time
    for variant in ctx.plan["flops"]:
        left = budget - (time.perf_counter() - start)
        hw_tflop = variant_tflop(variant)
        predicted_s = hw_tflop / achieved + 5.0 if achieved else None
        if predicted_s is not None and (predicted_s > left or (variant.get("optional") and predicted_s > 0.6 * left)):
            record["variants"].append(
                {"name": variant["name"], "skipped": f"predicted {predicted_s:.0f} s, {left:.0f} s of budget left"}
            )
            continue
        try:
            result = measure_variant(ctx, variant)
        except SectionTimeout:
            raise
        except Exception as exc:  # noqa: BLE001 - one size's failure is that size's result
            result = {"name": variant["name"], "error": f"{type(exc).__name__}: {exc}"}
            result["traceback"] = traceback.format_exc().splitlines()[-6:]
        record["variants"].append(result)
        free_device_memory()  # an out-of-memory step's tensors are gone only now
        if variant["batch"] == 1 and result.get("hardware_tflops"):
            achieved = result["hardware_tflops"]
        if variant["name"].startswith("nano") and result.get("images_per_s"):
            ctx.measured["nano_large_batch_image_s"] = 1.0 / result["images_per_s"]


def variant_tflop(variant: dict) -> float:
    """Hardware TFLOP of one step of ``variant`` (recompute included), without building anything."""
    from pitdist.config import load_config
    from pitdist.observe.flops import flops_per_image

    cfg = load_config(None, variant["model"])
    m = cfg.model
    h, w, c = variant["image"]
    tokens = (h // m.patch_size) * (w // m.patch_size)
    factor = recompute_factor(variant["policy"], m.num_layers, cfg.train.selective_every)
    return flops_per_image(m, tokens, c, NUM_CLASSES) * variant["batch"] * factor / 1e12
