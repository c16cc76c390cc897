"""`pitdist bench gpu-check`: every section in turn, the JSON and the summary."""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

from pitdist.bench.common import BenchOptionError, created, option_error, stamp, write_json
from pitdist.bench.gpu_check.accuracy import section_accuracy
from pitdist.bench.gpu_check.checks import section_kernels, section_ledger, section_precision
from pitdist.bench.gpu_check.harness import Context, run_section
from pitdist.bench.gpu_check.plan import BUDGETS, DEFAULT_TOTAL_S, GIB, RESERVE_S, output_path
from pitdist.bench.gpu_check.throughput import section_flops

# --- the run ---------------------------------------------------------------------------------------------------


def machine(ctx: Context) -> dict:
    import platform

    import torch

    try:
        import deepspeed

        ds = deepspeed.__version__
    except Exception as exc:  # noqa: BLE001 - every section that needs it then says so too
        ds = f"import failed: {type(exc).__name__}: {exc}"
    info = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "deepspeed": ds,
        "cuda": torch.version.cuda,
        "cores": os.cpu_count(),
        "mode": "cpu" if ctx.cpu else "gpu",
    }
    if not ctx.cpu:
        props = torch.cuda.get_device_properties(0)
        info.update(
            {
                "gpu": torch.cuda.get_device_name(0),
                "gpu_memory_bytes": props.total_memory,
                "capability": list(torch.cuda.get_device_capability(0)),
                "multiprocessors": props.multi_processor_count,
            }
        )
    return info


def main(args: argparse.Namespace, overrides: list[str]) -> int:
    if overrides:
        return option_error("gpu-check", BenchOptionError(f"unknown options {' '.join(overrides)}; see --help"))
    mode = "cpu" if args.cpu else "gpu"
    total = args.budget_s if args.budget_s is not None else DEFAULT_TOTAL_S[mode]
    if args.dataset is None:
        args.dataset = "synthetic:8x8x1:256" if args.cpu else "data/fmnist-train"
    if args.val_dataset is None and not args.cpu and Path("data/fmnist-test").is_dir():
        args.val_dataset = "data/fmnist-test"
    if min(args.acc_batch_size, args.acc_max_epochs, args.acc_max_seeds) < 1 or total <= 0:
        return option_error("gpu-check", BenchOptionError("--acc-* options must be >= 1 and --budget-s > 0"))
    started = time.perf_counter()
    deadline = started + total
    out = output_path(args.out)
    work = Path(args.work_dir or f"runs/gpu-check-{stamp()}-{os.getpid()}")
    try:
        ctx = Context(args, work.absolute())
    except BenchOptionError as exc:
        return option_error("gpu-check", exc)
    try:
        from pitdist.launch.local import quiet_deepspeed

        quiet_deepspeed()
    except ImportError:
        pass  # no deepspeed: machine() records why, and each section that needs it fails saying so
    report: dict = {
        "benchmark": "pitdist bench gpu-check",
        "created": created(),
        "command": sys.argv,
        "budget_s": total,
        "machine": machine(ctx),
        "sections": {},
    }
    print(f"[gpu-check] {report['machine']} -> {out} (budget {total:.0f} s)", flush=True)
    budgets = BUDGETS[mode]
    for name in args.sections:
        left = deadline - time.perf_counter()
        if name == "accuracy":
            budget = left - RESERVE_S
        else:
            budget = min(budgets[name], max(0.0, left - RESERVE_S))
        if budget < 5:
            report["sections"][name] = {"status": "skipped", "reason": f"{left:.0f} s left of the budget"}
            print(f"[gpu-check] {name}: skipped ({left:.0f} s left)", flush=True)
            write_json(report, out)
            continue
        print(f"[gpu-check] {name}: up to {budget:.0f} s", flush=True)
        fn = {
            "kernels": lambda r: section_kernels(ctx, r),
            "precision": lambda r: section_precision(ctx, r),
            "ledger": lambda r, b=budget: section_ledger(ctx, r, b),
            "flops": lambda r, b=budget: section_flops(ctx, r, b),
            "accuracy": lambda r, b=budget: section_accuracy(ctx, r, b, out),
        }[name]
        record = run_section(name, fn, budget, args.fail == name)
        report["sections"][name] = record
        report["elapsed_s"] = round(time.perf_counter() - started, 1)
        write_json(report, out)
        line = f"[gpu-check] {name}: {record['status']} in {record['seconds']:.1f} s"
        print(line + (f" -- {record['error']}" if "error" in record else ""), flush=True)
    report["elapsed_s"] = round(time.perf_counter() - started, 1)
    report["failed"] = [n for n, r in report["sections"].items() if r["status"] == "error"]
    write_json(report, out)
    print(render(report))
    print(f"\nJSON: {out}")
    return 1 if report["failed"] else 0


# --- the summary -------------------------------------------------------------------------------------------------


def _gib(x: float | None) -> str:
    """Bytes in GiB, or MiB below a GiB (the --cpu sizes)."""
    if x is None:
        return "-"
    return f"{x / GIB:.2f} GiB" if abs(x) >= GIB else f"{x / 1024**2:.2f} MiB"


