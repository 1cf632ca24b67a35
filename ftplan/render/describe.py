"""One-line descriptions of stages for reviewers: ``QLoRA r16 α32 · zero3``, ``DPO β0.1 sigmoid, continues sft``."""

from __future__ import annotations

from ..lineage import StageLink
from ..schemas import DataStage, FullFinetune, GgufStage, MergeStage, SftStage
from ..schemas.runtime_args import RuntimeArgs

_ADAPTER_NAMES = {"lora": "LoRA", "qlora": "QLoRA", "dora": "DoRA"}


def adapter_text(adapter) -> str:
    """``QLoRA r16 α32`` or ``full fine-tune``."""
    if isinstance(adapter, FullFinetune):
        return "full fine-tune"
    return f"{_ADAPTER_NAMES[adapter.type]} r{adapter.r} α{adapter.alpha:g}"


def describe_stage(stage, link: StageLink, args: RuntimeArgs, strategy: str | None) -> str:
    """The one-line description of what a stage does (the ``method`` column of ``plan.md``)."""
    if isinstance(stage, DataStage):
        formats = list(dict.fromkeys(d.format for d in stage.datasets))
        return " + ".join(formats) + (", packed" if stage.packing else "") + f", ≤{stage.max_seq_len} tokens"
    if isinstance(stage, MergeStage):
        chain = [a.stage for a in args.source.merge] if args.source else []
        return f"merge {' + '.join(chain) or '—'} → {stage.dtype}"
    if isinstance(stage, GgufStage):
        return "GGUF " + ", ".join(stage.quant)
    extras = []
    if stage.kernels == "ftplan":
        extras.append("kernels")
    if strategy not in (None, "none"):
        spec = stage.distributed_spec()
        offload = "+offload" if spec.offload_optimizer or spec.offload_params else ""
        extras.append(f"{strategy}{offload}")
    suffix = "".join(f" · {e}" for e in extras)
    if isinstance(stage, SftStage):
        return adapter_text(stage.adapter) + suffix
    head = f"DPO β{stage.beta:g} {stage.loss_type}"
    if link.continues_adapter:
        return f"{head}, continues {stage.input}{suffix}"
    on = f" on merged {stage.input}" if link.merges_input else f" on {stage.input}"
    return f"{head}, {adapter_text(stage.adapter)}{on}{suffix}"
