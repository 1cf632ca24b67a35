"""Model states per GPU: weights, adapters, gradients, optimizer states, with sharding and CPU offload.

Bytes per trainable parameter (P_t) on N GPUs, on the GPU and in host memory (per GPU's process; a node holds its
GPUs' shares). t is the trainable dtype: fp32 LoRA adapters (PEFT ``autocast_adapter_dtype``), the weight dtype for
full fine-tunes. Each row names its source; "DeepSpeed estimator" rows equal DeepSpeed's own model-state arithmetic
(``estimate_zero2_model_states_mem_needs`` in ``deepspeed/runtime/zero/stage_1_and_2.py``,
``estimate_zero3_model_states_mem_needs`` in ``deepspeed/runtime/zero/stage3.py``, 0.19.8) with
``additional_buffer_factor=1`` and ``zero_init`` (the HF integration builds ZeRO-3 models under ``zero.Init``);
``tests/test_estimate_states.py`` compares them at several sizes and GPU counts.

    none / ddp   GPU: weights t, grads t, AdamW m + v 2t (torch AdamW keeps its states in the parameter dtype;
                 bitsandbytes 8-bit: 2.03); ddp adds a gradient bucket copy t (accelerate keeps
                 ``gradient_as_bucket_view=False``).
    zero1        GPU: 16-bit weights 2, 16-bit grads 2 (stage 1 does not partition gradients), fp32 master + m + v
                 + the fp32 gradient partition the step builds (``single_grad_partition``, the code stage 2 runs)
                 16/N: 4 + 16/N. Derived from ``stage_1_and_2.py``; DeepSpeed ships no stage-1 estimator.
    zero2        GPU: 16-bit weights 2, the 16-bit gradient partition 2/N (``grads_in_partition``,
                 contiguous_gradients), fp32 master + m + v + fp32 gradient partition 16/N: 2 + 18/N (DeepSpeed
                 estimator). ``offload_optimizer``: GPU 2 (each reduced gradient is copied straight into the
                 pinned fp32 partition on the host, ``copy_grads_in_partition``); host 16/N, 16 P per node (the
                 estimator writes P × max(4 × GPUs, 16): past 4 GPUs its figure is every process's fp32 copy of
                 the model at load, a start-up peak rather than an offloaded state).
    zero3        GPU: 16-bit weights 2/N, gradient partitions 4/N, fp32 master + m + v 12/N: 18/N, plus the
                 largest layer gathered (16-bit params + grads, 4 × its params; ``_sharding_buffers``) (DeepSpeed
                 estimator). ``offload_optimizer``: GPU 2/N; host 16/N: master, m, v and the gradient partitions,
                 which DeepSpeed keeps on the offload device (``grad_partitions_flat_buffer`` and each sub-group's
                 fp32 ``grad`` are allocated on ``self.device``, the CPU when the optimizer is offloaded).
                 ``offload_params`` as well: GPU only the gathered layer; host 18/N (DeepSpeed estimator).
    fsdp2        ``fully_shard`` shards every parameter, its gradient and its optimizer state 1/N (DTensor dim-0
                 shards, PyTorch FSDP2 docs; the test runs it); accelerate upcasts trainable parameters to fp32
                 before sharding (the runtime does it over a 4-bit base, which accelerate leaves as loaded):
                 weights 4/N, grads 4/N, AdamW m + v 8/N (8-bit 2.03/N). CPU offload
                 (``CPUOffloadPolicy``; accelerate's one ``fsdp_offload_params`` flag, set by ``offload_params`` or
                 ``offload_optimizer``) keeps sharded parameters, gradients and optimizer states on the host: GPU 0,
                 host 16/N; what stays on the GPU is the unsharded units of the step (``_sharding_buffers``).

Where DeepSpeed 0.19.8's code departs from its estimators (ftplan follows the estimators; the differences are
noted here for measurement to settle): ZeRO-3 accumulates gradient partitions in the gradient-accumulation dtype,
the model's 16-bit dtype unless ``data_types.grad_accum_dtype`` is set (ftplan's JSON does not), 2/N kept for the
whole run, and builds each optimizer sub-group's fp32 gradient (at most ``sub_group_size`` = 1e9 elements) only
for the step: 2/N + 4 × min(P_t/N, 1e9) where the estimator counts 4/N. That reads up to 2/N higher for
partitions under 1e9 parameters and lower for larger ones; with ``offload_optimizer`` both live on the host
(2/N + 4/N there, against the estimator's 4/N). ZeRO-1/2 also build the fp32 gradient partition only for the step
(counted here for the whole step, as the estimator does).

A reward model (``Resolved.reward``) loads as a sequence classifier: a one-value ``score`` head (h parameters)
instead of ``lm_head`` (``loaded_params``); with an adapter, the head trains in full beside it (PEFT's ``SEQ_CLS``
task keeps it in ``modules_to_save``).

Frozen weights (adapter methods) are replicated under none/ddp/zero1/zero2 and sharded 1/N under zero3/fsdp2, where
``offload_params`` moves them to the host. Beyond the model states, ``_sharding_buffers`` adds what the DeepSpeed
estimators leave out: ZeRO-3's live parameters (``stage3_max_live_parameters``) and the communication buckets.

Sharded QLoRA (zero3, fsdp2; the runtime stores the 4-bit codes in the compute dtype so both can partition them,
``schemas.runtime_args.quant_storage``): the packed codes, 0.5 B per decoder linear parameter, are sharded 1/N like
any weight, and moved to the host by ``offload_params``; the NF4 quantization constants (0.127 bits per parameter)
live in each weight's ``QuantState``, not in a parameter, and stay whole on every GPU. FSDP2 gathers one decoder
layer's codes (and its norms and adapters) at a time, plus the 16-bit embedding or head; the dequantised 16-bit
copy of each linear, made per call, is the activations' ``weight_transient``. Loading differs: under ZeRO-3 every GPU
quantizes and holds the whole 4-bit model before DeepSpeed partitions it (``model_load``, a peak of its own), while
FSDP2 quantizes it in each process's host memory and moves it onto the GPU layer by layer (``host_load``).
"""