def _flops(tflops: float) -> str:
    return f"{tflops:.1f} TFLOP/s" if tflops >= 0.1 else f"{tflops * 1e3:.2f} GFLOP/s"


def render(report: dict) -> str:
    m = report["machine"]
    lines = [
        f"\npitdist gpu-check: {m.get('gpu', 'CPU')} | torch {m['torch']} | deepspeed {m['deepspeed']} | "
        f"{report['elapsed_s']:.0f} s of {report['budget_s']:.0f}"
    ]
    s = report["sections"]
    for name in s:
        r = s[name]
        head = f"\n[{name}] {r['status']}" + (f" ({r.get('seconds', 0):.1f} s)" if "seconds" in r else "")
        lines.append(head + (f": {r['error']}" if "error" in r else f": {r['reason']}" if "reason" in r else ""))
        try:
            lines += _render_section(name, r)
        except (KeyError, TypeError, ValueError, ZeroDivisionError):
            pass  # a partial record: its JSON has what there is
    return "\n".join(lines)


def _render_section(name: str, r: dict) -> list[str]:
    out = []
    if name == "kernels":
        for c in r.get("cases", []):
            shape = f"{c['dtype']} b{c['b']} h{c['h']} q{c['s_q']} k{c['s_k']} d{c['d']}"
            if "error" in c:
                out.append(f"  {shape:<32} error: {c['error']}")
            else:
                diffs = " ".join(f"{k} {c[k]:.1e}" for k in ("out", "lse", "dq", "dk", "dv"))
                out.append(f"  {shape:<32} {c['kernel']:<15} {diffs}")
        t = r.get("timing")
        if t:
            mem = ""
            if "fused_peak_bytes" in t:
                mem = f", peak {_gib(t['fused_peak_bytes'])} vs {_gib(t['math_peak_bytes'])}"
            out.append(
                f"  fwd+bwd {t['dtype']} {t['s_q']}x{t['s_k']}: {t['kernel']} {t['fused_ms']:.2f} ms vs math "
                f"{t['math_ms']:.2f} ms ({t['speedup']:.1f}x){mem}"
            )
    elif name == "precision":
        out.append(
            f"  {r['steps']} steps x {r['batch']} ({r['backend']}): final loss bf16 {r['bf16']['final_loss']:.4f} "
            f"fp32 {r['fp32']['final_loss']:.4f}; max |diff| {r['max_abs_loss_diff']:.4f} (first 10% "
            f"{r['max_abs_loss_diff_first_10pct']:.4f}, mean {r['mean_abs_loss_diff']:.4f}); step "
            f"{r['bf16']['step_s'] * 1e3:.1f} vs {r['fp32']['step_s'] * 1e3:.1f} ms"
        )
    elif name == "ledger":
        ms = r["median_step_ms"]
        out.append(
            f"  median step: off {ms['off']:.2f} ms, events {ms['events']:.2f} ms "
            f"({r['ratio_to_off']['events']:.3f}x), sync {ms['sync']:.2f} ms ({r['ratio_to_off']['sync']:.3f}x); "
            f"{r['rounds_timed']} rounds, {r.get('calls_per_step_events', '?')} collectives per step"
        )
    elif name == "flops":
        for v in r.get("variants", []):
            if "skipped" in v or "error" in v or "oom" in v:
                why = v.get("skipped") or v.get("error") or f"out of memory: {v['oom']}"
                extra = ""
                if "predicted" in v:
                    extra = f" (model: activations {_gib(v['predicted']['activation_peak_bytes'])}, with states "
                    extra += f"{_gib(v['predicted'].get('device_total_bytes'))})"
                out.append(f"  {v['name']:<46} {why}{extra}")
                continue
            mfu = f" MFU {v['mfu']:.1%}" if v.get("mfu") is not None else ""
            line = f"  {v['name']:<46} {v['step_s']:.3f} s/step {_flops(v['tflops'])}{mfu}"
            if "measured_step_peak_bytes" in v:
                line += (
                    f"; peak {_gib(v['measured_step_peak_bytes'])} vs model "
                    f"{_gib(v['predicted']['activation_peak_bytes'])} ({v['peak_over_predicted']:.2f}x)"
                )
            elif "measured_saved_bytes" in v:
                line += (
                    f"; saved {_gib(v['measured_saved_bytes'])} vs model held "
                    f"{_gib(v['predicted']['activation_held_bytes'])} ({v['saved_over_predicted_held']:.2f}x)"
                )
            out.append(line)
    elif name == "accuracy":
        g = r["plan"]
        out.append(
            f"  {r['runs']} runs ({'complete' if r.get('complete') else 'cut short'}): {g['steps']} steps x "
            f"{g['batch']} images, seeds {g['seeds']}, scored on {r.get('val_dataset') or 'a held-out split'}"
        )
        for row in r.get("summary", []):
            out.append(
                f"  {row['key']:<20} {row['tokens']:>5} tokens  acc {row['mean']:.2%} +- {row['std']:.2%}  "
                f"loss {row['final_loss_mean']:.3f}"
            )
    return out
