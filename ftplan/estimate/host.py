"""Host-memory estimates: the stages that run on the CPU (LoRA merge, GGUF export), and what a training stage on GPUs
keeps in host memory for its activation checkpoints (``gradient_checkpointing: offload``)."""

from __future__ import annotations

from ..catalog.architecture import largest_layer_params, param_counts
from ..catalog.models import ModelShape
from ..schemas import GgufStage, MergeStage
from ..units import num, params
from .activations import LayerActivations, checkpoints
from .resolved import Resolved
from .types import StageEstimate, Term

MERGE_DTYPE_BYTES = {"bf16": 2, "fp16": 2, "fp32": 4}

GGUF_BYTES_PER_PARAM = {"f16": 2.0, "bf16": 2.0, "q8_0": 34 / 32, "q4_k_m": 4.85 / 8}
"""Output size per parameter: q8_0 blocks of 32 int8 + an fp16 scale; q4_k_m ~4.85 bits (mostly Q4_K at 4.5 bits
with some Q6_K tensors, llama.cpp ``quantize`` tables)."""


def merge(shape: ModelShape, stage: MergeStage) -> StageEstimate:
    """Weights loaded at the merge dtype, plus one layer's worth of merge arithmetic."""
    b = MERGE_DTYPE_BYTES[stage.dtype]
    total = param_counts(shape).total
    big = largest_layer_params(shape)
    terms = (Term(f"weights ({stage.dtype})", total * b, f"{params(total)} params × {b} B"),
             Term("one layer in flight", big * b, f"largest tensor {params(big)} × {b} B (W + scale * B @ A)"))
    return StageEstimate(stage.id, 0, None, "n/a", terms, host_bytes=sum(t.bytes for t in terms),
                         notes=("runs on the CPU: host memory",))


def gguf(shape: ModelShape, stage: GgufStage) -> StageEstimate:
    """The largest output file held while it is written (q4_k_m is quantized from an f16 export); with ``verify``,
    the HF model loaded in fp32 beside it (``gguf_verify`` compares llama.cpp's logits with it)."""
    total = param_counts(shape).total
    outputs = set(stage.quant) | ({"f16"} if "q4_k_m" in stage.quant else set())
    name = max(outputs, key=lambda q: GGUF_BYTES_PER_PARAM[q])
    per = GGUF_BYTES_PER_PARAM[name]
    largest = Term(f"largest output ({name})", int(total * per), f"{params(total)} params × {per:.3g} B")
    terms: tuple[Term, ...] = (largest,)
    if stage.verify:
        terms += (Term("HF model for verification (fp32)", total * 4, f"{params(total)} params × 4 B"),)
    return StageEstimate(stage.id, 0, None, "n/a", terms, host_bytes=sum(t.bytes for t in terms),
                         notes=("runs on the CPU: host memory",))


PINNED_CHECKPOINTS = "activation checkpoints (pinned host memory)"
"""The name of the host-memory term of ``gradient_checkpointing: offload`` (``StageEstimate.host_terms``)."""


def offloaded_checkpoints(r: Resolved, acts: LayerActivations) -> Term | None:
    """Pinned host memory one training process holds for ``gradient_checkpointing: offload`` (None without it):
    every decoder layer's input at a full micro-batch. The runtime keeps one page-locked buffer per layer, grown to
    the largest input it has seen and reused for every later step (``ftplan_runtime.offload``), so this is also
    what it holds for the whole run, to within a page per layer."""
    if not (r.gc and r.offload_checkpoints):
        return None
    layers, h = checkpoints(r).host, r.shape.hidden_size
    return Term(PINNED_CHECKPOINTS, layers * acts.ckpt_tok * r.tokens,
                f"{layers} layers × {num(r.tokens)} tokens × {acts.ckpt_tok // h} B × {num(h)}")