from __future__ import annotations

from dataclasses import dataclass

from ..catalog.architecture import LinearModule, largest_layer_params, linear_modules, lora_params, param_counts
from .constants import ADAM_8BIT_BYTES_PER_PARAM, NF4_BYTES_PER_PARAM, NF4_CODE_BYTES_PER_PARAM
from ..units import dtype_name, gib_text, params
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


def loaded_params(r: Resolved) -> int:
    """Parameters of the model as the stage loads it: the causal LM, or for a reward model the decoder with a
    one-value ``score`` head (h) in place of ``lm_head``."""
    pc = param_counts(r.shape)
    return pc.total - pc.lm_head + r.shape.hidden_size if r.reward else pc.total


def trainable_params(r: Resolved) -> int:
    """P_t: every weight (full), or adapter + DoRA magnitudes + ``modules_to_save`` copies (a reward model's
    ``score`` head among them)."""
    shape = r.shape
    if r.full or r.lora is None:
        return loaded_params(r) if r.full else lora_params(shape, 16, "all-linear")
    n = lora_params(shape, r.lora.r, r.lora.targets)
    if r.method == "dora":
        n += shape.num_layers * sum(m.d_out * m.per_layer for m in targeted(r))
    return n + saved_module_params(r)


def trainable_embedding_params(r: Resolved) -> int:
    """Trainable ``nn.Embedding`` parameters: the input embedding of a full fine-tune, or an ``embed_tokens`` copy in
    ``modules_to_save``. Under a bitsandbytes 8-bit optimizer the HF Trainer registers them for 32-bit states
    (``GlobalOptimManager.register_module_override``, transformers 5.17 ``Trainer.create_optimizer``): measured
    +1.46 GiB against 8-bit states for Llama-3.2-1B's 263M-parameter embedding (H100, ``bench/results/vram``)."""
    vh = r.shape.vocab_size * r.shape.hidden_size
    if r.full:
        return vh
    if r.lora is None:
        return 0
    return vh if any(name.split(".")[-1] == "embed_tokens" for name in r.lora.modules_to_save) else 0


def saved_module_params(r: Resolved) -> int:
    """Parameters of ``modules_to_save`` (PEFT trains a full copy of each)."""
    if r.lora is None:
        return 0
    vh = r.shape.vocab_size * r.shape.hidden_size
    saved = sum(vh for name in r.lora.modules_to_save if name.split(".")[-1] in ("embed_tokens", "lm_head"))
    return saved + (r.shape.hidden_size if r.reward else 0)


