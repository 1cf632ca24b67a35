"""Result types of the VRAM and throughput estimator."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:  # pragma: no cover
    from .accuracy import Accuracy

Verdict = Literal["fits", "tight", "oom", "n/a"]
"""``fits`` below ``TIGHT_FRACTION`` (90 %) of the card; ``tight`` from there up to the card; ``oom`` at or above
the card (``OOM_FRACTION``); ``n/a`` for stages that use no GPU. The fractions and why: ``constants.py``."""


@dataclass(frozen=True)
class Term:
    """One line item of the peak: a name, its bytes per GPU, and how it was computed."""

    name: str
    bytes: int
    detail: str = ""


@dataclass(frozen=True)
class Suggestion:
    """A change of the pipeline file that was applied and re-checked whole (``fit.py``): the stage fits and the
    change adds no error."""

    change: str
    """What to write, as ``KEY OLD → NEW`` settings separated by ``, `` (``edits.py`` gives the grammar); the
    re-checked pipeline is the same settings applied."""
    peak_bytes: int
    """The stage's peak per GPU after the change."""
    host_bytes: int | None = None
    """Host memory per node the changed stage needs for offloaded states (None without offload)."""
    warnings: tuple[str, ...] = ()
    """Codes of warnings the change adds (e.g. FT314 for an 8-bit optimizer under ZeRO), sorted."""


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
    """When the stage does not fit: changes of the file that make it fit and pass every check, best first (single
    changes, one per kind; or one joining several kinds when no single change passes)."""
    tokens_per_step: int | None = None
    """Tokens per optimizer step over all GPUs (micro_batch × seq × grad_accum × world; ×2 for DPO pairs)."""
    step_time_s: float | None = None
    """Rough seconds per optimizer step from the catalog's FLOP/s at an assumed utilisation."""
    host_bytes: int | None = None
    """Host (CPU) memory the stage needs, for stages that work on the CPU (merge, export) or offload."""
    host_terms: tuple[Term, ...] = ()
    """What ``host_bytes`` of a training stage on GPUs is made of, per node, largest first: offloaded model states,
    activation checkpoints offloaded to pinned host memory."""
    notes: tuple[str, ...] = field(default=())
    accuracy: "Accuracy | None" = None
    """What the measured calibration points say about this estimate (training stages on a GPU)."""
