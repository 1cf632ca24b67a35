"""Activation memory of one decoder layer, the checkpoints between layers, and the attention score terms.

Bytes per token of what autograd saves in one layer, counted tensor by tensor from the HF Llama-style modules
(``modeling_llama.py``), PEFT's LoRA ``Linear`` and bitsandbytes' ``Linear4bit``:

- RMSNorm (HF) saves an fp32 copy of its input (4h); when the input is already fp32 the saved tensor is the input
  itself. The fused norm (``kernels: ftplan``) saves the input and an fp32 rstd per row.
- Attention (flash / memory-efficient SDPA) saves q, k, v and the output in the attention dtype plus an fp32
  log-sum-exp per head; the math SDPA kernel (fp32 q/k/v with GQA) saves q and the head-repeated k, v, and its
  (heads × s × s) fp32 scores are counted separately; eager adds fp32 and cast probabilities, and a tanh
  output where the logits are capped (Gemma 2).
- A fused ``qkv_proj`` (Phi-3) hands attention q, k and v as views of its output; the saved v keeps the whole
  output alive, q and k parts included (``_fused_qkv_storage``).
- MLP: HF keeps gate, up and SiLU(gate) (3 × i); the fused SwiGLU keeps gate and up (2 × i).
- Linear inputs: a trainable base linear saves its input once per distinct input tensor. A LoRA module saves the
  input of ``lora_A`` in the adapter's dtype: under autocast each module keeps its own 16-bit cast (2 × d_in)
  (PEFT casts the input to the fp32 adapter dtype first), except on a bitsandbytes base with a 16-bit input, where
  PEFT skips that cast and the input is shared; without autocast a 16-bit input is copied to fp32 per module
  (4 × d_in), and an fp32 input is shared.
- The runtime's fused LoRA Functions (``kernels: ftplan``, ``runtime/kernels/lora.py``) save, per block, the input
  once in the compute dtype (q/k/v share one; o its own; the MLP its input) and the r-wide products X Aᵀ; the MLP
  keeps gate and up but not the SwiGLU product (down's input is recomputed in backward), and its backward holds
  one intermediate-wide gradient at a time (the SwiGLU backward runs in place over the saved gate and up).

Beyond what it saves, a layer's forward holds its working tensors: with PEFT's LoRA layers on a 16-bit base the
widest moment is ``down_proj``'s LoRA forward (``forward_transient_tok``), which with checkpointing can exceed the
backward's gradients in flight while the top layer is recomputed.

Gradient checkpointing keeps one tensor per layer, its input (``ckpt_tok`` per token); ``checkpoints`` says where
those are in each phase of the step. With ``gradient_checkpointing: offload`` they wait in pinned host memory
(``host.offloaded_checkpoints``), and the GPU holds only the ones in transit: during the forward and the loss, the
top layer's input while its copy to the host finishes; while the backward recomputes a layer, that layer's input
and the ``OFFLOAD_PREFETCH`` inputs fetched back ahead of it (none below the bottom layer).

Measured on H200 (probe runs, 4-layer Llama-3.1-8B shape): the no-checkpointing LoRA layer under autocast is
0.82 GiB at 4,096 tokens against 0.83 GiB from these rules; checkpoint inputs are h × stream bytes per token
(fp32 under QLoRA: 0.125 GiB per layer at 8,192 tokens, measured); the math-SDPA backward holds four
(heads × s × s) fp32 blocks at once (32.4 GiB above the other terms at s=8192, against 4 × 8 GiB).
"""

from __future__ import annotations

from dataclasses import dataclass

from ..catalog.architecture import linear_modules
from ..schemas.runtime_args import OFFLOAD_PREFETCH
from .resolved import Resolved
from .states import targeted

# Which tensor each linear reads: the normed input of the attention, the attention output, the normed input of
# the MLP, or the SwiGLU product.
_GROUP = {"q_proj": "ln1", "k_proj": "ln1", "v_proj": "ln1", "qkv_proj": "ln1", "o_proj": "attn_out",
          "gate_proj": "ln2", "up_proj": "ln2", "gate_up_proj": "ln2", "gate": "ln2", "w1": "ln2", "w3": "ln2",
          "down_proj": "act", "w2": "act"}


