"""Fused LoRA autograd for the attention projections (q, k, v; o) and the SwiGLU MLP, on 16-bit or NF4 bases.

Notation, per projection (nn.Linear convention): X (T × k) the input rows, W (n × k) the frozen base weight (16-bit,
or NF4 dequantised on the fly by `nf4.py`), c (n) its frozen bias if any, A (r × k) = lora_A.weight,
B (n × r) = lora_B.weight, s = scaling (alpha / r).

Forward of one projection:

    Z = X Aᵀ                         (T × r)
    Y = X Wᵀ + c + s · Z Bᵀ          (T × n)

Backward, given dY (T × n):

    dZ = s · dY B                    (T × r)
    dB = s · dYᵀ Z                   (n × r)
    dA = dZᵀ X                       (r × k)
    dX = dY W + dZ A                 (T × k)

Projections that read the same X (q, k and v; gate and up) stack their adapters, A* = [A_q; A_k; A_v] ((Σr) × k),
so that one GEMM serves them all: Z* = X A*ᵀ in forward, dA* = dZ*ᵀ X and the adapters' share of dX, dZ* A*, in
backward. The base shares dY_i W_i accumulate into one dX buffer (addmm), with no per-projection temporaries.

The MLP block, e = gate(X), g = up(X), h = SiLU(e) · g, Y = down(h), runs as one Function. Its backward:

    dh = dY W_d + dZ_d A_d           (dZ_d = s_d · dY B_d)
    one elementwise pass reads dh, e, g and writes, in place:
        h  = SiLU(e) · g                         → dh's storage   (recomputed, not kept from forward)
        de = dh · g · σ(e) · (1 + e (1 − σ(e)))  → e's storage
        dg = dh · SiLU(e)                        → g's storage
    dA_d = dZ_dᵀ h,  dB_d = s_d · dYᵀ Z_d,  then gate and up as above with dY_gate = de, dY_up = dg.

GEMMs per block, forward / backward, with an adapter on every projection (PEFT's LoRA layers: 3 / 5 per projection):

    q, k, v   7 / 11   (PEFT  9 / 15)       3 base + Z* + 3 adapter adds;  3 dZ + 3 dB + dA* + 3 dY·W + dZ*·A*
    o         3 / 5    (PEFT  3 / 5)        the same, with no neighbour to share with; dX has no extra sum
    MLP       8 / 14   (PEFT  9 / 15)

Saved for backward: X (in the compute dtype), Z* (r/k the size of X: cheaper to keep than a GEMM over X), the
adapters, and for the MLP e and g (which SwiGLU's backward needs). Never saved: the other base outputs, h, the
adapters' products s · Z Bᵀ, and the dequantised NF4 weights. Backward dequantises again into the same shared
buffer (`nf4.dequantize_nf4_shared`), so no layer's weight outlives its own forward or backward; a forward rerun by
gradient checkpointing dequantises again as well.

Dtypes: the compute dtype is the autocast dtype when autocast is on for X's device, else X's dtype. Inputs, adapters
and 16-bit weights are cast to it (only the small adapters are copied in mixed precision), NF4 weights are
dequantised to the dtype they were quantised from (as bitsandbytes does) and cast if that differs, every GEMM runs
in it, and the gradients come back in each input's own dtype (fp32 adapters under PEFT's autocast_adapter_dtype).

Supported layers: PEFT LoRA `Linear` layers on an `nn.Linear` or bitsandbytes NF4 `Linear4bit` base, with plain
LoRA (no DoRA or other variant), dropout 0, no LoRA bias, not fan_in_fan_out, at most one active adapter; and
frozen `nn.Linear` / `Linear4bit` layers without an adapter; every weight whole in the process (not ZeRO-3 or FSDP
sharded: the functions read the weights directly, outside the modules' own forward). A disabled or merged adapter
runs the base alone. Anything else raises LoRAUnsupported: there is no silent fallback to an unfused path.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import triton
import triton.language as tl
from torch import nn

from ._utils import elementwise_settings
from .nf4 import Nf4FormatError, Nf4Weight, dequantize_nf4_shared, nf4_weight
from .swiglu import swiglu_forward


class LoRAUnsupported(RuntimeError):
    """A layer the fused LoRA functions cannot run exactly (DoRA, dropout, LoRA bias, a trainable base, ...)."""


# ---------------------------------------------------------------------------------------------------------------
# SwiGLU backward for the MLP block: recomputes h and writes h, de, dg over dh, e, g


@triton.jit
def _swiglu_backward_in_place_kernel(
    DH_ptr,  # in: dh; out: h = SiLU(e)·g
    E_ptr,  # in: e (gate output); out: de
    G_ptr,  # in: g (up output); out: dg
    n_elements,  # int: numel of each
    BLOCK_SIZE: tl.constexpr,
):
    pid = tl.program_id(0).to(tl.int64)
    offs = pid * BLOCK_SIZE + tl.arange(0, BLOCK_SIZE)
    mask = offs < n_elements

    dh = tl.load(DH_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    e = tl.load(E_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    g = tl.load(G_ptr + offs, mask=mask, other=0.0).to(tl.float32)

    sig = tl.sigmoid(e)
    silu = e * sig
    # h = SiLU(e)·g ; dg = dh·SiLU(e) ; de = dh·g·σ(e)·(1 + e·(1 − σ(e)))
    h = silu * g
    dg = dh * silu
    de = dh * g * sig * (1.0 + e * (1.0 - sig))
    tl.store(DH_ptr + offs, h.to(DH_ptr.dtype.element_ty), mask=mask)
    tl.store(E_ptr + offs, de.to(E_ptr.dtype.element_ty), mask=mask)
    tl.store(G_ptr + offs, dg.to(G_ptr.dtype.element_ty), mask=mask)


def swiglu_backward_in_place(dh: torch.Tensor, e: torch.Tensor, g: torch.Tensor) -> None:
    """Overwrite dh with h = SiLU(e)·g, e with de and g with dg (contiguous tensors of one shape and dtype)."""
    if not (dh.shape == e.shape == g.shape) or not all(t.is_contiguous() for t in (dh, e, g)):
        raise ValueError(f"dh, e, g must be contiguous and of one shape: {dh.shape}, {e.shape}, {g.shape}")
    n = dh.numel()
    if n == 0:
        return
    block, num_warps = elementwise_settings()
    _swiglu_backward_in_place_kernel[(triton.cdiv(n, block),)](dh, e, g, n, BLOCK_SIZE=block, num_warps=num_warps)


# ---------------------------------------------------------------------------------------------------------------
# what a projection is made of


@dataclass(frozen=True)
class FrozenLinear:
    """The frozen base of one projection: a 16-bit weight or an NF4 one, and an optional bias."""

    weight: torch.Tensor | None = None
    """(out_features, in_features) 16-bit or fp32 weight; None for an NF4 base."""
    nf4: Nf4Weight | None = None
    """The NF4 weight; None for a 16-bit base."""
    bias: torch.Tensor | None = None
    """(out_features,) frozen bias, if the layer has one."""

    def dense(self, dtype: torch.dtype) -> torch.Tensor:
        """The (out, in) weight in `dtype`: the weight itself (cast when its dtype differs), or the NF4 weight
        dequantised into the shared buffer, valid only until the next dequantisation."""
        if self.nf4 is None:
            return self.weight if self.weight.dtype == dtype else self.weight.to(dtype)
        weight = dequantize_nf4_shared(self.nf4)
        return weight if weight.dtype == dtype else weight.to(dtype)


@dataclass(frozen=True)
class LoRAProjection:
    """One projection of a fused block: its frozen base and, when `has_adapter`, the scaling of its adapter (whose
    A and B go to the Function as tensors, in the order of the projections that have one)."""

    base: FrozenLinear
    """The frozen base layer."""
    scaling: float = 0.0
    """s in Y = X Wᵀ + s · X Aᵀ Bᵀ."""
    has_adapter: bool = False
    """Whether an active LoRA adapter adds to this projection."""


def is_lora_layer(module: nn.Module) -> bool:
    """Whether `module` is a PEFT LoRA layer (it wraps a `base_layer` and holds `lora_A` / `lora_B`)."""
    return hasattr(module, "base_layer") and hasattr(module, "lora_A") and hasattr(module, "lora_B")


def _is_params4bit(weight) -> bool:
    return hasattr(weight, "quant_state") and type(weight).__name__ == "Params4bit"


def _sharded(tensor) -> bool:
    """A DeepSpeed ZeRO-3 or FSDP2 parameter: whole only inside its own module's forward, which the fused
    functions bypass by reading it directly."""
    return hasattr(tensor, "ds_id") or type(tensor).__name__ == "DTensor"


def _frozen_base(linear: nn.Module, where: str) -> FrozenLinear:
    weight = getattr(linear, "weight", None)
    bias = getattr(linear, "bias", None)
    if weight is None or not (isinstance(linear, nn.Linear) or _is_params4bit(weight)):
        raise LoRAUnsupported(f"{where}: {type(linear).__name__} is not an nn.Linear or a bitsandbytes Linear4bit")
    if weight.requires_grad or (bias is not None and bias.requires_grad):
        raise LoRAUnsupported(f"{where}: the base weight trains; the fused LoRA functions keep it frozen")
    if _sharded(weight):
        raise LoRAUnsupported(f"{where}: the base weight is sharded (ZeRO-3 / FSDP); the fused LoRA functions read "
                              "whole weights")
    if _is_params4bit(weight):
        try:
            return FrozenLinear(nf4=nf4_weight(weight.data, weight.quant_state), bias=bias)
        except Nf4FormatError as e:
            raise LoRAUnsupported(f"{where}: {e}") from None
    return FrozenLinear(weight=weight, bias=bias)


def _check_adapter(layer: nn.Module, name: str, where: str) -> None:
    dropout = layer.lora_dropout[name] if name in getattr(layer, "lora_dropout", {}) else None
    if dropout is not None and not isinstance(dropout, nn.Identity) and getattr(dropout, "p", 0.0) != 0.0:
        raise LoRAUnsupported(f"{where}: adapter '{name}' has LoRA dropout {dropout.p}; the fused LoRA functions "
                              "need dropout 0 (set the adapter's `dropout: 0`)")
    if name in getattr(layer, "lora_variant", {}) or getattr(layer, "use_dora", {}).get(name, False):
        kind = "DoRA" if getattr(layer, "use_dora", {}).get(name, False) else type(layer.lora_variant[name]).__name__
        raise LoRAUnsupported(f"{where}: adapter '{name}' is {kind}; the fused LoRA functions run plain LoRA")
    if getattr(layer, "lora_bias", {}).get(name, False):
        raise LoRAUnsupported(f"{where}: adapter '{name}' has a LoRA bias; the fused LoRA functions have none")
    if _sharded(layer.lora_A[name].weight) or _sharded(layer.lora_B[name].weight):
        raise LoRAUnsupported(f"{where}: adapter '{name}' is sharded (ZeRO-3 / FSDP); the fused LoRA functions read "
                              "whole weights")


def check_fusable(module: nn.Module, where: str = "layer") -> None:
    """Raise LoRAUnsupported unless the fused functions can run `module` exactly: a PEFT LoRA layer of a supported
    kind with every adapter it holds (see the module docstring), or a frozen Linear / NF4 Linear4bit."""
    if not is_lora_layer(module):
        _frozen_base(module, where)
        return
    if getattr(module, "fan_in_fan_out", False):
        raise LoRAUnsupported(f"{where}: fan_in_fan_out (transposed) weights are not supported")
    _frozen_base(module.base_layer, where)
    for name in module.lora_A:
        _check_adapter(module, name, where)
    if len([a for a in module.active_adapters if a in module.lora_A]) > 1:
        raise LoRAUnsupported(f"{where}: several active adapters; the fused LoRA functions run one")


def active_adapter(layer: nn.Module) -> str | None:
    """The adapter a PEFT LoRA layer adds right now: None when adapters are disabled or merged into the base."""
    if getattr(layer, "disable_adapters", False) or getattr(layer, "merged", False):
        return None
    active = [a for a in layer.active_adapters if a in layer.lora_A]
    if len(active) > 1:
        raise LoRAUnsupported(f"several active adapters {active}; the fused LoRA functions run one")
    return active[0] if active else None


def read_projection(module: nn.Module, where: str = "layer") -> tuple[LoRAProjection, tuple[torch.Tensor, ...]]:
    """(projection, adapter tensors (A, B) or ()) of a PEFT LoRA layer or a frozen linear layer, as it is now."""
    if not is_lora_layer(module):
        return LoRAProjection(_frozen_base(module, where)), ()
    base = _frozen_base(module.base_layer, where)
    name = active_adapter(module)
    if name is None:
        return LoRAProjection(base), ()
    _check_adapter(module, name, where)
    return (LoRAProjection(base, float(module.scaling[name]), True),
            (module.lora_A[name].weight, module.lora_B[name].weight))


# ---------------------------------------------------------------------------------------------------------------
# the math shared by the Functions (2-D tensors in the compute dtype)


def _compute_dtype(x: torch.Tensor) -> torch.dtype:
    device = x.device.type
    return torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else x.dtype


def _stack(tensors, dtype: torch.dtype) -> torch.Tensor:
    tensors = [t.to(dtype) for t in tensors]
    return tensors[0] if len(tensors) == 1 else torch.cat(tensors)


def _forward_projections(x, projections, As, Bs, dtype):
    """Outputs of projections sharing `x`, and Z* = x A*ᵀ (None when no projection has an adapter)."""
    z = torch.mm(x, _stack(As, dtype).t()) if As else None
    outputs, column, j = [], 0, 0
    for p in projections:
        weight = p.base.dense(dtype)
        if p.base.bias is not None:
            y = torch.addmm(p.base.bias.to(dtype), x, weight.t())
        else:
            y = torch.mm(x, weight.t())
        if p.has_adapter:
            r = As[j].shape[0]
            y.addmm_(z[:, column:column + r], Bs[j].to(dtype).t(), alpha=p.scaling)
            column, j = column + r, j + 1
        outputs.append(y)
    return outputs, z


def _backward_projections(x, z, dys, projections, As, Bs, dtype, need_x, need_a, need_b):
    """(dX or None, [dA_j or None], [dB_j or None]) for projections sharing `x`, given their output grads."""
    dx, dzs, dBs = None, [], []
    column, j = 0, 0
    for p, dy in zip(projections, dys):
        if p.has_adapter:
            b = Bs[j].to(dtype)
            r = b.shape[1]
            if need_x or any(need_a):
                dzs.append(torch.mm(dy, b).mul_(p.scaling))
            dBs.append(torch.mm(dy.t(), z[:, column:column + r]).mul_(p.scaling) if need_b[j] else None)
            column, j = column + r, j + 1
        if need_x:
            weight = p.base.dense(dtype)
            dx = torch.mm(dy, weight) if dx is None else dx.addmm_(dy, weight)
    dAs = [None] * len(As)
    if dzs:
        dz = dzs[0] if len(dzs) == 1 else torch.cat(dzs, dim=1)
        if any(need_a):
            da = torch.mm(dz.t(), x)
            ranks = [a.shape[0] for a in As]
            dAs = [d if need else None for d, need in zip(torch.split(da, ranks), need_a)]
        if need_x:
            dx.addmm_(dz, _stack(As, dtype))
    return dx, dAs, dBs


def _as_input_grads(dx, dAs, dBs, ctx, As, Bs):
    grads = [dx.view(ctx.x_shape).to(ctx.x_dtype) if dx is not None else None, None]
    for a, b, da, db in zip(As, Bs, dAs, dBs):
        grads += [da.to(a.dtype) if da is not None else None, db.to(b.dtype) if db is not None else None]
    return tuple(grads)


# ---------------------------------------------------------------------------------------------------------------
# autograd Functions


class LoRAProjectionsFunction(torch.autograd.Function):
    """Projections of one input with their LoRA adapters (q, k, v of an attention block, or o alone).

    apply(x, projections, A_1, B_1, A_2, B_2, ...): one (A, B) pair per projection with `has_adapter`, in order.
    Returns one output per projection. Saves x and Z* only (see the module docstring)."""

    @staticmethod
    def forward(ctx, x, projections, *adapters):
        As, Bs = adapters[0::2], adapters[1::2]
        dtype = _compute_dtype(x)
        with torch.autocast(x.device.type, enabled=False):
            xc = x.reshape(-1, x.shape[-1]).to(dtype)
            outputs, z = _forward_projections(xc, projections, As, Bs, dtype)
        ctx.projections, ctx.dtype, ctx.x_shape, ctx.x_dtype = projections, dtype, x.shape, x.dtype
        ctx.save_for_backward(xc, z, *adapters)
        return tuple(y.view(*x.shape[:-1], y.shape[-1]) for y in outputs)

    @staticmethod
    def backward(ctx, *dys):
        xc, z, *adapters = ctx.saved_tensors
        As, Bs = adapters[0::2], adapters[1::2]
        need = ctx.needs_input_grad
        with torch.autocast(xc.device.type, enabled=False):
            dys = [dy.reshape(-1, dy.shape[-1]).to(ctx.dtype) for dy in dys]
            dx, dAs, dBs = _backward_projections(xc, z, dys, ctx.projections, As, Bs, ctx.dtype,
                                                 need[0], need[2::2], need[3::2])
        return _as_input_grads(dx, dAs, dBs, ctx, As, Bs)


class LoRAMLPFunction(torch.autograd.Function):
    """The SwiGLU MLP down(SiLU(gate(x)) · up(x)) with LoRA adapters on any of its three projections.

    apply(x, (gate, up, down), A, B, ...): one (A, B) pair per projection with `has_adapter`, in that order.
    Saves x, e, g and the Z's; recomputes h in backward (see the module docstring)."""

    @staticmethod
    def forward(ctx, x, projections, *adapters):
        As, Bs = adapters[0::2], adapters[1::2]
        n_up = sum(p.has_adapter for p in projections[:2])
        dtype = _compute_dtype(x)
        with torch.autocast(x.device.type, enabled=False):
            xc = x.reshape(-1, x.shape[-1]).to(dtype)
            (e, g), z_up = _forward_projections(xc, projections[:2], As[:n_up], Bs[:n_up], dtype)
            h = swiglu_forward(e, g)
            (y,), z_down = _forward_projections(h, projections[2:], As[n_up:], Bs[n_up:], dtype)
            del h
        ctx.projections, ctx.dtype, ctx.x_shape, ctx.x_dtype, ctx.n_up = projections, dtype, x.shape, x.dtype, n_up
        ctx.save_for_backward(xc, e, g, z_up, z_down, *adapters)
        return y.view(*x.shape[:-1], y.shape[-1])

    @staticmethod
    def backward(ctx, dy):
        xc, e, g, z_up, z_down, *adapters = ctx.saved_tensors
        As, Bs = adapters[0::2], adapters[1::2]
        n_up, dtype, (gate, up, down) = ctx.n_up, ctx.dtype, ctx.projections
        need = ctx.needs_input_grad
        need_x, need_a, need_b = need[0], need[2::2], need[3::2]
        if not any(need):
            return (None,) * len(need)
        with torch.autocast(xc.device.type, enabled=False):
            dy = dy.reshape(-1, dy.shape[-1]).to(dtype)
            dh = torch.mm(dy, down.base.dense(dtype))  # dh = dY W_d (+ dZ_d A_d below)
            dA_down, dB_down = [], []
            if down.has_adapter:
                a_d, b_d = As[n_up].to(dtype), Bs[n_up].to(dtype)
                dz_d = torch.mm(dy, b_d).mul_(down.scaling)
                dB_down.append(torch.mm(dy.t(), z_down).mul_(down.scaling) if need_b[n_up] else None)
                dh.addmm_(dz_d, a_d)
            swiglu_backward_in_place(dh, e, g)  # dh := h, e := de, g := dg
            torch.autograd.graph.increment_version(e)  # a retained graph's second backward fails loudly
            torch.autograd.graph.increment_version(g)
            if down.has_adapter:
                dA_down.append(torch.mm(dz_d.t(), dh) if need_a[n_up] else None)
            del dh
            dx, dAs, dBs = _backward_projections(xc, z_up, (e, g), (gate, up), As[:n_up], Bs[:n_up], dtype,
                                                 need_x, need_a[:n_up], need_b[:n_up])
        return _as_input_grads(dx, dAs + dA_down, dBs + dB_down, ctx, As, Bs)


# ---------------------------------------------------------------------------------------------------------------
# entry points on modules


def lora_projections(x: torch.Tensor, layers: list[nn.Module], names: list[str] | None = None
                     ) -> tuple[torch.Tensor, ...]:
    """The outputs of `layers` (PEFT LoRA layers or frozen linears, all reading `x`) through one fused Function."""
    names = names or [type(m).__name__ for m in layers]
    projections, adapters = [], []
    for layer, name in zip(layers, names):
        p, t = read_projection(layer, name)
        projections.append(p)
        adapters += t
    return LoRAProjectionsFunction.apply(x, tuple(projections), *adapters)


def lora_mlp(x: torch.Tensor, gate: nn.Module, up: nn.Module, down: nn.Module) -> torch.Tensor:
    """down(SiLU(gate(x)) · up(x)) through the fused Function; each projection a PEFT LoRA layer or frozen linear."""
    projections, adapters = [], []
    for layer, name in ((gate, "gate_proj"), (up, "up_proj"), (down, "down_proj")):
        p, t = read_projection(layer, name)
        projections.append(p)
        adapters += t
    return LoRAMLPFunction.apply(x, tuple(projections), *adapters)
