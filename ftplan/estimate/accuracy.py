"""How far the estimate can be trusted for one stage: the errors measured on calibration points like it.

A stage is compared with the measured points (``measured.POINTS``) of its model family, method (LoRA, QLoRA,
DoRA, full) and kind (SFT, DPO) on one GPU. With such points the stage gets their mean and largest error; without
them, or with a context more than twice the longest measured one, the estimate is *extrapolated* and says from
what.
"""

from __future__ import annotations

from dataclasses import dataclass

from .measured import POINTS

EXTRAPOLATION_FACTOR = 2
"""A context this many times the longest measured one (or more) is outside what the points cover."""

_METHOD = {"lora": "LoRA", "qlora": "QLoRA", "dora": "DoRA", "full": "full fine-tune"}


@dataclass(frozen=True)
class Accuracy:
    """What the measured points say about one stage's estimate."""

    points: int
    """Measured points like this stage (0: extrapolated)."""
    mean_error_pct: float | None = None
    """Mean |error| over them."""
    max_error_pct: float | None = None
    """Largest |error| over them."""
    cards: tuple[str, ...] = ()
    """Cards they were measured on."""
    extrapolated: str | None = None
    """Why the estimate is outside the measured points, when it is."""

    def text(self) -> str:
        """``±2.8 % mean, 6.1 % max over 6 measured runs (H100)`` or ``extrapolated: ...``."""
        if self.extrapolated is not None:
            return f"extrapolated: {self.extrapolated}"
        return (f"±{self.mean_error_pct:.1f} % mean, {self.max_error_pct:.1f} % max over {self.points} measured "
                f"run{'s' if self.points != 1 else ''} ({'/'.join(self.cards)})")


def overall() -> Accuracy:
    """Over every measured point."""
    return _summary(list(POINTS), None)


def accuracy_of(family: str, method: str, kind: str, seq: int, world: int, offload: bool = False) -> Accuracy:
    """The measured accuracy for a stage of this family, method, kind, context and GPU count (``offload``: its
    activation checkpoints go to host memory)."""
    what = f"{family} {_METHOD.get(method, method)} {kind.upper()}"
    if world > 1:
        return Accuracy(0, extrapolated="no multi-GPU point is measured yet (sharding, offload and NCCL terms "
                        "are derived from DeepSpeed's and PyTorch's arithmetic)")
    if offload:
        return Accuracy(0, extrapolated="no compiled plan with offloaded checkpoints is measured yet (its terms come "
                        "from runtime probes of Llama-3.1-8B QLoRA on an H100)")
    like = [p for p in POINTS if p[:3] == (family, method, kind)]
    if not like:
        return Accuracy(0, extrapolated=f"no {what} point is measured yet")
    longest = max(p[3] for p in like)
    if seq >= EXTRAPOLATION_FACTOR * longest:
        return Accuracy(0, extrapolated=f"{what} is measured up to {longest:,} tokens, this stage has {seq:,}")
    return _summary(like, what)


def _summary(points: list[tuple[str, str, str, int, int, str, float]], what: str | None) -> Accuracy:
    if not points:
        return Accuracy(0, extrapolated="no point is measured yet")
    errors = [abs(p[6]) for p in points]
    return Accuracy(len(points), round(sum(errors) / len(errors), 1), round(max(errors), 1),
                    tuple(sorted({p[5] for p in points})))
