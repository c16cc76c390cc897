"""Every setting of a pitdist run, as validated dataclasses.

A job is a TOML file (see jobs/) whose tables mirror these dataclasses; any field can be overridden
from the command line as ``--section.field value`` (``--model.pos_embed none``). Unknown keys, values
of the wrong type and impossible values raise ConfigError naming the key and what is allowed, so a
typo never silently falls back to a default.
"""

from __future__ import annotations

import dataclasses
import tomllib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

# The job `pitdist train`, `comm-report` and the job-running benchmarks use when --config is not given.
DEFAULT_JOB = "jobs/digits.toml"


def default_job(config: str | None) -> str | None:
    """``config``, else the default job file when it exists here, else None (the built-in defaults)."""
    return config or (DEFAULT_JOB if Path(DEFAULT_JOB).exists() else None)


class ConfigError(ValueError):
    """A setting is unknown, mistyped or impossible. The message names it and the fix."""


def parse_hwc(text: str) -> tuple[int, int, int] | None:
    """``HxWxC`` (C = 1 or 3, sides >= 1) as three integers, else None."""
    try:
        h, w, c = (int(v) for v in text.lower().split("x"))
    except ValueError:
        return None
    return (h, w, c) if min(h, w) >= 1 and c in (1, 3) else None


def _require(ok: bool, key: str, message: str) -> None:
    if not ok:
        raise ConfigError(f"{key}: {message}")


# Width, depth and heads of the PiT sizes (patch size 1). nano exists for tests and the default job:
# 4 heads so Ulysses can split it over P = 1, 2 or 4 ranks.
MODEL_PRESETS: dict[str, tuple[int, int, int]] = {
    "nano": (64, 4, 4),
    "tiny": (192, 12, 3),
    "small": (384, 12, 6),
    "base": (768, 12, 12),
}

PosEmbedKind = Literal["none", "sincos", "learned"]
CheckpointingPolicy = Literal["none", "full", "selective", "local"]
ACTIVATION_CHECKPOINTING: tuple[str, ...] = typing.get_args(CheckpointingPolicy)


def checkpointed_blocks(depth: int, policy: str, every: int = 2) -> list[int]:
    """The blocks an activation-checkpointing policy checkpoints whole: all for "full", every k-th for
    "selective" (blocks k-1, 2k-1, ... as torchtitan picks them), none otherwise ("local" checkpoints
    the stages of every block instead)."""
    if policy == "full":
        return list(range(depth))
    if policy == "selective":
        return [i for i in range(depth) if (i + 1) % every == 0]
    return []


@dataclass
class ModelConfig:
    size: Literal["nano", "tiny", "small", "base"] = "nano"
    patch_size: int = 1  # 1 = PiT (one token per pixel); >1 = ViT
    pos_embed: PosEmbedKind = "sincos"
    # Under sequence parallelism, each SP rank keeps only the rows of a learned table for its tokens.
    shard_pos_embed: bool = False
    # The image's feature: the mean of its pixel tokens (the PiT paper), or a learned CLS token's output.
    pool: Literal["mean", "cls"] = "mean"
    # 0 means "take it from the size preset".
    dim: int = 0
    depth: int = 0
    heads: int = 0
    mlp_ratio: float = 4.0

    def __post_init__(self) -> None:
        _require(self.patch_size >= 1, "model.patch_size", f"must be >= 1, got {self.patch_size}")
        for name in ("dim", "depth", "heads"):
            _require(getattr(self, name) >= 0, f"model.{name}", "must be >= 0 (0 = from model.size)")
        _require(self.mlp_ratio > 0, "model.mlp_ratio", f"must be > 0, got {self.mlp_ratio}")
        _require(
            self.width % self.num_heads == 0,
            "model.dim",
            f"{self.width} is not divisible by model.heads = {self.num_heads}",
        )
        _require(
            self.pos_embed != "sincos" or self.width % 4 == 0,
            "model.pos_embed",
            f"'sincos' splits the width into 4 (row/column x sin/cos); model.dim = {self.width} is not a multiple of 4",
        )
        _require(
            not self.shard_pos_embed or self.pos_embed == "learned",
            "model.shard_pos_embed",
            f"only applies to pos_embed = 'learned' (got '{self.pos_embed}'); set it to false",
        )

    @property
    def width(self) -> int:
        return self.dim or MODEL_PRESETS[self.size][0]

    @property
    def num_layers(self) -> int:
        return self.depth or MODEL_PRESETS[self.size][1]

    @property
    def num_heads(self) -> int:
        return self.heads or MODEL_PRESETS[self.size][2]


