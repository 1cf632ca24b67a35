"""Model states per GPU: weights, adapters, gradients, optimizer states, with sharding and CPU offload.

Per trainable parameter (P_t) and strategy, in bytes (t = the trainable dtype: fp32 LoRA adapters, the weight dtype
for full fine-tunes):

    none / ddp    weights t, grads t, AdamW m+v 2t (state dtype = parameter dtype; 8-bit: 2.03),
                  ddp adds a gradient bucket copy t (accelerate keeps ``gradient_as_bucket_view=False``)
    zero1         weights 2, grads 2, fp32 master + m + v 12/N                 (4P + 12P/N, derived)
    zero2         weights 2, grads 2, fp32 master + m + v + fp32 grads 16/N     (4P + 16P/N, DeepSpeed estimator)
    zero3         weights 2/N, grads 4/N, optimizer 12/N                       (18P/N, DeepSpeed estimator)
    fsdp2         fp32 shards (accelerate upcasts trainable params): weights 4/N, grads 4/N, m+v 8/N

Frozen weights are replicated except under zero3/fsdp2 (1/N); ``offload_params`` moves them to the CPU;
``offload_optimizer`` moves master, moments and fp32 gradients to the CPU (FSDP2's CPU offload moves every shard).
"""

from __future__ import annotations

from dataclasses import dataclass

from ..catalog.architecture import largest_layer_params, linear_modules, lora_params, param_counts
from .constants import ADAM_8BIT_BYTES_PER_PARAM, NF4_BYTES_PER_PARAM
from .fmt import dtype, params
from .resolved import Resolved
from .types import Term


@dataclass(frozen=True)
class States:
    """Persistent per-GPU states and the gradient sizes the phases need."""

    terms: tuple[Term, ...]
    """Present in every phase."""
    grads: Term
    """Every gradient (end of backward, optimizer step; during forward only with gradient accumulation)."""
    grads_early: int
    """Gradients that exist from the start of backward (full fine-tunes: lm_head and final norm)."""
    host: int
    """Bytes this GPU's process keeps in CPU memory (offloaded shards)."""
    trainable: int
    """Trainable parameters (P_t)."""


def trainable_params(r: Resolved) -> int:
    """P_t: every weight (full), or adapter + DoRA magnitudes + ``modules_to_save`` copies."""
    shape = r.shape
    if r.full or r.lora is None:
        return param_counts(shape).total if r.full else lora_params(shape, 16, "all-linear")
    n = lora_params(shape, r.lora.r, r.lora.targets)
    if r.method == "dora":
        n += shape.num_layers * sum(m.d_out * m.per_layer for m in targeted(r))
    return n + saved_module_params(r)


def saved_module_params(r: Resolved) -> int:
    """Parameters of ``modules_to_save`` (PEFT trains a full copy of each)."""
    if r.lora is None:
        return 0
    vh = r.shape.vocab_size * r.shape.hidden_size
    return sum(vh for name in r.lora.modules_to_save if name.split(".")[-1] in ("embed_tokens", "lm_head"))


def targeted(r: Resolved):
    """Decoder linears that carry an adapter (all of them for ``all-linear``; else by module name)."""
    mods = linear_modules(r.shape)
    if r.lora is None or r.lora.targets == "all-linear":
        return mods
    names = {t.split(".")[-1] for t in r.lora.targets}
    return tuple(m for m in mods if m.name in names)


