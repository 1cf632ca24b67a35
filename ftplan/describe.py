"""One-line human descriptions of stages, models and hardware, shared by the terminal view and plan.md."""

from __future__ import annotations

from .context import Context
from .schemas import DataStage, DpoStage, GgufStage, LoraAdapter, MergeStage, SftStage

_ADAPTER_NAMES = {"lora": "LoRA", "qlora": "QLoRA", "dora": "DoRA"}


def gib(n_bytes: float) -> float:
    """Bytes to GiB."""
    return n_bytes / 2**30


def size(n_bytes: float) -> str:
    """Bytes in the largest unit that keeps the number at least 1: ``12.4 GiB``, ``512 MiB``, ``96 KiB``."""
    for unit, scale in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n_bytes >= scale:
            return f"{n_bytes / scale:.1f} {unit}"
    return f"{int(n_bytes)} B"


def method(stage) -> str:
    """What a stage does, e.g. ``QLoRA r16 α32, kernels`` or ``DPO β0.1 sigmoid, continues sft``."""
    if isinstance(stage, DataStage):
        formats = sorted({d.format for d in stage.datasets})
        return " + ".join(formats) + (", packed" if stage.packing else "")
    if isinstance(stage, (SftStage, DpoStage)):
        parts = []
        if isinstance(stage, DpoStage):
            parts.append(f"DPO β{stage.beta:g} {stage.loss_type}")
            if stage.adapter == "continue":
                parts.append(f"continues {stage.input}")
        if stage.adapter != "continue":
            a = stage.adapter
            parts.append(f"{_ADAPTER_NAMES[a.type]} r{a.r} α{a.alpha:g}" if isinstance(a, LoraAdapter) else "full")
        strategy = stage.distributed_spec().strategy
        if strategy not in ("auto", "none"):
            parts.append(strategy)
        if stage.kernels == "ftplan":
            parts.append("kernels")
        return ", ".join(parts)
    if isinstance(stage, MergeStage):
        return f"{stage.input} → {stage.dtype}"
    if isinstance(stage, GgufStage):
        return ", ".join(stage.quant)
    return stage.kind  # pragma: no cover - the union is closed


def effective_batch(stage, world_size: int) -> int | None:
    """Sequences (DPO: pairs) per optimizer step over all GPUs, for training stages."""
    if isinstance(stage, (SftStage, DpoStage)):
        return stage.micro_batch * stage.grad_accum * world_size
    return None


def headline(ctx: Context) -> str:
    """``name · model (params) · N × GPU (memory, sm)`` for the top of reports."""
    from .catalog import param_counts

    p = ctx.pipeline
    model = p.model.base.rstrip("/").split("/")[-1]
    if ctx.shape is not None:
        n = param_counts(ctx.shape).total
        model += f" ({n / 1e9:.2f} B)" if n >= 1e8 else f" ({n / 1e6:.2f} M)"
    hw = p.hardware
    if hw.device == "cpu":
        where = "CPU"
    elif ctx.gpu is not None:
        cc = f", sm{ctx.gpu.compute_capability[0]}{ctx.gpu.compute_capability[1]}" if ctx.gpu.compute_capability else ""
        nodes = f"{hw.nodes} nodes × " if hw.nodes > 1 else ""
        where = f"{nodes}{hw.gpus_per_node} × {ctx.gpu.name} ({ctx.gpu.memory_gib:.1f} GiB{cc})"
    else:
        where = f"{hw.gpus_per_node} × {hw.gpu}"
    return f"{p.name} · {model} · {where}"


def bar(used: float, total: float, width: int = 16) -> str:
    """A text bar of ``used`` against ``total``: full blocks for the used part (overflow shown as full)."""
    frac = 0.0 if total <= 0 else min(used / total, 1.0)
    n = round(frac * width)
    return "█" * n + "░" * (width - n)
