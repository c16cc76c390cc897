"""gpu-check sections 1 to 3: the ring kernels, bf16 against fp32, and what the ledger's clocks cost."""

from __future__ import annotations

import statistics
import time

from pitdist.bench.gpu_check.harness import Context, dtype_of, engine_and_batch, job, process_group, synchronize

# --- 1. ring block kernels ----------------------------------------------------------------------------------


def section_kernels(ctx: Context, record: dict) -> None:
    """Every case's kernel and its max abs differences from the math path (out, lse, dq, dk, dv)."""
    from pitdist.distributed.ring_kernels import compare_kernels

    record["cases"] = []
    for dtype, b, h, s_q, s_k, d in ctx.plan["kernel_cases"]:
        case = {"dtype": dtype, "b": b, "h": h, "s_q": s_q, "s_k": s_k, "d": d}
        record["cases"].append(case)
        try:
            case.update(compare_kernels(ctx.device, dtype_of(dtype), b, h, s_q, s_k, d, seed=0))
        except Exception as exc:  # noqa: BLE001 - one case's failure is that case's result
            case["error"] = f"{type(exc).__name__}: {exc}"
    record["max_diff"] = {}  # per dtype, the largest difference of any case in any output
    for c in record["cases"]:
        if "error" not in c:
            worst = max(c[k] for k in ("out", "lse", "dq", "dk", "dv"))
            record["max_diff"][c["dtype"]] = max(worst, record["max_diff"].get(c["dtype"], 0.0))
    failed = [c for c in record["cases"] if "error" in c]
    record["timing"] = time_block(ctx, *ctx.plan["kernel_timing"])
    if failed:
        raise RuntimeError(f"{len(failed)} of {len(record['cases'])} kernel cases failed: {failed[0]['error']}")


def time_block(ctx: Context, dtype: str, b: int, h: int, s_q: int, s_k: int, d: int, repeats: int = 5) -> dict:
    """Forward + backward of one block through the chosen kernel and through math: median ms and, on
    CUDA, the peak memory each allocates (fused: linear in the block; math: its s_q x s_k scores)."""
    import torch

    from pitdist.distributed.ring_kernels import (
        attend_block,
        attend_block_backward,
        attend_block_backward_math,
        attend_block_math,
        block_kernel,
    )

    gen = torch.Generator().manual_seed(1)
    q, k, v, g = (torch.randn(b, h, n, d, generator=gen).to(ctx.device, dtype_of(dtype)) for n in (s_q, s_k, s_k, s_q))
    kernel = block_kernel(q, k, v)

    def fused():
        out, lse = attend_block(q, k, v, kernel)
        return attend_block_backward(g, q, k, v, out, lse, kernel)

    def math():
        out, lse = attend_block_math(q, k, v)
        return attend_block_backward_math(g, q, k, v, out, lse)

    result = {"dtype": dtype, "b": b, "h": h, "s_q": s_q, "s_k": s_k, "d": d, "kernel": kernel}
    for name, fn in (("fused", fused), ("math", math)):
        fn()  # warm-up (and the kernels' first-call set-up)
        synchronize(ctx)
        if not ctx.cpu:
            base = torch.cuda.memory_allocated()
            torch.cuda.reset_peak_memory_stats()
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            fn()
            synchronize(ctx)
            times.append(time.perf_counter() - start)
        result[f"{name}_ms"] = statistics.median(times) * 1e3
        if not ctx.cpu:
            result[f"{name}_peak_bytes"] = torch.cuda.max_memory_allocated() - base
    result["speedup"] = result["math_ms"] / result["fused_ms"]
    return result


# --- 2. bf16 vs fp32 training -------------------------------------------------------------------------------


