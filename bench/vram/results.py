"""The recorded calibration rows (``bench/results/vram/*.jsonl``) and which of them still describe the runtime.

A row measured the runtime as it was when its run took place. When a later change to the runtime changes what a
configuration holds on the GPU, the rows it affects no longer measure what ``check`` estimates: ``SUPERSEDED``
names them by run and configuration, with the change. They stay in the results files as recorded, are left out of
the accuracy table and the regression test, and are the first to measure again.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

RESULTS = Path(__file__).resolve().parents[2] / "bench" / "results" / "vram"


@dataclass(frozen=True)
class Supersession:
    """A runtime change that makes some earlier rows stale."""

    change: str
    """What changed, with the commit that changed it."""
    runs: tuple[str, ...]
    """Results files (stems) measured before the change."""
    affects: Callable[[dict], bool]
    """Whether a row's point (its settings, ``points.Point`` as a dict) runs through what changed."""


SUPERSEDED: tuple[Supersession, ...] = (
    Supersession(
        "the fused LoRA Functions (0d7b6be): with `kernels: ftplan` the LoRA layers no longer run through PEFT",
        ("h100-run1-llama-small", "h200-run2-mix", "h200-run3-mix"),
        lambda p: p["kernels"] == "ftplan" and p["adapter"] in ("lora", "qlora")),
)


def superseded(row: dict) -> str | None:
    """The change that made this row stale, or None when it still measures the runtime."""
    for s in SUPERSEDED:
        if row["run"] in s.runs and s.affects(row["point"]):
            return s.change
    return None


def rows(folder: Path = RESULTS) -> list[dict]:
    """Every row recorded in ``folder``, in file order, each with ``run`` (its file's stem) added."""
    out = []
    for path in sorted(folder.glob("*.jsonl")):
        out += [{**json.loads(line), "run": path.stem} for line in path.read_text().splitlines() if line.strip()]
    return out


def current(folder: Path = RESULTS) -> list[dict]:
    """The rows of ``folder`` that still measure the runtime (``superseded`` is None)."""
    return [r for r in rows(folder) if superseded(r) is None]


TIME_LIMIT = "stopped at the run's time limit"
"""The outcome of a run the harness stopped for lack of time (older rows: ``failed (exit 124)``, its exit code)."""


def stopped(row: dict) -> bool:
    """The run was cut off by the harness's time budget: it measured nothing, either way."""
    return row.get("outcome") in (TIME_LIMIT, "failed (exit 124)")


def probes(rs: list[dict]) -> list[dict]:
    """The boundary probes' runs among ``rs`` that finished (fitting side, or the step past it)."""
    return [r for r in rs if r.get("probe") and not stopped(r)]


def probed(rs: list[dict]) -> set[str]:
    """Names of the boundary probes among ``rs`` with both sides finished: the fitting micro-batch and the next."""
    sides: dict[str, set[str]] = {}
    for r in probes(rs):
        sides.setdefault(r["point"]["name"], set()).add(r["probe"])
    return {name for name, got in sides.items() if got == {"fits", "oom"}}


def measured(rs: list[dict]) -> list[dict]:
    """The calibration points among ``rs``: runs that completed, boundary steps past the fit and diagnostic reruns
    that recorded the allocator's history (``calibrate.py --memory-history``) excluded."""
    return [r for r in rs if r.get("outcome") == "ok" and r.get("probe") != "oom" and not r.get("memory_history")]
