"""Code that runs on each rank of the distributed tests (importable by spawned processes)."""

from __future__ import annotations

import contextlib
import copy
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from pitdist.config import load_config
from pitdist.distributed.mesh import Mesh
from pitdist.distributed.parallelize import consolidated_state_dict, is_sharded, parallelize
from pitdist.models.pit import build_model, pixels_to_tokens
from pitdist.parallel_dims import ParallelDims
from pitdist.train.engine import build_engine
from pitdist.train.step import Batch, forward_backward
from pitdist.train.trainer import train

IMAGE = (8, 8, 1)  # 64 pixel tokens: divisible by P = 1, 2, 4
CLASSES = 10


def sp_test_config(
    pos_embed: str,
    shard: bool,
    dp: int,
    sp: int,
    zero: int = 0,
    grad_clip: float = 0.0,
    ring: int = 1,
    model: tuple[str, ...] = (),
):
    return load_config(
        None,
        [
            "--model.pos_embed",
            pos_embed,
            "--model.shard_pos_embed",
            str(shard).lower(),
            "--parallel.dp",
            str(dp),
            "--parallel.sp",
            str(sp),
            "--parallel.ring",
            str(ring),
            "--parallel.launcher",
            "local" if dp * sp > 1 else "single",
            "--parallel.zero_stage",
            str(zero),
            "--optim.grad_clip",
            str(grad_clip),
            "--train.batch_size",
            "4",
            *model,
        ],
    )


def one_step_versus_single_device(
    rank: int,
    dp: int,
    sp: int,
    variants: list[tuple[str, bool]],
    ring: int = 1,
    image: tuple[int, int, int] = IMAGE,
    model: tuple[str, ...] = (),
    pools: tuple[str, ...] = ("mean",),
    exact: bool = False,
    overlap: bool = False,
) -> list[dict]:
    """Forward + backward of one batch through the DeepSpeed engine on a DP x SP mesh (SP = Ulysses
    sp / ring x ring attention over ``ring`` ranks), for images of shape ``image`` (any token count:
    the shards are padded) and ``model`` overrides, with each pooling of ``pools``.

    ``exact``: both models in float64, the distributed one without an engine (DeepSpeed reduces no
    float64 gradient): its gradients summed over the SP group by hand, which is what the engine's
    reduction is at Q = 1 and ZeRO 0 (a sharded table's rows are not reduced over SP). fp32 rounding
    of sums over hundreds of tokens, taken in another order on P ranks, reaches 1e-5 with no error at
    all; in float64 a difference above 1e-5 can only be the algorithm's.

    Returns, per PE variant and pool, the largest relative differences of logits, loss and every
    parameter gradient from the plain model run on the whole global batch in this very process.
    ``overlap``: Ulysses with pipelined exchanges (pitdist.distributed.ulysses_overlap).
    """
    mesh = Mesh(ParallelDims(dp, sp, ring))
    gen = torch.Generator().manual_seed(1234)
    pixels = torch.randint(0, 256, (dp * 2, *image), dtype=torch.uint8, generator=gen)  # 2 images per DP group
    labels = torch.randint(0, CLASSES, (dp * 2,), generator=gen)
    report = []
    for pool in pools:
        for pos_embed, shard in variants:
            cfg = sp_test_config(pos_embed, shard, dp, sp, ring=ring, model=(*model, "--model.pool", pool))
            diffs = _one_step_diffs(cfg, mesh, image, pixels, labels, exact, overlap)
            report.append({"variant": f"{pos_embed}{' sharded' if shard else ''}", "pool": pool, "diffs": diffs})
    return report


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-12))


class _SummedOverSP:
    """The engine's two calls that forward_backward makes, for a float64 model at Q = 1: backward,
    then every replicated gradient summed over the SP group (a sharded table's rows stay local). A
    parameter this rank did not use (the CLS token, on every rank but its owner) contributes zeros,
    as in the engine."""

    def __init__(self, model, mesh: Mesh):
        self.module, self.mesh = model, mesh

    def __call__(self, *inputs):
        return self.module(*inputs)

    def backward(self, loss: torch.Tensor) -> None:
        from pitdist.distributed import comm

        loss.backward()
        for p in self.module.parameters():
            if p.grad is None:
                p.grad = torch.zeros_like(p)
            if not is_sharded(p):
                comm.all_reduce_(p.grad, self.mesh.sp_group, category="test")