@dataclass(frozen=True)
class LayerActivations:
    """Per-layer activation sizes; ``*_tok`` are bytes per token, the others bytes per micro-step."""

    attn_tok: int
    """Saved by the attention half (norm, q/k/v, attention, o_proj inputs)."""
    mlp_tok: int
    """Saved by the MLP half (norm, gate/up/act, MLP linear inputs)."""
    input_tok: int
    """The layer input, when something saves it (only counted without checkpointing)."""
    inflight_attn_tok: int
    inflight_mlp_tok: int
    """Gradients alive while backward runs through each half."""
    ckpt_tok: int
    """What gradient checkpointing keeps per layer: the layer input."""
    scores_saved: int
    """Attention scores one layer keeps for backward (math SDPA / eager), per micro-step."""
    scores_peak: int
    """Attention score blocks alive at once while one layer's attention runs backward."""
    mask: int
    """The 4D attention mask of padded batches (once per micro-step, all layers share it)."""
    weight_transient: int
    """A per-call weight copy: the dequantized bf16 weight (QLoRA) or DoRA's weight-norm path."""
    adapter_casts: int = 0
    """Bytes per layer, whatever the token count, that PEFT's LoRA layers keep for backward under autocast: the
    16-bit copies of their fp32 A and B, which lora_A and lora_B save as their weights."""
    forward_transient_tok: int = 0
    """Held at the widest point of the layer's forward (or its recompute) beyond what it saves, per token: in
    ``down_proj``'s LoRA forward, the SwiGLU product (its argument) and PEFT's fp32 cast of it, the MLP's normed
    input and the residual."""
    scores_detail: str = ""

    def layer_tok(self) -> int:
        """Everything one layer saves, per token (without the score blocks)."""
        return self.attn_tok + self.mlp_tok

    def forward_is_wider(self) -> bool:
        """The MLP's forward holds more beyond the saved tensors than its backward's gradients in flight."""
        return self.forward_transient_tok > self.inflight_mlp_tok

    def mlp_working_tok(self) -> int:
        """The larger of the MLP half's forward and backward working sets, per token, beyond what the layer saves."""
        return max(self.inflight_mlp_tok, self.forward_transient_tok)


def _norm(r: Resolved, input_is_ckpt: bool) -> int:
    """Bytes per token one RMSNorm saves."""
    h, e = r.shape.hidden_size, r.stream_bytes
    if r.kernels == "ftplan":
        saved = 0 if input_is_ckpt else e * h
    elif e == 4:
        saved = 0 if input_is_ckpt else 4 * h
    else:
        saved = 4 * h
    if r.full and r.kernels != "ftplan":
        saved += e * h  # the normalised input, saved for the norm weight's gradient
    return saved + 4


def _fused_mlp(r: Resolved) -> bool:
    """The MLP runs as one fused LoRA Function: every one of gate, up and down carries an adapter (else the runtime
    leaves the block to PEFT's layers and the SwiGLU kernel)."""
    adapted = {m.name for m in targeted(r)}
    return r.fused_lora and {"gate_proj", "up_proj", "down_proj"} <= adapted


def _fused_linear_inputs(r: Resolved, group: str, width: int, in_bytes: int, adapted: int, shared_free: bool) -> int:
    """Bytes per token a fused LoRA Function saves for the ``adapted`` linears reading one input: the input once in
    the compute dtype (a view when it already is; free when the attention keeps that storage) and X Aᵀ per adapter."""
    compute = 2 if r.loop.autocast else in_bytes
    total = (r.lora.r if r.lora else 0) * compute * adapted
    if group != "act":  # the SwiGLU product is recomputed in backward, not saved
        total += 0 if shared_free and compute == in_bytes else compute * width
    return total


