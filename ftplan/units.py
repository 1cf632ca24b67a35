"""Byte sizes, durations and counts as every view writes them: the one place numbers are formatted.

``size`` (``12.4 GiB``, ``512 MiB``) picks the unit; ``gib_text`` always writes GiB (``12.3 GiB``, the estimator's
term details and diagnostics), ``gib_number`` the bare number (``8.9``, ``?`` when unknown), ``gib_amount`` a size
already in GiB (a card's memory); ``gib_value`` is the number for JSON (``12.35``); ``format_duration`` writes
seconds as ``35 s`` … ``2.1 days``; ``num``, ``params`` and ``params_text`` write counts (``128,256``, ``8.03B``,
``8.03 B``); ``sci`` learning rates (``2e-4``); ``dtype_name`` an element width (``bf16``). No other module of ftplan
formats a byte count for people to read (Slurm's ``--mem`` sizes are requests, rounded in ``jobs``).
"""

from __future__ import annotations

KIB = 1 << 10
MIB = 1 << 20
GIB = 1 << 30
TIB = 1 << 40


def gib_value(n_bytes: float | None, digits: int = 2) -> float | None:
    """Bytes as GiB rounded to ``digits`` decimals, for JSON (None stays None)."""
    return None if n_bytes is None else round(n_bytes / GIB, digits)


def gib_number(n_bytes: float | None, digits: int = 1) -> str:
    """Bytes as a number of GiB (``8.9``), ``?`` when unknown."""
    return "?" if n_bytes is None else f"{n_bytes / GIB:.{digits}f}"


def gib_text(n_bytes: float, unit: bool = True) -> str:
    """Bytes as ``12.3 GiB`` (one decimal; without the unit when ``unit`` is false)."""
    return gib_number(n_bytes) + (" GiB" if unit else "")


def gib_amount(gib: float) -> str:
    """An amount already in GiB (a card's memory, plan.json's ``gpu_memory_gib``) as ``24.0 GiB``."""
    return f"{gib:.1f} GiB"


def size(n_bytes: float) -> str:
    """Bytes in the largest unit that keeps the number at least 1: ``12.4 GiB``, ``512 MiB``, ``96 KiB``."""
    for unit, scale in (("GiB", GIB), ("MiB", MIB), ("KiB", KIB)):
        if n_bytes >= scale:
            return f"{n_bytes / scale:.1f} {unit}"
    return f"{int(n_bytes)} B"


def format_duration(seconds: float) -> str:
    """``35 s``, ``12 min``, ``3.4 h`` or ``2.1 days``."""
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    if seconds < 172800:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.1f} days"


def num(n: float) -> str:
    """An integer with thousands separators (``128,256``)."""
    return f"{int(round(n)):,}"


def params(n: float) -> str:
    """A parameter count as ``8.03B`` / ``41.9M``."""
    if n >= 1e9:
        return f"{n / 1e9:.2f}B"
    if n >= 1e6:
        return f"{n / 1e6:.1f}M"
    return num(n)


def sci(x: float) -> str:
    """A small rate in scientific notation as pipelines write it: ``2e-4``, ``1.5e-5``, ``5e-3``."""
    mantissa, exponent = f"{x:.3e}".split("e")
    mantissa = mantissa.rstrip("0").rstrip(".")
    return f"{mantissa}e{int(exponent)}"


DTYPE_NAMES = {1: "int8", 2: "bf16", 4: "fp32"}
"""Element widths in bytes as the estimator's term details name them."""


def dtype_name(nbytes: int, sixteen: str = "bf16") -> str:
    """A byte width as a dtype name (``fp32``; 2 bytes prints as ``sixteen``, e.g. ``fp16``)."""
    return sixteen if nbytes == 2 else DTYPE_NAMES.get(nbytes, f"{nbytes} B")


def params_text(n: int | None) -> str:
    """A model's size as headers write it: ``8.03 B``, ``136.8 M`` or ``139.6 K`` parameters."""
    if n is None:
        return "size unknown"
    for scale, suffix, digits in ((1e9, "B", 2), (1e6, "M", 1), (1e3, "K", 1)):
        if n >= scale:
            return f"{n / scale:.{digits}f} {suffix}"
    return f"{n} params"
