"""Run a job as a Ray Train TorchTrainer: one Ray worker per rank, DeepSpeed inside each worker.

``ray.init()`` attaches to ``parallel.ray_address``, to the cluster of the Ray job this driver runs in
(``RAY_ADDRESS``, set by ``ray job submit``), or else starts an embedded local cluster on this machine.
Everything a worker needs arrives through ``train_loop_config``: the whole job config as a dict, the
absolute run directory (Train V2 workers run in their own artifact directory) and, with the ray_data
loader, the plan of the training split's epochs (pitdist.data.ray_epochs: every epoch a new seeded
order and new shares, split into one equal stream per worker by rank 0).
Ray Train creates the torch process group; DeepSpeed adopts it.

Fault tolerance: checkpoints go through ``ray.train.report`` (pitdist.train.checkpoint.RayCheckpoints);
when a worker or node dies, Ray restarts the worker group up to ``train.max_failures`` times and each
worker resumes from the latest checkpoint every rank reported, data position included.
"""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path

from pitdist.config import ConfigError, JobConfig
from pitdist.launch.local import LaunchError
from pitdist.train.trainer import RunResult


def train_loop_per_worker(config: dict) -> None:
    import ray.train
    import torch

    from pitdist.config import config_from_dict
    from pitdist.distributed import comm
    from pitdist.distributed.mesh import Mesh
    from pitdist.launch.local import quiet_deepspeed, threads_per_rank
    from pitdist.parallel_dims import ParallelDims
    from pitdist.train.checkpoint import RayCheckpoints
    from pitdist.train.engine import resolve_device
    from pitdist.train.trainer import train

    cfg = config_from_dict(config["cfg"])
    run_dir = Path(config["run_dir"])
    quiet_ray_train()
    context = ray.train.get_context()
    torch.set_num_threads(threads_per_rank(cfg))
    quiet_deepspeed()
    comm.adopt_process_group(comm.pick_backend(cfg.parallel.backend))
    mesh = Mesh(ParallelDims.from_config(cfg.parallel))
    record_worker(run_dir, mesh.rank)
    stream = None
    if "train_plan" in config:
        from pitdist.data.ray_epochs import EpochStreams

        streams = EpochStreams(config["train_plan"], context.get_world_size(), context.get_world_rank())
        stream = (streams, config["train_rows"])
    result = train(
        cfg,
        mesh,
        resolve_device(cfg.train.device, context.get_local_rank()),
        run_dir,
        checkpoints=RayCheckpoints(cfg, run_dir),
        data_stream=stream,
    )
    ray.train.report({"final_loss": result.losses[-1], "steps": result.steps})


def quiet_ray_train() -> None:
    """Ray Train logs every report of every worker at INFO from a logger named by its file path, which
    RunConfig's LoggingConfig does not reach; pitdist's progress bar already says the same."""
    import logging

    try:
        from ray.train.v2._internal.execution import context
    except ImportError:  # another Ray version: its own log lines, nothing worse
        return
    logging.getLogger(context.__file__).setLevel(logging.WARNING)


def record_worker(run_dir: Path, rank: int) -> None:
    """workers/rank<r>.json: where each rank runs (host, PID), rewritten when Ray restarts it."""
    path = run_dir / "workers"
    path.mkdir(exist_ok=True)
    (path / f"rank{rank}.json").write_text(json.dumps({"rank": rank, "host": socket.gethostname(), "pid": os.getpid()}))


def init_ray(cfg: JobConfig) -> None:
    import ray

    from pitdist.launch.ray_env import use_embedded_cluster_env

    address = cfg.parallel.ray_address or os.environ.get("RAY_ADDRESS")
    if address:
        ray.init(address=address)
    else:
        # An embedded local cluster. Logical CPUs, not cores: every rank needs one to be scheduled and
        # Ray Data's read tasks one more (threads per rank are set from the real core count). It lives
        # on the loopback interface: nothing of a one-machine run needs another address. The dashboard
        # stays on: Ray Train's placement-group cleaner polls its state API (and complains every
        # second without it), and a Ray user expects to watch the run there.
        world = cfg.parallel.world_size
        use_embedded_cluster_env()
        ray.init(
            num_cpus=max(os.cpu_count() or 1, world + 1),
            include_dashboard=True,
            dashboard_host="127.0.0.1",
            _node_ip_address="127.0.0.1",
        )


def launch_ray(cfg: JobConfig, run_dir: Path) -> RunResult:
    import ray
    from ray.train import CheckpointConfig, FailureConfig, LoggingConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    from pitdist.data.registry import split_dataset
    from pitdist.distributed.comm import pick_backend

    world = cfg.parallel.world_size
    init_ray(cfg)
    try:
        # "auto": a GPU per worker when the cluster has GPUs (the driver itself may have none).
        gpus = int(ray.cluster_resources().get("GPU", 0))
        if cfg.train.device == "cuda" and gpus < world:
            # Ray would wait forever for GPUs that are not there.
            raise ConfigError(
                f"train.device = 'cuda' needs {world} GPUs (one per rank) but the Ray cluster has "
                f"{gpus}; use --train.device cpu or a cluster with GPU workers"
            )
        use_gpu = cfg.train.device == "cuda" or (cfg.train.device == "auto" and gpus >= world)
        loop_config = {"cfg": cfg.to_dict(), "run_dir": str(run_dir.absolute())}
        if cfg.data_loader == "ray_data":
            from pitdist.data.ray_epochs import epoch_plan

            data = cfg.data
            loop_config["train_plan"], loop_config["train_rows"] = epoch_plan(
                split_dataset(cfg)[0],
                data.dataset,
                seed=cfg.train.seed,
                shuffle=data.shuffle,
                block_rows=data.block_rows,
                bad_rows=data.bad_rows,
            )
        storage = cfg.train.storage_path or str(Path(cfg.train.output_dir).absolute() / "ray")
        trainer = TorchTrainer(
            train_loop_per_worker,
            train_loop_config=loop_config,
            scaling_config=ScalingConfig(num_workers=world, use_gpu=use_gpu),
            torch_config=TorchConfig(backend=pick_backend(cfg.parallel.backend) if not use_gpu else "nccl"),
            run_config=RunConfig(
                name=run_dir.name,
                storage_path=storage,
                failure_config=FailureConfig(max_failures=cfg.train.max_failures),
                checkpoint_config=CheckpointConfig(num_to_keep=cfg.train.keep_checkpoints or None),
                # Ray Train's INFO lines (every report, every worker) would drown pitdist's.
                logging_config=LoggingConfig(log_level="WARNING"),
            ),
        )
        try:
            trainer.fit()
        except ray.train.TrainingFailedError as exc:
            # The worker's traceback is in the error; Ray has already retried train.max_failures times.
            raise LaunchError(
                f"Ray Train gave up after train.max_failures = {cfg.train.max_failures} restarts:\n{exc}"
            ) from None
    finally:
        ray.shutdown()
    return RunResult(**json.loads((run_dir / "result.json").read_text()))
