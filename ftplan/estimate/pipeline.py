"""``estimate(ctx)``: every stage of a pipeline estimated against the declared GPU, with FT1xx diagnostics."""

from __future__ import annotations

import math

from ..catalog.gpus import GpuSpec
from ..context import Context
from ..diagnostics import Diagnostic, error, warning
from ..schemas import DataStage, DpoStage, GgufStage, LoraAdapter, MergeStage, SftStage
from . import host
from .fit import Fit, combined, suggestions
from .fmt import gib
from .stage import TIGHT_FRACTION, estimate_resolved, resolve
from .types import StageEstimate

CODES = {
    "FT101": "a training stage does not fit in the GPU's memory",
    "FT102": "a training stage uses 90 % or more of the GPU's memory",
}


def estimate(ctx: Context) -> tuple[dict[str, StageEstimate], list[Diagnostic]]:
    """Estimate every stage whose wiring is intact; FT101/FT102 for training stages that do not fit or are tight.

    Nothing is estimated without a model shape; stages whose graph link is broken are skipped (reported by the
    stage-graph checks)."""
    if ctx.shape is None:
        return {}, []
    pipeline, hw = ctx.pipeline, ctx.pipeline.hardware
    estimates: dict[str, StageEstimate] = {}
    diags: list[Diagnostic] = []
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
        data = pipeline.stage(stage.data)
        if not isinstance(data, DataStage) or link.input is None:
            continue
        continues = stage.adapter == "continue"
        spec = continued_adapter(pipeline, stage) if continues else stage.adapter
        quantized_base = link.input.quantized_base if continues else (
            isinstance(spec, LoraAdapter) and spec.type == "qlora")
        nvls_ok = _nvls(ctx.gpu, 8, hw.env) and hw.device == "cuda"
        r = resolve(ctx.shape, stage, seq_len=data.max_seq_len, world_size=hw.world_size, nodes=hw.nodes,
                    quantized_base=quantized_base, adapter=spec, packed=data.packing,
                    nvls=nvls_ok and hw.gpus_per_node > 2)
        est = estimate_resolved(r, ctx.gpu if hw.device == "cuda" else None, device=hw.device, stage_id=stage.id)
        if est.verdict in ("oom", "tight") and ctx.gpu is not None:
            if est.verdict == "oom":
                fits = suggestions(r, ctx.gpu, hw.gpus_per_node, nvls_ok)
            else:
                fits = suggestions(r, ctx.gpu, hw.gpus_per_node, nvls_ok, limit=1, fraction=TIGHT_FRACTION)
            if est.verdict == "oom" and not fits:
                together = combined(r, ctx.gpu, hw.gpus_per_node, nvls_ok)
                fits = [together] if together else []
            est = _with_suggestions(est, fits if est.verdict == "oom" else [])
            diags.append(_diagnostic(i, est, ctx.gpu, fits))
        estimates[stage.id] = est
    return estimates, diags


def continued_adapter(pipeline, stage) -> LoraAdapter | None:
    """The adapter spec a ``continue`` stage keeps training (found by walking its inputs), or None."""
    seen = set()
    current = stage
    while isinstance(current, (SftStage, DpoStage)) and current.id not in seen:
        seen.add(current.id)
        if isinstance(current.adapter, LoraAdapter):
            return current.adapter
        if current.adapter != "continue" or current.input is None:
            return None
        current = pipeline.stage(current.input)
    return None


def _nvls(gpu: GpuSpec | None, gpus_per_node: int, env: dict[str, str]) -> bool:
    """NCCL sets up NVLink SHARP buffers: NVLink Hopper/Blackwell nodes with more than two GPUs, unless
    ``NCCL_NVLS_ENABLE=0``."""
    if gpu is None or not gpu.nvlink or gpu.arch not in ("hopper", "blackwell") or gpus_per_node <= 2:
        return False
    return env.get("NCCL_NVLS_ENABLE", "").strip() != "0"


def _with_suggestions(est: StageEstimate, fits: list[Fit]) -> StageEstimate:
    from dataclasses import replace

    return replace(est, suggestions=tuple(f.suggestion for f in fits))


def _diagnostic(i: int, est: StageEstimate, gpu: GpuSpec, fits: list[Fit]) -> Diagnostic:
    cap = est.capacity_bytes or 0
    notes = [f"{t.name} {gib(t.bytes)} ({t.detail})" if t.detail else f"{t.name} {gib(t.bytes)}"
             for t in est.terms[:3]]  # the three largest terms, with their arithmetic
    if est.verdict == "tight":
        pct = math.floor(100 * est.peak_bytes / cap)  # a tight peak is below the card: never "100 %"
        hint = (f"for headroom: {fits[0].suggestion.change} ({gib(fits[0].suggestion.peak_bytes)} of {gib(cap)})"
                if fits else "for headroom, lower micro_batch or use more GPUs")
        return warning("FT102", ("stages", i), f"peak {gib(est.peak_bytes)} per GPU is {pct} % of "
                       f"{gib(cap)} ({gpu.name}): little headroom for longer batches or fragmentation",
                       hint=hint, notes=notes)
    notes += [f"would fit: {f.suggestion.change}: {f.suggestion.peak_bytes / (1 << 30):.1f} GiB of "
              f"{cap / (1 << 30):.1f}" for f in fits]
    several = bool(fits) and " + " in fits[0].suggestion.change
    path: tuple[str | int, ...] = ("stages", i)
    if fits:
        best = fits[0]
        path = best.path if best.path[0] == "hardware" else ("stages", i, *best.path[:1])
        hint = (("no single change fits; together: " if several else "")
                + f"{best.suggestion.change} ({gib(best.suggestion.peak_bytes)} of {gib(cap)})")
    else:
        hint = "no combination of the usual changes fits: pick a card with more memory or more GPUs"
    over = ">" if est.peak_bytes > cap else "≥"
    return error("FT101", path, f"peak {gib(est.peak_bytes)} per GPU {over} {gib(cap)} ({gpu.name})", hint=hint,
                 notes=notes)

