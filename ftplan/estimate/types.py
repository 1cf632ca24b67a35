"""Result types of the VRAM and throughput estimator."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

Verdict = Literal["fits", "tight", "oom", "n/a"]
"""``fits``; ``tight`` above 90 % of the card; ``oom`` above the card; ``n/a`` for stages that use no GPU."""


@dataclass(frozen=True)
class Term:
    """One line item of the peak: a name, its bytes per GPU, and how it was computed."""

    name: str
    bytes: int
    detail: str = ""


@dataclass(frozen=True)
class Suggestion:
    """A computed change that fits: what to change and the peak it would give."""

    change: str
    peak_bytes: int


@dataclass(frozen=True)
class StageEstimate:
    """Peak memory per GPU of one stage, its breakdown, and throughput figures."""

    stage: str
    peak_bytes: int
    """Device-used peak per GPU (what nvidia-smi would show), 0 for stages without a GPU."""
    capacity_bytes: int | None
    """Memory of the target GPU (None on CPU)."""
    verdict: Verdict
    terms: tuple[Term, ...] = ()
    """Line items that add up to ``peak_bytes``, largest first."""
    suggestions: tuple[Suggestion, ...] = ()
    """When the stage does not fit: single changes that make it fit, best first."""
    tokens_per_step: int | None = None
    """Tokens per optimizer step over all GPUs (micro_batch × seq × grad_accum × world; ×2 for DPO pairs)."""
    step_time_s: float | None = None
    """Rough seconds per optimizer step from the catalog's FLOP/s at an assumed utilisation."""
    host_bytes: int | None = None
    """Host (CPU) memory the stage needs, for stages that work on the CPU (merge, export) or offload."""
    notes: tuple[str, ...] = field(default=())