def _linear_inputs(r: Resolved, group: str, d_in: dict[str, int], in_bytes: int, shared_free: bool) -> int:
    """Bytes per token the linears reading one input tensor save (base inputs and LoRA copies)."""
    modules = [m for m in linear_modules(r.shape) if _GROUP.get(m.name) == group]
    if not modules:
        return 0
    width = d_in[group]
    experts = r.shape.experts_per_token or 1
    total = 0
    adapted = {m.name for m in targeted(r)} if not r.full else set()
    fused = r.fused_lora and (_fused_mlp(r) if group in ("ln2", "act") else group in ("ln1", "attn_out"))
    if fused:
        return _fused_linear_inputs(r, group, width, in_bytes, sum(m.name in adapted for m in modules), shared_free)
    shared = False
    for m in modules:
        copies = experts if m.expert else 1
        if r.full:
            if r.loop.autocast and in_bytes == 4:
                total += 2 * width * copies
            else:
                shared = True
            continue
        if m.name not in adapted:
            continue
        if r.loop.autocast and r.quantized and in_bytes == 2:
            shared = True  # PEFT's bitsandbytes LoRA skips its input cast under autocast: lora_A reads the input
        elif r.loop.autocast:
            total += 2 * width * copies
        elif in_bytes == r.adapter_bytes:
            shared = True
        else:
            total += r.adapter_bytes * width * copies
        total += r.lora.r * r.adapter_bytes * copies if r.lora else 0
        if r.lora and r.lora.dropout > 0:
            total += width * copies  # dropout mask
        if r.method == "dora":  # the base output and the LoRA branch's output, kept for the magnitude's gradient
            lora_out = 2 if r.loop.autocast else r.adapter_bytes
            total += m.d_out * (r.linear_out_bytes + lora_out) * copies
    if shared and not shared_free:
        total += in_bytes * width
    return total


def dora_weight_norm_peak(d_in: int, d_out: int, *, adapter_bytes: int, autocast: bool) -> int:
    """The transient peak of one PEFT DoRA linear layer (0.21) recomputing its weight norm in a forward. It forms
    B·A as B(A(I)) through a d_in × d_in identity in the adapter dtype (under autocast a 16-bit copy of it stays, as
    lora_A's saved input, until the forward ends), then ||W + s·B·A|| by row: at the sum, four d_out × d_in tensors
    in the adapter dtype, to which PEFT casts the layer's input (B·A, the base weight, s·B·A, the sum). Checked
    against an allocation tracker on the CPU (``bench/vram/dora_transient.py``, bf16 autocast, fp32 adapters) at
    five module shapes, 3072 → 1024 to 14336 → 4096, to within 0.7 %; without autocast it is read from the code, not
    measured."""
    a = adapter_bytes
    kept_identity = 2 if autocast else a
    in_lora_b = a * d_in * d_in + (kept_identity * d_in * d_in if autocast else 0) + kept_identity * d_in * d_out
    at_sum = kept_identity * d_in * d_in + 4 * a * d_in * d_out
    return max(in_lora_b, at_sum)


def _dora_transient(r: Resolved) -> int:
    """The largest ``dora_weight_norm_peak`` over the adapted modules."""
    adapted = {m.name for m in targeted(r)}
    return max((dora_weight_norm_peak(m.d_in, m.d_out, adapter_bytes=r.adapter_bytes, autocast=r.loop.autocast)
                for m in linear_modules(r.shape) if m.name in adapted), default=0)


def _adapter_casts(r: Resolved) -> int:
    """``LayerActivations.adapter_casts``: r · (d_in + d_out) × 2 B per adapted module, for PEFT's layers under
    autocast with adapters in another dtype (the fused LoRA Functions cast inside themselves and keep no copy)."""
    if r.full or not r.lora or r.fused_lora or not r.loop.autocast or r.adapter_bytes == 2:
        return 0
    adapted = {m.name for m in targeted(r)}
    experts = r.shape.experts_per_token or 1
    return sum(r.lora.r * (m.d_in + m.d_out) * 2 * (experts if m.expert else 1)
               for m in linear_modules(r.shape) if m.name in adapted)


