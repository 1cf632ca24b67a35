"""Apply the `kernels: ftplan` set to a Hugging Face causal LM instance, and a logits-free causal-LM loss.

    report = apply_ftplan_kernels(model)            # after peft.get_peft_model(model, ...) for the lora op
    report.require("rms_norm", "swiglu", "rope", "lora")  # the plan's promise; raises KernelPatchError otherwise
    loss = causal_lm_loss(model, input_ids, labels, attention_mask, num_items_in_batch=n)

What gets patched (architectures: llama, mistral, qwen2, qwen3, and gemma without its GeGLU MLP):
- every `<Arch>RMSNorm` module: its forward becomes the fused kernel (`rms_norm.py`), weight and eps unchanged;
  Gemma's norm runs as x̂·(1 + w) with all-fp32 casting, the others as HF's Llama casting.
- every `<Arch>MLP` module whose activation is SiLU: forward becomes
  `down_proj(swiglu(gate_proj(x), up_proj(x)))`. The three Linear layers are called as modules, so PEFT LoRA
  layers that wrap them (whether inserted before or after this patch) keep working.
- rotary embeddings: the modeling module's global `apply_rotary_pos_emb`, which `<Arch>Attention.forward` looks
  up at call time, is rebound to the fused q+k kernel (`rope.py`). This rebinding is process-wide: every model
  of that architecture in the process uses it, like Liger's patching does. `revert_ftplan_kernels` undoes it.
- LoRA (`lora.py`): on a PEFT model, the LoRA layers of the attention projections and the SwiGLU MLP run the
  fused LoRA Functions (16-bit or bitsandbytes NF4 bases). Every `<Arch>MLP` with a LoRA layer among gate/up/down
  runs `LoRAMLPFunction` (SwiGLU inside; it counts for swiglu too). Each LoRA layer of q/k/v/o gets a forward
  through `LoRAProjectionsFunction`, and where two or more of q, k, v have one, the attention module's forward
  first computes them together in one Function and hands each layer its output when the original forward calls
  it with the same hidden states. A LoRA layer the functions cannot run exactly (DoRA, dropout > 0, LoRA bias,
  several active adapters, a trainable, sharded or non-NF4 base) is left to PEFT and counted in `lora_unfused`
  with the reason in `notes`; strict mode (and `require("lora")`) then raises, so the promise is never broken
  silently.
  LoRA layers elsewhere (e.g. on lm_head) are outside the op and noted. Apply this op after `get_peft_model`:
  LoRA layers added later run PEFT's own forward (the patched MLP forward calls them as modules).

Per-module patches are instance attributes (`module.forward`), so other instances of the same class are
untouched. Re-applying is a no-op that reports the same counts. The latest report stays on the model
(`_ftplan_kernel_report`): a DPO or KTO trainer adds to it the heads it runs through the fused linear log-prob op
(`ftplan_runtime.logprob_head`), which `counts()` then lists as `logprobs`.

`causal_lm_loss` runs the decoder (through PEFT wrappers) for the last hidden states and feeds them with
`lm_head`'s weight to `fused_linear_cross_entropy`, so the (tokens × vocab) logits never exist. It matches
HF's `ForCausalLMLoss`: labels are shifted by padding them with ignore_index and dropping the first column (the
last position predicts nothing), and `num_items_in_batch` turns the mean into sum / num_items_in_batch.
It reads `lm_head.weight` directly, so it does not work where that weight is sharded outside the module's own
forward (DeepSpeed ZeRO-3); a LoRA adapter on lm_head itself is refused.
"""

from __future__ import annotations

import inspect
import sys
import types
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from .cross_entropy import fused_linear_cross_entropy
from .lora import LoRAUnsupported, active_adapter, check_fusable, is_lora_layer, lora_mlp, lora_projections
from .rms_norm import rms_norm as fused_rms_norm
from .rope import apply_rotary_pos_emb as fused_apply_rotary_pos_emb
from .swiglu import swiglu as fused_swiglu