@dataclass
class DataConfig:
    # "digits" = scikit-learn's bundled 8x8 digits, synthetic:HxWxC[:COUNT], a pitdist Arrow dataset
    # directory, or Parquet files of encoded images (a .parquet file, a directory of them or a glob).
    dataset: str = "digits"
    val_fraction: float = 0.2
    # A separate held-out dataset (e.g. Fashion-MNIST's test split) to evaluate on; "" = hold out
    # data.val_fraction of data.dataset instead. When set, every image of data.dataset trains.
    val_dataset: str = ""
    shuffle: bool = True
    # How batches reach the ranks. "memory": every rank memory-maps the dataset and takes its batch by
    # index (pitdist.data.sharding). "ray_data": Ray Data streams the rows, Ray Train gives each worker
    # an equal share, and each SP group all-gathers its members' shares (pitdist.train.batches).
    # "auto": ray_data under the Ray launcher, memory otherwise.
    loader: Literal["auto", "memory", "ray_data"] = "auto"
    # ray_data: rows in each worker's local shuffle buffer (reseeded every epoch).
    shuffle_buffer: int = 1024
    # ray_data: rows per read unit of Arrow shards and in-memory datasets, the blocks whose order every
    # epoch permutes afresh (Parquet's units are its row groups); smaller = finer shuffles, more tasks.
    block_rows: int = 512
    # A Parquet dataset (data.dataset = a .parquet file, a directory of them or a glob) holds encoded
    # PNG/JPEG images, as Hugging Face `datasets` writes them: trained on without conversion, decoded
    # where they are read (pitdist.data.parquet_pixels). Its image and label columns:
    image_column: str = "image"
    label_column: str = "label"
    # HxWxC every image decodes to ("" = the first image's size and channels); with resize = false an
    # image of another size is a bad row, with true it is resized (bilinear).
    image_shape: str = ""
    resize: bool = False
    # A row that cannot become such an image (undecodable, null, label outside the classes): "fail"
    # stops the run naming file and row; "skip" checks every image before the first step and leaves
    # those rows out, listed in the run's data/skipped.json.
    bad_rows: Literal["fail", "skip"] = "fail"

    def __post_init__(self) -> None:
        if self.image_shape:
            _require(
                parse_hwc(self.image_shape) is not None,
                "data.image_shape",
                f"write HxWxC with C = 1 or 3, e.g. 28x28x1 or 224x224x3, got {self.image_shape!r}",
            )
        _require(not self.resize or bool(self.image_shape), "data.resize", "needs data.image_shape to resize to")
        _require(self.shuffle_buffer >= 1, "data.shuffle_buffer", f"must be >= 1, got {self.shuffle_buffer}")
        _require(self.block_rows >= 1, "data.block_rows", f"must be >= 1, got {self.block_rows}")
        _require(0.0 < self.val_fraction < 1.0, "data.val_fraction", f"must be in (0, 1), got {self.val_fraction}")
        _require(bool(self.dataset), "data.dataset", "must name 'digits' or a dataset directory")


