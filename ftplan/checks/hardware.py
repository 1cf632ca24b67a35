"""Rules between each training stage and the declared hardware: precision, attention backend, fused kernels,
bitsandbytes and the CPU device. Checked against ``hardware.gpu`` from the catalog, never the local machine."""

from __future__ import annotations

from ftplan.catalog.gpus import GpuSpec
from ftplan.context import Context
from ftplan.diagnostics import Diagnostic, KeyPath, error, warning
from ftplan.resolved_stage import TrainingFacts
from ftplan.schemas import TRAIN_KINDS, TrainStage
from ftplan.schemas.adapters import LoraAdapter
from ftplan.schemas.runtime_args import KERNEL_FAMILIES, fused_head

from ._common import (EIGHT_BIT_OPTIMIZERS, SHARDED, data_stage_of, declared_adapter, sm, strategy_path,
                      train_stages)

CODES = {
    "FT300": "`cpu_processes` with `device: cuda`",
    "FT301": "the precision is not supported by the target GPU",
    "FT302": "the attention backend cannot run on the target GPU or at this precision",
    "FT303": "`kernels: ftplan` does not support this model family",
    "FT304": "`kernels: ftplan` on the CPU runs Triton in interpreter mode",
    "FT305": "bitsandbytes (QLoRA, 8-bit optimizers) on hardware where it is limited",
    "FT306": "DeepSpeed or FSDP with `device: cpu`",
    "FT307": "packing with an attention backend that has no variable-length kernel",
    "FT308": "the model family has no implementation of this attention backend",
    "FT309": "`kernels: ftplan` with an adapter the fused LoRA kernels cannot run (DoRA, LoRA dropout, sharded)",
}

UNSUPPORTED_ATTENTION: dict[str, dict[str, str]] = {
    "gemma2": {"sdpa": "Gemma 2 soft-caps its attention logits, which torch's scaled_dot_product_attention cannot "
               "do (transformers' Gemma2 declares no sdpa support and refuses to load with it)"},
}
"""Family -> attention backend -> why transformers (5.17) cannot load the family with it."""

VARLEN_BACKENDS = ("flash_attention_2", "flash_attention_3", "flex_attention")
"""Attention backends that keep packed examples apart (variable-length / block-masked kernels)."""


def check(ctx: Context) -> list[Diagnostic]:
    """Every hardware rule for every training stage."""
    diags: list[Diagnostic] = []
    hw = ctx.pipeline.hardware
    cpu = hw.device == "cpu"
    gpu = ctx.gpu
    if not cpu and hw.cpu_processes != 1:
        diags.append(error("FT300", ("hardware", "cpu_processes"), f"`cpu_processes: {hw.cpu_processes}` sets the "
                           "training processes of `device: cpu`; with `device: cuda` every training stage runs one "
                           "process per GPU", hint="remove `cpu_processes` and set `gpus_per_node`, or set "
                           "`device: cpu` to train on CPU processes"))
    for i, stage, facts in train_stages(ctx):
        here = ("stages", i)
        if gpu is not None and stage.precision == "bf16" and not gpu.bf16:
            diags.append(error("FT301", here + ("precision",), f"bf16 needs compute capability 8.0 or newer; "
                               f"{gpu.name} is {sm(gpu)}",
                               hint="set `precision: fp16` (mixed precision with loss scaling) for this GPU"))
        diags += _attention(stage, here, gpu, cpu)
        diags += _family_attention(ctx, stage, here)
        diags += _packing(ctx, stage, here, cpu)
        diags += _kernels(ctx, stage, here, cpu)
        diags += _lora_kernels(ctx, i, stage, facts)
        diags += _bitsandbytes(stage, facts, here, gpu, cpu)
        if cpu and facts.strategy in SHARDED:
            diags.append(error("FT306", strategy_path(i, stage), f"`{facts.strategy}` needs GPUs: on `device: cpu` "
                               "accelerate (1.15) runs the processes as plain data parallelism over gloo and applies "
                               "neither DeepSpeed nor FSDP, which the runtime's preflight refuses",
                               hint="set `distributed: auto` (DDP over `cpu_processes` processes, or one process), "
                               "or `device: cuda` with a `gpu`"))
    return diags


