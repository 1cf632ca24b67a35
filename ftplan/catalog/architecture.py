"""Quantities derived from a ModelShape: linear layers, parameter counts, LoRA sizes. Pure arithmetic, no torch.

Module names and layouts follow the Hugging Face implementations (``modeling_<family>.py``): Llama-style
``self_attn.{q,k,v,o}_proj`` and ``mlp.{gate,up,down}_proj``; Phi-3's fused ``qkv_proj`` and ``gate_up_proj``;
Mixtral's router ``block_sparse_moe.gate`` and experts ``block_sparse_moe.experts.N.{w1,w3,w2}`` (the names PEFT
``target_modules`` accept; transformers 5 stores the experts fused, see :func:`largest_layer_params`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from ftplan.catalog.models import ModelShape
from ftplan.schemas.runtime_args import GGUF_FAMILIES as _CONTRACT_GGUF_FAMILIES

__all__ = [
    "LinearModule", "ParamCounts", "linear_modules", "param_counts", "lora_params", "unknown_targets",
    "target_module_names", "matmul_params", "largest_layer_params", "gguf_supported", "GGUF_FAMILIES",
]

ALL_LINEAR = "all-linear"
GGUF_FAMILIES: frozenset[str] = frozenset(_CONTRACT_GGUF_FAMILIES)
"""Families the GGUF export stage supports (the contract's ``schemas.runtime_args.GGUF_FAMILIES``)."""

# Targets outside the decoder layers that PEFT can adapt: (module path, counted once).
_OUTER_TARGETS = {"lm_head": ("lm_head",), "embed_tokens": ("model", "embed_tokens")}


@dataclass(frozen=True)
class LinearModule:
    """One kind of linear layer inside a decoder layer."""

    name: str
    """Module name as in HF / PEFT ``target_modules``, e.g. ``"q_proj"``."""
    d_in: int
    """Input features."""
    d_out: int
    """Output features."""
    per_layer: int
    """How many per decoder layer (MoE: one per expert)."""
    bias: bool = False
    """The layer carries a bias vector."""
    path: str = ""
    """Path inside a decoder layer, ``*`` standing for the expert index, e.g. ``"self_attn.q_proj"``."""
    expert: bool = False
    """An MoE expert projection (only ``experts_per_token`` of them run per token)."""

    @property
    def weight_params(self) -> int:
        """Weight elements of one instance."""
        return self.d_in * self.d_out

    @property
    def params(self) -> int:
        """Weight plus bias elements of one instance."""
        return self.d_in * self.d_out + (self.d_out if self.bias else 0)


@dataclass(frozen=True)
class ParamCounts:
    """Parameter counts of a model, by part."""

    embedding: int
    """Input embedding matrix (vocab x hidden)."""
    lm_head: int
    """Output projection; 0 when tied to the embedding."""
    per_layer_linear: int
    """Linear weights and biases in one decoder layer (all experts, router included)."""
    per_layer_norm: int
    """Norm weights in one decoder layer."""
    final_norm: int
    """The norm before lm_head."""
    total: int
    """Everything: embedding + lm_head + layers x (linear + norm) + final norm."""


def linear_modules(shape: ModelShape) -> tuple[LinearModule, ...]:
    """The linear layers of one decoder layer in a fixed order: attention, then router, then MLP / experts."""
    h, hd = shape.hidden_size, shape.head_dim
    q_out, kv_out = shape.num_heads * hd, shape.num_kv_heads * hd
    qkv_bias = shape.attention_bias
    o_bias = shape.attention_bias and shape.family != "qwen2"  # Qwen2 biases q/k/v only; the others use one flag
    if shape.fused_qkv:
        attn = [LinearModule("qkv_proj", h, q_out + 2 * kv_out, 1, qkv_bias, "self_attn.qkv_proj")]
    else:
        attn = [
            LinearModule("q_proj", h, q_out, 1, qkv_bias, "self_attn.q_proj"),
            LinearModule("k_proj", h, kv_out, 1, qkv_bias, "self_attn.k_proj"),
            LinearModule("v_proj", h, kv_out, 1, qkv_bias, "self_attn.v_proj"),
        ]
    attn.append(LinearModule("o_proj", q_out, h, 1, o_bias, "self_attn.o_proj"))

    inter, experts = shape.intermediate_size, shape.num_experts
    if experts:
        moe = "block_sparse_moe"
        mlp = [
            LinearModule("gate", h, experts, 1, False, f"{moe}.gate"),
            LinearModule("w1", h, inter, experts, False, f"{moe}.experts.*.w1", expert=True),
            LinearModule("w3", h, inter, experts, False, f"{moe}.experts.*.w3", expert=True),
            LinearModule("w2", inter, h, experts, False, f"{moe}.experts.*.w2", expert=True),
        ]
    elif shape.fused_gate_up:
        mlp = [
            LinearModule("gate_up_proj", h, 2 * inter, 1, False, "mlp.gate_up_proj"),
            LinearModule("down_proj", inter, h, 1, False, "mlp.down_proj"),
        ]
    else:
        mlp = [
            LinearModule("gate_proj", h, inter, 1, False, "mlp.gate_proj"),
            LinearModule("up_proj", h, inter, 1, False, "mlp.up_proj"),
            LinearModule("down_proj", inter, h, 1, False, "mlp.down_proj"),
        ]
    return tuple(attn + mlp)


def target_module_names(shape: ModelShape) -> tuple[str, ...]:
    """Names of the decoder-layer linears, usable as PEFT ``target_modules``, in :func:`linear_modules` order."""
    return tuple(module.name for module in linear_modules(shape))


def _norms_per_layer(shape: ModelShape) -> int:
    h = shape.hidden_size
    # input + post-attention RMSNorm; Gemma 2/3 add pre- and post-feedforward norms (modeling_gemma2/3.py)
    norms = 4 * h if shape.family in ("gemma2", "gemma3") else 2 * h
    if shape.family in ("qwen3", "gemma3"):  # q_norm and k_norm over head_dim
        norms += 2 * shape.head_dim
    return norms


def param_counts(shape: ModelShape) -> ParamCounts:
    """Exact parameter counts of the decoder (for Gemma 3 4B+ the text tower only)."""
    embedding = shape.vocab_size * shape.hidden_size
    lm_head = 0 if shape.tie_word_embeddings else embedding
    per_layer_linear = sum(m.params * m.per_layer for m in linear_modules(shape))
    per_layer_norm = _norms_per_layer(shape)
    final_norm = shape.hidden_size
    total = embedding + lm_head + shape.num_layers * (per_layer_linear + per_layer_norm) + final_norm
    return ParamCounts(embedding, lm_head, per_layer_linear, per_layer_norm, final_norm, total)


def matmul_params(shape: ModelShape) -> int:
    """Weights multiplied per token: decoder linears (MoE: only the routed experts) plus the lm_head projection.

    Counts weights only (no biases, norms or embedding lookup). The lm_head matmul is counted even when tied.
    """
    per_layer = 0
    for module in linear_modules(shape):
        copies = shape.experts_per_token if module.expert else module.per_layer
        per_layer += module.weight_params * copies
    return shape.num_layers * per_layer + shape.vocab_size * shape.hidden_size


def largest_layer_params(shape: ModelShape) -> int:
    """Elements of the biggest single parameter tensor (the ZeRO-3 all-gather term).

    For dense LLMs this is the embedding / lm_head. transformers 5 stores MoE experts as one fused
    ``experts.gate_up_proj`` tensor (experts x 2*intermediate x hidden) per layer, which can be larger.
    """
    largest = shape.vocab_size * shape.hidden_size
    for module in linear_modules(shape):
        largest = max(largest, module.weight_params)
    if shape.num_experts:
        largest = max(largest, shape.num_experts * 2 * shape.intermediate_size * shape.hidden_size)
    return largest


def gguf_supported(shape: ModelShape) -> bool:
    """Whether the GGUF export stage handles this family (llama, mistral, qwen2)."""
    return shape.family in GGUF_FAMILIES


# ---------------------------------------------------------------------------------------------------------------
# PEFT target matching

def _component_matches(target: str, part: str, limit: int) -> bool:
    if part == "*":
        return target.isdigit() and int(target) < limit
    return target == part


def _matches(target: str, path: Sequence[str], limits: Sequence[int]) -> bool:
    """PEFT's list rule: the module's full name equals the target or ends with ``"." + target``.

    Compared from the right, component by component; components left of the decoder-layer index are not
    checked, so prefixes such as ``model.language_model.`` are accepted.
    """
    parts = target.split(".")
    if not target or any(not p for p in parts):
        return False
    for offset, t in enumerate(reversed(parts)):
        idx = len(path) - 1 - offset
        if idx < 0:
            return True
        if not _component_matches(t, path[idx], limits[idx]):
            return False
    return True


def _decoder_path(shape: ModelShape, module: LinearModule) -> tuple[list[str], list[int]]:
    path = ["layers", "*", *module.path.split(".")]
    limits = [0, shape.num_layers] + [shape.num_experts if p == "*" else 0 for p in module.path.split(".")]
    return path, limits


def _check_targets(targets: Sequence[str] | str) -> list[str] | None:
    if isinstance(targets, str):
        if targets.lower() == ALL_LINEAR:
            return None
        raise ValueError(f"targets must be a list of module names or {ALL_LINEAR!r}, got the string {targets!r}")
    return [str(t).strip() for t in targets]


def _targeted(shape: ModelShape, names: list[str] | None) -> tuple[list[LinearModule], list[str]]:
    """Decoder modules and outer modules (lm_head, embed_tokens) that the targets select."""
    if names is None:  # PEFT all-linear: every nn.Linear except the output layer; the MoE router counts
        return list(linear_modules(shape)), []
    modules = [m for m in linear_modules(shape)
               if any(_matches(t, *_decoder_path(shape, m)) for t in names)]
    outer = [key for key, path in _OUTER_TARGETS.items()
             if any(_matches(t, path, [0] * len(path)) for t in names)]
    return modules, outer


def lora_params(shape: ModelShape, r: int, targets: Sequence[str] | Literal["all-linear"]) -> int:
    """Trainable LoRA parameters: r * (d_in + d_out) for every targeted linear, per layer and expert.

    ``"all-linear"`` is every decoder linear (router included, lm_head excluded), as PEFT resolves it.
    ``lm_head`` and ``embed_tokens`` targets count once each.
    """
    if isinstance(r, bool) or not isinstance(r, int) or r <= 0:
        raise ValueError(f"LoRA rank must be a positive integer, got {r!r}")
    modules, outer = _targeted(shape, _check_targets(targets))
    per_layer = sum(r * (m.d_in + m.d_out) * m.per_layer for m in modules)
    outer_params = len(outer) * r * (shape.vocab_size + shape.hidden_size)
    return shape.num_layers * per_layer + outer_params


def unknown_targets(shape: ModelShape, targets: Sequence[str] | Literal["all-linear"]) -> list[str]:
    """Targets that match no linear module of this model (by PEFT's module-name suffix rule), in input order."""
    names = _check_targets(targets)
    if names is None:
        return []
    unknown = []
    for name in names:
        modules, outer = _targeted(shape, [name])
        if not modules and not outer:
            unknown.append(name)
    return unknown