@dataclass
class ParallelConfig:
    dp: int = 1  # Q: data-parallel groups
    sp: int = 0  # P: ranks that split one image's tokens = ulysses x ring
    # How an SP group splits attention: DeepSpeed Ulysses over `ulysses` ranks (must divide the heads)
    # times ring attention over `ring` ranks. Any two of sp, ulysses, ring fix the third (0 = derived);
    # sp alone means pure Ulysses (ring 1).
    ulysses: int = 0
    ring: int = 0
    zero_stage: int = 0
    # "ray": Ray Train workers; "local": one spawned process per rank, no Ray; "single": this process.
    launcher: Literal["single", "local", "ray"] = "ray"
    # Ray launcher: the cluster to attach to ("" = the Ray job's cluster, else an embedded local one).
    ray_address: str = ""
    # "auto" picks nccl when CUDA is available, else gloo.
    backend: Literal["auto", "gloo", "nccl"] = "auto"
    # Overlap Ulysses' all-to-alls with computation on CUDA: each of q, k, v is exchanged on a side
    # stream as soon as it is projected (DeepSpeed's DistributedAttention sp_stream). Exact either way;
    # nothing to overlap on CPU, where it does not apply.
    overlap_comm: bool = True

    def __post_init__(self) -> None:
        _require(self.dp >= 1, "parallel.dp", f"must be >= 1, got {self.dp}")
        for name in ("sp", "ulysses", "ring"):
            value = getattr(self, name)
            _require(
                value >= 0,
                f"parallel.{name}",
                f"must be >= 1 (or 0: from the other two of sp, ulysses, ring), got {value}",
            )
        if not self.sp:
            self.sp = (self.ulysses or 1) * (self.ring or 1)
        _require(
            not self.ulysses or self.sp % self.ulysses == 0,
            "parallel.ulysses",
            f"{self.ulysses} does not divide parallel.sp = {self.sp} (sp = ulysses x ring)",
        )
        if not self.ring:
            self.ring = self.sp // self.ulysses if self.ulysses else 1
        _require(
            self.sp % self.ring == 0,
            "parallel.ring",
            f"{self.ring} does not divide parallel.sp = {self.sp} (sp = ulysses x ring)",
        )
        self.ulysses = self.ulysses or self.sp // self.ring
        _require(
            self.ulysses * self.ring == self.sp,
            "parallel.sp",
            f"{self.sp} != parallel.ulysses x parallel.ring = {self.ulysses} x {self.ring}; set two of the three",
        )
        _require(self.zero_stage in (0, 1, 2), "parallel.zero_stage", f"must be 0, 1 or 2, got {self.zero_stage}")
        _require(
            self.launcher != "single" or self.world_size == 1,
            "parallel.launcher",
            f"'single' runs one process but dp * sp = {self.world_size}; use --parallel.launcher local",
        )

    @property
    def world_size(self) -> int:
        return self.dp * self.sp


@dataclass
class OptimConfig:
    lr: float = 1e-3
    weight_decay: float = 0.05
    beta1: float = 0.9
    beta2: float = 0.999
    warmup_steps: int = 20
    grad_clip: float = 1.0  # global-norm clip; 0 disables it

    def __post_init__(self) -> None:
        _require(self.lr > 0, "optim.lr", f"must be > 0, got {self.lr}")
        _require(self.weight_decay >= 0, "optim.weight_decay", f"must be >= 0, got {self.weight_decay}")
        for name in ("beta1", "beta2"):
            value = getattr(self, name)
            _require(0 <= value < 1, f"optim.{name}", f"must be in [0, 1), got {value}")
        # DeepSpeed's WarmupDecayLR refuses 0 warm-up steps.
        _require(
            self.warmup_steps >= 1,
            "optim.warmup_steps",
            f"must be >= 1 (DeepSpeed's WarmupDecayLR), got {self.warmup_steps}",
        )
        _require(self.grad_clip >= 0, "optim.grad_clip", f"must be >= 0 (0 = off), got {self.grad_clip}")


