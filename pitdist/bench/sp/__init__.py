"""`pitdist bench sp`: what DeepSpeed-Ulysses sequence parallelism buys a PiT on this machine.

Every figure comes from real gloo ranks spawned here, each running the real pitdist model, wrapped
by ``parallelize()`` and trained by a real DeepSpeed engine (``build_engine``: ZeRO 0, fp32, AdamW),
batch 1 of a random uint8 image, one SP group of P ranks (dp = 1). Parts:

  memory   bytes autograd saves for backward during one forward, per rank, for each P, at one image
           size: counted with torch.autograd.graph.saved_tensors_hooks. Each distinct storage counts
           once (deduplicated by untyped_storage().data_ptr(), its whole nbytes, as that is what is
           kept alive); parameters that autograd saves (weights kept for the input gradient) are
           replicated on every rank, are not activations, and are reported apart. The naive sum
           (every saved tensor's own bytes, every time it is saved) is reported too. Also the
           process-level peak RSS growth of each rank during that step (Linux VmHWM, reset through
           /proc/self/clear_refs; ru_maxrss growth where that reset is not allowed).
  time     wall time of forward + backward + optimizer step, median over steps after warm-up, for
           each P and image size; a step's time is the slowest rank's (ranks barrier before it).
  search   the largest square image side each P can train under a per-rank cap on saved-activation
           bytes: probes (forward only, aborted at the next block once the cap is crossed, so the
           machine never holds more than about cap x P) at doubling sides, then a walk from the side
           a linear fit (bytes = a + b * tokens) predicts; the winner is confirmed by one full
           forward + backward + step.
  big      one full training step at a large image (default 224x224 = 50,176 tokens over 4 ranks).
  train    a few real training steps at a medium image (default 112x112 = 12,544 tokens, P = 4).

Ranks run ``max(1, cores // P)`` torch threads each: with P above the core count they oversubscribe
the cores, and step-time ratios then measure that, not what P devices would do.

The modules, by job: plan (options and jobs, before any rank starts), steps (build the engine; full
training steps through pitdist.train.step), memory (saved-tensor counter, peak RSS), largest (the
search part's probes), jobs (what a spawned rank runs), report (aggregation, tables, plot) and
command (the `pitdist bench sp` options and driver).
"""

from pitdist.bench.sp.command import add_parser, main

__all__ = ["add_parser", "main"]