def targeted(r: Resolved) -> tuple[LinearModule, ...]:
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
    p_all = loaded_params(r)
    p_rest = p_all - p_lin
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
            rest = Term(f"embeddings, lm_head, norms ({dtype_name(r.lm_head_bytes, r.half)})",
                        p_rest * r.lm_head_bytes // shard,
                        f"{params(p_rest)} params × {r.lm_head_bytes} B"
                        + (" (upcast by prepare_model_for_kbit_training)" if r.upcast_base else "") + where)
            if shard > 1:
                frozen = [Term("base weights (NF4)", int(p_lin * NF4_CODE_BYTES_PER_PARAM / shard),
                               f"{params(p_lin)} decoder linear params × 4-bit codes{where}"), rest]
                terms.append(_nf4_constants(p_lin))
            else:
                frozen = [Term("base weights (NF4)", int(p_lin * NF4_BYTES_PER_PARAM),
                               f"{params(p_lin)} decoder linear params × 4.127 bits"), rest]
        else:
            wb = half if ds else r.param_bytes
            frozen = [Term(f"weights ({dtype_name(wb, r.half)})", p_all * wb // shard,
                           f"{params(p_all)} params × {wb} B{where}")]
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
            terms.append(Term(f"weights ({dtype_name(tb, r.half)})", p_t * tb, f"{params(p_t)} params × {tb} B"))
        else:
            terms.append(Term(f"trainable {what} ({dtype_name(tb, r.half)})", p_t * tb,
                              f"{params(p_t)} params × {tb} B"))
        emb = trainable_embedding_params(r) if opt_per else 0
        per = opt_per if opt_per else 2 * tb
        detail = f"{params(p_t - emb)} × {per:g} B (m, v in {'8-bit' if opt_per else dtype_name(tb, r.half)})"
        if emb:
            detail += f" + {params(emb)} embedding params × 8 B (32-bit: the HF Trainer keeps nn.Embedding out of 8-bit)"
        terms.append(Term(f"optimizer states ({opt_name})", int((p_t - emb) * per + emb * 8), detail))
        grads = p_t * tb
        if r.strategy == "ddp":
            terms.append(Term("DDP gradient buckets", p_t * tb,
                              f"{params(p_t)} × {tb} B (gradient_as_bucket_view off)"))
    elif ds:
        level = int(r.strategy[-1])
        shard_w = n if level == 3 else 1
        weights = Term(f"trainable {what} ({dtype_name(half, r.half)})", p_t * half // shard_w,
                       f"{params(p_t)} × {half} B" + (f" / {n}" if shard_w > 1 else ""))
        if level == 3 and r.offload_params:
            host += weights.bytes
        else:
            terms.append(weights)
        # fp32 master + m, v; stages 1 and 2 also hold the fp32 gradient partition (ZeRO-3 counts it as its grads)
        per = (4 + (opt_per or 8)) + (4 if level < 3 else 0)
        label = f"fp32 master + {opt_name} m, v" + (" + fp32 grads" if level < 3 else "")
        opt = int(p_t * per / n)
        grad_b, grad_n = (4, n) if level == 3 else (half, n if level == 2 else 1)
        grads = p_t * grad_b // grad_n
        if r.offload_optimizer:
            host += opt
            if level == 3:  # the fp32 gradient partitions are allocated on the offload device
                host += grads
            if level >= 2:  # ZeRO-2 copies each reduced gradient straight into the host fp32 partition
                grads = 0
        else:
            terms.append(Term("optimizer states (DeepSpeed)", opt, f"{label}: {params(p_t)} × {per:g} B / {n}"))
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

    if not grads:
        grad_detail = f"{params(p_t)} trainable params" + (" (on the host)" if host else "")
    elif r.strategy in ("zero2", "zero3", "fsdp2"):
        b = 4 if r.strategy != "zero2" else half
        grad_detail = f"{params(p_t)} trainable params × {b} B ({dtype_name(b, r.half)} partitions) / {n}"
    else:
        b = half if ds else tb
        grad_detail = f"{params(p_t)} trainable params × {b} B ({dtype_name(b, r.half)})"
    grad_term = Term("gradients", grads, grad_detail)
    early = 0
    if r.full and grads:
        head = shape.hidden_size if r.reward else (pc.lm_head or pc.embedding)
        early = int(grads * head / p_all)

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
    elif r.strategy == "fsdp2" and r.quantized:
        out.append(_fsdp2_4bit_units(r))
    elif r.strategy == "fsdp2":
        pc = param_counts(shape)
        unit = max(pc.per_layer_linear + pc.per_layer_norm, pc.embedding)
        grads = 4 * unit if r.full else 0
        out.append(Term("FSDP2 unsharded units", 2 * 2 * unit + grads,
                        f"current + prefetched unit {params(unit)} × 2 B" + (" + fp32 unit grads" if grads else "")))
    return out


