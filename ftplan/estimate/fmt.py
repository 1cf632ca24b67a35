"""Number formatting shared by the estimator's term details and diagnostics."""

from __future__ import annotations

from .constants import GIB

DTYPE_NAMES = {1: "int8", 2: "bf16", 4: "fp32"}


def gib(n: float) -> str:
    """Bytes as ``12.3 GiB``."""
    return f"{n / GIB:.1f} GiB"


def num(n: float) -> str:
    """An integer with thousands separators (``128,256``)."""
    return f"{int(round(n)):,}"


def dtype(nbytes: int, sixteen: str = "bf16") -> str:
    """A byte width as a dtype name (2 bytes prints as ``sixteen``)."""
    return sixteen if nbytes == 2 else DTYPE_NAMES.get(nbytes, f"{nbytes} B")


def params(n: float) -> str:
    """A parameter count as ``8.03B`` / ``41.9M``."""
    if n >= 1e9:
        return f"{n / 1e9:.2f}B"
    if n >= 1e6:
        return f"{n / 1e6:.1f}M"
    return num(n)
