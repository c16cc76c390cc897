"""The one module through which pitdist talks to other ranks.

Everything pitdist sends goes through deepspeed.comm (a thin layer over torch.distributed) from here,
so grepping this file finds every byte pitdist itself puts on the wire. DeepSpeed's engine (gradient
reduction, ZeRO gathers) and its Ulysses layer call deepspeed.comm themselves.
"""

from __future__ import annotations

import builtins
import os
import socket
import sys
from datetime import timedelta

import torch
from deepspeed import comm as dist

from pitdist.observe.ledger import tag, waited


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def pick_backend(requested: str) -> str:
    """'auto' means nccl when this process has a CUDA device, gloo otherwise."""
    if requested != "auto":
        return requested
    return "nccl" if torch.cuda.is_available() else "gloo"


def use_interpreter_tools() -> None:
    """Build DeepSpeed's CPU comm op with this environment's tools, into this environment's cache.

    DeepSpeed JIT-builds the op with whichever `ninja` comes first on PATH, into TORCH_EXTENSIONS_DIR
    (default ~/.cache/torch_extensions, shared by every environment of the user). The venv's ninja
    (a pip dependency of deepspeed) and the system's hash the build differently, and two venvs differ
    in include paths, so processes that disagree rebuild the op over each other (~60 s each time).
    Every pitdist process, Ray workers included, uses the ninja beside its interpreter and a cache in
    its environment (scripts/setup.sh builds it there once).
    """
    bin_dir = os.path.dirname(sys.executable)
    path = os.environ.get("PATH", "").split(os.pathsep)
    if path[:1] != [bin_dir]:
        os.environ["PATH"] = os.pathsep.join([bin_dir, *(p for p in path if p != bin_dir)])
    if os.access(sys.prefix, os.W_OK):  # else (e.g. a root-owned image venv) torch's per-user default
        os.environ.setdefault("TORCH_EXTENSIONS_DIR", os.path.join(sys.prefix, "torch_extensions"))


def loopback_interface() -> str | None:
    """The loopback interface's name (Linux "lo"), or None where there is none by that name."""
    return next((name for _, name in socket.if_nameindex() if name in ("lo", "lo0")), None)


def bind_gloo_to_loopback() -> None:
    """For ranks that all run on this machine: gloo picks the interface the host name resolves to,
    and where the host name resolves to nothing (containers, chroots) it warns on every rank before
    falling back to loopback. Naming loopback (GLOO_SOCKET_IFNAME) says so at once; a user's own
    setting wins."""
    interface = loopback_interface()
    if interface:
        os.environ.setdefault("GLOO_SOCKET_IFNAME", interface)


def init_process_group(
    rank: int,
    world_size: int,
    backend: str,
    master_addr: str,
    master_port: int,
    local_rank: int | None = None,
    timeout_s: float = 600.0,
) -> None:
    """Join the default process group through deepspeed.comm."""
    use_interpreter_tools()
    os.environ.setdefault("DS_ACCELERATOR", "cuda" if backend == "nccl" else "cpu")
    if backend == "gloo" and master_addr.startswith("127."):
        bind_gloo_to_loopback()
    os.environ.update(
        RANK=str(rank),
        WORLD_SIZE=str(world_size),
        LOCAL_RANK=str(rank if local_rank is None else local_rank),
        MASTER_ADDR=master_addr,
        MASTER_PORT=str(master_port),
    )
    _init_deepspeed_comm(dist_backend=backend, timeout=timedelta(seconds=timeout_s))


def adopt_process_group(backend: str) -> None:
    """Inside a Ray Train worker: Ray made the torch process group; let deepspeed.comm use it."""
    use_interpreter_tools()
    # A cluster's workers need not have the driver's environment.
    os.environ.setdefault("DS_ACCELERATOR", "cuda" if backend == "nccl" else "cpu")
    _init_deepspeed_comm(dist_backend=backend)


def _init_deepspeed_comm(**kwargs) -> None:
    """deepspeed.init_distributed, less its "shm_comm_op built successfully" print: DeepSpeed prints it
    every time it LOADS the CPU comm op from the cache, in every rank, which reads as a rebuild. A failed
    build raises; every other print goes through. builtins.print is swapped rather than stdout
    redirected because Ray Train workers route print() to a logger of their own."""
    shown = builtins.print

    def print_but_op_notice(*args, **print_kwargs):
        if not (len(args) == 1 and str(args[0]).endswith("_op built successfully")):
            shown(*args, **print_kwargs)

    builtins.print = print_but_op_notice
    try:
        dist.init_distributed(auto_mpi_discovery=False, verbose=False, **kwargs)
    finally:
        builtins.print = shown


