"""`pitdist bench sp --parts search`, rank side: the largest square image each P trains under a cap.

Probes are forward-only (the train step's forward and loss, stopped before its backward), counting
saved bytes and aborted at the next block once the per-rank cap is crossed, so the machine never
holds more than about cap x P; sides double, then a walk starts from the side a linear fit
(bytes = a + b * tokens) predicts; the winner is confirmed by one full training step. Every side
that whole patches tile is a candidate on every P: a token count P does not divide is padded.
"""

from __future__ import annotations

import contextlib
import time

from pitdist.bench.common import size_fields
from pitdist.bench.sp.memory import SavedTensorCounter, counting
from pitdist.bench.sp.plan import GIB
from pitdist.bench.sp.plan import tokens as _tokens
from pitdist.bench.sp.steps import build, step_job


class _CapExceeded(RuntimeError):
    pass


class _ForwardDone(Exception):
    """Raised as a probe's step enters its backward phase: a probe stops after the forward and its loss."""


def _forward_only(counter: SavedTensorCounter):
    from pitdist.observe.categories import Phase

    @contextlib.contextmanager
    def phase(name: str):
        if name != Phase.FORWARD:
            raise _ForwardDone
        with counting(counter):
            yield

    return phase


def _probe(cfg, mesh, side: int, channels: int, cap: int) -> dict:
    """Forward only, counting saved bytes; abort at the next block once the cap is crossed.

    Every rank holds the same shapes, so every rank crosses the cap in the same block and aborts before
    that block's all-to-alls: no rank is left waiting. The verdict is then agreed over the SP group.
    """
    import gc

    import torch

    from pitdist.distributed import comm
    from pitdist.train.step import forward_backward

    engine, batch, num_tokens = build(cfg, mesh, (side, side), channels)
    counter = SavedTensorCounter(engine.module.parameters(), cap_bytes=cap)

    def guard(module, inputs):
        if counter.over:
            raise _CapExceeded

    handles = [b.register_forward_pre_hook(guard) for b in engine.module.blocks]
    handles.append(engine.module.head.register_forward_pre_hook(guard))
    comm.barrier()
    t0 = time.perf_counter()
    try:
        # The module the engine trains, called directly: a probe never runs backward, so it needs
        # none of the backward hooks engine.forward hangs on the output.
        forward_backward(engine.module, batch, mesh.sp, _forward_only(counter))
    except (_CapExceeded, _ForwardDone):
        pass
    elapsed = time.perf_counter() - t0
    for h in handles:
        h.remove()
    over = counter.over
    local = counter.summary()
    del engine, batch  # (the counter holds only sizes, no tensors)
    gc.collect()
    verdict = torch.tensor([[float(local["saved_bytes"]), float(over)]], dtype=torch.float64)
    everyone = comm.all_gather_cat(verdict, mesh.sp_group, category="bench")
    return {
        "side": side,
        "tokens": num_tokens,
        "saved_bytes": int(everyone[:, 0].max()),
        "over_cap": bool(everyone[:, 1].max() > 0),
        "aborted": over,
        "forward_s": elapsed,
    }


def search_job(cfg, mesh, job: dict, channels: int, log) -> dict:
    import numpy as np

    cap, patch, p = job["cap_bytes"], job["patch"], mesh.sp
    valid = list(range(patch, job["max_side"] + 1, patch))
    if not valid:
        return {"kind": "search", "part": "search", "error": f"no side <= {job['max_side']} is whole patches"}
    probes: dict[int, dict] = {}

    def probe(side: int) -> dict:
        if side not in probes:
            probes[side] = _probe(cfg, mesh, side, channels, cap)
            r = probes[side]
            log(
                f"search P={p}: {side}x{side} {'OVER' if r['over_cap'] else 'under'} cap "
                f"({r['saved_bytes'] / GIB:.3f} GiB{' at abort' if r['aborted'] else ''}, {r['forward_s']:.1f} s)"
            )
        return probes[side]

    def fit():
        pts = [(r["tokens"], r["saved_bytes"]) for r in probes.values() if not r["over_cap"]]
        if len(pts) >= 2:
            b, a = np.polyfit([t for t, _ in pts], [v for _, v in pts], 1)
            return float(a), float(b)
        if pts:
            return 0.0, pts[0][1] / pts[0][0]
        return None

    def predicted(side: int) -> float | None:
        ab = fit()
        return None if ab is None else ab[0] + ab[1] * _tokens(side, patch)

    # Coarse: doubling sides while the fit does not predict a clear overshoot.
    side = min(valid, key=lambda s: abs(s - job["start"]))
    if probe(side)["over_cap"]:  # the start is already too big: halve until a side fits
        while probe(side)["over_cap"] and side > valid[0]:
            side = max((s for s in valid if s <= side // 2), default=valid[0])
    else:
        while True:
            side = min((s for s in valid if s >= 2 * side), default=None)
            if side is None:
                break
            guess = predicted(side)
            if len([r for r in probes.values() if not r["over_cap"]]) >= 2 and guess is not None and guess > 1.5 * cap:
                break
            if probe(side)["over_cap"]:
                break
    # Refine: start at the largest side the fit says fits, then walk to the boundary.
    ab = fit()
    if ab is None:
        best = None
    else:
        fits = [s for s in valid if ab[0] + ab[1] * _tokens(s, patch) <= cap]
        s = max(fits) if fits else valid[0]
        idx = valid.index(s)
        if not probe(s)["over_cap"]:
            while idx + 1 < len(valid) and not probe(valid[idx + 1])["over_cap"]:
                idx += 1
        else:
            while idx > 0 and probe(valid[idx - 1])["over_cap"]:
                idx -= 1
            idx -= 1
        under = [r["side"] for r in probes.values() if not r["over_cap"]]
        best = max(under) if under else None
    over_sides = [r["side"] for r in probes.values() if r["over_cap"] and (best is None or r["side"] > best)]
    result = {
        "kind": "search",
        "part": "search",
        "cap_bytes": cap,
        "probes": [probes[s] for s in sorted(probes)],
        "largest_side": best,
        "smallest_over_side": min(over_sides) if over_sides else None,
        "fit_bytes_per_token": None if ab is None else ab[1],
        "fit_constant_bytes": None if ab is None else ab[0],
    }
    if best is not None:  # prove it: one full forward + backward + optimizer step at that side
        log(f"search P={p}: confirming {best}x{best} with a full training step")
        result["confirm"] = step_job(
            cfg,
            mesh,
            {"part": "search", **size_fields((best, best)), "warmup": 0, "steps": 1, "measure": True},
            channels,
        )
    return result
