"""The arguments file a compiled stage hands to the runtime (``stages/<id>/args.json``), and every fact the
compiler and the runtime must agree on.

It is the contract between the compiler and ``ftplan_runtime``: the fully resolved stage, where to read and
write, and what the plan promised about the hardware, which the runtime asserts before it does any work. All
paths are relative to the project root (the folder of the pipeline file), where the launch scripts ``cd``.

Beside the file's format, this module names what both sides use: the output subfolders (``ADAPTER_SUBDIR``,
``MODEL_SUBDIR``), the model families the GGUF exporter and the fused kernels support (``GGUF_FAMILIES``,
``KERNEL_FAMILIES``), which fused head a stage's loss runs through (``fused_head``), the requeue exit code, the
completion stamp and the install command. The compiler's checks and the runtime read them from here;
``tests/runtime/test_contract.py`` holds both sides to them.
"""

from __future__ import annotations

from typing import Final, Literal

from pydantic import Field

from .base import FtplanModel, NonEmptyStr, StageId
from .model import ModelSpec
from .stages import Stage

ARGS_FORMAT: Final = 1
"""Version of this file's format; bumped on incompatible changes."""

ADAPTER_SUBDIR = "adapter"
"""Subfolder of a stage's output folder holding its trained PEFT adapter (and tokenizer)."""

MODEL_SUBDIR = "model"
"""Subfolder of a stage's output folder holding full weights (a full fine-tune or a merge), with the tokenizer."""

GGUF_FAMILIES: tuple[str, ...] = ("llama", "mistral", "qwen2")
"""Model families (HF ``model_type``) the GGUF exporter writes; check refuses a GGUF stage for any other (FT412)."""

KERNEL_FAMILIES: tuple[str, ...] = ("llama", "mistral", "qwen2", "qwen3")
"""Model families ``kernels: ftplan`` patches (RMSNorm, SwiGLU, RoPE) among those the compiler knows; check refuses
``kernels: ftplan`` for any other (FT303)."""

FusedHead = Literal["cross_entropy", "logprobs"]
"""The logits-free head ``kernels: ftplan`` computes a training stage's loss through (``fused_head``)."""


def fused_head(stage: Stage) -> FusedHead | None:
    """The head ``kernels: ftplan`` gives a training stage's loss: the fused linear cross-entropy (SFT, CPT:
    ``kernels.causal_lm_loss``), the fused linear log-probs (DPO and KTO, whose TRL trainers score answers by their
    per-token log-probs: ``ftplan_runtime.logprob_head``), or None where the trainer takes the full logits itself
    (ORPO, and SimPO on TRL's CPO trainer) or there is no vocabulary head (a reward model). Its layer kernels
    (norms, SwiGLU, RoPE, LoRA) apply either way. Both the checks (FT320, FT322, FT326) and the estimator read it;
    the runtime's trainers follow it (``tests/runtime/test_contract.py``)."""
    kind = stage.kind
    if kind in ("sft", "cpt"):
        return "cross_entropy"
    if kind == "kto" or (kind == "dpo" and getattr(stage, "loss_type", None) != "simpo"):
        return "logprobs"
    return None


class Promise(FtplanModel):
    """What the plan assumed about the machine; the runtime fails at start when reality differs."""

    device: Literal["cuda", "cpu"]
    """Device type."""
    world_size: int = Field(ge=1)
    """Training processes in total."""
    num_machines: int = Field(ge=1)
    """Nodes."""
    distributed_type: Literal["NO", "MULTI_GPU", "DEEPSPEED", "FSDP"]
    """accelerate's distributed type."""
    zero_stage: int | None = None
    """DeepSpeed ZeRO stage, when DeepSpeed is used."""
    precision: Literal["bf16", "fp16", "fp32"]
    """Compute precision."""
    attention: str
    """Attention backend (``attn_implementation``)."""
    kernels: Literal["ftplan", "none"]
    """Kernel set applied to the model."""
    gpu_name: str | None = None
    """Catalog name of the GPU the plan was checked against."""
    gpu_memory_mib: int | None = None
    """Its memory; the runtime fails when the visible GPU has less (5 % tolerance)."""


QuantStorage = Literal["uint8", "bfloat16", "float16", "float32"]
"""The torch dtype (by name) bitsandbytes stores a QLoRA base's packed 4-bit codes in (``bnb_4bit_quant_storage``)."""

_COMPUTE_STORAGE: dict[str, QuantStorage] = {"bf16": "bfloat16", "fp16": "float16", "fp32": "float32"}


def shards_parameters(promise: Promise) -> bool:
    """The plan partitions every parameter across its processes, a 4-bit base's included: DeepSpeed ZeRO-3 or
    FSDP2 (the estimator's ``Resolved.sharded_weights``)."""
    return promise.zero_stage == 3 or promise.distributed_type == "FSDP"


def quant_storage(promise: Promise) -> QuantStorage:
    """The dtype a QLoRA stage stores its packed 4-bit codes in: bitsandbytes' ``uint8`` unless the plan shards
    parameters, and then the stage's compute dtype (the FSDP-QLoRA recipe). FSDP2 shards floating tensors only
    (accelerate leaves a ``uint8`` 4-bit weight out of ``fully_shard``, whole on every GPU), and both FSDP2's
    ``MixedPrecisionPolicy`` and DeepSpeed's bf16/fp16 engine cast the parameters they gather or hold to the compute
    dtype: codes stored in any other floating dtype would be converted as numbers and destroyed. The runtime loads
    with it and its preflight checks the loaded weights (``ftplan_runtime.model_loading``)."""
    return _COMPUTE_STORAGE[promise.precision] if shards_parameters(promise) else "uint8"


