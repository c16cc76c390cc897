"""Run a job as a Ray Train TorchTrainer: one Ray worker per rank, DeepSpeed inside each worker.

``ray.init()`` attaches to ``parallel.ray_address`` or, when it is empty, starts an embedded local
cluster on this machine. Everything a worker needs arrives through ``train_loop_config`` (the whole
job config as a dict and the absolute run directory: Train V2 workers run in their own artifact
directory). Ray Train creates the torch process group; DeepSpeed adopts it.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from pitdist.config import JobConfig
from pitdist.train.trainer import RunResult


def train_loop_per_worker(config: dict) -> None:
    import ray.train
    import torch

    from pitdist.config import config_from_dict
    from pitdist.distributed import comm
    from pitdist.distributed.parallel_dims import Mesh, ParallelDims
    from pitdist.launch.local import quiet_deepspeed, threads_per_rank
    from pitdist.train.engine import resolve_device
    from pitdist.train.trainer import train

    cfg = config_from_dict(config["cfg"])
    context = ray.train.get_context()
    torch.set_num_threads(threads_per_rank(cfg))
    quiet_deepspeed()
    comm.adopt_process_group(comm.pick_backend(cfg.parallel.backend))
    mesh = Mesh(ParallelDims(cfg.parallel.dp, cfg.parallel.sp))
    result = train(cfg, mesh, resolve_device(cfg.train.device, context.get_local_rank()), Path(config["run_dir"]))
    ray.train.report({"final_loss": result.losses[-1], "steps": result.steps})


def launch_ray(cfg: JobConfig, run_dir: Path) -> RunResult:
    import ray
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    from pitdist.distributed.comm import pick_backend

    world = cfg.parallel.world_size
    if cfg.parallel.ray_address:
        ray.init(address=cfg.parallel.ray_address)
    else:
        # An embedded local cluster. Logical CPUs, not cores: every rank needs one to be scheduled,
        # and threads per rank are set from the real core count.
        ray.init(num_cpus=max(os.cpu_count() or 1, world + 1), include_dashboard=False)
    try:
        # "auto": a GPU per worker when the cluster has GPUs (the driver itself may have none).
        use_gpu = cfg.train.device == "cuda" or (
            cfg.train.device == "auto" and ray.cluster_resources().get("GPU", 0) >= world)
        trainer = TorchTrainer(
            train_loop_per_worker,
            train_loop_config={"cfg": cfg.to_dict(), "run_dir": str(run_dir.absolute())},
            scaling_config=ScalingConfig(num_workers=world, use_gpu=use_gpu),
            torch_config=TorchConfig(backend=pick_backend(cfg.parallel.backend) if not use_gpu else "nccl"),
            run_config=RunConfig(name=run_dir.name, storage_path=str(run_dir.absolute().parent / "ray")),
        )
        trainer.fit()
    finally:
        ray.shutdown()
    return RunResult(**json.loads((run_dir / "result.json").read_text()))

