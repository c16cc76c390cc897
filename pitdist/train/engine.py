"""The DeepSpeed engine for a (parallelized) PiT: optimizer, ZeRO stage, precision, clipping."""

from __future__ import annotations

from typing import Any

import deepspeed
import torch
from torch import nn

from pitdist.config import JobConfig
from pitdist.distributed import sharded_pe
from pitdist.distributed.mesh import Mesh


def resolve_device(requested: str, local_rank: int) -> torch.device:
    if requested == "cuda" or (requested == "auto" and torch.cuda.is_available()):
        if not torch.cuda.is_available():
            raise RuntimeError("train.device = 'cuda' but this process sees no CUDA device; use 'cpu' or 'auto'")
        torch.cuda.set_device(local_rank % torch.cuda.device_count())
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def resolve_dtype(requested: str, device: torch.device) -> torch.dtype:
    """bf16 on GPUs, fp32 on CPU (where bf16 matmuls are slow and the equivalence tests need fp32)."""
    if requested == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    return {"fp32": torch.float32, "bf16": torch.bfloat16}[requested]


def deepspeed_config(cfg: JobConfig, dtype: torch.dtype) -> dict[str, Any]:
    o = cfg.optim
    return {
        "train_micro_batch_size_per_gpu": cfg.train.batch_size // cfg.parallel.dp,
        "gradient_accumulation_steps": 1,
        # DeepSpeed 0.19 defaults this to 1.0; always state it.
        "gradient_clipping": o.grad_clip,
        "optimizer": {
            "type": "AdamW",
            # torch's AdamW: DeepSpeed's fused CPU Adam would JIT-compile for a minute.
            "params": {
                "lr": o.lr,
                "betas": [o.beta1, o.beta2],
                "eps": 1e-8,
                "weight_decay": o.weight_decay,
                "torch_adam": True,
            },
        },
        "scheduler": {
            "type": "WarmupDecayLR",
            "params": {
                "warmup_min_lr": 0.0,
                "warmup_max_lr": o.lr,
                "warmup_num_steps": o.warmup_steps,
                "total_num_steps": max(cfg.train.steps, o.warmup_steps + 1),
                "warmup_type": "linear",
            },
        },
        "zero_optimization": {"stage": cfg.parallel.zero_stage},
        "bf16": {"enabled": dtype == torch.bfloat16},
        "steps_per_print": 10**9,
        "wall_clock_breakdown": False,
        # An independent count of every deepspeed.comm call, to check pitdist's ledger against.
        "comms_logger": {"enabled": cfg.metrics.crosscheck, "prof_all": True, "debug": False, "verbose": False},
    }


def param_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """No weight decay on biases, norms, position tables and the CLS token (the usual ViT recipe)."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (decay if p.ndim >= 2 and "pos_embed" not in name and name != "cls_token" else no_decay).append(p)
    # Named: DeepSpeed's MoE grouping (used for a sharded position table) splits groups by name.
    return [
        {"name": "decay", "params": decay, "weight_decay": weight_decay},
        {"name": "no_decay", "params": no_decay, "weight_decay": 0.0},
    ]


def build_engine(model: nn.Module, cfg: JobConfig, mesh: Mesh, dtype: torch.dtype):
    if cfg.parallel.zero_stage == 0:
        sharded_pe.fix_zero0_gradient_scale(model, mesh.sp)
    engine, _, _, _ = deepspeed.initialize(
        model=model,
        model_parameters=param_groups(model, cfg.optim.weight_decay),
        config=deepspeed_config(cfg, dtype),
        mpu=mesh,
    )
    return engine