def _one_step_diffs(cfg, mesh: Mesh, image, pixels, labels, exact: bool = False, overlap: bool = False):
    dtype = torch.float64 if exact else torch.float32
    torch.manual_seed(0)
    reference = build_model(cfg.model, image, CLASSES).to(dtype)
    model = parallelize(copy.deepcopy(reference), mesh, cfg.model, overlap=overlap)
    engine = _SummedOverSP(model, mesh) if exact else build_engine(model, cfg, mesh, torch.float32)

    ref_logits = reference(pixels_to_tokens(pixels, cfg.model.patch_size).to(dtype))
    F.cross_entropy(ref_logits, labels).backward()
    ref_grads = {n: p.grad for n, p in reference.named_parameters()}

    mine = slice(mesh.dp_rank * 2, mesh.dp_rank * 2 + 2)
    shards = mesh.token_shards(reference.num_tokens, cls=cfg.model.pool == "cls")
    lo, hi = shards.pixels(mesh.sp_rank)
    tokens = pixels_to_tokens(pixels[mine], cfg.model.patch_size, (lo, hi)).to(dtype)
    batch = Batch(tokens, torch.arange(lo, hi), labels[mine])
    record = forward_backward(engine, batch, mesh.sp)  # ZeRO 0: the engine all-reduces gradients in its backward

    diffs = {
        "logits": _rel(record.logits, ref_logits[mine].detach()),
        "loss": _rel(record.loss, F.cross_entropy(ref_logits[mine], labels[mine]).detach()),
    }
    for name, p in engine.module.named_parameters():
        if is_sharded(p):  # this rank's S rows of the table padded to P * S rows (the padding rows: zero)
            grad = ref_grads["pos_embed.weight"]
            padded = F.pad(grad, (0, 0, 0, shards.padded - grad.shape[0]))
            name, expected = "pos_embed.weight", padded[mesh.sp_rank * shards.shard :][: shards.shard]
            assert p.shape == expected.shape, (p.shape, expected.shape)
        else:
            expected = ref_grads[name]
        diffs[f"grad {name}"] = _rel(p.grad, expected)
    full = consolidated_state_dict(engine.module, mesh)
    assert full.keys() == reference.state_dict().keys()
    diffs["consolidated state"] = max(
        _rel(full[k], v) if v.abs().max() > 0 else float((full[k] - v).abs().max())
        for k, v in reference.state_dict().items()
    )
    return diffs


