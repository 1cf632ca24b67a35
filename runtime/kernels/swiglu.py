"""Fused SwiGLU activation: h = SiLU(a) · b, with a = gate_proj(x) and b = up_proj(x).

    σ(a)    = 1 / (1 + e^(−a))
    SiLU(a) = a · σ(a)
    h       = SiLU(a) · b

Backward recomputes σ(a) from the saved a instead of keeping SiLU(a) or h:

    db = dh · SiLU(a)
    da = dh · b · σ(a) · (1 + a · (1 − σ(a)))          since d/da [a·σ(a)] = σ(a) + a·σ(a)(1 − σ(a))

Saved for backward: a and b only (the projections' outputs). HF's eager `act_fn(gate) * up` keeps a, b and
SiLU(a), i.e. one more (tokens × intermediate) tensor per layer, and rounds SiLU(a) to the input dtype before
the product; here the math is fp32 and the result is rounded once.

The gate/up/down Linear layers stay outside this op, so PEFT LoRA can still wrap them.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._utils import elementwise_settings, ensure_contiguous


@triton.jit
def _swiglu_forward_kernel(
    A_ptr,  # pointer to gate activations a, contiguous, n_elements
    B_ptr,  # pointer to up activations b, contiguous, n_elements
    H_ptr,  # pointer to output h, contiguous, n_elements
    n_elements,  # int: numel of a (== numel of b)
    BLOCK_SIZE: tl.constexpr,
):
    pid = tl.program_id(0).to(tl.int64)
    offs = pid * BLOCK_SIZE + tl.arange(0, BLOCK_SIZE)
    mask = offs < n_elements

    a = tl.load(A_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    b = tl.load(B_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    # h = a·σ(a)·b
    h = a * tl.sigmoid(a) * b
    tl.store(H_ptr + offs, h.to(H_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _swiglu_backward_kernel(
    DH_ptr,  # pointer to upstream grad dh, contiguous, n_elements
    A_ptr,  # pointer to saved a
    B_ptr,  # pointer to saved b
    DA_ptr,  # pointer to output da
    DB_ptr,  # pointer to output db
    n_elements,  # int
    BLOCK_SIZE: tl.constexpr,
):
    pid = tl.program_id(0).to(tl.int64)
    offs = pid * BLOCK_SIZE + tl.arange(0, BLOCK_SIZE)
    mask = offs < n_elements

    dh = tl.load(DH_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    a = tl.load(A_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    b = tl.load(B_ptr + offs, mask=mask, other=0.0).to(tl.float32)

    sig = tl.sigmoid(a)
    silu = a * sig
    # db = dh·SiLU(a) ; da = dh·b·σ(a)·(1 + a·(1 − σ(a)))
    db = dh * silu
    da = dh * b * sig * (1.0 + a * (1.0 - sig))
    tl.store(DA_ptr + offs, da.to(DA_ptr.dtype.element_ty), mask=mask)
    tl.store(DB_ptr + offs, db.to(DB_ptr.dtype.element_ty), mask=mask)


def swiglu_forward(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """h = SiLU(a)·b for contiguous a, b of equal shape; h has a's dtype."""
    if a.shape != b.shape:
        raise ValueError(f"gate and up shapes differ: {tuple(a.shape)} vs {tuple(b.shape)}")
    h = torch.empty_like(a)
    n = a.numel()
    if n == 0:
        return h
    block, num_warps = elementwise_settings()
    _swiglu_forward_kernel[(triton.cdiv(n, block),)](a, b, h, n, BLOCK_SIZE=block, num_warps=num_warps)
    return h


def swiglu_backward(dh: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(da, db) into fresh buffers; the saved a and b are left untouched."""
    da = torch.empty_like(a)
    db = torch.empty_like(b)
    n = a.numel()
    if n == 0:
        return da, db
    block, num_warps = elementwise_settings()
    _swiglu_backward_kernel[(triton.cdiv(n, block),)](dh, a, b, da, db, n, BLOCK_SIZE=block, num_warps=num_warps)
    return da, db


class SwiGLUFunction(torch.autograd.Function):
    """h = SiLU(a)·b; saves a and b, recomputes σ(a) in backward."""

    @staticmethod
    @ensure_contiguous
    def forward(ctx, a, b):
        h = swiglu_forward(a, b)
        ctx.save_for_backward(a, b)
        return h

    @staticmethod
    @ensure_contiguous
    def backward(ctx, dh):
        a, b = ctx.saved_tensors
        return swiglu_backward(dh, a, b)


def swiglu(gate: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
    """Fused `silu(gate) * up` (the Llama/Mistral/Qwen MLP activation)."""
    return SwiGLUFunction.apply(gate, up)
