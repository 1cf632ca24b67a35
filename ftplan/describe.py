"""One-line human descriptions of stages, models and hardware, shared by the terminal view and plan.md."""

from __future__ import annotations

from typing import TYPE_CHECKING

from .context import Context
from .resolved_stage import ResolvedStage
from .schemas import DataStage, FullFinetune, GgufStage, LoraAdapter, MergeStage, SftStage
from .schemas.stages import Stage
from .units import GIB, size

if TYPE_CHECKING:  # pragma: no cover
    from .jobs import SlurmJob
    from .lineage import StageLink

BAR_WIDTH = 16

_ADAPTER_NAMES = {"lora": "LoRA", "qlora": "QLoRA", "dora": "DoRA"}


def adapter_text(adapter: LoraAdapter | FullFinetune) -> str:
    """``QLoRA r16 α32`` or ``full fine-tune``."""
    if isinstance(adapter, FullFinetune):
        return "full fine-tune"
    return f"{_ADAPTER_NAMES[adapter.type]} r{adapter.r} α{adapter.alpha:g}"


def method(stage: Stage, facts: ResolvedStage, link: "StageLink | None") -> str:
    """What a stage does in one line (the ``method`` column): ``QLoRA r16 α32 · zero3``,
    ``DPO β0.1 sigmoid, continues sft``, ``merge sft + dpo → bf16``, from its resolved ``facts``."""
    if isinstance(stage, DataStage):
        formats = list(dict.fromkeys(d.format for d in stage.datasets))
        return " + ".join(formats) + (", packed" if stage.packing else "") + f", ≤{stage.max_seq_len} tokens"
    if isinstance(stage, MergeStage):
        chain = [a.stage for a in link.input.adapters] if link and link.input else []
        return f"merge {' + '.join(chain) or '—'} → {stage.dtype}"
    if isinstance(stage, GgufStage):
        return "GGUF " + ", ".join(stage.quant)
    extras = []
    if stage.kernels == "ftplan":
        extras.append("kernels")
    t = facts.train
    if t is not None and t.strategy != "none":
        offload = "+offload" if t.offload_optimizer or t.offload_params else ""
        extras.append(f"{t.strategy}{offload}")
    suffix = "".join(f" · {e}" for e in extras)
    if isinstance(stage, SftStage):
        return adapter_text(stage.adapter) + suffix
    head = _kind_head(stage)
    if stage.adapter == "continue":
        return f"{head}, continues {stage.input}{suffix}"
    on = (f" on merged {stage.input}" if t is not None and t.merges_input else
          f" on {stage.input}" if stage.input is not None else "")
    return f"{head}, {adapter_text(stage.adapter)}{on}{suffix}"


def _kind_head(stage: Stage) -> str:
    """The start of a non-SFT training stage's description: ``DPO β0.1 sigmoid``, ``ORPO β0.1``, ``KTO β0.1``,
    ``CPT``, ``reward model``."""
    if stage.kind == "dpo":
        return f"DPO β{stage.beta:g} {stage.loss_type}"
    if stage.kind == "orpo":
        return f"ORPO β{stage.beta:g}"
    if stage.kind == "kto":
        return f"KTO β{stage.beta:g}" + ("" if stage.loss_type == "kto" else f" {stage.loss_type}")
    return {"cpt": "CPT", "reward": "reward model"}[stage.kind]


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


def bar(used: int, capacity: int) -> str:
    """``███████░░░ 14.2 / 24.0 GiB``: the share of the card a peak takes (full when it does not fit)."""
    filled = min(BAR_WIDTH, round(BAR_WIDTH * used / capacity)) if capacity > 0 else BAR_WIDTH
    if used > 0 and filled == 0:
        filled = 1
    return f"{'█' * filled}{'░' * (BAR_WIDTH - filled)} {used / GIB:.1f} / {capacity / GIB:.1f} GiB"


def job_memory(job: "SlurmJob") -> str:
    """A Slurm job's memory request in words: ``168 GiB per node``, ``all of each node's``, ``40 GiB per GPU``."""
    if job.mem_per_gpu:
        per_gpu = job.mem_bytes // max(1, job.gpus_per_node) if job.mem_bytes else None
        return f"{size(per_gpu)} per GPU" if per_gpu else "all of each node's"
    if job.mem_bytes is None:
        return "all of each node's"
    return f"{size(job.mem_bytes)} per node"


def job_gpus(job: "SlurmJob") -> str:
    """``2 nodes × 8 GPUs``, ``1 node × 8 h100 GPUs`` (a typed request) or ``no GPU``."""
    if not job.gpus_per_node:
        return "no GPU"
    nodes = f"{job.nodes} node{'s' if job.nodes > 1 else ''}"
    kind = f"{job.gpu_type} " if job.gpu_type else ""
    return f"{nodes} × {job.gpus_per_node} {kind}GPU{'s' if job.gpus_per_node > 1 else ''}"


def job_cpus(job: "SlurmJob") -> str:
    """``64 CPUs per node`` or ``all CPUs`` (whole nodes)."""
    return f"{job.cpus_per_task} CPUs per node" if job.cpus_per_task else "all CPUs of each node"


def job_container(job: "SlurmJob") -> str:
    """``pyxis nvcr.io#nvidia/pytorch:25.01-py3`` or ``—``."""
    return f"{job.container.runtime} {job.container.image}" if job.container else "—"


def job_lines(job: "SlurmJob") -> list[str]:
    """The job shape in words, with where each figure comes from (sbatch comments, plan.md)."""
    where = f"partition {job.partition}" if job.partition else "the default partition"
    whole = "whole nodes" if job.exclusive else "shared nodes"
    return [
        f"job: {job_gpus(job)} ({whole}: {job.exclusive_reason}), {job_cpus(job)}, on {where}",
        f"memory: {job_memory(job)} ({job.mem_reason})",
        f"time limit: {job.time} ({job.time_reason})",
    ]