def loads_4bit_on_host(promise: Promise) -> bool:
    """A QLoRA base is quantized in host memory rather than on the GPU: under FSDP2, whose ``fully_shard`` then moves
    it onto the GPU one wrapped layer at a time, so no GPU holds the whole 4-bit model (accelerate's rank-0
    ``cpu_ram_efficient_loading`` does not apply to 4-bit weights: every process loads the whole base). Under
    ZeRO-3 the base is quantized on each GPU, which holds it whole until DeepSpeed partitions it (DeepSpeed moves
    an unpartitioned model onto the device first, wherever it was loaded; transformers builds a 4-bit model without
    ``zero.Init``): the estimator's model-load phase."""
    return promise.distributed_type == "FSDP"


class AdapterRef(FtplanModel):
    """An adapter trained by an earlier stage."""

    stage: str
    """Stage that trained it."""
    path: str
    """Its saved PEFT folder."""
    type: Literal["lora", "qlora", "dora"]
    """Adapter type."""


class ModelSource(FtplanModel):
    """The model a stage starts from: full weights, then adapters."""

    weights: NonEmptyStr
    """Hub id or folder of the full weights (``model.base`` or an earlier stage's ``model/``)."""
    revision: str | None = None
    """Hub revision of ``weights`` (only for ``model.base``)."""
    merge: list[AdapterRef] = Field(default_factory=list)
    """Adapters merged into the weights, in order, before this stage starts."""
    continue_adapter: AdapterRef | None = None
    """The adapter this stage keeps training (``adapter: continue``)."""
    tokenizer: NonEmptyStr
    """Tokenizer hub id or folder."""


class UpstreamRef(FtplanModel):
    """An earlier stage whose output this stage reads."""

    stage: StageId
    """Id of that stage."""
    args: NonEmptyStr
    """Its ``args.json``, relative to the project root (``<plan folder>/stages/<id>/args.json``)."""


class RuntimeArgs(FtplanModel):
    """Everything one stage run needs."""

    format: Literal[1] = ARGS_FORMAT
    """Format version of this file."""
    pipeline: str
    """Pipeline name."""
    stage: Stage
    """The stage, fully resolved (defaults filled in)."""
    model: ModelSpec
    """The pipeline's model section."""
    source: ModelSource | None = None
    """Model the stage starts from (training, merge and GGUF stages)."""
    data_dir: str | None = None
    """Output folder of the data stage (training stages)."""
    output_dir: str
    """This stage's output folder."""
    promise: Promise
    """What the runtime must verify before starting."""
    estimate_peak_gib: float | None = None
    """The plan's peak-memory estimate per GPU (for the metrics report)."""
    upstream: list[UpstreamRef] = Field(default_factory=list)
    """The earlier stages whose outputs this stage reads (its data stage, the stage that wrote its weights, the
    stages whose adapters it merges or continues), in that order. The stage counts as complete only while each
    of them is complete too (``ftplan_runtime.stamps``)."""

REQUEUE_EXIT_CODE = 75
"""Exit code of a stage that saved a checkpoint on SIGTERM/SIGUSR1 (preemption or time limit) and wants to be
requeued; the sbatch script turns it into ``scontrol requeue``. (75 is EX_TEMPFAIL.)"""

COMPLETE_MARKER = "_COMPLETE"
"""The completion stamp: a JSON file a stage writes into its output folder last, after its outputs. It records
the sha256 of the stage's ``args.json`` and the size, mtime and sha256 of every local file the stage read
(datasets, tokenizer and chat-template files, base weights, the outputs of the stages it consumes). The stage is
complete while the stamp matches those files and every stage it consumes is complete
(``python -m ftplan_runtime.stamps check ARGS``); a run removes it before it starts writing."""

RUNTIME_INSTALL = "pip install 'ftplan[runtime,gpu]' (pip install 'ftplan[runtime]' on CPU-only machines)"
"""How to install the runtime and the packages its stages need; the launch scripts and
``python -m ftplan_runtime.installed`` say it when something is missing."""

CheckpointMode = Literal["off", "on", "offload"]
"""How a training stage keeps what the backward needs: every layer's activations (``off``), each decoder layer's
input only, recomputing the rest (``on``), or that input in pinned host memory (``offload``)."""

OFFLOAD_PREFETCH: Final = 1
"""Under ``offload``, how many checkpoint inputs the runtime fetches back ahead of the layer being recomputed
(``ftplan_runtime.offload``); the estimator counts this many plus that layer's own on the GPU."""


def checkpoint_mode(gradient_checkpointing: bool | str, device: str) -> CheckpointMode:
    """The checkpointing a training stage runs with (``gradient_checkpointing`` as written, on ``device``):
    ``offload`` frees device memory, so on a CPU device, where the checkpoints already are in host memory, it runs
    as ``on`` (check says so: FT338). The compiler's resolved facts and the runtime both read it from here."""
    if gradient_checkpointing == "offload":
        return "offload" if device == "cuda" else "on"
    return "on" if gradient_checkpointing else "off"
