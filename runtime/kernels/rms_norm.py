"""Fused RMSNorm forward and backward (Llama `x̂·w` and Gemma `x̂·(1+w)` variants).

    rstd = 1 / sqrt(mean(x²) + eps)        per row, fp32
    x̂    = x · rstd
    y    = x̂ · (w + offset)                 offset = 0 (Llama, Mistral, Qwen) or 1 (Gemma)

Casting follows the HF modules so patched models match them:
- "llama" (`LlamaRMSNorm`): x̂ is rounded to the input dtype before the weight multiply, and the output dtype
  is `promote(x.dtype, w.dtype)`.
- "gemma" (`GemmaRMSNorm`): everything in fp32, the output is cast back to the input dtype.

What the backward keeps: x and w (already alive as the layer input and the parameter) plus one fp32 rstd per
row (4 bytes/token). HF's eager path keeps the fp32 upcast of x, x̂ and the cast copy instead.

Backward, with g = dy · (w + offset) and H the row length:

    dx = rstd · (g − x̂ · mean(g · x̂))
    dw = Σ_rows dy · x̂                       (x̂ rounded like the forward in "llama" mode)

dw is computed only when the weight requires grad (full fine-tunes); LoRA runs skip it. The dw reduction over
rows is done by one persistent program per SM, each walking a slab of rows and writing one fp32 partial row,
followed by a `sum(0)` over the (n_programs, H) partials.
"""

from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

from ._utils import ensure_contiguous, num_programs_for_reduction, row_block_settings

_CASTING_MODES = ("llama", "gemma")


