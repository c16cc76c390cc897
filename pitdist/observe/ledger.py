"""The communication ledger: bytes and seconds of every collective this rank issues, by cause.

It sits on DeepSpeed's communication backend object (``deepspeed.comm.comm.cdb``), which every
``deepspeed.comm`` call goes through whatever module made it (pitdist's comm module, the Ulysses layer,
the engine's gradient reduction, ZeRO), so nothing escapes by having imported a function early.

Each record says what the collective was HANDED (the bytes of the tensor given to it, what DeepSpeed's
comms logger calls the message size) and what LEAVES this rank under a stated algorithm:

    all_to_all_single  n bytes over W ranks   sent n*(W-1)/W    (1/W of the buffer stays local)
    all_reduce         n bytes                sent 2*n*(W-1)/W  (ring: reduce-scatter + all-gather)
    all_gather         shard of s bytes       sent s*(W-1)      (ring)
    reduce_scatter     n bytes                sent n*(W-1)/W    (ring)
    broadcast, reduce  n bytes                sent n*(W-1)/W    (pipelined chain, averaged over ranks)

Point-to-point calls (ring attention's isend/irecv) are recorded as issued; the time their caller then
waits for them is added to the same record by ``record_wait``.

The cause (category) is set by whoever knows it: pitdist tags its own calls (pooling, metrics, eval,
pe_grad_reduce, attention_ring); calls DeepSpeed makes are classified by operation and training phase (see
``_classify``). The trainer marks phases (forward / backward / optimizer) and steps; activation
checkpointing marks the recompute inside backward (``recomputing``); block hooks mark the layer.
The replicated learned PE table's gradient travels inside DeepSpeed's flat gradient buckets;
``summary`` attributes to it the share of gradient bytes equal to its share of gradient elements
(every gradient element is reduced exactly once per step, so the split is exact).

Time. Bytes are exact at call time on every device; seconds come from a clock (``clock_for``):
  host    (CPU)  ``time.perf_counter`` around the call: a gloo collective blocks the host until done.
  events  (CUDA, the default) a CUDA event recorded on the current stream before the call and one
          after it. NCCL runs the collective on its own stream, which waits for the work queued before
          the first event, and a blocking call makes the current stream wait for it before the second:
          their interval is the collective as the compute stream sees it, including waiting for the
          slowest rank. The host never waits: events are read when they have completed (``flush`` at
          the end of every step takes those done; ``rows`` waits for the rest), so a step's seconds may
          arrive a step late in live exporters, never in the run's records.
  sync    (CUDA, ``metrics.ledger_sync``) ``torch.cuda.synchronize()`` before and after every call,
          then host time: exact per-call wall time for debugging, but it serialises every collective
          with compute and so removes the overlap (ring hops, DeepSpeed's overlap_comm) it measures.
For point-to-point exchanges posted earlier (ring attention), ``waited`` times the wait itself: the
exposed part of the transfer that computation did not hide.
"""

from __future__ import annotations

import contextlib
import time
from collections import defaultdict
from collections.abc import Iterator
from typing import Any

import torch

from pitdist.observe.categories import LAYER_CATEGORIES, Category, Phase, Totals