OPS = ("rms_norm", "swiglu", "rope", "lora")
_PATCH_ATTR = "_ftplan_kernel"
_REPORT_ATTR = "_ftplan_kernel_report"  # the model's latest KernelReport
_ATTENTION_PROJECTIONS = ("q_proj", "k_proj", "v_proj", "o_proj")
_GROUPED_PROJECTIONS = ("q_proj", "k_proj", "v_proj")  # read the same hidden states
_MLP_PROJECTIONS = ("gate_proj", "up_proj", "down_proj")
# instance attributes the patches set, removed by revert_ftplan_kernels
_PATCH_ATTRS = ("forward", _PATCH_ATTR, "_ftplan_norm_offset", "_ftplan_norm_casting", "_ftplan_name",
                "_ftplan_group", "_ftplan_pending")


@dataclass(frozen=True)
class _ArchSpec:
    prefix: str  # class-name prefix: LlamaRMSNorm, LlamaMLP, LlamaAttention
    norm_offset: float  # y = x̂·(w + offset)
    norm_casting: str  # "llama" or "gemma" (see rms_norm.py)
    swiglu_mlp: bool  # whether the MLP is gate/up/down with a SiLU gate


ARCHITECTURES: dict[str, _ArchSpec] = {
    "llama": _ArchSpec("Llama", 0.0, "llama", True),
    "mistral": _ArchSpec("Mistral", 0.0, "llama", True),
    "qwen2": _ArchSpec("Qwen2", 0.0, "llama", True),
    "qwen3": _ArchSpec("Qwen3", 0.0, "llama", True),
    "gemma": _ArchSpec("Gemma", 1.0, "gemma", False),  # GeGLU MLP: norms and RoPE only
}


class KernelPatchError(RuntimeError):
    """An expected kernel could not be applied (the plan promised it; no silent fallback)."""


@dataclass
class KernelReport:
    """What `apply_ftplan_kernels` patched: module counts per op, and why anything was left alone."""

    model_type: str
    rms_norm: int = 0  # RMSNorm modules running the fused kernel
    swiglu: int = 0  # MLP modules running the fused SiLU·up
    rope: int = 0  # attention modules whose rotary call goes to the fused kernel
    lora: int = 0  # PEFT LoRA layers of attention / MLP projections running the fused LoRA Functions
    lora_unfused: int = 0  # LoRA layers of those projections the Functions cannot run (why: notes)
    logprobs: int = 0  # causal-LM heads whose DPO/KTO log-probs run the fused linear log-prob op (logprob_head.py)
    rope_functions: list[str] = field(default_factory=list)  # "<module>.apply_rotary_pos_emb" rebound
    notes: list[str] = field(default_factory=list)

    def counts(self) -> dict[str, int]:
        """Patched modules per op, and the fused log-prob heads when a preference trainer installed any."""
        counts = {op: getattr(self, op) for op in OPS}
        if self.logprobs:
            counts["logprobs"] = self.logprobs
        return counts

    def require(self, *ops: str) -> KernelReport:
        """Raise KernelPatchError unless every op in `ops` patched at least one module (for lora: and left no LoRA
        layer of a projection unfused); returns self."""
        unknown = [op for op in ops if op not in OPS]
        if unknown:
            raise ValueError(f"unknown kernel op(s) {unknown}; known: {list(OPS)}")
        missing = [op for op in ops if getattr(self, op) == 0 or (op == "lora" and self.lora_unfused)]
        if missing:
            detail = "; ".join(self.notes) or "no matching modules found"
            raise KernelPatchError(f"{self.model_type}: expected kernels not applied: {missing} ({detail})")
        return self


# ---------------------------------------------------------------------------------------------------------------
# patched forwards (bound to module instances)


def _rms_norm_forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
    eps = getattr(self, "variance_epsilon", None)
    if eps is None:
        eps = self.eps
    return fused_rms_norm(hidden_states, self.weight, eps, self._ftplan_norm_offset, self._ftplan_norm_casting)


def _swiglu_mlp_forward(self, x: torch.Tensor) -> torch.Tensor:
    return self.down_proj(fused_swiglu(self.gate_proj(x), self.up_proj(x)))


def _lora_mlp_forward(self, x: torch.Tensor) -> torch.Tensor:
    return lora_mlp(x, self.gate_proj, self.up_proj, self.down_proj)