def _attention(stage: TrainStage, here: KeyPath, gpu: GpuSpec | None, cpu: bool) -> list[Diagnostic]:
    attn = stage.attention
    path = here + ("attention",)
    if attn == "flex_attention" and cpu:
        return [error("FT302", path, "FlexAttention has no backward pass on the CPU (torch raises "
                      "NotImplementedError at the first step), so it cannot train on `device: cpu`",
                      hint="use `attention: sdpa` (with `packing: false` on the data stage) for CPU runs")]
    if attn not in ("flash_attention_2", "flash_attention_3"):
        return []
    label = "FlashAttention-2" if attn == "flash_attention_2" else "FlashAttention-3"
    if cpu:
        return [error("FT302", path, f"{label} needs a CUDA GPU; this pipeline runs on `device: cpu`",
                      hint="use `attention: sdpa` (with `packing: false` on the data stage)")]
    if stage.precision == "fp32":
        return [error("FT302", path, f"{label} runs in fp16/bf16 only; this stage trains in fp32",
                      hint="set `precision: bf16` (or fp16), or use `attention: sdpa`")]
    if gpu is None:
        return []
    if attn == "flash_attention_2" and not gpu.flash_attention_2:
        return [error("FT302", path, f"FlashAttention-2 needs an NVIDIA GPU of compute capability 8.0 or newer "
                      f"(or an AMD MI300); {gpu.name} is {sm(gpu)}",
                      hint="use `attention: sdpa`")]
    if attn == "flash_attention_3" and gpu.arch != "hopper":
        return [error("FT302", path, f"FlashAttention-3 needs a Hopper GPU (sm90); {gpu.name} is {sm(gpu)}",
                      hint="use `attention: flash_attention_2`" if gpu.flash_attention_2 else
                      "use `attention: sdpa`")]
    return []


def _family_attention(ctx: Context, stage: TrainStage, here: KeyPath) -> list[Diagnostic]:
    if ctx.shape is None:
        return []
    why = UNSUPPORTED_ATTENTION.get(ctx.shape.family, {}).get(stage.attention)
    if why is None:
        return []
    return [error("FT308", here + ("attention",), f"`attention: {stage.attention}` cannot load a "
                  f"{ctx.shape.family} model: {why}",
                  hint="set `attention: eager` (or `flex_attention`; `flash_attention_2` on GPUs that run it)")]


def _packing(ctx: Context, stage: TrainStage, here: KeyPath, cpu: bool) -> list[Diagnostic]:
    """Padding-free packing concatenates examples into one row; only a varlen-capable backend keeps them apart.

    transformers can rebuild a block-diagonal mask from the position ids for sdpa/eager, but that is a dense
    seq x seq mask per row (memory the estimate does not model) and depends on the collator passing no attention
    mask, so the plan requires a varlen backend instead."""
    found = data_stage_of(ctx, stage)
    if TRAIN_KINDS[stage.kind].group != "sft" or found is None or not found[1].packing:
        return []
    if stage.attention in VARLEN_BACKENDS:
        return []
    if cpu:
        hint = f"set `packing: false` on '{found[1].id}' (no variable-length attention trains on the CPU)"
    else:
        fix = "`attention: flex_attention`" if ctx.gpu is not None and not ctx.gpu.flash_attention_2 else (
            "`attention: flash_attention_2` (or `flex_attention`)")
        hint = f"use {fix}, or set `packing: false` on '{found[1].id}'"
    return [error("FT307", here + ("attention",), f"data stage '{found[1].id}' packs examples padding-free, but "
                  f"`attention: {stage.attention}` has no variable-length kernel: packed examples would attend "
                  "to each other", hint=hint)]