def is_initialized() -> bool:
    return dist.is_initialized()


def get_rank(group=None) -> int:
    return dist.get_rank(group=group)


def get_world_size(group=None) -> int:
    return dist.get_world_size(group=group)


def new_group(ranks: list[int]):
    return dist.new_group(ranks)


def barrier(group=None) -> None:
    dist.barrier(group=group)


# Every collective pitdist issues names its cause (the ledger category it is counted under).


def all_reduce_(tensor: torch.Tensor, group, *, category: str) -> torch.Tensor:
    """In-place sum over ``group``."""
    with tag(category):
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM, group=group)
    return tensor


def all_gather_cat(tensor: torch.Tensor, group, *, category: str) -> torch.Tensor:
    """Concatenate equal-shaped tensors from every rank of ``group`` along dim 0, in rank order."""
    world = dist.get_world_size(group=group)
    out = torch.empty((world * tensor.shape[0], *tensor.shape[1:]), dtype=tensor.dtype, device=tensor.device)
    with tag(category):
        dist.all_gather_into_tensor(out, tensor.contiguous(), group=group)
    return out


class InFlight:
    """A collective started with ``async_op`` (``ring_shift``, ``all_to_all_start``): ``wait()`` returns
    its output, and the ledger counts the time spent waiting (what the caller's compute did not hide)."""

    def __init__(self, works: list, sent: torch.Tensor, received: torch.Tensor, group, category: str, op: str):
        # ``sent`` is held until the call completes: the backend reads it asynchronously.
        self._works, self._sent, self._received = works, sent, received
        self._group, self._category, self._op = group, category, op

    def wait(self) -> torch.Tensor:
        with tag(self._category), waited(self._op, self._group):
            for work in self._works:
                work.wait()
        self._works, self._sent = [], None
        return self._received


def all_to_all_start(tensor: torch.Tensor, group, *, category: str) -> InFlight:
    """Start the all-to-all of ``tensor``'s dim-0 blocks over ``group`` (block j goes to rank j; the
    output's block j came from rank j); returns at once, so the caller computes while it runs."""
    tensor = tensor.contiguous()
    received = torch.empty_like(tensor)
    with tag(category):
        work = dist.all_to_all_single(received, tensor, group=group, async_op=True)
    return InFlight([work], tensor, received, group, category, "all_to_all_single")


def ring_shift(tensor: torch.Tensor, group, *, category: str) -> InFlight:
    """Start sending ``tensor`` to the next rank of ``group`` and receiving the previous rank's tensor of
    the same shape; returns at once, so the caller computes while the bytes travel.

    Plain isend/irecv (what batch_isend_irecv itself does on gloo, which cannot coalesce), so the ledger,
    DeepSpeed's comms logger and the c10d counter all see one send and one receive. Even ranks post the
    send first and odd ranks the receive: a backend that runs a pair's point-to-point ops in order on
    one stream (NCCL) then never has both ends of a pair sending first.
    """
    world, me = dist.get_world_size(group=group), dist.get_rank(group=group)
    nxt = dist.get_global_rank(group, (me + 1) % world)
    prev = dist.get_global_rank(group, (me - 1) % world)
    tensor = tensor.contiguous()
    received = torch.empty_like(tensor)
    with tag(category):
        if me % 2 == 0:
            works = [dist.isend(tensor, nxt, group=group), dist.irecv(received, prev, group=group)]
        else:
            works = [dist.irecv(received, prev, group=group), dist.isend(tensor, nxt, group=group)]
    return InFlight(works, tensor, received, group, category, "irecv")


def destroy_process_group() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


class _AllReduceSum(torch.autograd.Function):
    """y = sum over ranks of x, delivered to every rank.

    Each rank's loss depends on y, and the engine sums gradients over the ranks, so the gradient of
    the total with respect to x is the sum of every rank's dL/dy: the backward is an all-reduce too.
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor, group, category: str) -> torch.Tensor:
        ctx.group, ctx.category = group, category
        return all_reduce_(x.clone(), group, category=category)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        return all_reduce_(grad.clone(), ctx.group, category=ctx.category), None, None


def all_reduce_sum_autograd(x: torch.Tensor, group, *, category: str) -> torch.Tensor:
    return _AllReduceSum.apply(x, group, category)