def _nf4_constants(p_lin: int) -> Term:
    """The NF4 quantization constants of a sharded 4-bit base: whole on every GPU (``QuantState`` attributes, which
    neither ZeRO-3 nor FSDP2 partitions)."""
    per = NF4_BYTES_PER_PARAM - NF4_CODE_BYTES_PER_PARAM
    return Term("NF4 quantization constants", int(p_lin * per),
                f"{params(p_lin)} params × {per * 8:.3f} bits (absmax per 64 and per 64 × 256 weights), whole on "
                "every GPU")


def _fsdp2_4bit_units(r: Resolved) -> Term:
    """FSDP2's unsharded units over a 4-bit base: the unit in use and the one prefetched, each the larger of a
    decoder layer (4-bit codes, 16-bit norms, adapters gathered at the compute dtype) and the 16-bit embedding (its
    own unit; the head, in the tail unit with the final norm, is as large)."""
    pc = param_counts(r.shape)
    cast = 2 if r.precision in ("bf16", "fp16") else 4
    adapters = trainable_params(r) // max(1, r.shape.num_layers)
    layer = int(pc.per_layer_linear * NF4_CODE_BYTES_PER_PARAM) + pc.per_layer_norm * r.lm_head_bytes + adapters * cast
    embedding = pc.embedding * r.lm_head_bytes
    unit = max(layer, embedding)
    what = "a decoder layer's 4-bit codes, norms and adapters" if layer >= embedding else "the 16-bit embedding or head"
    return Term("FSDP2 unsharded units", 2 * unit, f"current + prefetched unit: {what}, {gib_text(unit)}")


def model_load(r: Resolved) -> tuple[Term, ...]:
    """What each GPU holds while the stage loads its model, where that can exceed its share of the training states: a
    QLoRA base under ZeRO-3 is quantized whole on every GPU with its new adapters, and DeepSpeed partitions it only
    then (transformers builds a 4-bit model without ``zero.Init``; DeepSpeed moves an unpartitioned model onto the
    device before partitioning it). Empty for every other setup (ZeRO-3 builds a 16-bit model partitioned; FSDP2
    loads on the host: ``host_load``)."""
    if not (r.quantized and r.strategy == "zero3"):
        return ()
    pc = param_counts(r.shape)
    p_lin = r.shape.num_layers * pc.per_layer_linear
    p_rest = loaded_params(r) - p_lin
    p_t = trainable_params(r)
    return (Term("whole 4-bit model (loading, before ZeRO-3 partitions it)",
                 int(p_lin * NF4_BYTES_PER_PARAM) + p_rest * r.lm_head_bytes,
                 f"{params(p_lin)} params × 4.127 bits + {params(p_rest)} params × {r.lm_head_bytes} B"),
            Term("new adapters (fp32)", p_t * 4, f"{params(p_t)} params × 4 B"))


def host_load(r: Resolved) -> int:
    """Host memory each process needs to load the stage's model, where the GPU is not where it loads: a QLoRA base
    under FSDP2 is quantized in host memory, whole in every process, before ``fully_shard`` moves it onto the GPU one
    layer at a time (the 4-bit model plus the largest 16-bit weight being quantized). 0 otherwise."""
    if not (r.quantized and r.strategy == "fsdp2"):
        return 0
    pc = param_counts(r.shape)
    p_lin = r.shape.num_layers * pc.per_layer_linear
    p_rest = loaded_params(r) - p_lin
    largest_linear = max(m.weight_params for m in linear_modules(r.shape))
    return int(p_lin * NF4_BYTES_PER_PARAM) + p_rest * r.lm_head_bytes + largest_linear * r.lm_head_bytes


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