def _forward_transient(r: Resolved) -> int:
    """``LayerActivations.forward_transient_tok`` for PEFT's LoRA layers on a 16-bit base (the fused Functions and
    the bitsandbytes layers, which read their input without a copy, hold nothing that large). In ``down_proj``'s
    forward the SwiGLU product is alive as its argument, PEFT casts it to the fp32 adapter dtype
    (``_cast_input_dtype``) and autocast casts that back to 16 bits for ``lora_A`` (the copy it saves, already
    counted), while the decoder layer still holds the residual and the MLP's normed input, and ``down_proj``'s base
    output waits for the LoRA branch to be added to it. Under checkpointing this is the top layer's recompute, run
    from inside the backward: the gradient of the layer's output and its scaled copy for ``lora_B`` (the first node
    of the backward) are alive too. Counted tensor by tensor with an allocation tracker on the CPU
    (``bench/vram/layer_backward_probe.py``, one Llama-3.2-1B layer: the estimate within 0.3 %). Measured with the
    allocator's history on an H100 (``bench/vram/memory_history.py``, Llama-3.2-1B LoRA, 8,192 tokens, with
    checkpointing): the peak is this moment of the top layer's recompute. Counting the product and its casts moved
    the allocated error of the checkpointed calibration points through PEFT's LoRA layers (1B to 8B, Llama, Mistral,
    Qwen2.5, Phi-3.5, Gemma-2, DoRA and DPO among them) from -7.1 … -1.3 % to -3.6 … +0.2 %; the base output and the
    two gradients moved the 14 such points to -2.2 … +1.2 %."""
    if r.full or not r.lora or r.quantized or _fused_mlp(r) or not r.loop.autocast or r.adapter_bytes != 4:
        return 0
    if not any(_GROUP.get(m.name) == "act" for m in targeted(r)):  # no adapter on the down projection
        return 0
    i, h = r.shape.intermediate_size * (r.shape.experts_per_token or 1), r.shape.hidden_size
    gradients = (r.stream_bytes + r.linear_out_bytes) * h if r.gc else 0
    return (r.linear_out_bytes + 4) * i + (2 * r.stream_bytes + r.linear_out_bytes) * h + gradients


def _fused_qkv_storage(r: Resolved) -> int:
    """Bytes per token the saved v keeps alive beyond itself under a fused ``qkv_proj`` (Phi-3): v is a view of the
    projection's output, so attention's saved v holds that whole output, its q and k parts too. Not where v is
    copied before attention: ``repeat_kv`` with grouped heads (eager, or SDPA given a mask) or the math kernel's fp32
    cast."""
    s = r.shape
    q_out, kv = s.num_heads * s.head_dim, s.num_kv_heads * s.head_dim
    repeated = kv != q_out and (r.attention == "eager" or (r.loop.padded and r.attention == "sdpa"))
    if not s.fused_qkv or r.math_attention or repeated:
        return 0
    return (q_out + kv) * r.linear_out_bytes


