"""Two counters independent of the ledger, to check it against.

* DeepSpeed's comms logger records every ``deepspeed.comm`` call with its message size (the bytes
  the collective is handed). It is switched on through the engine config (``comms_logger``).
* ``C10dCounter``, a TorchDispatchMode, records every op that reaches the c10d dispatcher, whoever
  called it (deepspeed.comm or torch.distributed directly), with the bytes of its input tensors.
Both report {op: (count, handed bytes)}, with op names mapped onto DeepSpeed's backend names; the
non-blocking isend/irecv (ring attention) count as send/recv, the one c10d op each reaches.
"""

from __future__ import annotations

from collections import defaultdict

from torch.utils._python_dispatch import TorchDispatchMode

from pitdist.observe.categories import SAME_AT_C10D
from pitdist.observe.ledger import tensor_bytes

# c10d op -> (DeepSpeed backend name, index of the argument holding the input)
_C10D_OPS = {
    "allreduce_": ("all_reduce", 0),
    "allreduce_coalesced_": ("all_reduce_coalesced", 0),
    "reduce_": ("reduce", 0),
    "broadcast_": ("broadcast", 0),
    "_allgather_base_": ("all_gather_into_tensor", 1),
    "allgather_": ("all_gather", 1),
    "allgather_into_tensor_coalesced_": ("all_gather_coalesced", 1),
    "_reduce_scatter_base_": ("reduce_scatter_tensor", 1),
    "reduce_scatter_": ("reduce_scatter", 1),
    "alltoall_base_": ("all_to_all_single", 1),
    "alltoall_": ("all_to_all", 1),
    "send": ("send", 0),
    "recv_": ("recv", 0),
    "gather_": ("gather", 1),
    "scatter_": ("scatter", 1),
    "barrier": ("barrier", None),
}


class C10dCounter(TorchDispatchMode):
    """Counts c10d collectives at the dispatcher: {op: [count, handed bytes]}."""

    def __init__(self):
        super().__init__()
        self.totals: dict[str, list[int]] = defaultdict(lambda: [0, 0])

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func.namespace in ("c10d", "_c10d_functional"):
            name = func.__name__.split(".")[0]
            op, index = _C10D_OPS.get(name, (name, None))
            entry = self.totals[op]
            entry[0] += 1
            entry[1] += tensor_bytes(args[index]) if index is not None and index < len(args) else 0
        return func(*args, **(kwargs or {}))


def reset_comms_logger() -> None:
    from deepspeed.comm import comms_logger

    comms_logger.comms_dict.clear()


def comms_logger_totals() -> dict[str, list[int]]:
    """What DeepSpeed's comms logger recorded in this process: {op: [count, handed bytes]}."""
    from deepspeed.comm import comms_logger

    out: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    for name, sizes in comms_logger.comms_dict.items():
        op = name.split(" | ")[0]
        op = SAME_AT_C10D.get(op, op)
        for msg_size, (count, *_rest) in sizes.items():
            out[op][0] += count
            out[op][1] += count * msg_size
    return dict(out)
