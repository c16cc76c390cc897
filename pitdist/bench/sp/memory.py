"""`pitdist bench sp`, rank side: what a step costs in memory.

SavedTensorCounter counts the bytes autograd saves for backward (a saved_tensors_hooks pack hook);
``rss_mark`` / ``rss_delta`` bracket a step's peak resident-set growth of the whole process.
"""

from __future__ import annotations

import contextlib
from pathlib import Path


class SavedTensorCounter:
    """Pack hook that counts what autograd saves for backward, without changing it.

    Distinct storages (by data pointer) count once with their full nbytes; parameter storages are kept
    apart. With ``cap_bytes`` it raises a flag once the distinct activation bytes exceed the cap.
    """

    def __init__(self, params, cap_bytes: int | None = None):
        self.param_ptrs = {p.untyped_storage().data_ptr() for p in params}
        self.cap = cap_bytes
        self.storages: dict[int, int] = {}
        self.param_storages: dict[int, int] = {}
        self.naive = 0
        self.saves = 0
        self.distinct = 0
        self.over = False

    def pack(self, t):
        self.saves += 1
        storage = t.untyped_storage()
        ptr, nbytes = storage.data_ptr(), storage.nbytes()
        if ptr in self.param_ptrs:
            self.param_storages[ptr] = nbytes
        else:
            self.naive += t.numel() * t.element_size()
            if nbytes and ptr not in self.storages:
                self.storages[ptr] = nbytes
                self.distinct += nbytes
                if self.cap is not None and self.distinct > self.cap:
                    self.over = True
        # A detached alias (same storage, no copy): returning ``t`` itself would make an output saved by
        # its own grad_fn a reference cycle through the autograd graph, which gc cannot break when no
        # backward follows (a forward-only probe would leak its whole graph).
        return t.detach()

    @staticmethod
    def unpack(t):
        return t

    def summary(self) -> dict:
        return {
            "saved_bytes": self.distinct,
            "naive_bytes": self.naive,
            "param_bytes_saved": sum(self.param_storages.values()),
            "saved_tensors": self.saves,
            "distinct_storages": len(self.storages),
        }


def _status_bytes(key: str) -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def rss_mark() -> dict:
    """Start a peak-RSS window: reset Linux's VmHWM to the current RSS if allowed, else note ru_maxrss."""
    import resource

    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        method = "VmHWM"
    except OSError:
        method = "ru_maxrss"
    return {
        "method": method,
        "rss0": _status_bytes("VmRSS"),
        "maxrss0": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
    }


def rss_delta(mark: dict) -> dict:
    import resource

    if mark["method"] == "VmHWM":
        peak = _status_bytes("VmHWM")
        delta = None if peak is None or mark["rss0"] is None else peak - mark["rss0"]
    else:  # growth of the lifetime peak: 0 when this step stayed under an earlier peak
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        delta = peak - mark["maxrss0"]
    return {"peak_rss_delta_bytes": delta, "peak_rss_bytes": peak, "rss_method": mark["method"]}


def counting(counter: SavedTensorCounter | None):
    """A context that has ``counter`` see every tensor autograd saves inside it (a no-op for None)."""
    import torch

    if counter is None:
        return contextlib.nullcontext()
    return torch.autograd.graph.saved_tensors_hooks(counter.pack, counter.unpack)