def section_precision(ctx: Context, record: dict) -> None:
    """The nano model trained twice on the same data and schedule, bf16 and fp32, through the trainer."""
    from pitdist.launch.local import launch_local, make_run_dir

    p = ctx.plan["precision"]
    record.update({"dataset": ctx.args.dataset, "batch": p["batch"], "steps": p["steps"], "backend": ctx.backend})
    curves = {}
    for dtype in ("bf16", "fp32"):
        cfg = job(
            ctx,
            p["model"],
            "--data.dataset",
            ctx.args.dataset,
            "--data.loader",
            "memory",
            "--train.dtype",
            dtype,
            "--train.steps",
            str(p["steps"]),
            "--train.batch_size",
            str(p["batch"]),
            "--train.log_every",
            str(p["steps"]),
            "--train.evaluate",
            "false",
            "--optim.warmup_steps",
            str(max(1, p["steps"] // 10)),
            "--name",
            f"precision-{dtype}",
        )
        result = launch_local(cfg, make_run_dir(cfg))
        curves[dtype] = result.losses
        record[dtype] = {
            "final_loss": tail_mean(result.losses),
            "step_s": result.wall_s / result.steps,
            "images_per_s": result.images_per_s,
            "run_dir": result.run_dir,
        }
        record[f"losses_{dtype}"] = [round(x, 6) for x in result.losses]
    diffs = [abs(a - b) for a, b in zip(curves["bf16"], curves["fp32"])]
    record["max_abs_loss_diff"] = max(diffs)
    record["mean_abs_loss_diff"] = statistics.fmean(diffs)
    record["max_abs_loss_diff_first_10pct"] = max(diffs[: max(1, len(diffs) // 10)])
    record["final_loss_diff"] = abs(record["bf16"]["final_loss"] - record["fp32"]["final_loss"])
    record["finite"] = all(x == x and abs(x) != float("inf") for c in curves.values() for x in c)
    # The accuracy grid trains this model at this size: its step time sizes the grid.
    ctx.measured["precision_step_s"] = record[ctx.dtype_name]["step_s"]
    ctx.measured["precision_batch"] = p["batch"]


def tail_mean(values: list[float]) -> float:
    """Mean of the last 10% (at least one): less noisy than the last step alone."""
    return statistics.fmean(values[-max(1, len(values) // 10) :])


# --- 3. what the ledger costs ----------------------------------------------------------------------------------


def section_ledger(ctx: Context, record: dict, budget: float) -> None:
    """Three engines of the same model take turns step by step: ledger off, on (events), on (sync)."""
    from pitdist.bench.turns import Contender, per_step
    from pitdist.distributed import comm
    from pitdist.observe.categories import Category, Phase
    from pitdist.observe.ledger import CommLedger, clock_for
    from pitdist.observe.timer import StepTimer
    from pitdist.train.step import train_step

    p = ctx.plan["ledger"]
    deadline = time.perf_counter() + budget * 0.8
    record.update({"image": list(p["image"]), "batch": p["batch"], "dtype": ctx.dtype_name, "warmup": p["warmup"]})
    record["note"] = (
        "one rank: only the engine's gradient reduction, grad-norm and the loss all-reduce are recorded, so "
        "this is the cost of timing them, not of losing overlap with Ulysses or a ring (NCCL refuses two "
        "ranks on one GPU)"
    )
    with process_group(ctx.backend):
        contenders = []
        for name, sync in (("off", None), ("events", False), ("sync", True)):
            cfg = job(
                ctx, p["model"], "--train.dtype", ctx.dtype_name, "--metrics.ledger_sync", str(bool(sync)).lower()
            )
            mesh, engine, batch = engine_and_batch(ctx, cfg, p["image"], p["batch"], ctx.dtype)
            ledger = None if sync is None else CommLedger(0, clock_for(ctx.device_kind, sync=sync))
            if ledger is not None:
                ledger.name_groups(mesh)
            contenders.append(Contender(name, mesh, engine, batch, ledger, StepTimer(ledger)))
        record["clocks"] = {c.name: (c.ledger.clock.name if c.ledger else None) for c in contenders}
        rounds = 0
        for i in range(p["warmup"] + p["rounds"]):
            if i >= p["warmup"] + 2 and time.perf_counter() > deadline:
                break  # the budget: fewer rounds, still interleaved
            for c in contenders:
                ledger = c.ledger.install() if c.ledger is not None else None
                try:
                    with c.timer.step(i) as t:
                        step = train_step(c.engine, c.batch, c.mesh, c.timer.phase)
                        with c.timer.phase(Phase.METRICS):
                            # As the trainer's step ends: the global loss, read on the host (the device's
                            # work is done when the step's time is taken).
                            total = comm.all_reduce_(
                                step.loss.float().reshape(1), c.mesh.dp_group, category=Category.METRICS
                            )
                            c.losses.append(float(total))
                finally:
                    if ledger is not None:
                        ledger.uninstall()
                if i >= p["warmup"]:
                    c.times.append(t.total_s)
            rounds = i + 1
        timed = rounds - p["warmup"]
        record["rounds_timed"] = timed
        medians = {c.name: statistics.median(c.times) for c in contenders}
        record["median_step_ms"] = {k: v * 1e3 for k, v in medians.items()}
        record["ratio_to_off"] = {k: v / medians["off"] for k, v in medians.items() if k != "off"}
        record["step_ms"] = {c.name: [round(t * 1e3, 3) for t in c.times] for c in contenders}
        for c in contenders:
            if c.ledger is not None:
                totals = per_step(c, p["warmup"])
                record[f"per_step_{c.name}"] = totals
                record[f"calls_per_step_{c.name}"] = sum(t["count"] for t in totals.values())
        record["same_losses"] = contenders[0].losses == contenders[1].losses == contenders[2].losses
        del contenders