@dataclass
class TrainConfig:
    steps: int = 300
    batch_size: int = 32  # images per step over all data-parallel groups
    seed: int = 0
    log_every: int = 25
    evaluate: bool = True  # held-out accuracy at the end
    eval_batch_size: int = 256
    device: Literal["auto", "cpu", "cuda"] = "auto"
    # "auto": bf16 on CUDA, fp32 on CPU.
    dtype: Literal["auto", "fp32", "bf16"] = "auto"
    threads: int = 0  # torch intra-op threads per process; 0 = cores / processes
    # What backward recomputes instead of keeping (pitdist.distributed.checkpointing): "none"; "full"
    # (keep each block's input, re-run the block and its all-to-alls / ring hops); "selective"
    # (every selective_every-th block as full); "local" (recompute only the computation between
    # collectives: no byte re-sent).
    activation_checkpointing: CheckpointingPolicy = "none"
    # selective: checkpoint every k-th block (torchtitan's selective_ac_option = "k").
    selective_every: int = 2
    # Keep what activation checkpointing keeps (each checkpointed stage's inputs) in host memory
    # instead of on the device, and bring it back for the recompute (torch.autograd.graph.save_on_cpu).
    # Saves device memory at the cost of host transfers; only with a checkpointing policy, only on CUDA.
    checkpoint_offload: bool = False
    output_dir: str = "runs"
    # Save a DeepSpeed checkpoint (every rank's ZeRO state, scheduler, step, losses) every N steps and
    # at the last step; 0 = none (model.pt, the consolidated weights, is always written).
    # Checkpoints go to <run dir>/checkpoints/step-<N>.
    checkpoint_every: int = 0
    # Continue from a checkpoints directory of an earlier run (its latest tag, or resume_tag).
    resume: str = ""
    resume_tag: str = ""
    # Ray launcher: restarts of the worker group after a worker or node dies, each from the latest
    # checkpoint (from scratch without checkpoints).
    max_failures: int = 2
    # Ray launcher: where Ray Train keeps checkpoints (a shared filesystem or bucket URI on a multi-node
    # cluster; "" = <output_dir>/ray on this machine).
    storage_path: str = ""
    # Ray launcher: registered checkpoints kept in storage_path, the newest first (0 = all).
    keep_checkpoints: int = 3

    def __post_init__(self) -> None:
        _require(
            self.keep_checkpoints >= 0, "train.keep_checkpoints", f"must be >= 0 (0 = all), got {self.keep_checkpoints}"
        )
        _require(
            self.max_failures >= -1, "train.max_failures", f"must be >= 0 (or -1 = forever), got {self.max_failures}"
        )
        _require(self.checkpoint_every >= 0, "train.checkpoint_every", f"must be >= 0, got {self.checkpoint_every}")
        _require(self.steps >= 1, "train.steps", f"must be >= 1, got {self.steps}")
        _require(self.batch_size >= 1, "train.batch_size", f"must be >= 1, got {self.batch_size}")
        _require(self.log_every >= 1, "train.log_every", f"must be >= 1, got {self.log_every}")
        _require(self.eval_batch_size >= 1, "train.eval_batch_size", f"must be >= 1, got {self.eval_batch_size}")
        _require(self.threads >= 0, "train.threads", f"must be >= 0 (0 = automatic), got {self.threads}")
        _require(self.selective_every >= 1, "train.selective_every", f"must be >= 1, got {self.selective_every}")
        _require(
            not self.checkpoint_offload or self.activation_checkpointing != "none",
            "train.checkpoint_offload",
            "offloads what activation checkpointing keeps, so it needs a policy: set "
            "train.activation_checkpointing to full, selective or local (or checkpoint_offload false)",
        )