# DeepSpeed backend (deepspeed/comm/torch.py) methods the ledger wraps: their parameters in order
# (its decorators hide the signatures from inspect) and which one holds what the call is handed.
_BACKEND_OPS: dict[str, tuple[tuple[str, ...], str | None]] = {
    "all_reduce": (("tensor", "op", "group", "async_op"), "tensor"),
    "inference_all_reduce": (("tensor", "op", "group"), "tensor"),
    "all_reduce_coalesced": (("tensors", "op", "group", "async_op"), "tensors"),
    "reduce": (("tensor", "dst", "op", "group", "async_op"), "tensor"),
    "reduce_scatter": (("output", "input_list", "op", "group", "async_op"), "input_list"),
    "reduce_scatter_tensor": (("output_tensor", "input_tensor", "op", "group", "async_op"), "input_tensor"),
    "broadcast": (("tensor", "src", "group", "async_op"), "tensor"),
    "all_gather": (("tensor_list", "tensor", "group", "async_op"), "tensor"),
    "all_gather_into_tensor": (("output_tensor", "input_tensor", "group", "async_op"), "input_tensor"),
    "all_gather_base": (("output_tensor", "input_tensor", "group", "async_op"), "input_tensor"),
    "all_gather_coalesced": (("output_tensors", "input_tensors", "group", "async_op"), "input_tensors"),
    "all_to_all_single": (("output", "input", "output_split_sizes", "input_split_sizes", "group", "async_op"), "input"),
    "all_to_all": (("output_tensor_list", "input_tensor_list", "group", "async_op"), "input_tensor_list"),
    "send": (("tensor", "dst", "group", "tag"), "tensor"),
    "recv": (("tensor", "src", "group", "tag"), "tensor"),
    "isend": (("tensor", "dst", "group", "tag"), "tensor"),
    "irecv": (("tensor", "src", "group", "tag"), "tensor"),
    "gather": (("tensor", "gather_list", "dst", "group", "async_op"), "tensor"),
    "scatter": (("tensor", "scatter_list", "src", "group", "async_op"), "scatter_list"),
    "barrier": (("group", "async_op", "device_ids"), None),
}


def tensor_bytes(obj: Any) -> int:
    """Bytes of a tensor, or of all tensors in a (nested) list."""
    if isinstance(obj, torch.Tensor):
        return obj.numel() * obj.element_size()
    if isinstance(obj, (list, tuple)):
        return sum(tensor_bytes(o) for o in obj)
    return 0


def sent_bytes(op: str, handed: int, world: int) -> float:
    """Bytes that leave one rank for a collective handed ``handed`` bytes over ``world`` ranks."""
    if world <= 1:
        return 0.0
    if op in ("all_reduce", "inference_all_reduce", "all_reduce_coalesced"):
        return 2.0 * handed * (world - 1) / world
    if op in ("all_gather", "all_gather_into_tensor", "all_gather_base", "all_gather_coalesced"):
        return float(handed * (world - 1))
    if op in ("send", "isend"):
        return float(handed)
    if op in ("recv", "irecv", "barrier"):
        return 0.0
    # all_to_all(_single), reduce_scatter(_tensor), broadcast, reduce, gather, scatter
    return handed * (world - 1) / world


def _classify(op: str, phase: str, handed: int, group: str) -> Category:
    """The cause of a collective DeepSpeed issued on its own."""
    if group == "pe_dp" and phase in (Phase.BACKWARD, Phase.OPTIMIZER) and handed > 16:
        # The sharded position table's own group (pitdist.distributed.sharded_pe).
        return Category.PE_PARAM_GATHER if op.startswith("all_gather") else Category.PE_GRAD_REDUCE
    if op in ("all_to_all_single", "all_to_all"):
        return Category.ATTENTION_A2A  # only the Ulysses layer issues all-to-alls
    if phase == Phase.INIT:
        return Category.INIT_BROADCAST if op == "broadcast" else Category.INIT
    if phase == Phase.BACKWARD and op in (
        "all_reduce",
        "all_reduce_coalesced",
        "reduce",
        "reduce_scatter_tensor",
        "reduce_scatter",
    ):
        return Category.GRAD_REDUCE
    if phase == Phase.OPTIMIZER:
        if op.startswith("all_gather"):
            return Category.ZERO_PARAM_GATHER  # ZeRO 1/2: every rank gathers the updated partitions
        if op == "all_reduce" and handed <= 16:
            return Category.GRAD_NORM
        return Category.OPTIMIZER
    return Category.OTHER


class HostClock:
    """Host wall time: what a blocking CPU collective takes."""

    name = "host"

    def mark(self) -> float:
        return time.perf_counter()

    def ready(self, mark: float) -> bool:
        return True

    def seconds(self, start: float, end: float) -> float:
        return end - start


class SyncClock(HostClock):
    """Host wall time between device-wide synchronisations (``metrics.ledger_sync``)."""

    name = "sync"

    def mark(self) -> float:
        torch.cuda.synchronize()
        return time.perf_counter()


