"""Offline pre-launch rules, checked against the declared hardware and the local files' snapshot.

Each rule module exports ``CODES`` (code -> one-line title) and ``check(ctx)``. Code ranges: FT3xx hardware and
launch topology (FT32x: combinations the runtime refuses at start; FT33x: Slurm jobs, whose memory and time rules
run after the estimate, ``check_jobs``), FT4xx model and tokenizer, FT5xx data, FT6xx training configuration.
"""

from __future__ import annotations

from ftplan.context import Context
from ftplan.diagnostics import Diagnostic
from ftplan.estimate.types import StageEstimate

from . import data, hardware, kinds, model, offload, preference, runtime_limits, slurm, tokenizer, topology, training
from .tokenizer import BUILTIN_TEMPLATES

RULE_MODULES = (hardware, topology, runtime_limits, slurm, offload, model, tokenizer, data, training, kinds, preference)
"""Rule modules in the order they run."""

CODES: dict[str, str] = {code: title for module in RULE_MODULES for code, title in module.CODES.items()}
"""Every pre-launch rule code with its one-line title, sorted by code."""
CODES = dict(sorted(CODES.items()))

__all__ = ["BUILTIN_TEMPLATES", "CODES", "RULE_MODULES", "check_jobs", "run_checks"]


def check_jobs(ctx: Context, estimates: dict[str, StageEstimate]) -> list[Diagnostic]:
    """The rules that judge each stage's Slurm job against its estimate (run after the estimate), and what a stage
    that offloads its activation checkpoints needs in host memory (FT339 stands in for FT330 where the offload is
    what takes the job over its declared memory)."""
    offloaded = offload.check_jobs(ctx, estimates)
    explained = frozenset(int(d.path[1]) for d in offloaded if d.code == "FT339")
    return slurm.check_jobs(ctx, estimates, memory_explained=explained) + offloaded


def run_checks(ctx: Context) -> list[Diagnostic]:
    """Run every rule module on the resolved pipeline; return all diagnostics in module order."""
    diags: list[Diagnostic] = []
    for module in RULE_MODULES:
        diags.extend(module.check(ctx))
    return diags
