"""Activation checkpoints offloaded to host memory (``gradient_checkpointing: offload``).

Under gradient checkpointing every decoder layer keeps one tensor on the GPU until the backward reaches it: its
input hidden states (tokens × hidden size), from which the layer is recomputed. Over all layers that is
``layers × tokens × hidden × bytes``, the term that grows with the context and stays when everything else is
recomputed. This module moves exactly those tensors to host memory and brings each back just before its layer is
recomputed; nothing the recompute produces is moved.

How the checkpoint inputs are found. transformers runs each checkpointed decoder layer through the model's
checkpoint function (``GradientCheckpointingLayer``: ``self._gradient_checkpointing_func(forward, *args)``), which
is ``torch.utils.checkpoint.checkpoint``. Both of its variants save the layer's tensor arguments through autograd's
saved-tensor machinery before anything else happens — the non-reentrant one as saved tensors of the checkpoint
frame (``_CheckpointFrame.save_inputs``), the reentrant one through ``save_for_backward`` of ``CheckpointFunction``
— and everything the layer saves inside the checkpoint goes through checkpoint's own saved-tensor hooks, which sit
on top of any outer ones. ``OffloadedCheckpoint`` wraps the model's checkpoint function and holds this module's
``torch.autograd.graph.saved_tensors_hooks`` around the call, so the pack hook sees the layer's inputs and nothing
else, whichever variant the trainer picked (the runtime uses non-reentrant; TRL forces reentrant for PEFT under
ZeRO-3). Autograd keeps the saved tensor's identity (its ``grad_fn`` or ``requires_grad``) and restores it on the
tensor the unpack hook returns, so the recompute and the gradient flow are what they were.

The copies, on a CUDA device:

* **forward** (pack): the input is final when the layer starts, so its device-to-host copy is queued on a side
  stream right away (after an event on the compute stream) into a reused pinned host buffer and runs while the
  layer computes; ``record_stream`` keeps the caching allocator from handing the input's memory to anything else
  before the copy has read it. Nothing waits on the host.
* **backward** (unpack): autograd asks for a layer's input when the backward reaches that layer. If it was
  prefetched, the compute stream waits on the prefetch's event; otherwise (the first layer the backward meets) it
  is copied now. Then the next input the backward will need — the most recently saved one still held — is
  prefetched on the side stream, overlapping this layer's recompute and backward. At most two inputs are on the
  GPU at once: the one being recomputed and the one prefetched.
* The host buffer of an input goes back to the pool when autograd drops the saved input (once its layer's
  backward is done, or with a graph freed without a backward; a second backward over a retained graph fetches
  it again). Every copy runs on the one side stream, so the next device-to-host copy into that buffer is ordered
  after the last copy out of it, and nothing on the host waits.

Pinned buffers are reused for the whole run: the pool keeps one buffer per input in flight (one per decoder layer
for one micro-batch) and grows a buffer only when a larger input arrives, to the largest size seen, so after the
first micro-batch of the longest shape no step allocates. Buffers are page-locked with ``cudaHostRegister`` on
plain host memory, exactly their size (torch's pinned allocator would round each one up to a power of two), and
unregistered when the pool closes or a buffer grows. The host memory a process needs is therefore
``layers × micro-batch tokens × hidden × bytes`` at the longest micro-batch; ``ftplan check`` reports it per node.

On the CPU there is nothing to move: a CPU run trains as with ``gradient_checkpointing: true`` (the compiler
resolves the mode, ``ftplan.schemas.runtime_args.checkpoint_mode``). ``CheckpointOffload(cpu_tensors=True)``
still runs the whole mechanism on CPU tensors — the same pool, stack and prefetch, with synchronous copies into
plain host buffers — which is how the CPU tests hold it to the same losses and gradients.
"""

from __future__ import annotations

import mmap
import threading
import types
import weakref
from collections import deque
from dataclasses import dataclass
from typing import Any, Callable

import torch

from ftplan.schemas.runtime_args import OFFLOAD_PREFETCH

__all__ = ["CheckpointOffload", "HostBuffers", "OffloadedCheckpoint", "OffloadStats", "offload_checkpoints",
           "offloading_layers"]

PAGE = mmap.PAGESIZE


