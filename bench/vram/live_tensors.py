"""An allocation tracker for CPU runs: every tensor an ATen op returns is counted by its storage from the op that
made it until that storage is freed (views of one storage count once), with the largest total and what made up
that total. On the GPU the caching allocator's statistics say the same; here it checks the estimator's tensor
arithmetic where no GPU is at hand (``dora_transient.py``, ``layer_backward_probe.py``)."""

from __future__ import annotations

import weakref
from collections import Counter

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten


class LiveTensors(TorchDispatchMode):
    """Inside ``with LiveTensors(ignore) as live:``, ``live.peak`` is the largest sum of live storages made by ops
    run inside the block (storages at the addresses in ``ignore``, such as parameters and inputs, never count) and
    ``live.at_peak`` counts those storages' bytes by (op, shape, dtype)."""

    def __init__(self, ignore: set[int] = frozenset()):
        super().__init__()
        self.ignore = set(ignore)
        self.live: dict[int, tuple[int, tuple]] = {}  # storage address -> (bytes, (op, shape, dtype))
        self.current = self.peak = 0
        self.at_peak: Counter = Counter()

    def _freed(self, address: int) -> None:
        self.current -= self.live.pop(address, (0, None))[0]

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in tree_flatten(out)[0]:
            if not isinstance(t, torch.Tensor):
                continue
            storage = t.untyped_storage()
            address = storage.data_ptr()
            if address in self.live or address in self.ignore or storage.nbytes() == 0:
                continue
            name = str(func).removeprefix("aten.").removesuffix(".default")
            self.live[address] = (storage.nbytes(), (name, tuple(t.shape), str(t.dtype).removeprefix("torch.")))
            self.current += storage.nbytes()
            weakref.finalize(storage, self._freed, address)  # the storage's lifetime, not one view's
        if self.current > self.peak:
            self.peak = self.current
            self.at_peak = Counter()
            for size, what in self.live.values():
                self.at_peak[what] += size
        return out


def addresses(*tensors: torch.Tensor) -> set[int]:
    """The storage addresses of ``tensors`` (to leave out of the count)."""
    return {t.untyped_storage().data_ptr() for t in tensors}