class EventClock:
    """CUDA events on the current stream: marks cost the host nothing and are read once complete."""

    name = "events"

    def __init__(self, event_type=None):
        # ``event_type``: torch.cuda.Event unless a stand-in is given (the tests, on CPU).
        self._event = event_type or torch.cuda.Event

    def mark(self):
        event = self._event(enable_timing=True)
        event.record()
        return event

    def ready(self, mark) -> bool:
        return mark.query()

    def seconds(self, start, end) -> float:
        end.synchronize()  # returns at once for an event that query() found complete
        return start.elapsed_time(end) / 1000.0  # elapsed_time is in milliseconds


def clock_for(device_type: str, sync: bool = False) -> HostClock | EventClock:
    """The ledger's clock for collectives on ``device_type`` (module docstring: Time)."""
    if device_type != "cuda":
        return HostClock()
    return SyncClock() if sync else EventClock()


class CommLedger:
    """Per-rank record of collectives, aggregated by (step, phase, category, op, group, layer).

    ``clock`` (default: ``clock_for`` the device this process uses, without sync) times the calls."""

    def __init__(self, rank: int = 0, clock: HostClock | EventClock | None = None):
        self.rank = rank
        self.step: int | None = None
        self.phase: str = Phase.INIT
        self.layer: int | None = None
        self._category: list[str] = []
        self._groups: dict[int, tuple[str, int]] = {}
        self.records: dict[tuple, Totals] = defaultdict(Totals)
        # Running totals by (phase, category, op) over all steps: what live exporters read each step
        # (pitdist.observe.prometheus) without rescanning the per-step records.
        self.cumulative: dict[tuple[str, str, str], Totals] = defaultdict(Totals)
        self._backend = None
        self.clock = clock or clock_for("cuda" if torch.cuda.is_available() else "cpu")
        # (record key, start mark, end mark) of calls whose seconds the clock cannot give yet.
        self._pending: list[tuple[tuple, object, object]] = []

    # --- context the callers provide ------------------------------------------------------------
    def name_group(self, group, name: str) -> None:
        from deepspeed import comm as dist

        self._groups[id(group)] = (name, dist.get_world_size(group=group))

    def name_groups(self, mesh) -> None:
        """Name every group of a pitdist.distributed.mesh.Mesh as the mesh does."""
        for name, group in mesh.named_groups():
            self.name_group(group, name)

    @contextlib.contextmanager
    def category(self, name: str) -> Iterator[None]:
        self._category.append(name)
        try:
            yield
        finally:
            self._category.pop()

    @contextlib.contextmanager
    def in_phase(self, phase: str) -> Iterator[None]:
        previous, self.phase = self.phase, phase
        try:
            yield
        finally:
            self.phase = previous
            self.layer = None

    def watch_layers(self, blocks) -> list:
        """Hooks that mark which block a collective belongs to, forward and backward."""
        handles = []
        for i, block in enumerate(blocks):
            handles.append(block.register_forward_pre_hook(lambda m, a, i=i: setattr(self, "layer", i)))
            handles.append(block.register_full_backward_pre_hook(lambda m, g, i=i: setattr(self, "layer", i)))
        return handles

    # --- recording -----------------------------------------------------------------------------
    def _group_info(self, group) -> tuple[str, int]:
        if group is None or group is torch.distributed.GroupMember.WORLD:
            from deepspeed import comm as dist

            return "world", dist.get_world_size()
        info = self._groups.get(id(group))
        if info is None:
            from deepspeed import comm as dist

            info = (f"group{dist.get_world_size(group=group)}", dist.get_world_size(group=group))
        return info

    def record(self, op: str, handed: int, group, seconds: float, count: int = 1) -> tuple:
        """One call (``count`` 0: only time, e.g. waiting for an isend/irecv issued earlier); returns
        its record's key, to which ``add_seconds`` can add time known only later."""
        group_name, world = self._group_info(group)
        # Plain strings in the records: rows are sorted and stored as JSON.
        category = str(self._category[-1] if self._category else _classify(op, self.phase, handed, group_name))
        phase = str(self.phase)
        key = (self.step, phase, category, op, group_name, self.layer if category in LAYER_CATEGORIES else None)
        totals = Totals(count, handed, sent_bytes(op, handed, world), seconds)
        self.records[key].add(totals)
        self.cumulative[(phase, category, op)].add(totals)
        return key

    def add_seconds(self, key: tuple, seconds: float) -> None:
        self.records[key].seconds += seconds
        _, phase, category, op, _, _ = key
        self.cumulative[(phase, category, op)].seconds += seconds

    def timed(self, key: tuple, start, end) -> None:
        """Add the clock's seconds from ``start`` to ``end`` to record ``key``: now if they are known,
        else when ``flush`` finds them complete."""
        if not self._settled((key, start, end), wait=False):
            self._pending.append((key, start, end))

    def flush(self, wait: bool = False) -> None:
        """Resolve the pending marks that have completed (all of them, waiting, with ``wait``)."""
        self._pending = [mark for mark in self._pending if not self._settled(mark, wait)]

    def _settled(self, mark: tuple, wait: bool) -> bool:
        key, start, end = mark
        if not (wait or self.clock.ready(end)):
            return False
        self.add_seconds(key, self.clock.seconds(start, end))
        return True

    @contextlib.contextmanager
    def waiting(self, op: str, group) -> Iterator[None]:
        """Time the wait for ``op`` calls issued earlier, counting no call."""
        start = self.clock.mark()
        yield
        self.timed(self.record(op, 0, group, 0.0, count=0), start, self.clock.mark())

    def _wrap(self, op: str, method):
        params, handed_arg = _BACKEND_OPS[op]

        def recorded(*args, **kwargs):
            bound = {**dict(zip(params, args)), **kwargs}
            start = self.clock.mark()
            out = method(*args, **kwargs)
            end = self.clock.mark()
            handed = tensor_bytes(bound.get(handed_arg)) if handed_arg else 0
            self.timed(self.record(op, handed, bound.get("group"), 0.0), start, end)
            return out

        recorded.__wrapped__ = method
        return recorded

    def install(self) -> CommLedger:
        """Start recording every deepspeed.comm call of this process."""
        import deepspeed.comm.comm as ds_comm

        global _installed
        if _installed is not None:
            raise RuntimeError("a communication ledger is already installed in this process")

        backend = ds_comm.cdb
        if backend is None:
            raise RuntimeError("the ledger needs an initialised deepspeed.comm (call init_process_group first)")
        for op in _BACKEND_OPS:
            if hasattr(backend, op):
                setattr(backend, op, self._wrap(op, getattr(type(backend), op).__get__(backend)))
        self._backend = backend
        _installed = self
        return self

    def uninstall(self) -> None:
        global _installed
        if self._backend is not None:
            for op in _BACKEND_OPS:
                self._backend.__dict__.pop(op, None)
            self._backend = None
        if _installed is self:
            _installed = None

    # --- reading -------------------------------------------------------------------------------
    def rows(self) -> list[dict]:
        self.flush(wait=True)
        out = []
        for (step, phase, category, op, group, layer), t in sorted(self.records.items(), key=lambda kv: str(kv[0])):
            out.append(
                {
                    "rank": self.rank,
                    "step": step,
                    "phase": phase,
                    "category": category,
                    "op": op,
                    "group": group,
                    "layer": layer,
                    "count": t.count,
                    "handed_bytes": t.handed,
                    "sent_bytes": t.sent,
                    "seconds": t.seconds,
                }
            )
        return out


# The ledger recording this process, if any: the backend it patches is process-wide too.
_installed: CommLedger | None = None


@contextlib.contextmanager
def tag(category: str) -> Iterator[None]:
    """Attribute the collectives issued inside to ``category`` (no-op when nothing records)."""
    if _installed is None:
        yield
    else:
        with _installed.category(category):
            yield


@contextlib.contextmanager
def recomputing() -> Iterator[None]:
    """Attribute the collectives issued inside to the recompute phase, keeping the current layer: activation
    checkpointing re-running part of a forward inside backward (no-op when nothing records)."""
    ledger = _installed
    if ledger is None:
        yield
        return
    previous, ledger.phase = ledger.phase, Phase.RECOMPUTE
    try:
        yield
    finally:
        ledger.phase = previous


@contextlib.contextmanager
def waited(op: str, group) -> Iterator[None]:
    """Add the time spent inside waiting for asynchronous ``op`` calls (isend/irecv, recorded when they
    were issued, under the same category) to their record, without counting a call (no-op when
    nothing records)."""
    if _installed is None:
        yield
    else:
        with _installed.waiting(op, group):
            yield
