"""One-line human descriptions of stages, models and hardware, shared by the terminal view and plan.md."""

from __future__ import annotations

from typing import TYPE_CHECKING

from .resolved_stage import Batch, ResolvedStage
from .schemas import DataStage, FullFinetune, GgufStage, LoraAdapter, MergeStage, SftStage
from .schemas.stages import Stage
from .units import gib_amount, gib_number, gib_text, params_text, size

if TYPE_CHECKING:  # pragma: no cover
    from .estimate.types import Term
    from .jobs import SlurmJob
    from .lineage import StageLink
    from .plan.types import Target

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
        return f"{head}, continues {stage.input or '—'}{suffix}"
    on = (f" on merged {stage.input}" if t is not None and t.merges_input else
          f" on {stage.input}" if stage.input is not None else "")
    return f"{head}, {adapter_text(stage.adapter)}{on}{suffix}"


def _kind_head(stage: Stage) -> str:
    """The start of a non-SFT training stage's description: ``DPO β0.1 sigmoid`` (``SimPO β2 γ1``, ``+NLL×1`` with
    ``sft_weight``), ``ORPO β0.1``, ``KTO β0.1``, ``CPT``, ``reward model``."""
    if stage.kind == "dpo":
        head = (f"SimPO β{stage.beta:g} γ{stage.simpo_gamma:g}" if stage.loss_type == "simpo" else
                f"DPO β{stage.beta:g} {stage.loss_type}")
        return head + (f" +NLL×{stage.sft_weight:g}" if stage.sft_weight else "")
    if stage.kind == "orpo":
        return f"ORPO β{stage.beta:g}"
    if stage.kind == "kto":
        return f"KTO β{stage.beta:g}" + ("" if stage.loss_type == "kto" else f" {stage.loss_type}")
    return {"cpt": "CPT", "reward": "reward model"}[stage.kind]


def headline(name: str, target: "Target") -> str:
    """``support-bot · meta-llama/Llama-3.1-8B-Instruct (8.03 B) · 1 × GeForce RTX 4090 24GB (24.0 GiB, sm89)``: the
    first line of ``ftplan check`` and of ``plan.md``."""
    if target.device == "cpu":
        hardware = "CPU"
    else:
        count = f"{target.nodes} nodes × {target.gpus_per_node}" if target.nodes > 1 else f"{target.gpus_per_node}"
        detail = ", ".join(x for x in (gib_amount(target.gpu_memory_gib) if target.gpu_memory_gib else None,
                                       target.gpu_arch) if x)
        hardware = f"{count} × {target.gpu_name or 'GPU'}" + (f" ({detail})" if detail else "")
    return f"{name} · {target.model} ({params_text(target.params)}) · {hardware}"


def batch_arithmetic(b: Batch) -> str:
    """A training stage's batch, counted in its own unit: ``2 micro × 8 accum × 1 process = 16 sequences × 2,048
    tokens = 32,768 tokens/step``; a DPO batch counts pairs of two sequences: ``1 micro × 16 accum × 1 process =
    16 pairs × 2 sequences × 2,048 tokens = 65,536 tokens/step``."""
    processes = f"{b.world_size} process{'es' if b.world_size != 1 else ''}"
    out = f"{b.micro_batch} micro × {b.grad_accum} accum × {processes} = {batch_size(b)}"
    if b.seq_len is not None and b.tokens_per_step is not None:
        out += (" × 2 sequences" if b.pairs else "") + f" × {b.seq_len:,} tokens = {b.tokens_per_step:,} tokens/step"
    return out


def batch_size(b: Batch) -> str:
    """The effective batch in its unit: ``16 sequences``, ``1 sequence``, ``16 pairs``."""
    return f"{b.effective_batch:,} {b.unit if b.effective_batch != 1 else b.unit[:-1]}"


def term_line(term: "Term") -> str:
    """One line item of a memory estimate: ``weights (bf16) 15.0 GiB (8.03B params × 2 B)``."""
    return f"{term.name} {size(term.bytes)}" + (f" ({term.detail})" if term.detail else "")


def bar(used: int, capacity: int) -> str:
    """``███████░░░ 14.2 / 24.0 GiB``: the share of the card a peak takes (full when it does not fit)."""
    filled = min(BAR_WIDTH, round(BAR_WIDTH * used / capacity)) if capacity > 0 else BAR_WIDTH
    if used > 0 and filled == 0:
        filled = 1
    return f"{'█' * filled}{'░' * (BAR_WIDTH - filled)} {gib_number(used)} / {gib_text(capacity)}"


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
