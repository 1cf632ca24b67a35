"""A training stage reduced to what memory depends on: method, dtypes, sharding, batch, loop.

``stage.setup`` turns a training stage's ``TrainingFacts`` (``resolved_stage.py``: strategy, batch, adapter,
reference) plus the model shape into a ``Resolved`` record; every estimator module reads only that record. The dtype rules follow what the runtime does (``runtime/model_loading.py``):
weights load at the stage precision (fp16 full fine-tunes at fp32, as AMP masters), a QLoRA base keeps its
embeddings, lm_head and norms at the compute dtype (the plain HF+PEFT loop runs ``prepare_model_for_kbit_training``,
which upcasts them to fp32, hence an fp32 residual stream: ``Loop.kbit_upcast``), and LoRA adapters are fp32
(PEFT ``autocast_adapter_dtype``) except under ZeRO-3 without QLoRA.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from ..catalog.models import ModelShape
from ..resolved_stage import Method, Strategy
from ..schemas import TRAIN_KINDS, LoraAdapter, TrainStage

__all__ = ["BASELINE_LOOP", "Loop", "LossPath", "Method", "Resolved", "Strategy", "runtime_loop"]

LossPath = Literal["hf", "trl_chunked", "fused", "fused_logprobs", "orpo", "score"]
"""How the loss is computed: full logits (``hf``), TRL's chunked LM head, the fused linear cross-entropy
(``kernels: ftplan`` on SFT and CPT), the fused linear log-probs (``fused_logprobs``: ``kernels: ftplan`` on DPO and
KTO, the stages ``runtime_args.fused_head`` gives that head), ORPO's full logits with a second log-softmax over the
chosen half (``orpo``; SimPO with a supervised term on TRL's CPO trainer computes the same), or a reward model's
one-value classification head, with no vocabulary logits at all (``score``). SimPO without a supervised term takes
the full logits (``hf``)."""


@dataclass(frozen=True)
class Loop:
    """How the training step is driven: the software-stack choices that change memory, not the pipeline's."""

    autocast: bool
    """Mixed precision through ``torch.autocast`` (the HF Trainer with bf16/fp16)."""
    chunked_lm_head: bool
    """``kernels: none`` computes the loss with TRL's fused LM head (TRL >= 1.16 SFT/DPO trainers) instead of
    full logits + ``ForCausalLMLoss``."""
    holds_outputs: bool
    """The step keeps the model output (logits) alive through backward and into the next forward."""
    padded: bool
    """Batches carry an attention mask (padded rows), so SDPA materialises a 4D mask and repeats K/V."""
    kbit_upcast: bool = False
    """A QLoRA base goes through PEFT's ``prepare_model_for_kbit_training``: its 16-bit weights become fp32. The
    runtime does not (``runtime/model_loading.py``)."""
    peft_lora_layers: bool = False
    """With ``kernels: ftplan``, the LoRA layers still run through PEFT instead of the runtime's fused LoRA
    Functions (the other kernels applied): ``bench/runtime_step_probe.py --no-lora-op``, and the runtime before the
    fused Functions existed (measurements older than commit 0d7b6be)."""
    name: str = ""


BASELINE_LOOP = Loop(autocast=False, chunked_lm_head=False, holds_outputs=True, padded=False, kbit_upcast=True,
                     name="plain HF+PEFT step (baselines.md)")
"""The loop of the baseline script the measured points of baselines.md were taken with: no autocast, ``out = model(ids, labels=ids)`` kept while
``out.loss.backward()`` runs, unpadded random ids, QLoRA through ``prepare_model_for_kbit_training``. The
measured points in baselines.md use it."""


def runtime_loop(stage: TrainStage, *, packed: bool, precision_autocast: bool = True) -> Loop:
    """The loop the compiled plan runs: TRL trainers (HF Trainer with autocast for bf16/fp16). Only the SFT group
    (SFT, CPT) can be packed; the preference and KTO collators pad every batch."""
    autocast = precision_autocast and stage.precision in ("bf16", "fp16")
    padded = TRAIN_KINDS[stage.kind].group != "sft" or (stage.micro_batch > 1 and not packed)
    full_logits = stage.kind == "orpo" or getattr(stage, "loss_type", None) == "simpo"  # ORPO and CPO trainers
    return Loop(autocast=autocast, chunked_lm_head=not full_logits, holds_outputs=False, padded=padded,
                name="ftplan runtime (TRL trainer)")


@dataclass(frozen=True)
class Resolved:
    """Everything the memory terms need about one training stage on one GPU."""

    shape: ModelShape
    method: Method
    lora: LoraAdapter | None
    precision: Literal["bf16", "fp16", "fp32"]
    loop: Loop
    seq: int
    micro_batch: int
    grad_accum: int
    sequences: int
    """Sequences per micro-step per GPU (pair kinds: chosen + rejected = 2 × micro_batch)."""
    tokens_per_step: int
    """Tokens per optimizer step over all GPUs (``Batch.tokens_per_step``)."""
    gc: bool
    """Gradient checkpointing: each decoder layer keeps only its input and is recomputed in backward."""
    attention: str
    kernels: Literal["ftplan", "none"]
    optimizer: str
    strategy: Strategy
    offload_optimizer: bool
    offload_params: bool
    world: int
    nodes: int
    kind: str
    """The training kind (``sft``, ``cpt``, ``dpo``, ``orpo``, ``kto``, ``reward``)."""
    reference: Literal["none", "adapter", "adapter_copy", "model_copy"]
    """DPO/KTO reference during training: none (no reference, or precomputed), the adapter-disabled policy, a
    frozen copy of the continued adapter (TRL's ``ref`` adapter), or a frozen copy of the full weights."""
    nvls: bool = False
    """NCCL NVLS buffers are allocated (NVLink Hopper node, >2 GPUs, not disabled)."""
    continues: bool = False
    """The stage keeps training its input's adapter (``adapter: continue``): its type cannot change."""
    kl_estimate: bool = True
    """A KTO stage's loss estimates a KL term (``loss_type: kto``; ``apo_zero_unpaired`` does not)."""
    simpo: bool = False
    """A DPO stage with ``loss_type: simpo``: TRL's CPO trainer takes the full logits of chosen and rejected from one
    forward, with no reference."""
    chosen_nll: bool = False
    """SimPO with ``sft_weight``: the CPO trainer adds a cross-entropy over the chosen half of those logits."""
    offload_checkpoints: bool = False
    """``gradient_checkpointing: offload`` on a GPU: the layer inputs checkpointing keeps are in pinned host memory,
    fetched back ahead of each layer's recompute (``TrainingFacts.checkpointing``)."""

    @property
    def tokens(self) -> int:
        """Tokens per micro-step per GPU."""
        return self.sequences * self.seq

    @property
    def quantized(self) -> bool:
        """Decoder linears are NF4."""
        return self.method == "qlora"

    @property
    def full(self) -> bool:
        """Every weight trains."""
        return self.method == "full"

    @property
    def fused_lora(self) -> bool:
        """The adapters run through the runtime's fused LoRA Functions (``kernels: ftplan`` on a LoRA or QLoRA
        stage; the runtime refuses to leave any LoRA layer of the attention or the MLP to PEFT)."""
        return self.kernels == "ftplan" and self.method in ("lora", "qlora") and not self.loop.peft_lora_layers

    @property
    def param_bytes(self) -> int:
        """Bytes of a 16/32-bit base weight as loaded (fp16 full fine-tunes keep fp32 masters as the weights)."""
        if self.precision == "fp32" or (self.precision == "fp16" and self.full):
            return 4
        return 2

    @property
    def upcast_base(self) -> bool:
        """The 16-bit parts of a 4-bit base were upcast to fp32 (``Loop.kbit_upcast``)."""
        return self.quantized and self.loop.kbit_upcast

    @property
    def stream_bytes(self) -> int:
        """Residual stream / norm / elementwise dtype: fp32 with fp32 weights or an upcast 4-bit base, else
        16-bit."""
        return 4 if (self.upcast_base or self.param_bytes == 4) else 2

    @property
    def linear_out_bytes(self) -> int:
        """Dtype of linear outputs: bitsandbytes casts back to the input dtype; autocast gives 16-bit."""
        if self.quantized:
            return self.stream_bytes
        return 2 if self.loop.autocast else self.stream_bytes

    @property
    def attn_bytes(self) -> int:
        """Dtype of q, k, v inside attention (autocast casts them to 16-bit)."""
        return 2 if self.loop.autocast else self.stream_bytes

    @property
    def adapter_bytes(self) -> int:
        """LoRA weight dtype: fp32 (PEFT ``autocast_adapter_dtype``) except ZeRO-3 without QLoRA (base dtype)."""
        return 2 if (self.strategy == "zero3" and not self.quantized) else 4

    @property
    def lm_head_bytes(self) -> int:
        """Dtype of the lm_head weight (fp32 on an upcast 4-bit base)."""
        return 4 if self.upcast_base else self.param_bytes

    @property
    def logits_bytes(self) -> int:
        """Dtype of the logits the head produces."""
        return 2 if self.loop.autocast else self.lm_head_bytes

    @property
    def math_attention(self) -> bool:
        """SDPA falls back to the math kernel (fp32 q/k/v with GQA and no mask: neither flash nor
        memory-efficient accepts it) and materialises the (heads × s × s) scores."""
        gqa = self.shape.num_kv_heads < self.shape.num_heads
        return self.attention == "sdpa" and self.attn_bytes == 4 and gqa and not self.loop.padded

    @property
    def reward(self) -> bool:
        """A reward model: a sequence classifier with a one-value ``score`` head instead of ``lm_head``."""
        return self.kind == "reward"

    @property
    def kl_batch(self) -> bool:
        """KTO's KL estimate: a no-grad policy forward (and, with a live reference, a reference forward) over the
        micro-batch's mismatched prompt/answer pairs."""
        return self.kind == "kto" and self.kl_estimate

    @property
    def loss_path(self) -> LossPath:
        """How the logits and loss are computed."""
        if self.reward:
            return "score"
        if self.kind == "orpo" or (self.simpo and self.chosen_nll):
            return "orpo"
        if self.simpo:
            return "hf"
        if self.kernels == "ftplan":
            return "fused_logprobs" if self.kind in ("dpo", "kto") else "fused"
        return "trl_chunked" if self.loop.chunked_lm_head else "hf"

    @property
    def half(self) -> str:
        """Name of the 16-bit dtype of this stage (fp16 or bf16)."""
        return "fp16" if self.precision == "fp16" else "bf16"

    @property
    def sharded_weights(self) -> bool:
        """Weights are partitioned across GPUs (ZeRO-3, FSDP2)."""
        return self.strategy in ("zero3", "fsdp2")
