"""Optimisation settings shared by every training stage (SFT, CPT, DPO, ORPO, KTO and reward)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from .base import FtplanModel

Tracker = Literal["tensorboard", "wandb", "mlflow"]
"""An experiment tracker the runtime can report to."""

DistributedStrategy = Literal["auto", "none", "ddp", "zero1", "zero2", "zero3", "fsdp2"]


class DistributedSpec(FtplanModel):
    """How training is spread over GPUs."""

    strategy: DistributedStrategy = "auto"
    """``auto`` (``none`` on one GPU, ``ddp`` on more), ``none``, ``ddp``, ``zero1``/``zero2``/``zero3``
    (DeepSpeed) or ``fsdp2`` (PyTorch FSDP2)."""

    offload_optimizer: bool = False
    """Keep optimizer states in CPU memory (ZeRO-2/3, FSDP2)."""

    offload_params: bool = False
    """Keep parameters in CPU memory between uses (ZeRO-3, FSDP2)."""


class TrainingArgs(FtplanModel):
    """Optimiser, schedule, batch, memory and logging settings of a training stage."""

    learning_rate: float = Field(gt=0.0, le=1.0)
    """Peak learning rate."""

    precision: Literal["bf16", "fp16", "fp32"] = "bf16"
    """Compute precision (mixed precision for bf16/fp16). bf16 needs compute capability 8.0 or newer."""

    optimizer: Literal["adamw", "adamw_8bit", "paged_adamw_8bit"] = "adamw"
    """``adamw`` (fused torch AdamW), ``adamw_8bit`` or ``paged_adamw_8bit`` (bitsandbytes)."""

    weight_decay: float = Field(default=0.0, ge=0.0, le=1.0)
    """Decoupled weight decay."""

    max_grad_norm: float = Field(default=1.0, gt=0.0)
    """Gradient clipping norm."""

    lr_scheduler: Literal["cosine", "linear", "constant", "constant_with_warmup"] = "cosine"
    """Learning-rate schedule after warm-up."""

    warmup_ratio: float | None = Field(default=None, ge=0.0, lt=1.0)
    """Warm-up length as a fraction of all steps. Choose this or ``warmup_steps``."""

    warmup_steps: int | None = Field(default=None, ge=0)
    """Warm-up length in optimizer steps. Choose this or ``warmup_ratio``."""

    epochs: float | None = Field(default=None, gt=0.0, le=1000.0)
    """Passes over the training data. Choose this or ``max_steps`` (default: 1 epoch)."""

    max_steps: int | None = Field(default=None, ge=1)
    """Optimizer steps to run; overrides ``epochs``. Choose this or ``epochs``."""

    micro_batch: int = Field(default=1, ge=1, le=4096)
    """Sequences per GPU per forward pass (a DPO pair counts as one)."""

    grad_accum: int = Field(default=1, ge=1, le=65536)
    """Micro-batches accumulated per optimizer step."""

    gradient_checkpointing: Literal[True, False, "offload"] = True
    """Recompute each decoder layer in backward instead of keeping its activations; ``offload`` also keeps the
    one tensor each layer holds for that, its input, in host memory. That input (layers × tokens × hidden size)
    is what stays on the GPU under checkpointing and grows with the context: ``offload`` copies it to pinned host
    memory during the forward and back, fetched ahead, before the layer is recomputed (Unsloth's
    ``use_gradient_checkpointing="unsloth"``, Axolotl's ``gradient_checkpointing: offload``). The copies overlap
    compute (on an H100, Llama-3.1-8B QLoRA at 4k to 32k tokens per step ran 0-1.2 % slower), but they cross PCIe
    and need that much host memory per GPU, which ``check`` reports. Default
    ``true``: a stage that fits keeps its checkpoints on the GPU and pays for neither; ``check`` suggests
    ``offload`` where it makes a stage fit. On ``device: cpu`` ``offload`` runs as ``true``."""

    attention: Literal["sdpa", "flash_attention_2", "flash_attention_3", "flex_attention", "eager"] = "sdpa"
    """Attention backend; the runtime fails if it cannot use exactly this one."""

    kernels: Literal["ftplan", "none"] = "none"
    """``ftplan``: fused Triton RMSNorm, SwiGLU, RoPE and linear cross-entropy (never materialises the
    logits); ``none``: plain transformers modules."""

    distributed: DistributedStrategy | DistributedSpec = "auto"
    """Strategy name (``zero3``) or ``{strategy, offload_optimizer, offload_params}``."""

    eval_steps: int | None = Field(default=None, ge=1)
    """Evaluate on the validation split every N steps (needs ``val_fraction`` > 0 in the data stage)."""

    save_steps: int | None = Field(default=None, ge=1)
    """Save a resumable checkpoint every N steps (default: only at the end)."""

    save_total_limit: int = Field(default=2, ge=1)
    """Checkpoints kept on disk (oldest deleted first)."""

    logging_steps: int = Field(default=10, ge=1)
    """Log loss and learning rate every N steps."""

    load_best_model_at_end: bool = False
    """Keep the checkpoint with the best validation loss (needs ``eval_steps`` dividing ``save_steps``)."""

    seed: int = Field(default=42, ge=0)
    """Seed for initialisation, data order and dropout."""

    report_to: list[Tracker] = Field(default_factory=lambda: list[Tracker](["tensorboard"]))
    """Experiment trackers (tensorboard logs go to the stage's output folder)."""

    def distributed_spec(self) -> DistributedSpec:
        """The distributed settings as a ``DistributedSpec`` (a bare strategy name expanded)."""
        d = self.distributed
        return DistributedSpec(strategy=d) if isinstance(d, str) else d