def _lora_layer_forward(self, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
    """A LoRA projection's forward: its output computed with its neighbours by the attention forward, else its own
    fused Function; PEFT's forward where it adds nothing to fuse (adapters disabled or merged) or gets extra
    arguments (e.g. `adapter_names` for mixed-batch inference)."""
    pending = self.__dict__.pop("_ftplan_pending", None)
    if pending is not None and pending[0] is x and not args and not kwargs:
        return pending[1]
    if args or kwargs or active_adapter(self) is None:
        return type(self).forward(self, x, *args, **kwargs)
    (y,) = lora_projections(x, [self], [self._ftplan_name])
    return y


def _lora_attention_forward(self, *args, **kwargs):
    """The attention's own forward, after computing the q/k/v LoRA projections with an active adapter in one fused
    Function and handing each layer its output for the call the forward makes with the same hidden states."""
    hidden_states = kwargs["hidden_states"] if "hidden_states" in kwargs else args[0]
    group = [layer for layer in self._ftplan_group if active_adapter(layer) is not None]
    if len(group) < 2:
        return type(self).forward(self, *args, **kwargs)
    outputs = lora_projections(hidden_states, group, [layer._ftplan_name for layer in group])
    for layer, y in zip(group, outputs):
        layer._ftplan_pending = (hidden_states, y)
    try:
        return type(self).forward(self, *args, **kwargs)
    finally:
        for layer in group:
            layer.__dict__.pop("_ftplan_pending", None)


def _bind(module: nn.Module, kernel: str, forward) -> None:
    module.forward = types.MethodType(forward, module)
    setattr(module, _PATCH_ATTR, kernel)


def _is_silu(act: nn.Module | None) -> bool:
    return type(act).__name__ in ("SiLU", "SiLUActivation")


def _uses_global(fn, name: str) -> bool:
    """Whether `fn` (through decorator wrappers) reads the module global `name`."""
    fn = inspect.unwrap(fn)
    code = getattr(fn, "__code__", None)
    return code is not None and name in code.co_names


# Original `apply_rotary_pos_emb` per modeling module, for revert_ftplan_kernels.
_ORIGINAL_ROPE: dict[str, object] = {}


def _model_type(model: nn.Module) -> str:
    config = getattr(model, "config", None)
    model_type = getattr(config, "model_type", None)
    if model_type is None:
        raise KernelPatchError("model has no config.model_type; cannot tell which kernels apply")
    return model_type


def _fusable(layer: nn.Module, where: str, report: KernelReport) -> bool:
    try:
        check_fusable(layer, where)
    except LoRAUnsupported as e:
        report.notes.append(f"{e}; left to PEFT")
        return False
    return True


def _patch_lora_attention(attention: nn.Module, prefix: str, report: KernelReport, handled: set[int]) -> None:
    """Bind the fused forward to every LoRA layer of q/k/v/o it can run, and the grouped q/k/v forward."""
    fused = {}
    for name in _ATTENTION_PROJECTIONS:
        layer = getattr(attention, name, None)
        if layer is None or not is_lora_layer(layer):
            continue
        handled.add(id(layer))
        if not _fusable(layer, f"{prefix}Attention.{name}", report):
            report.lora_unfused += 1
            continue
        layer._ftplan_name = name
        _bind(layer, "lora", _lora_layer_forward)
        fused[name] = layer
        report.lora += 1
    group = [fused[name] for name in _GROUPED_PROJECTIONS if name in fused]
    if len(group) >= 2:
        attention._ftplan_group = group
        _bind(attention, "lora_qkv", _lora_attention_forward)


def _patch_lora_mlp(mlp: nn.Module, where: str, report: KernelReport, handled: set[int]) -> bool:
    """Bind the fused LoRA MLP forward when gate/up/down hold LoRA layers it can run; whether it did."""
    layers = [getattr(mlp, name, None) for name in _MLP_PROJECTIONS]
    n_lora = sum(1 for layer in layers if layer is not None and is_lora_layer(layer))
    handled.update(id(layer) for layer in layers if layer is not None and is_lora_layer(layer))
    if n_lora == 0:
        return False
    if any(layer is None for layer in layers) or not all(
            _fusable(layer, f"{where}.{name}", report) for layer, name in zip(layers, _MLP_PROJECTIONS)):
        report.lora_unfused += n_lora
        return False
    _bind(mlp, "swiglu+lora", _lora_mlp_forward)
    report.lora += n_lora
    return True


def apply_ftplan_kernels(
    model: nn.Module, *, rms_norm: bool = True, swiglu: bool = True, rope: bool = True, lora: bool = True,
    strict: bool = True,
) -> KernelReport:
    """Patch RMSNorm, SwiGLU MLP, RoPE and the LoRA layers of a HF causal LM instance (optionally PEFT-wrapped)
    in place.

    With `strict` (default), every op among rms_norm, swiglu and rope that is switched on must patch at least
    one module, and lora must leave no LoRA layer of an attention or MLP projection unfused (a model without
    LoRA layers passes); otherwise KernelPatchError is raised. Switch an op off where the architecture does not
    have it (e.g. swiglu for Gemma). Unsupported `config.model_type` raises as well. Returns a KernelReport with
    counts per op.
    """
    model_type = _model_type(model)
    spec = ARCHITECTURES.get(model_type)
    if spec is None:
        raise KernelPatchError(
            f"model_type {model_type!r} has no ftplan kernel mapping (supported: {sorted(ARCHITECTURES)})"
        )
    report = KernelReport(model_type=model_type)
    norm_cls, mlp_cls, attn_cls = f"{spec.prefix}RMSNorm", f"{spec.prefix}MLP", f"{spec.prefix}Attention"

    attention_modules: dict[str, list[nn.Module]] = {}
    handled: set[int] = set()  # LoRA layers of the projections the lora op covers
    for module in model.modules():
        cls_name = type(module).__name__
        if rms_norm and cls_name == norm_cls:
            if getattr(module, _PATCH_ATTR, None) != "rms_norm":
                module._ftplan_norm_offset = spec.norm_offset
                module._ftplan_norm_casting = spec.norm_casting
                _bind(module, "rms_norm", _rms_norm_forward)
            report.rms_norm += 1
        elif cls_name == mlp_cls and (swiglu or lora):
            silu = spec.swiglu_mlp and _is_silu(getattr(module, "act_fn", None))
            if not swiglu or not silu:
                lora_layers = [n for n in _MLP_PROJECTIONS if is_lora_layer(getattr(module, n, nn.Identity()))]
                if lora and lora_layers:
                    handled.update(id(getattr(module, n)) for n in lora_layers)
                    report.lora_unfused += len(lora_layers)
                    why = "the swiglu op is off" if silu else "its activation is not SiLU"
                    report.notes.append(f"{cls_name}: the fused LoRA MLP runs SwiGLU and {why}; its LoRA layers "
                                        "are left to PEFT")
                if swiglu:
                    act = type(getattr(module, "act_fn", None)).__name__
                    report.notes.append(f"{cls_name}: activation {act} is not SiLU, MLP left as is")
                continue
            if not (lora and _patch_lora_mlp(module, cls_name, report, handled)):
                _bind(module, "swiglu", _swiglu_mlp_forward)
            report.swiglu += 1
        elif cls_name == attn_cls:
            if rope:
                attention_modules.setdefault(type(module).__module__, []).append(module)
            if lora:
                _patch_lora_attention(module, spec.prefix, report, handled)

    for module_name, modules in attention_modules.items():
        modeling = sys.modules[module_name]
        target = f"{module_name}.apply_rotary_pos_emb"
        if not hasattr(modeling, "apply_rotary_pos_emb") or not _uses_global(
            type(modules[0]).forward, "apply_rotary_pos_emb"
        ):
            report.notes.append(f"{attn_cls}.forward does not call {target}; RoPE left as is")
            continue
        current = modeling.apply_rotary_pos_emb
        if current is not fused_apply_rotary_pos_emb:
            _ORIGINAL_ROPE.setdefault(module_name, current)
            modeling.apply_rotary_pos_emb = fused_apply_rotary_pos_emb
        report.rope += len(modules)
        report.rope_functions.append(target)

    if not report.rms_norm and rms_norm:
        report.notes.append(f"no {norm_cls} modules found")
    if not report.swiglu and swiglu and not any(n.startswith(mlp_cls) for n in report.notes):
        report.notes.append(f"no {mlp_cls} modules found")
    if not report.rope and rope and not attention_modules:
        report.notes.append(f"no {attn_cls} modules found")
    if lora:
        outside = [name for name, m in model.named_modules() if is_lora_layer(m) and id(m) not in handled]
        if outside:
            report.notes.append(f"{len(outside)} LoRA layer(s) outside the attention and MLP projections run PEFT's "
                                f"own forward: {', '.join(outside[:3])}{', ...' if len(outside) > 3 else ''}")
        if not handled:
            report.notes.append("no PEFT LoRA layers on the attention or MLP projections (the lora op applies after "
                                "get_peft_model)")
    if strict:
        report.require(*[op for op, on in zip(OPS[:3], (rms_norm, swiglu, rope)) if on])
        if lora and report.lora_unfused:
            report.require("lora")
    model.__dict__[_REPORT_ATTR] = report  # a preference trainer adds its fused log-prob heads to it
    return report


def revert_ftplan_kernels(model: nn.Module) -> None:
    """Undo apply_ftplan_kernels: drop the instance forwards and restore every rebound `apply_rotary_pos_emb`.

    The RoPE restore is process-wide (see the module docstring).
    """
    model.__dict__.pop(_REPORT_ATTR, None)
    for module in model.modules():
        if getattr(module, _PATCH_ATTR, None) is not None:
            for attr in _PATCH_ATTRS:
                module.__dict__.pop(attr, None)
    for module_name, original in list(_ORIGINAL_ROPE.items()):
        sys.modules[module_name].apply_rotary_pos_emb = original
        del _ORIGINAL_ROPE[module_name]


# ---------------------------------------------------------------------------------------------------------------
# loss without logits


def _base_model(model: nn.Module) -> nn.Module:
    """The transformers *ForCausalLM under any PEFT wrapper (LoRA layers stay injected in it)."""
    if hasattr(model, "get_base_model"):
        model = model.get_base_model()
    return model


def _head_parameters(head: nn.Module) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(weight, bias) that the output projection applies, seen through PEFT's modules_to_save wrapper."""
    if hasattr(head, "modules_to_save") and hasattr(head, "original_module"):
        head = head.original_module if head.disable_adapters else head.modules_to_save[head.active_adapters[0]]
    if hasattr(head, "lora_A") and hasattr(head, "base_layer"):
        if getattr(head, "active_adapters", None) and not getattr(head, "disable_adapters", False):
            if not getattr(head, "merged", False):
                raise NotImplementedError("LoRA on lm_head is not supported by the fused linear cross-entropy")
        head = head.base_layer
    if not isinstance(head, nn.Linear):
        raise NotImplementedError(f"output projection {type(head).__name__} is not a plain nn.Linear")
    return head.weight, head.bias


def causal_lm_loss(
    model: nn.Module,
    input_ids: torch.Tensor | None,
    labels: torch.Tensor | None,
    attention_mask: torch.Tensor | None = None,
    *,
    num_items_in_batch=None,
    shift_labels: torch.Tensor | None = None,
    ignore_index: int = -100,
    **kwargs,
) -> torch.Tensor:
    """Next-token cross-entropy of a (PEFT-wrapped) HF causal LM without materializing logits.

    Equals `model(input_ids, attention_mask=..., labels=labels, num_items_in_batch=...).loss`. Pass
    `shift_labels` (already shifted, as HF accepts) instead of `labels` for packed/context-parallel batches.
    Other keyword arguments (position_ids, inputs_embeds, ...) go to the decoder.
    """
    base = _base_model(model)
    decoder = base.get_decoder() if hasattr(base, "get_decoder") else base.model
    weight, bias = _head_parameters(base.get_output_embeddings())

    kwargs.setdefault("use_cache", False)
    outputs = decoder(input_ids=input_ids, attention_mask=attention_mask, **kwargs)
    hidden = outputs.last_hidden_state if hasattr(outputs, "last_hidden_state") else outputs[0]

    if shift_labels is None:
        if labels is None:
            raise ValueError("pass labels or shift_labels")
        # position t predicts label t+1; the last position gets ignore_index (HF ForCausalLMLoss)
        shift_labels = F.pad(labels, (0, 1), value=ignore_index)[..., 1:]
    hidden = hidden.reshape(-1, hidden.shape[-1])
    shift_labels = shift_labels.reshape(-1).to(hidden.device)
    return fused_linear_cross_entropy(
        hidden, weight, shift_labels, bias, ignore_index=ignore_index, num_items_in_batch=num_items_in_batch
    )
