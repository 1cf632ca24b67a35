"""Number formatting of the estimator's term details and diagnostics (``units`` holds the shared helpers)."""

from __future__ import annotations

from ..units import gib_text as gib
from ..units import num, params

__all__ = ["DTYPE_NAMES", "dtype", "gib", "num", "params"]

DTYPE_NAMES = {1: "int8", 2: "bf16", 4: "fp32"}


def dtype(nbytes: int, sixteen: str = "bf16") -> str:
    """A byte width as a dtype name (2 bytes prints as ``sixteen``)."""
    return sixteen if nbytes == 2 else DTYPE_NAMES.get(nbytes, f"{nbytes} B")