def compute(r: Resolved) -> LayerActivations:
    """Activation sizes of one decoder layer of this setup."""
    s = r.shape
    h, q_out, kv = s.hidden_size, s.num_heads * s.head_dim, s.num_kv_heads * s.head_dim
    inter = s.intermediate_size * (s.experts_per_token or 1)
    e_s, e_lin, e_at = r.stream_bytes, r.linear_out_bytes, r.attn_bytes
    norms_per_half = 2 if s.family in ("gemma2", "gemma3") else 1
    flash_like = r.attention != "eager" and not r.math_attention

    # attention half
    if r.math_attention or r.attention == "eager":
        attn = 3 * q_out * e_at  # q and the head-repeated k, v
    else:
        kv_saved = q_out if r.loop.padded and r.attention == "sdpa" else kv  # repeat_kv when a mask is passed
        attn = (2 * q_out + 2 * kv_saved) * e_at + 4 * s.num_heads
    attn += _fused_qkv_storage(r)
    d_in = {"ln1": h, "attn_out": q_out, "ln2": h, "act": s.intermediate_size}
    attn += _norm(r, input_is_ckpt=True) + (norms_per_half - 1) * _norm(r, input_is_ckpt=False)
    attn += _linear_inputs(r, "ln1", d_in, e_s, shared_free=False)
    attn += _linear_inputs(r, "attn_out", d_in, e_at, shared_free=flash_like)

    # MLP half
    fused_mlp = r.kernels == "ftplan" and s.family not in ("gemma2", "gemma3")
    mlp = (2 if fused_mlp else 3) * inter * e_lin
    if s.num_experts:
        mlp += 4 * s.num_experts + e_s * h * s.experts_per_token  # router logits and dispatched token copies
    mlp += norms_per_half * _norm(r, input_is_ckpt=False)
    mlp += _linear_inputs(r, "ln2", d_in, e_s, shared_free=False)
    mlp += _linear_inputs(r, "act", d_in, e_lin, shared_free=False)

    input_tok = 0 if (r.kernels != "ftplan" and e_s != 4) else e_s * h
    a2 = s.num_heads * r.seq * r.seq * r.sequences  # heads × s × s per micro-step
    if r.math_attention:
        saved, peak = 4 * a2, 16 * a2
        detail = f"math SDPA: 4 × {s.num_heads} heads × {r.seq:,}^2 × {r.sequences} seq × 4 B"
    elif r.attention == "eager":
        softcap = e_at if s.attention_softcap else 0  # the tanh output, kept for its backward
        saved = (4 + (e_at if e_at != 4 else 0) + softcap) * a2
        peak = saved + (e_at + 8) * a2
        capped = ", tanh-capped logits" if softcap else ""
        detail = f"eager: fp32 softmax{capped}, {s.num_heads} heads × {r.seq:,}^2 × {r.sequences} seq"
    else:
        saved = peak = 0
        detail = ""
    mask = 0
    if r.loop.padded and r.attention in ("sdpa", "eager"):
        mask = r.sequences * r.seq * r.seq * (1 if r.attention == "sdpa" else e_at)

    weight_transient = 0
    largest = max(m.d_in * m.d_out for m in linear_modules(r.shape))
    if r.quantized:
        weight_transient = 2 * largest
    if r.method == "dora":
        weight_transient = max(weight_transient, _dora_transient(r))
    return LayerActivations(
        attn_tok=attn, mlp_tok=mlp, input_tok=input_tok, adapter_casts=_adapter_casts(r),
        forward_transient_tok=_forward_transient(r),
        inflight_attn_tok=q_out * e_at + h * e_s,
        inflight_mlp_tok=(1 if _fused_mlp(r) else 2) * inter * e_lin + h * e_s,
        ckpt_tok=h * e_s, scores_saved=saved, scores_peak=peak, mask=mask, weight_transient=weight_transient,
        scores_detail=detail)


@dataclass(frozen=True)
class Checkpoints:
    """How many decoder layers' inputs (the activation checkpoints) are on the GPU in each phase of the step."""

    forward: int
    """During the forward and the loss: every layer's; under offload, the top layer's (its copy to the host in
    flight)."""
    top: int
    """While the backward recomputes the top layer: every layer's; under offload, that layer's and the ones
    prefetched ahead of it."""
    bottom: int
    """While it recomputes the bottom layer: that layer's own."""
    host: int
    """Held in pinned host memory (every layer's under offload, else none)."""


def checkpoints(r: Resolved) -> Checkpoints:
    """Where the activation checkpoints are under gradient checkpointing (``r.gc``), counted in layers."""
    layers = r.shape.num_layers
    if not r.offload_checkpoints:
        return Checkpoints(forward=layers, top=layers, bottom=1, host=0)
    return Checkpoints(forward=1, top=min(layers, 1 + OFFLOAD_PREFETCH), bottom=1, host=layers)
