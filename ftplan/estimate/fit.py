"""Computed suggestions for a stage that does not fit: single changes, each re-estimated, kept only if they fit.

Candidates, in order of preference (what changes least about the run comes first): gradient checkpointing on,
``kernels: ftplan``, sdpa instead of eager attention, a smaller micro-batch (grad_accum raised to keep the effective
batch), a precomputed DPO reference, an 8-bit optimizer, ZeRO-3 / CPU offload (more than one GPU), QLoRA instead
of LoRA, more GPUs.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from ..catalog.gpus import GpuSpec
from .resolved import Resolved
from .stage import estimate_resolved
from .types import Suggestion

MAX_GPUS_PER_NODE = 8
"""Largest node the "more GPUs" suggestion proposes."""


@dataclass(frozen=True)
class Candidate:
    """One single change: its text, the pipeline key it changes, and the setup it leads to."""

    change: str
    path: tuple[str | int, ...]
    """Key path relative to the stage (``("micro_batch",)``) or absolute when it starts with ``"hardware"``."""
    setup: Resolved
    kind: str = ""
    """What kind of change (several micro_batch cuts or GPU counts share one kind)."""


@dataclass(frozen=True)
class Fit:
    """A candidate that fits, with its peak."""

    suggestion: Suggestion
    path: tuple[str | int, ...]


def candidates(r: Resolved, gpus_per_node: int, nvls: bool = False) -> list[Candidate]:
    """Every single change worth re-estimating for this setup, most preferred first (``nvls``: NCCL would set up
    NVLink SHARP buffers on a node of more than two of these GPUs)."""
    out: list[Candidate] = []
    if not r.gc:
        out.append(Candidate("gradient_checkpointing false → true", ("gradient_checkpointing",), replace(r, gc=True),
                             "gc"))
    if r.kernels == "none":
        out.append(Candidate("kernels none → ftplan", ("kernels",), replace(r, kernels="ftplan"), "kernels"))
    if r.attention == "eager":
        out.append(Candidate("attention eager → sdpa", ("attention",), replace(r, attention="sdpa"), "attention"))
    mb = r.micro_batch
    for smaller in sorted((d for d in range(1, mb) if mb % d == 0), reverse=True):
        accum = r.grad_accum * (mb // smaller)
        change = f"micro_batch {mb} → {smaller} (grad_accum {r.grad_accum} → {accum})"
        out.append(Candidate(change, ("micro_batch",),
                             replace(r, micro_batch=smaller, grad_accum=accum,
                                     sequences=smaller * (2 if r.dpo else 1)), "micro_batch"))
    if r.dpo and r.reference != "none":
        out.append(Candidate("reference live → precomputed", ("reference",), replace(r, reference="none"),
                             "reference"))
    if r.optimizer == "adamw":
        out.append(Candidate("optimizer adamw → adamw_8bit", ("optimizer",), replace(r, optimizer="adamw_8bit"),
                             "optimizer"))
    if r.world > 1:
        if r.strategy not in ("zero3", "fsdp2"):
            out.append(Candidate(f"distributed {r.strategy} → zero3", ("distributed",), replace(r, strategy="zero3"),
                                 "zero3"))
        else:
            if not r.offload_optimizer:
                out.append(Candidate(f"distributed: {{strategy: {r.strategy}, offload_optimizer: true}}",
                                     ("distributed",), replace(r, offload_optimizer=True), "offload_optimizer"))
            if not r.offload_params:
                out.append(Candidate(f"distributed: {{strategy: {r.strategy}, offload_optimizer: true, "
                                     "offload_params: true}", ("distributed",),
                                     replace(r, offload_optimizer=True, offload_params=True), "offload_params"))
    if r.method in ("lora", "dora") and r.lora is not None and not r.continues:
        out.append(Candidate(f"adapter type {r.method} → qlora", ("adapter", "type"),
                             replace(r, method="qlora", lora=r.lora.model_copy(update={"type": "qlora"})),
                             "qlora"))
    n = gpus_per_node * 2
    while n <= MAX_GPUS_PER_NODE:
        world = n * r.nodes
        sharded = r.strategy if r.strategy in ("zero3", "fsdp2") else "zero3"
        how = "" if sharded == r.strategy else " with distributed: zero3"
        out.append(Candidate(f"gpus_per_node {gpus_per_node} → {n}{how}", ("hardware", "gpus_per_node"),
                             replace(r, world=world, strategy=sharded, nvls=nvls and n > 2), "gpus"))
        n *= 2
    return out


def combined(r: Resolved, gpu: GpuSpec, gpus_per_node: int, nvls: bool = False) -> Fit | None:
    """Several changes together, when no single one fits.

    Walks the kinds of change in order of preference, taking the mildest change of a kind that fits or else the
    one that lowers the peak most, until the stage fits; then drops every change the others do not need."""
    capacity = gpu.memory_mib * (1 << 20)
    current, gpn = r, gpus_per_node
    peak = estimate_resolved(current, gpu).peak_bytes
    taken: list[tuple[Candidate, dict]] = []
    done: set[str] = set()
    while peak > capacity:
        kinds = [c for c in candidates(current, gpn, nvls) if c.kind not in done]
        if not kinds:
            return None
        kind = kinds[0].kind
        done.add(kind)
        options = [(estimate_resolved(c.setup, gpu).peak_bytes, c) for c in kinds if c.kind == kind]
        fitting = [(p, c) for p, c in options if p <= capacity]
        best_peak, best = fitting[0] if fitting else min(options, key=lambda pc: pc[0])
        if best_peak >= peak:
            continue
        taken.append((best, _delta(current, best.setup)))
        current, peak = best.setup, best_peak
        if kind == "gpus":
            gpn = current.world // max(1, current.nodes)
    for item in list(taken):  # prune: keep only the changes the fit needs
        rest = [t for t in taken if t is not item]
        trial = r
        for _, delta in rest:
            trial = replace(trial, **delta)
        trial_peak = estimate_resolved(trial, gpu).peak_bytes
        if trial_peak <= capacity:
            taken, peak = rest, trial_peak
    if not taken:
        return None
    for k, (cand, _) in enumerate(taken):  # soften: the mildest micro_batch cut / GPU count the others allow
        others = r
        for j, (_, delta) in enumerate(taken):
            if j != k:
                others = replace(others, **delta)
        for option in (c for c in candidates(others, gpus_per_node, nvls) if c.kind == cand.kind):
            option_peak = estimate_resolved(option.setup, gpu).peak_bytes
            if option_peak <= capacity:
                taken[k] = (option, _delta(others, option.setup))
                break
        trial = r
        for _, delta in taken:
            trial = replace(trial, **delta)
        peak = estimate_resolved(trial, gpu).peak_bytes
    return Fit(Suggestion(" + ".join(c.change for c, _ in taken), peak), taken[0][0].path)


def _delta(before: Resolved, after: Resolved) -> dict:
    """The fields a change sets."""
    return {f: getattr(after, f) for f in before.__dataclass_fields__ if getattr(after, f) != getattr(before, f)}


def suggestions(r: Resolved, gpu: GpuSpec, gpus_per_node: int, nvls: bool = False, limit: int = 5,
                fraction: float = 1.0) -> list[Fit]:
    """Single changes that bring the stage under ``fraction`` of ``gpu``'s memory, best first (one per kind)."""
    capacity = int(gpu.memory_mib * (1 << 20) * fraction)
    fits: list[Fit] = []
    seen: set[str] = set()
    for c in candidates(r, gpus_per_node, nvls):
        if c.kind in seen:
            continue  # only the mildest micro_batch cut / smallest GPU count that fits
        est = estimate_resolved(c.setup, gpu)
        if est.peak_bytes <= capacity:
            seen.add(c.kind)
            fits.append(Fit(Suggestion(c.change, est.peak_bytes), c.path))
    return fits[:limit]