class _Slot:
    """One reusable host buffer: ``view`` is ``capacity`` bytes, page-aligned and page-locked when pinned."""

    __slots__ = ("owner", "view", "capacity", "pinned_ptr", "last_use", "__weakref__")

    def __init__(self, owner: torch.Tensor, view: torch.Tensor, capacity: int, pinned_ptr: int | None):
        self.owner = owner  # the allocation the view lies in (kept alive with it)
        self.view = view
        self.capacity = capacity
        self.pinned_ptr = pinned_ptr  # registered with cudaHostRegister (None: plain memory)
        self.last_use: Any = None  # CUDA event after the last copy that reads or writes the buffer


class HostBuffers:
    """A pool of reused host buffers, page-locked for asynchronous CUDA copies (``pinned``) or plain.

    ``acquire(n)`` returns a free buffer of at least ``n`` bytes; when none is large enough it grows one (the
    smallest free buffer is replaced) or adds one, sized to the largest request seen so far, so inputs of one
    shape never allocate again. ``release`` hands a buffer back. Not thread-safe on its own: ``CheckpointOffload``
    holds its lock around every call."""

    def __init__(self, *, pinned: bool):
        self.pinned = pinned
        self._free: list[_Slot] = []
        self._all: weakref.WeakSet[_Slot] = weakref.WeakSet()
        self._largest = 0
        self.allocations = 0
        """Buffers allocated (a grown buffer counts again)."""
        self.capacity_bytes = 0
        """Bytes of every buffer held now, free or in use."""
        self.peak_capacity_bytes = 0
        """The most bytes held at once."""

    def acquire(self, nbytes: int) -> _Slot:
        """A buffer of at least ``nbytes`` bytes, for the caller alone until ``release``."""
        self._largest = max(self._largest, nbytes)
        fitting = [s for s in self._free if s.capacity >= nbytes]
        if fitting:
            slot = min(fitting, key=lambda s: s.capacity)
            self._free.remove(slot)
            return slot
        if self._free:  # every free buffer is too small: grow the smallest instead of keeping it beside a new one
            self._drop(min(self._free, key=lambda s: s.capacity))
        return self._allocate(self._largest)

    def release(self, slot: _Slot) -> None:
        """Hand a buffer back for reuse."""
        self._free.append(slot)

    def close(self) -> None:
        """Free every buffer not in use (the pool stays usable; buffers in use are freed when released and dropped)."""
        for slot in list(self._free):
            self._drop(slot)

    def _allocate(self, nbytes: int) -> _Slot:
        capacity = -(-nbytes // PAGE) * PAGE
        if self.pinned:
            # exactly `capacity` bytes page-locked: a page-aligned range inside a plain allocation, so no page of
            # it is shared with another allocation
            owner = torch.empty(capacity + PAGE, dtype=torch.uint8, device="cpu")
            start = (-owner.data_ptr()) % PAGE
            view = owner[start:start + capacity]
            code = int(torch.cuda.cudart().cudaHostRegister(view.data_ptr(), capacity, 0))
            if code != 0:
                from .preflight import StageError

                raise StageError(
                    f"gradient_checkpointing: offload could not page-lock {capacity / 2**20:,.1f} MiB of host memory "
                    f"for a layer's checkpoint (cudaHostRegister returned CUDA error {code}); the node is short of "
                    "memory it can lock: give the job more host memory, or use `gradient_checkpointing: true`")
            slot = _Slot(owner, view, capacity, view.data_ptr())
            weakref.finalize(slot, _unregister, owner, view.data_ptr())
        else:
            owner = torch.empty(capacity, dtype=torch.uint8, device="cpu")
            slot = _Slot(owner, owner, capacity, None)
        self._all.add(slot)
        self.allocations += 1
        self.capacity_bytes += capacity
        self.peak_capacity_bytes = max(self.peak_capacity_bytes, self.capacity_bytes)
        return slot

    def _drop(self, slot: _Slot) -> None:
        self._free.remove(slot)
        if slot.last_use is not None:
            slot.last_use.synchronize()  # a queued copy may still read or write it
        self.capacity_bytes -= slot.capacity
        self._all.discard(slot)
        # the weakref.finalize of a pinned slot unregisters it when the last reference goes (here, normally)


def _unregister(owner: torch.Tensor, ptr: int) -> None:
    """Unlock a pinned buffer's pages before its memory is freed (``owner`` is kept alive until this runs)."""
    try:
        torch.cuda.cudart().cudaHostUnregister(ptr)
    except Exception:  # pragma: no cover - interpreter shutdown: the process frees the memory anyway
        pass


class _Saved:
    """What the pack hook returns for an offloaded tensor: where its bytes are, and the device copy once fetched."""

    __slots__ = ("owner", "slot", "shape", "dtype", "device", "nbytes", "on_device", "ready", "unpacked",
                 "__weakref__")

    def __init__(self, owner: "CheckpointOffload", slot: _Slot, t: torch.Tensor):
        self.owner = owner
        self.slot: _Slot | None = slot
        self.shape, self.dtype, self.device = t.shape, t.dtype, t.device
        self.nbytes = t.numel() * t.element_size()
        self.on_device: torch.Tensor | None = None  # fetched back (by unpack or a prefetch)
        self.ready: Any = None  # CUDA event: the fetch has landed
        self.unpacked = False  # handed back to autograd at least once

    def host(self) -> torch.Tensor:
        """The host copy, as a tensor of the original shape and dtype."""
        assert self.slot is not None
        return self.slot.view[:self.nbytes].view(self.dtype).view(self.shape)

    def __del__(self) -> None:
        # autograd dropped the saved tensor (its layer's backward is done, or its graph was freed without one):
        # hand the buffer back; the next copy into it runs after this one's on the same side stream
        if self.slot is not None:
            self.owner._returned.append(self.slot)
            self.slot = None


@dataclass
class OffloadStats:
    """What the offload moved: counted over the run, and the host buffers it holds."""

    tensors: int = 0
    """Checkpoint inputs moved to host memory."""
    bytes: int = 0
    """Their bytes, summed over every micro-batch."""
    fetched: int = 0
    """Inputs brought back for a recompute."""
    prefetched: int = 0
    """Of those, the ones already on their way when the backward asked (copied while the layer before computed)."""
    kept: int = 0
    """Saved tensors left where they were (not floating point, empty, parameters, or on another device)."""
    largest_step_bytes: int = 0
    """The most bytes held in host memory at once (one micro-batch's checkpoints)."""

    def as_dict(self, buffers: HostBuffers) -> dict[str, Any]:
        """For metrics.json: these counts and the pool's buffers."""
        return {"tensors": self.tensors, "bytes": self.bytes, "fetched": self.fetched,
                "prefetched": self.prefetched, "kept_on_device": self.kept,
                "largest_step_bytes": self.largest_step_bytes, "host_buffers": len(buffers._all),
                "host_buffer_bytes": buffers.capacity_bytes, "host_buffer_peak_bytes": buffers.peak_capacity_bytes,
                "host_buffer_allocations": buffers.allocations, "pinned": buffers.pinned}


class CheckpointOffload:
    """Moves the tensors a checkpoint function saves (each checkpointed layer's inputs) to reused host buffers
    and brings them back, prefetched, for the recompute.

    ``cpu_tensors``: move tensors already on the CPU too (into plain host buffers, synchronously), which runs the
    whole mechanism in a CPU process; CUDA tensors are always moved, through pinned buffers on a side stream.
    ``prefetch``: how many of the inputs the backward needs next are fetched while the current layer recomputes
    (``OFFLOAD_PREFETCH``, which the estimator counts; 0 fetches each one only when asked)."""

    def __init__(self, *, cpu_tensors: bool = False, prefetch: int = OFFLOAD_PREFETCH):
        self.cpu_tensors = cpu_tensors
        self.prefetch = prefetch
        self.stats = OffloadStats()
        self._pinned = HostBuffers(pinned=True)
        self._plain = HostBuffers(pinned=False)
        self._held: list[weakref.ref[_Saved]] = []  # packed and not yet unpacked, in pack order
        self._held_bytes = 0
        self._streams: dict[torch.device, Any] = {}
        self._lock = threading.RLock()  # pack runs on the forward's thread, unpack on autograd's device threads
        self._returned: deque[_Slot] = deque()  # buffers handed back by dropped _Saved objects

    # --- the saved-tensor hooks ----------------------------------------------------------------------------------

    def hooks(self) -> torch.autograd.graph.saved_tensors_hooks:
        """The saved-tensor hooks that offload what is saved while they are active (``OffloadedCheckpoint`` holds
        them around the checkpoint call only)."""
        return torch.autograd.graph.saved_tensors_hooks(self._pack, self._unpack)

    def _moves(self, t: torch.Tensor) -> bool:
        if isinstance(t, torch.nn.Parameter) or not t.is_floating_point() or t.numel() == 0:
            return False
        return t.device.type == "cuda" or (t.device.type == "cpu" and self.cpu_tensors)

    def _pack(self, t: torch.Tensor) -> Any:
        if not self._moves(t):
            with self._lock:
                self.stats.kept += 1
            return t
        with self._lock:
            self._drain()
            cuda = t.device.type == "cuda"
            saved = _Saved(self, (self._pinned if cuda else self._plain).acquire(t.numel() * t.element_size()), t)
            t = t.detach()
            if cuda:
                compute, side = torch.cuda.current_stream(t.device), self._side(t.device)
                side.wait_stream(compute)  # the input is written by the compute stream
                with torch.cuda.stream(side):
                    saved.host().copy_(t, non_blocking=True)
                    event = torch.cuda.Event()
                    event.record(side)
                t.record_stream(side)  # its memory is not reused before the copy has read it
                assert saved.slot is not None
                saved.slot.last_use = event
            else:
                saved.host().copy_(t)
            self._held.append(weakref.ref(saved))
            self._held_bytes += saved.nbytes
            self.stats.tensors += 1
            self.stats.bytes += saved.nbytes
            self.stats.largest_step_bytes = max(self.stats.largest_step_bytes, self._held_bytes)
        return saved

    def _unpack(self, packed: Any) -> torch.Tensor:
        if not isinstance(packed, _Saved):
            return packed
        with self._lock:
            self.stats.fetched += 1
            if packed.on_device is not None:
                self.stats.prefetched += 1
            else:
                self._fetch(packed)  # the first layer the backward meets, or a second backward (retain_graph)
            out, ready = packed.on_device, packed.ready
            packed.on_device, packed.ready = None, None
            if not packed.unpacked:
                packed.unpacked = True
                self._forget(packed)
                self._prefetch()
        assert out is not None
        if ready is not None:
            torch.cuda.current_stream(out.device).wait_event(ready)
        return out

    # --- bookkeeping -------------------------------------------------------------------------------------------

    def _fetch(self, saved: _Saved) -> None:
        """Queue the copy of ``saved`` back to its device (its host buffer stays with it until autograd drops it,
        so a second backward can fetch it again)."""
        slot = saved.slot
        assert slot is not None
        if saved.device.type == "cuda":
            compute, side = torch.cuda.current_stream(saved.device), self._side(saved.device)
            out = torch.empty(saved.shape, dtype=saved.dtype, device=saved.device)  # on the compute stream
            side.wait_stream(compute)  # out's memory may have been in use on the compute stream until now
            with torch.cuda.stream(side):
                out.copy_(saved.host(), non_blocking=True)
                event = torch.cuda.Event()
                event.record(side)
            out.record_stream(side)
            slot.last_use = event
            saved.on_device, saved.ready = out, event
        else:
            saved.on_device = saved.host().clone()

    def _buffers(self, slot: _Slot) -> HostBuffers:
        return self._pinned if slot.pinned_ptr is not None else self._plain

    def _forget(self, saved: _Saved) -> None:
        self._held = [r for r in self._held if (s := r()) is not None and s is not saved and not s.unpacked]
        self._held_bytes = sum(s.nbytes for r in self._held if (s := r()) is not None)

    def _prefetch(self) -> None:
        """Fetch the ``prefetch`` inputs the backward will ask for next: the most recently saved ones still held."""
        ahead = 0
        for ref in reversed(self._held):
            if ahead >= self.prefetch:
                return
            s = ref()
            if s is None or s.unpacked:
                continue
            if s.on_device is None:
                self._fetch(s)
            ahead += 1

    def _drain(self) -> None:
        """Take back the buffers of saved inputs whose graph was dropped."""
        while self._returned:
            slot = self._returned.popleft()
            self._buffers(slot).release(slot)
        self._held = [r for r in self._held if r() is not None]
        self._held_bytes = sum(s.nbytes for r in self._held if (s := r()) is not None)

    def _side(self, device: torch.device) -> Any:
        if device not in self._streams:
            self._streams[device] = torch.cuda.Stream(device=device)
        return self._streams[device]

    # --- reporting -------------------------------------------------------------------------------------------

    def held(self) -> list[torch.Tensor]:
        """The host copies of the inputs saved and not yet handed back, in the order they were saved (a copy on
        the host that is still being written is waited for)."""
        with self._lock:
            out = []
            for ref in self._held:
                s = ref()
                if s is None or s.unpacked or s.slot is None:
                    continue
                if s.slot.last_use is not None:
                    s.slot.last_use.synchronize()
                out.append(s.host())
            return out

    @property
    def buffers(self) -> HostBuffers:
        """The host buffers of the device being offloaded (pinned when any CUDA tensor was moved)."""
        return self._pinned if self._pinned.allocations or not self._plain.allocations else self._plain

    def report(self) -> dict[str, Any]:
        """What was moved and the host buffers held, for metrics.json."""
        with self._lock:
            return self.stats.as_dict(self.buffers)

    def close(self) -> None:
        """Wait for the copies in flight and free the host buffers (end of training)."""
        with self._lock:
            for stream in self._streams.values():
                stream.synchronize()
            self._drain()
            self._pinned.close()
            self._plain.close()

    def __deepcopy__(self, memo: dict[int, Any]) -> "CheckpointOffload":
        return self  # one per process: its buffers, streams and lock are not copied

    def wrap(self, checkpoint: Callable[..., Any]) -> "OffloadedCheckpoint":
        """``checkpoint`` (a checkpoint function: ``fn(function, *args, **kwargs)``) with its inputs offloaded."""
        return checkpoint if isinstance(checkpoint, OffloadedCheckpoint) else OffloadedCheckpoint(checkpoint, self)


class OffloadedCheckpoint:
    """A checkpoint function whose saved inputs go through ``offload``'s hooks: what transformers calls as a
    layer's ``_gradient_checkpointing_func``."""

    def __init__(self, checkpoint: Callable[..., Any], offload: CheckpointOffload):
        self.checkpoint = checkpoint
        self.offload = offload

    def __call__(self, function: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        with self.offload.hooks():
            return self.checkpoint(function, *args, **kwargs)

    def __deepcopy__(self, memo: dict[int, Any]) -> "OffloadedCheckpoint":
        return self  # a deep copy of the model (a frozen reference) offloads through the same buffers and streams


def _pretrained_models(model: torch.nn.Module) -> list[torch.nn.Module]:
    """The transformers models inside ``model`` (a PEFT model holds one), outermost first."""
    from transformers import PreTrainedModel

    return [m for m in model.modules() if isinstance(m, PreTrainedModel)]


def _offloading_set_gradient_checkpointing(self: Any, enable: bool = True, gradient_checkpointing_func: Any = None,
                                           **kwargs: Any) -> Any:
    """A transformers model's ``_set_gradient_checkpointing``, handing out its checkpoint function wrapped by the
    model's ``CheckpointOffload`` (bound to each model by ``offload_checkpoints``; a deep copy of the model is bound
    to the copy and offloads through the same one)."""
    ref = getattr(self, "_ftplan_offload", None)
    offload = ref() if ref is not None else None
    if enable and offload is not None:
        from torch.utils.checkpoint import checkpoint

        gradient_checkpointing_func = offload.wrap(gradient_checkpointing_func or checkpoint)
    if gradient_checkpointing_func is not None:
        kwargs["gradient_checkpointing_func"] = gradient_checkpointing_func
    return type(self)._set_gradient_checkpointing(self, enable=enable, **kwargs)


def offload_checkpoints(model: torch.nn.Module, offload: CheckpointOffload) -> CheckpointOffload:
    """Make ``model``'s gradient checkpointing offload its checkpoint inputs, now and whenever it is enabled again.

    transformers enables checkpointing by handing every checkpointed layer a checkpoint function through
    ``_set_gradient_checkpointing`` (the Trainer does so inside ``train()``, TRL again after switching it off for a
    reference pass). Each transformers model inside ``model`` gets that method bound to a version that hands out
    ``offload.wrap(function)`` (it holds ``offload`` by a weak reference); layers already checkpointing get theirs
    wrapped now. The model must be kept alive with ``offload``: the runtime holds both for the run."""
    for m in _pretrained_models(model):
        m._ftplan_offload = weakref.ref(offload)
        m._set_gradient_checkpointing = types.MethodType(_offloading_set_gradient_checkpointing, m)
    for layer in model.modules():
        func = getattr(layer, "_gradient_checkpointing_func", None)
        if func is not None and not isinstance(func, OffloadedCheckpoint):
            layer._gradient_checkpointing_func = offload.wrap(func)
    return offload


def offloading_layers(model: torch.nn.Module, offload: CheckpointOffload) -> tuple[int, int]:
    """(checkpointed layers whose checkpoint function offloads through ``offload``, checkpointed layers): the
    runtime requires them equal and non-zero once training has enabled checkpointing."""
    from transformers.modeling_layers import GradientCheckpointingLayer

    layers = [m for m in model.modules() if isinstance(m, GradientCheckpointingLayer) and m.gradient_checkpointing]
    ours = [m for m in layers if isinstance(getattr(m, "_gradient_checkpointing_func", None), OffloadedCheckpoint)
            and m._gradient_checkpointing_func.offload is offload]
    return len(ours), len(layers)
