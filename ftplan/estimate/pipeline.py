"""``estimate(ctx)``: every stage of a pipeline estimated against the declared GPU, with FT1xx diagnostics."""

from __future__ import annotations

import math
from dataclasses import replace

from ..catalog.gpus import GpuSpec
from ..context import Context
from ..diagnostics import Diagnostic, error, warning
from ..resolved_stage import data_stage_of
from ..schemas import TRAIN_STAGE_TYPES, DataStage, GgufStage, MergeStage
from . import host
from .accuracy import accuracy_of
from .constants import TIGHT_FRACTION
from .fit import Checker, Fit, Outcome
from .fit import suggest as suggest_changes
from ..units import gib_text
from .resolved import Resolved
from .stage import estimate_resolved, setup
from .types import StageEstimate, Suggestion

MAX_REFUSED_NOTES = 3
"""Changes that would fit but that the checks refuse, listed when nothing passes."""

CODES = {
    "FT101": "a training stage does not fit in the GPU's memory",
    "FT102": f"a training stage uses {TIGHT_FRACTION * 100:g} % or more of the GPU's memory",
}


def estimate(ctx: Context, *, suggest: bool = True) -> tuple[dict[str, StageEstimate], list[Diagnostic]]:
    """Estimate every stage whose wiring is intact; FT101/FT102 for training stages that do not fit or are tight.

    Nothing is estimated without a model shape; stages whose graph link is broken are skipped (reported by the
    stage-graph checks). With ``suggest`` (the default) a stage that does not fit, or fits tightly, gets the changes
    of the file that make it fit, each re-checked whole (``fit.py``); the re-check itself runs without."""
    if ctx.shape is None:
        return {}, []
    pipeline, hw = ctx.pipeline, ctx.pipeline.hardware
    estimates: dict[str, StageEstimate] = {}
    diags: list[Diagnostic] = []
    checker: Checker | None = None
    for i, stage in enumerate(pipeline.stages):
        link = ctx.links.get(stage.id)
        if link is None:
            continue
        if isinstance(stage, DataStage):
            estimates[stage.id] = StageEstimate(stage.id, 0, None, "n/a", notes=("tokenization runs on the CPU",))
            continue
        if link.result is None:
            continue
        if isinstance(stage, MergeStage):
            estimates[stage.id] = host.merge(ctx.shape, stage)
            continue
        if isinstance(stage, GgufStage):
            estimates[stage.id] = host.gguf(ctx.shape, stage)
            continue
        r = stage_setup(ctx, i)
        if r is None:
            continue
        est = estimate_resolved(r, ctx.gpu if hw.device == "cuda" else None, device=hw.device, stage_id=stage.id)
        if hw.device == "cuda":
            measured_as = "sft" if r.kind == "cpt" else r.kind  # CPT runs the SFT trainer over packed text
            offload = r.gc and r.offload_checkpoints
            est = replace(est, accuracy=accuracy_of(r.shape.family, r.method, measured_as, r.seq, r.world, offload))
        if est.verdict in ("oom", "tight") and ctx.gpu is not None:
            fits: list[Fit] = []
            refused: list[Outcome] = []
            if suggest:
                checker = checker or Checker(ctx)
                fits, refused = suggest_changes(checker, i, r, est.verdict)
                if est.verdict == "oom":
                    est = replace(est, suggestions=tuple(f.suggestion for f in fits))
            diags.append(_diagnostic(i, est, ctx.gpu, fits, refused, checker))
        estimates[stage.id] = est
    return estimates, diags


def stage_setup(ctx: Context, index: int) -> Resolved | None:
    """The training stage at ``index`` set up for the estimate from its resolved facts (``Context.stages``), or None
    when it is not a training stage or its data stage or input is missing."""
    stage = ctx.pipeline.stages[index]
    facts = ctx.stages[index]
    if ctx.shape is None or facts.train is None or not isinstance(stage, TRAIN_STAGE_TYPES):
        return None
    link = ctx.links.get(stage.id)
    found = data_stage_of(ctx.pipeline, stage)
    if link is None or link.result is None or link.input is None or found is None:
        return None
    hw = ctx.pipeline.hardware
    nvls = _nvls(ctx.gpu, hw.gpus_per_node, hw.env) and hw.device == "cuda"
    return setup(ctx.shape, stage, facts.train, nodes=hw.nodes, packed=found[1].packing, nvls=nvls)