def compute(r: Resolved) -> States:
    """The state terms of one training setup."""
    shape, n = r.shape, r.world
    pc = param_counts(shape)
    p_lin = shape.num_layers * pc.per_layer_linear
    p_rest = pc.embedding + pc.lm_head + shape.num_layers * pc.per_layer_norm + pc.final_norm
    p_t = trainable_params(r)
    terms: list[Term] = []
    host = 0
    ds = r.strategy in ("zero1", "zero2", "zero3")
    half = 2 if r.precision in ("bf16", "fp16") else 4

    # --- frozen base weights (everything for adapter methods) -----------------------------------------------------
    if not r.full:
        shard = n if r.sharded_weights else 1
        where = f" / {n} GPUs" if shard > 1 else ""
        if r.quantized:
            frozen = [Term("base weights (NF4)", int(p_lin * NF4_BYTES_PER_PARAM / shard),
                           f"{params(p_lin)} decoder linear params × 4.127 bits{where}"),
                      Term(f"embeddings, lm_head, norms ({dtype(r.lm_head_bytes, r.half)})",
                           p_rest * r.lm_head_bytes // shard,
                           f"{params(p_rest)} params × {r.lm_head_bytes} B"
                           + (" (upcast by prepare_model_for_kbit_training)" if r.upcast_base else "") + where)]
        else:
            wb = half if ds else r.param_bytes
            frozen = [Term(f"weights ({dtype(wb, r.half)})", pc.total * wb // shard,
                           f"{params(pc.total)} params × {wb} B{where}")]
        if r.offload_params and r.sharded_weights:
            host += sum(t.bytes for t in frozen)
            frozen = []
        terms += frozen

    # --- trainable parameters, gradients, optimizer ---------------------------------------------------------------
    tb = r.param_bytes if r.full else r.adapter_bytes
    opt_per = ADAM_8BIT_BYTES_PER_PARAM if r.optimizer != "adamw" else None
    opt_name = "8-bit AdamW" if opt_per else "AdamW"
    what = "weights" if r.full else "adapters"
    grads = 0
    if r.strategy in ("none", "ddp"):
        if r.full:
            terms.append(Term(f"weights ({dtype(tb, r.half)})", p_t * tb, f"{params(p_t)} params × {tb} B"))
        else:
            terms.append(Term(f"trainable {what} ({dtype(tb, r.half)})", p_t * tb, f"{params(p_t)} params × {tb} B"))
        per = opt_per if opt_per else 2 * tb
        terms.append(Term(f"optimizer states ({opt_name})", int(p_t * per),
                          f"{params(p_t)} × {per:g} B (m, v in {'8-bit' if opt_per else dtype(tb, r.half)})"))
        grads = p_t * tb
        if r.strategy == "ddp":
            terms.append(Term("DDP gradient buckets", p_t * tb,
                              f"{params(p_t)} × {tb} B (gradient_as_bucket_view off)"))
    elif ds:
        level = int(r.strategy[-1])
        shard_w = n if level == 3 else 1
        weights = Term(f"trainable {what} ({dtype(half, r.half)})", p_t * half // shard_w,
                       f"{params(p_t)} × {half} B" + (f" / {n}" if shard_w > 1 else ""))
        if level == 3 and r.offload_params:
            host += weights.bytes
        else:
            terms.append(weights)
        per = (4 + (opt_per or 8)) + (4 if level == 2 else 0)
        label = f"fp32 master + {opt_name} m, v" + (" + fp32 grads" if level == 2 else "")
        opt = int(p_t * per / n)
        if r.offload_optimizer:
            host += opt
        else:
            terms.append(Term("optimizer states (DeepSpeed)", opt, f"{label}: {params(p_t)} × {per:g} B / {n}"))
        if level == 3:
            grads = p_t * 4 // n
        elif level == 2 and r.offload_optimizer:
            grads = 0
        else:
            grads = p_t * half
    else:  # fsdp2: accelerate upcasts trainable params to fp32 before sharding
        per = opt_per if opt_per else 8
        w, o = p_t * 4 // n, int(p_t * per / n)
        grads = p_t * 4 // n
        if r.offload_optimizer or r.offload_params:
            host += w + o + grads
            grads = 0
        else:
            terms.append(Term(f"trainable {what} (fp32 shards)", w, f"{params(p_t)} × 4 B / {n}"))
            terms.append(Term(f"optimizer states ({opt_name})", o, f"{params(p_t)} × {per:g} B / {n}"))

    grad_term = Term("gradients", grads, f"{params(p_t)} trainable params" + (
        f", {'fp32' if r.strategy in ('zero3', 'fsdp2') else dtype(tb if not ds else half, r.half)}" if grads else ""))
    early = 0
    if r.full and grads:
        early = int(grads * (pc.lm_head or pc.embedding) / pc.total)

    terms += _sharding_buffers(r, p_t)
    terms += _reference(r, pc.total, p_t)
    return States(tuple(t for t in terms if t.bytes), grad_term, early, host, p_t)


def _sharding_buffers(r: Resolved, p_t: int) -> list[Term]:
    """ZeRO-3 gathered/live parameters and DeepSpeed buckets; FSDP2 unsharded units."""
    from .constants import DEEPSPEED_OVERLAP_FACTOR, ZERO3_MAX_LIVE_PARAMETERS

    shape = r.shape
    h2 = shape.hidden_size ** 2
    out: list[Term] = []
    if r.strategy in ("zero1", "zero2"):
        out.append(Term("DeepSpeed comm buckets", int(DEEPSPEED_OVERLAP_FACTOR * 2 * 2 * h2),
                        f"reduce + allgather buckets 2 × {h2:,} elements × 2 B × {DEEPSPEED_OVERLAP_FACTOR}"
                        " (overlap_comm)"))
    elif r.strategy == "zero3":
        big = largest_layer_params(shape)
        per = 4 if r.full else 2
        out.append(Term("ZeRO-3 largest layer gathered", big * per,
                        f"{params(big)} params × {per} B (16-bit params{' + grads' if r.full else ''})"))
        live = min(ZERO3_MAX_LIVE_PARAMETERS, param_counts(shape).total)
        out.append(Term("ZeRO-3 live parameters", live * 2, f"stage3_max_live_parameters {params(live)} × 2 B"))
        out.append(Term("DeepSpeed comm buckets", int(DEEPSPEED_OVERLAP_FACTOR * 2 * h2 + 2 * (9 * h2 // 10)),
                        f"reduce bucket {h2:,} × 2 B × {DEEPSPEED_OVERLAP_FACTOR} + prefetch bucket 0.9 h^2 × 2 B"))
    elif r.strategy == "fsdp2":
        pc = param_counts(shape)
        unit = max(pc.per_layer_linear + pc.per_layer_norm, pc.embedding)
        grads = 4 * unit if r.full else 0
        out.append(Term("FSDP2 unsharded units", 2 * 2 * unit + grads,
                        f"current + prefetched unit {params(unit)} × 2 B" + (" + fp32 unit grads" if grads else "")))
    return out


def _reference(r: Resolved, total: int, p_t: int) -> list[Term]:
    """The DPO reference policy's own weights."""
    if r.reference == "model_copy":
        wb = r.param_bytes
        shard = r.world if r.strategy in ("zero3", "fsdp2") else 1
        how = f" / {shard} GPUs" if shard > 1 else (" (replicated per GPU, as TRL prepares it)" if r.world > 1 else "")
        return [Term("reference model (frozen copy)", total * wb // shard, f"{params(total)} × {wb} B{how}")]
    if r.reference == "adapter_copy":
        n = lora_params(r.shape, r.lora.r, r.lora.targets) if r.lora else p_t
        return [Term("reference adapter (frozen copy)", n * r.adapter_bytes, f"{params(n)} × {r.adapter_bytes} B")]
    return []