@dataclass
class MetricsConfig:
    # Record every collective (bytes, seconds, cause) in the communication ledger.
    ledger: bool = True
    # How the ledger times a collective on a GPU. False: CUDA events on the collective's stream, read
    # at the end of the step, never blocking the host (what trains is what is measured). True: a
    # device-wide synchronize before and after every call, attributing wall time exactly to each call
    # at the price of serialising communication with compute (for debugging; it changes the overlap
    # being measured). On CPU a collective's host time is its time either way.
    ledger_sync: bool = False
    # Also count collectives with DeepSpeed's comms logger and a c10d dispatch counter, to check
    # the ledger against (slower: the comms logger synchronises after every call).
    crosscheck: bool = False
    # Serve each rank's metrics to Prometheus at prometheus_host:(prometheus_port + rank); 0 = off
    # (pitdist.observe.prometheus). Bind 0.0.0.0 for a Prometheus on another machine.
    prometheus_port: int = 0
    prometheus_host: str = "127.0.0.1"
    # A directory Prometheus' file_sd_configs watches: each rank writes its target there while it
    # serves ("" = none; use an absolute path under Ray, whose workers run in their own directory).
    prometheus_sd_dir: str = ""
    # Wait at most this long for Prometheus: for a first scrape before the first step (so rates cover
    # the whole run) and, at the end, for a scrape of the final values.
    prometheus_linger_s: float = 30.0
    # Peak dense TFLOP/s of one device, for MFU; 0 = known GPUs' bf16 peak, no MFU on CPU.
    peak_tflops: float = 0.0

    def __post_init__(self) -> None:
        _require(
            0 <= self.prometheus_port <= 65535,
            "metrics.prometheus_port",
            f"must be a TCP port (rank r serves at port + r) or 0 = off, got {self.prometheus_port}",
        )
        _require(
            self.prometheus_linger_s >= 0,
            "metrics.prometheus_linger_s",
            f"must be >= 0, got {self.prometheus_linger_s}",
        )
        _require(self.peak_tflops >= 0, "metrics.peak_tflops", f"must be >= 0 (0 = look up), got {self.peak_tflops}")