def _nvls(gpu: GpuSpec | None, gpus_per_node: int, env: dict[str, str]) -> bool:
    """NCCL sets up NVLink SHARP buffers: NVLink Hopper/Blackwell nodes with more than two GPUs, unless
    ``NCCL_NVLS_ENABLE=0``."""
    if gpu is None or not gpu.nvlink or gpu.arch not in ("hopper", "blackwell") or gpus_per_node <= 2:
        return False
    return env.get("NCCL_NVLS_ENABLE", "").strip() != "0"


def _diagnostic(i: int, est: StageEstimate, gpu: GpuSpec, fits: list[Fit], refused: list[Outcome],
                checker: Checker | None) -> Diagnostic:
    """FT101 (oom) or FT102 (tight) for one stage: the three largest terms, the changes that pass the re-check and,
    when none does, the largest term and the changes that would fit but the checks refuse. Without a ``checker``
    (the re-check's own estimate) there are no suggestions and no hint."""
    cap = est.capacity_bytes or 0
    notes = [f"{t.name} {gib_text(t.bytes)} ({t.detail})" if t.detail else f"{t.name} {gib_text(t.bytes)}"
             for t in est.terms[:3]]  # the three largest terms, with their arithmetic
    if est.verdict == "tight":
        pct = math.floor(100 * est.peak_bytes / cap)  # a tight peak is below the card: never "100 %"
        hint = None
        if fits:
            change = fits[0].suggestion
            hint = f"for headroom: {change.change} ({gib_text(change.peak_bytes)} of {gib_text(cap)})"
        elif checker is not None:
            hint = (f"no single change ftplan tried brings it under {TIGHT_FRACTION:.0%} of the card and passes the "
                    "checks; the largest term is " + _term_text(est))
        return warning("FT102", ("stages", i), f"peak {gib_text(est.peak_bytes)} per GPU is {pct} % of "
                       f"{gib_text(cap)} ({gpu.name}): little headroom for longer batches or fragmentation",
                       hint=hint, notes=notes)
    notes += [f"would fit ({_fit_text(f.suggestion, cap)}): {f.suggestion.change}" for f in fits]
    path: tuple[str | int, ...] = ("stages", i)
    hint = None
    if fits:
        best = fits[0]
        path = best.path
        hint = (("no single change fits; together: " if best.several else "")
                + f"{best.suggestion.change} ({gib_text(best.suggestion.peak_bytes)} of {gib_text(cap)})")
    elif checker is not None:
        shown = refused[:MAX_REFUSED_NOTES]
        hint = ("nothing ftplan tried fits and passes the checks; the largest term is " + _term_text(est)
                + ("; the changes noted as refused would fit, but the checks refuse them" if shown else
                   ": it needs a card with more memory"))
        notes += [f"refused by {', '.join(o.errors)} ({gib_text(o.estimate.peak_bytes)} of {gib_text(cap)}): "
                  f"{checker.text(o.edit)}" for o in shown if o.estimate is not None]  # a refused change fits
    over = ">" if est.peak_bytes > cap else "≥"
    return error("FT101", path, f"peak {gib_text(est.peak_bytes)} per GPU {over} {gib_text(cap)} ({gpu.name})",
                 hint=hint, notes=notes)


def _fit_text(s: Suggestion, cap: int) -> str:
    """``35.1 GiB of 40.0 GiB``, with the host memory an offload needs and the warnings the change adds."""
    out = f"{gib_text(s.peak_bytes)} of {gib_text(cap)}"
    if s.host_bytes:
        out += f"; host memory {gib_text(s.host_bytes)} per node"
    if s.warnings:
        out += f"; adds warning {', '.join(s.warnings)}"
    return out


def _term_text(est: StageEstimate) -> str:
    """The largest term of an estimate, named with its size."""
    top = est.terms[0]
    return f"{top.name}, {gib_text(top.bytes)}"
