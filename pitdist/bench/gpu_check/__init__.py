"""`pitdist bench gpu-check`: what one GPU says about pitdist, in one JSON, inside a fixed time budget.

pitdist is tested on CPU only. This is the check a lent GPU machine runs once (scripts/gpu-check.sh
prepares the interpreter and the data, then runs this), so it must finish in minutes, need no Ray and
no registry, and bring back something useful even when part of it breaks. Five sections, each timed,
each with its own budget, each guarded so a failing one records its error and the others still run:

  kernels    ring attention's block kernel (pitdist.distributed.ring_kernels.compare_kernels): the fused
             kernel chosen for the device against plain matrix products, forward and backward, fp32
             and bf16, and one block timed both ways (the fused kernel's memory is linear in the block)
  precision  one-rank training (launcher single; nccl on CUDA, gloo on CPU) of the nano model on the
             same data in bf16 and fp32: both loss curves, their largest difference, both final losses
  ledger     step time with the communication ledger off, on with CUDA events (the default,
             metrics.ledger_sync false) and on with device-wide syncs (ledger_sync true), three
             engines taking turns step by step in this process, as ratios to off
  flops      achieved TFLOP/s and MFU (pitdist.observe.flops) for PiT-S width at 224x224 (batch 1,
             full activation checkpointing) and nano at 28x28 with a large batch; one training step of
             PiT-B on a 512x512 image (262,144 pixel tokens) with and without checkpointing (and with
             checkpoint offload, if time is left), peak memory against pitdist.report.memory_model
  accuracy   `pitdist bench accuracy` in the minutes left (a subprocess with a timeout: its JSON is
             rewritten after every run, so a grid cut short still counts): PiT none / sincos / learned
             vs ViT p = 2 and 4, equal epochs, as many seeds and epochs as the measured step time allows

``--cpu`` runs every section at toy sizes on CPU (a minute or two on two cores): what the test suite
runs, so the script cannot rot between GPU loans. The JSON is rewritten after every section.
"""

from pitdist.bench.gpu_check.command import main
from pitdist.bench.gpu_check.plan import add_parser

__all__ = ["add_parser", "main"]