@dataclass
class JobConfig:
    name: str = "pitdist"
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    parallel: ParallelConfig = field(default_factory=ParallelConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    metrics: MetricsConfig = field(default_factory=MetricsConfig)

    def __post_init__(self) -> None:
        q = self.parallel.dp
        _require(
            self.train.batch_size % q == 0,
            "train.batch_size",
            f"{self.train.batch_size} images cannot be split evenly over parallel.dp = {q} groups; "
            f"use a multiple of {q}",
        )
        _require(
            self.data.loader != "ray_data" or self.parallel.launcher == "ray",
            "data.loader",
            f"'ray_data' feeds Ray Train workers; launcher '{self.parallel.launcher}' needs 'memory' "
            "(or use --launcher ray)",
        )
        world = self.parallel.world_size
        _require(
            self.data_loader != "ray_data" or self.train.batch_size % world == 0,
            "train.batch_size",
            f"the ray_data loader gives each of the dp * sp = {world} workers an equal share of a batch; "
            f"{self.train.batch_size} is not a multiple of {world} (or use --data.loader memory)",
        )

    @property
    def data_loader(self) -> str:
        """The loader in effect: "auto" resolved against the launcher."""
        if self.data.loader != "auto":
            return self.data.loader
        return "ray_data" if self.parallel.launcher == "ray" else "memory"

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


# --- loading ------------------------------------------------------------------------------------


def _type_name(tp: Any) -> str:
    if typing.get_origin(tp) is Literal:
        return " | ".join(repr(a) for a in typing.get_args(tp))
    return getattr(tp, "__name__", str(tp))


def _coerce(key: str, tp: Any, value: Any, from_cli: bool) -> Any:
    """Check (TOML) or parse (command line) one value against its field type."""
    origin = typing.get_origin(tp)
    if origin is Literal:
        allowed = typing.get_args(tp)
        if from_cli and isinstance(allowed[0], int):
            try:
                value = int(value)
            except ValueError:
                pass
        if value not in allowed:
            raise ConfigError(f"{key}: {value!r} is not allowed; choose one of {', '.join(map(repr, allowed))}")
        return value
    if origin in (typing.Union, types.UnionType):
        raise TypeError(f"config field {key} uses a union type; pitdist configs use plain types")
    if tp is bool:
        if from_cli and isinstance(value, str):
            lowered = value.lower()
            if lowered in ("true", "1", "yes", "on"):
                return True
            if lowered in ("false", "0", "no", "off"):
                return False
        if isinstance(value, bool):
            return value
    elif tp in (int, float):
        if from_cli and isinstance(value, str):
            try:
                return tp(value)
            except ValueError:
                pass
        # TOML's 3 is a fine float; 3.0 is not an int, and true is neither.
        if isinstance(value, (int, float) if tp is float else int) and not isinstance(value, bool):
            return tp(value)
    elif tp is str:
        if isinstance(value, str):
            return value
    else:
        raise TypeError(f"unsupported config field type {tp} for {key}")
    raise ConfigError(f"{key}: expected {_type_name(tp)}, got {value!r} ({type(value).__name__})")


def _build(cls: type, raw: dict[str, Any], prefix: str, source: str, from_cli: bool = False) -> Any:
    """Instantiate ``cls`` from a nested dict, checking every key and value against the field types.

    ``from_cli`` parses strings (command-line values) by field type and returns the nested dict of
    typed values instead of an instance, so it can be merged over the TOML before validation.
    """
    hints = typing.get_type_hints(cls)
    fields = {f.name for f in dataclasses.fields(cls)}
    kwargs: dict[str, Any] = {}
    for key, value in raw.items():
        dotted = f"{prefix}{key}"
        if key not in fields:
            raise ConfigError(f"{dotted}: unknown setting in {source}; known keys here: {', '.join(sorted(fields))}")
        tp = hints[key]
        if dataclasses.is_dataclass(tp):
            if not isinstance(value, dict):
                raise ConfigError(f"{dotted}: is a section; set its keys ({dotted}.KEY), got {value!r}")
            kwargs[key] = _build(tp, value, f"{dotted}.", source, from_cli)
        else:
            kwargs[key] = _coerce(dotted, tp, value, from_cli)
    return kwargs if from_cli else cls(**kwargs)


def _merge(base: dict[str, Any], top: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in top.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def parse_overrides(args: list[str]) -> dict[str, Any]:
    """``["--model.pos_embed", "none", "--train.steps=5"]`` -> nested dict of strings."""
    out: dict[str, Any] = {}
    i = 0
    while i < len(args):
        arg = args[i]
        if not arg.startswith("--") or len(arg) == 2:
            raise ConfigError(f"override {arg!r}: expected --section.key VALUE (e.g. --model.pos_embed none)")
        key, eq, value = arg[2:].partition("=")
        if not eq:
            if i + 1 >= len(args):
                raise ConfigError(f"override --{key}: missing value")
            value = args[i + 1]
            i += 1
        i += 1
        node = out
        *parents, leaf = key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override --{key}: {part} is a setting, not a section")
        node[leaf] = value
    return out


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> JobConfig:
    """Read a job TOML (or the defaults), apply ``--section.key value`` overrides, validate everything."""
    raw: dict[str, Any] = {}
    source = "defaults"
    if path is not None:
        path = Path(path)
        source = str(path)
        try:
            raw = tomllib.loads(path.read_text())
        except FileNotFoundError:
            raise ConfigError(f"config file {path} does not exist (job files live in jobs/)") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{path}: not valid TOML: {exc}") from None
    if overrides:
        typed = _build(JobConfig, parse_overrides(overrides), "", "command-line overrides", from_cli=True)
        raw = _merge(raw, typed)
        source = f"{source} + command line"
    return _build(JobConfig, raw, "", source)


def config_from_dict(raw: dict[str, Any]) -> JobConfig:
    """Rebuild a JobConfig from ``to_dict()`` output (e.g. inside a worker process)."""
    return _build(JobConfig, raw, "", "config dict")