def _kernels(ctx: Context, stage: TrainStage, here: KeyPath, cpu: bool) -> list[Diagnostic]:
    if stage.kernels != "ftplan":
        return []
    path = here + ("kernels",)
    diags = []
    if ctx.shape is not None and ctx.shape.family not in KERNEL_FAMILIES:
        diags.append(error("FT303", path, f"`kernels: ftplan` supports the {', '.join(KERNEL_FAMILIES)} families; "
                           f"this model is {ctx.shape.family}", hint="set `kernels: none`"))
    if cpu:
        diags.append(warning("FT304", path, "`kernels: ftplan` on `device: cpu` runs the Triton kernels in "
                             "interpreter mode, which is much slower than the plain modules",
                             hint="set `kernels: none` for CPU runs (keep it for the GPU pipeline)"))
    return diags


def _lora_kernels(ctx: Context, i: int, stage: TrainStage, facts: TrainingFacts) -> list[Diagnostic]:
    """`kernels: ftplan` runs every LoRA layer of the attention and MLP projections through fused LoRA kernels
    (ftplan_runtime/kernels/lora.py), which compute plain LoRA without dropout on weights each process holds whole;
    the runtime's preflight refuses anything else, so check does first."""
    adapter = facts.adapter
    if stage.kernels != "ftplan" or not isinstance(adapter, LoraAdapter):
        return []
    own = declared_adapter(stage) is not None
    link = ctx.links.get(stage.id)
    origin = link.input.adapters[-1].origin if not own and link and link.input and link.input.adapters else None
    where = "" if own else f" (the adapter this stage continues, declared by '{origin or stage.input}')"
    diags = []
    if facts.strategy in ("zero3", "fsdp2") and fused_head(stage) is None:  # a fused loss head: FT320 says it
        diags.append(error("FT309", strategy_path(i, stage), "`kernels: ftplan` runs the LoRA layers through fused "
                           "kernels that read the base and adapter weights directly, which "
                           f"`{facts.strategy}` keeps sharded outside each module's own forward; the runtime stops "
                           "at preflight", hint=f"set `kernels: none` to keep `{facts.strategy}`, or "
                           "`distributed: zero2` (check the memory estimate)"))
    if adapter.type == "dora":
        path = ("stages", i, "adapter", "type") if own else ("stages", i, "kernels")
        diags.append(error("FT309", path, "`kernels: ftplan` runs the LoRA layers through fused kernels that "
                           f"compute plain LoRA; DoRA's magnitude-scaled update{where} is not one of them, and the "
                           "runtime stops at preflight",
                           hint="set `kernels: none` to train DoRA, or use `type: lora` with `kernels: ftplan`"))
    if adapter.dropout > 0:
        path = ("stages", i, "adapter", "dropout") if own else ("stages", i, "kernels")
        diags.append(error("FT309", path, f"`kernels: ftplan` fuses the LoRA layers, which needs adapter dropout 0; "
                           f"this adapter{where} has `dropout: {adapter.dropout}`, and the runtime stops at preflight",
                           hint="set `dropout: 0` on the adapter (it also saves the dropout masks' memory), or "
                           "`kernels: none` to keep the dropout"))
    return diags


def _bitsandbytes(stage: TrainStage, facts: TrainingFacts, here: KeyPath, gpu: GpuSpec | None,
                  cpu: bool) -> list[Diagnostic]:
    qlora = facts.method == "qlora"
    optim = stage.optimizer in EIGHT_BIT_OPTIMIZERS
    diags = []
    if gpu is not None and gpu.vendor != "nvidia" and (qlora or optim):
        what = " and ".join(w for w, on in (("QLoRA (4-bit NF4 base)", qlora),
                                             (f"`optimizer: {stage.optimizer}`", optim)) if on)
        path = here + (("adapter",) if qlora else ("optimizer",))
        diags.append(warning("FT305", path, f"{what} relies on bitsandbytes, whose {gpu.vendor.upper()} "
                             f"({gpu.arch}) support is less mature than on NVIDIA GPUs",
                             hint="make sure the image has the ROCm build of bitsandbytes, or use `lora` and "
                             "`optimizer: adamw`"))
    if cpu and stage.optimizer == "paged_adamw_8bit":
        diags.append(warning("FT305", here + ("optimizer",), "paged optimizers page GPU memory; on `device: cpu` "
                             "bitsandbytes falls back to the non-paged optimizer",
                             hint="use `optimizer: adamw_8bit` (or `adamw`) on the CPU"))
    return diags