def loss_curve(rank: int, overrides: list[str], out_dir: str) -> list[float]:
    """20 real training steps with the trainer every job uses; returns the global loss per step."""
    cfg = load_config(
        None,
        [
            "--train.batch_size",
            "8",
            "--train.steps",
            "20",
            "--train.log_every",
            "10",
            "--optim.warmup_steps",
            "2",
            "--optim.lr",
            "3e-3",
            *overrides,
        ],
    )
    mesh = Mesh(ParallelDims.from_config(cfg.parallel))
    run_dir = Path(out_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    return train(cfg, mesh, torch.device("cpu"), run_dir).losses


def batch_ids(rank: int, dp: int, sp: int, steps: int) -> list[list[int]]:
    """The image ids this rank trains on at each step."""
    from pitdist.data.registry import split_dataset
    from pitdist.data.sharding import BatchSchedule
    from pitdist.train.batches import LocalBatches

    cfg = load_config(None, ["--parallel.dp", str(dp), "--parallel.sp", str(sp), "--parallel.launcher", "local"])
    mesh = Mesh(ParallelDims(dp, sp))
    train_data, _ = split_dataset(cfg)
    schedule = BatchSchedule(len(train_data), cfg.train.batch_size, cfg.train.seed)
    batches = LocalBatches(train_data, schedule, mesh, 1, torch.device("cpu"), torch.float32)
    return [np.asarray(batches(s).ids).tolist() for s in range(steps)]


def comm_runs(
    rank: int,
    dp: int,
    sp: int,
    zero: int,
    variants: list[str],
    out_dir: str,
    ring: int = 1,
    overrides: tuple[str, ...] = (),
) -> list[str]:
    """Train each PE variant for 2 steps with the ledger and both cross-check counters on.

    Built exactly as `pitdist comm-report` builds its runs; returns the run directories.
    """
    from pitdist.launch.sweep import variant_config

    run_dirs = []
    for variant in variants:
        cfg = variant_config(
            None,
            ["--parallel.zero_stage", str(zero), "--train.batch_size", "8", *overrides],
            variant,
            dp,
            sp,
            2,
            Path(out_dir),
            ring=ring,
        )
        run_dir = Path(out_dir) / f"{variant}-q{dp}p{sp}r{ring}z{zero}"
        run_dir.mkdir(parents=True, exist_ok=True)
        train(cfg, Mesh(ParallelDims(dp, sp, ring)), torch.device("cpu"), run_dir)
        run_dirs.append(str(run_dir))
    return run_dirs


def checkpointing_versus_none(
    rank: int,
    dp: int,
    sp: int,
    ring: int,
    variants: list[tuple[str, bool]],
    image: tuple[int, int, int] = IMAGE,
    model_overrides: tuple[str, ...] = (),
) -> list[dict]:
    """One forward + backward per activation-checkpointing policy on the same mesh, weights and batch
    (images of shape ``image``, padded shards when P does not divide its tokens).

    Per PE variant and policy: the largest relative differences of logits, loss and every parameter
    gradient from the same mesh without checkpointing, and the bytes autograd held after the forward
    (the saved-tensor count of `pitdist bench sp`) beside the memory model's figure for the rank's slots.
    """
    from pitdist.bench.sp.memory import SavedTensorCounter, counting
    from pitdist.config import ACTIVATION_CHECKPOINTING
    from pitdist.observe.categories import Phase
    from pitdist.report.memory_model import activation_memory

    mesh = Mesh(ParallelDims(dp, sp, ring))
    gen = torch.Generator().manual_seed(4321)
    pixels = torch.randint(0, 256, (dp * 2, *image), dtype=torch.uint8, generator=gen)
    labels = torch.randint(0, CLASSES, (dp * 2,), generator=gen)
    mine = slice(mesh.dp_rank * 2, mesh.dp_rank * 2 + 2)
    report = []
    for pos_embed, shard in variants:
        cfg = sp_test_config(pos_embed, shard, dp, sp, ring=ring, model=model_overrides)
        torch.manual_seed(0)
        reference = build_model(cfg.model, image, CLASSES)
        shards = mesh.token_shards(reference.num_tokens, cls=cfg.model.pool == "cls")
        lo, hi = shards.pixels(mesh.sp_rank)
        batch = Batch(pixels_to_tokens(pixels[mine], 1, (lo, hi)), torch.arange(lo, hi), labels[mine])
        results = {}
        for policy in ACTIVATION_CHECKPOINTING:
            model = parallelize(copy.deepcopy(reference), mesh, cfg.model, policy)
            engine = build_engine(model, cfg, mesh, torch.float32)
            counter = SavedTensorCounter(engine.module.parameters())

            def phase(name, counter=counter):
                return counting(counter) if name == Phase.FORWARD else contextlib.nullcontext()

            record = forward_backward(engine, batch, sp, phase)
            results[policy] = {
                "logits": record.logits,
                "loss": record.loss,
                "grads": {n: p.grad.clone() for n, p in engine.module.named_parameters()},
                "held": counter.summary()["saved_bytes"],
                "model_held": activation_memory(cfg.model, shards.shard, image[2], policy, sp, ring, images=2).held,
            }

        plain = results["none"]
        for policy, r in results.items():
            diffs = {"logits": _rel(r["logits"], plain["logits"]), "loss": _rel(r["loss"], plain["loss"])}
            diffs.update({f"grad {n}": _rel(g, plain["grads"][n]) for n, g in r["grads"].items()})
            report.append(
                {
                    "variant": f"{pos_embed}{' sharded' if shard else ''}",
                    "policy": policy,
                    "diffs": diffs,
                    "held": r["held"],
                    "model_held": r["model_held"],
                }
            )
    return report


def _padded_model_and_batch(mesh: Mesh, image, overrides: tuple[str, ...], pixels: torch.Tensor):
    """The parallelized model for ``image`` and this rank's batch of ``pixels`` (positions included)."""
    cfg = sp_test_config("none", False, mesh.dp, mesh.sp, ring=mesh.ring, model=overrides)
    torch.manual_seed(0)
    model = parallelize(build_model(cfg.model, image, CLASSES), mesh, cfg.model)
    lo, hi = mesh.pixel_range(model.num_tokens, cls=cfg.model.pool == "cls")
    return model, Batch(pixels_to_tokens(pixels, 1, (lo, hi)), torch.arange(lo, hi), torch.zeros(len(pixels)))


def logits_under_permutation(rank: int, sp: int, ring: int, image, overrides: tuple[str, ...]) -> dict:
    """Logits of a batch and of the same batch with its pixels permuted, on a (padded) SP mesh, for a
    PiT without position embedding; and the plain model's logits for the batch."""
    mesh = Mesh(ParallelDims(1, sp, ring))
    gen = torch.Generator().manual_seed(7)
    h, w, c = image
    pixels = torch.randint(0, 256, (2, h, w, c), dtype=torch.uint8, generator=gen)
    perm = torch.randperm(h * w, generator=gen)
    permuted = pixels.reshape(2, h * w, c)[:, perm].reshape(2, h, w, c)
    model, batch = _padded_model_and_batch(mesh, image, overrides, pixels)
    _, moved = _padded_model_and_batch(mesh, image, overrides, permuted)
    cfg = sp_test_config("none", False, 1, 1, model=overrides)
    torch.manual_seed(0)
    plain = build_model(cfg.model, image, CLASSES)
    with torch.no_grad():  # lists: tensors would travel back through shared memory the rank frees
        return {
            "original": model(batch.tokens, batch.positions).tolist(),
            "permuted": model(moved.tokens, moved.positions).tolist(),
            "plain": plain.forward_images(pixels).tolist(),
        }


def saved_bytes_padded_versus_divisible(
    rank: int, sp: int, ring: int, padded, divisible, overrides: tuple[str, ...]
) -> dict[str, int]:
    """The activation bytes autograd saves in a forward on this rank, for images of shape ``padded``
    (whose tokens P does not divide) and ``divisible`` (whose tokens it does), on the same mesh."""
    from pitdist.bench.sp.memory import SavedTensorCounter, counting

    mesh = Mesh(ParallelDims(1, sp, ring))
    out = {}
    for name, image in (("padded", padded), ("divisible", divisible)):
        pixels = torch.randint(0, 256, (2, *image), dtype=torch.uint8, generator=torch.Generator().manual_seed(3))
        model, batch = _padded_model_and_batch(mesh, image, overrides, pixels)
        counter = SavedTensorCounter(model.parameters())
        with counting(counter):
            logits = model(batch.tokens, batch.positions)
        logits.sum().backward()  # the graph is sound: its backward runs
        out[name] = counter.summary()["saved_bytes"]
        out[f"{name} slots"] = mesh.token_shards(model.num_tokens, cls=model.cls_token is not None).shard
    return out


def overlapped_comm_runs(rank: int, out_dir: str, overrides: tuple[str, ...]) -> dict:
    """comm_runs (Q = 1, P = 2, ZeRO 0, every PE variant) with Ulysses' exchanges pipelined as on a GPU:
    the trainer's device gate is the one thing opened here (there is no CUDA device). Also returns how
    many exchanges the pipeline started, to show every all-to-all went through it."""
    import pitdist.distributed.ulysses_overlap as overlap
    import pitdist.train.trainer as trainer

    trainer.overlaps_ulysses = lambda *args: True
    started = [0]
    start = overlap._start

    def counted(x, group):
        started[0] += 1
        return start(x, group)

    overlap._start = counted
    run_dirs = comm_runs(rank, 1, 2, 0, ["none", "learned", "learned-sharded"], out_dir, 1, overrides)
    return {"run_dirs": run_dirs, "started": started[0]}