@triton.jit
def _rms_norm_forward_kernel(
    Y_ptr,  # pointer to output, (n_rows, n_cols)
    Y_row_stride,  # int: elements between rows of Y
    X_ptr,  # pointer to input, (n_rows, n_cols)
    X_row_stride,  # int: elements between rows of X
    W_ptr,  # pointer to weight, (n_cols,)
    RSTD_ptr,  # pointer to fp32 inverse RMS, (n_rows,)
    n_cols,  # int: row length H
    eps,  # float: added to mean(x²)
    offset,  # float: 0.0 (Llama) or 1.0 (Gemma); the effective scale is w + offset
    CAST_XHAT: tl.constexpr,  # "llama" casting: round x̂ to the input dtype before multiplying by w
    BLOCK_SIZE: tl.constexpr,
):
    row = tl.program_id(0).to(tl.int64)
    cols = tl.arange(0, BLOCK_SIZE)
    mask = cols < n_cols

    x = tl.load(X_ptr + row * X_row_stride + cols, mask=mask, other=0.0).to(tl.float32)
    w = tl.load(W_ptr + cols, mask=mask, other=0.0).to(tl.float32) + offset

    # rstd = 1 / sqrt(Σx² / H + eps); padded columns load 0 and add nothing
    rstd = tl.rsqrt(tl.sum(x * x, axis=0) / n_cols + eps)
    tl.store(RSTD_ptr + row, rstd)

    x_hat = x * rstd
    if CAST_XHAT:
        x_hat = x_hat.to(X_ptr.dtype.element_ty).to(tl.float32)
    y = x_hat * w
    tl.store(Y_ptr + row * Y_row_stride + cols, y.to(Y_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _rms_norm_backward_kernel(
    DY_ptr,  # pointer to upstream grad, (n_rows, n_cols)
    DY_row_stride,  # int
    DX_ptr,  # pointer to input grad (output of this kernel), (n_rows, n_cols)
    DX_row_stride,  # int
    X_ptr,  # pointer to the forward input, (n_rows, n_cols)
    X_row_stride,  # int
    W_ptr,  # pointer to weight, (n_cols,)
    RSTD_ptr,  # pointer to fp32 inverse RMS saved by the forward, (n_rows,)
    DW_ptr,  # pointer to fp32 dw partials, (n_programs, n_cols); unused unless COMPUTE_DW
    DW_row_stride,  # int
    n_rows,  # int
    n_cols,  # int
    offset,  # float: see forward
    rows_per_program,  # int: each program handles rows [pid·rpp, min((pid+1)·rpp, n_rows))
    CAST_XHAT: tl.constexpr,
    COMPUTE_DW: tl.constexpr,
    BLOCK_SIZE: tl.constexpr,
):
    pid = tl.program_id(0).to(tl.int64)
    cols = tl.arange(0, BLOCK_SIZE)
    mask = cols < n_cols

    w = tl.load(W_ptr + cols, mask=mask, other=0.0).to(tl.float32) + offset
    dw_acc = tl.zeros([BLOCK_SIZE], dtype=tl.float32)

    row_start = pid * rows_per_program
    row_end = tl.minimum(row_start + rows_per_program, n_rows)
    for row in range(row_start, row_end):
        dy = tl.load(DY_ptr + row * DY_row_stride + cols, mask=mask, other=0.0).to(tl.float32)
        x = tl.load(X_ptr + row * X_row_stride + cols, mask=mask, other=0.0).to(tl.float32)
        rstd = tl.load(RSTD_ptr + row)
        x_hat = x * rstd

        # g = dy·w ; dx = rstd·(g − x̂·mean(g·x̂))
        g = dy * w
        dx = rstd * (g - x_hat * (tl.sum(g * x_hat, axis=0) / n_cols))
        tl.store(DX_ptr + row * DX_row_stride + cols, dx.to(DX_ptr.dtype.element_ty), mask=mask)

        if COMPUTE_DW:
            if CAST_XHAT:
                x_hat = x_hat.to(X_ptr.dtype.element_ty).to(tl.float32)
            dw_acc += dy * x_hat

    if COMPUTE_DW:
        tl.store(DW_ptr + pid * DW_row_stride + cols, dw_acc, mask=mask)


def _check_casting_mode(casting_mode: str) -> None:
    if casting_mode not in _CASTING_MODES:
        raise ValueError(f"casting_mode must be one of {_CASTING_MODES}, got {casting_mode!r}")


def rms_norm_forward(
    x: torch.Tensor, weight: torch.Tensor, eps: float, offset: float, casting_mode: str
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Launch the forward. Returns (y with x's shape, x viewed as (rows, H), fp32 rstd of shape (rows,))."""
    _check_casting_mode(casting_mode)
    shape = x.shape
    n_cols = shape[-1]
    if weight.shape != (n_cols,):
        raise ValueError(f"weight shape {tuple(weight.shape)} does not match hidden size {n_cols}")
    x2d = x.reshape(-1, n_cols)
    n_rows = x2d.shape[0]

    out_dtype = torch.promote_types(x.dtype, weight.dtype) if casting_mode == "llama" else x.dtype
    y = torch.empty((n_rows, n_cols), dtype=out_dtype, device=x.device)
    rstd = torch.empty(n_rows, dtype=torch.float32, device=x.device)
    if n_rows == 0:
        return y.view(shape), x2d, rstd

    block, num_warps = row_block_settings(n_cols)
    _rms_norm_forward_kernel[(n_rows,)](
        y, y.stride(0), x2d, x2d.stride(0), weight, rstd,
        n_cols, eps, offset,
        CAST_XHAT=casting_mode == "llama",
        BLOCK_SIZE=block,
        num_warps=num_warps,
    )  # fmt: skip
    return y.view(shape), x2d, rstd


def rms_norm_backward(
    dy: torch.Tensor,
    x2d: torch.Tensor,
    weight: torch.Tensor,
    rstd: torch.Tensor,
    offset: float,
    casting_mode: str,
    compute_dw: bool,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Launch the backward. Returns (dx as (rows, H) in x's dtype, dw in w's dtype or None)."""
    n_rows, n_cols = x2d.shape
    dy2d = dy.reshape(n_rows, n_cols)
    dx = torch.empty_like(x2d)
    if n_rows == 0:
        return dx, (torch.zeros_like(weight) if compute_dw else None)

    block, num_warps = row_block_settings(n_cols)
    n_programs = num_programs_for_reduction(x2d.device, n_rows)
    rows_per_program = math.ceil(n_rows / n_programs)
    if compute_dw:
        dw_partial = torch.empty((n_programs, n_cols), dtype=torch.float32, device=x2d.device)
    else:
        dw_partial = rstd  # never read or written when COMPUTE_DW is False
    _rms_norm_backward_kernel[(n_programs,)](
        dy2d, dy2d.stride(0), dx, dx.stride(0), x2d, x2d.stride(0), weight, rstd,
        dw_partial, dw_partial.stride(0),
        n_rows, n_cols, offset, rows_per_program,
        CAST_XHAT=casting_mode == "llama",
        COMPUTE_DW=compute_dw,
        BLOCK_SIZE=block,
        num_warps=num_warps,
    )  # fmt: skip
    dw = dw_partial.sum(0).to(weight.dtype) if compute_dw else None
    return dx, dw


class RMSNormFunction(torch.autograd.Function):
    """y = RMSNorm(x)·(w + offset) with HF casting; saves x, w and the fp32 rstd per row."""

    @staticmethod
    @ensure_contiguous
    def forward(ctx, x, weight, eps=1e-6, offset=0.0, casting_mode="llama"):
        y, x2d, rstd = rms_norm_forward(x, weight, eps, offset, casting_mode)
        ctx.offset = offset
        ctx.casting_mode = casting_mode
        ctx.x_shape = x.shape
        ctx.save_for_backward(x2d, weight, rstd)
        return y

    @staticmethod
    @ensure_contiguous
    def backward(ctx, dy):
        x2d, weight, rstd = ctx.saved_tensors
        dx, dw = rms_norm_backward(
            dy, x2d, weight, rstd, ctx.offset, ctx.casting_mode, compute_dw=ctx.needs_input_grad[1]
        )
        return dx.view(ctx.x_shape), dw, None, None, None


def rms_norm(
    x: torch.Tensor, weight: torch.Tensor, eps: float = 1e-6, offset: float = 0.0, casting_mode: str = "llama"
) -> torch.Tensor:
    """Fused RMSNorm over the last dim of `x`. Llama/Mistral/Qwen: offset=0, "llama"; Gemma: offset=1, "gemma"."""
    return RMSNormFunction.apply(x, weight, float(eps), float(offset), casting_mode)
