"""Cross-entropy with the logits gradient written in place, and a fused linear + cross-entropy on top of it.

Cross-entropy kernel (one program per token row, fp32 math on bf16/fp16/fp32 logits):

    lse_i  = log Σ_j exp(x_ij)                      online over vocab blocks: m ← max(m, max x_blk),
                                                    d ← d·e^(m_old − m) + Σ e^(x_blk − m); lse = m + log d
    loss_i = (lse_i − x_i,y_i) / n                  0 for rows whose label is ignore_index
    ∂loss/∂x_ij = (softmax_ij − [j = y_i]) / n      written over x_ij in the logits buffer (0 for ignored rows)

With STATS the same pass also gives what TRL's preference trainers log per token (the log-prob op uses it):

    entropy_i = lse_i − Σ_j softmax_ij · x_ij       s ← s·e^(m_old − m) + Σ e^(x_blk − m)·x_blk; entropy = lse − s/d
    mean_i    = Σ_j x_ij / V
    top1_i    = [x_i,y_i = max_j x_ij and no earlier column reaches it]   (torch.argmax's first maximum)

n is read from a 1-element fp32 tensor: the number of non-ignored labels (reduction="mean"; clamped to >= 1, so
a fully ignored batch gives loss 0 and zero grads where torch gives nan), `num_items_in_batch` when the caller
normalises across gradient-accumulation steps (HF's `ForCausalLMLoss` convention), or 1 for reduction="sum".
Because n is passed in rather than counted per launch, chunks of one batch combine into the right mean, and no
host sync is needed to learn it. Labels must lie in [0, V) or equal ignore_index; nothing checks it on device.

`fused_linear_cross_entropy(hidden (N, H), weight (V, H), labels (N,), bias=None)` never holds the N×V logits.
Its forward walks token chunks of C rows:

    logits_c   = hidden_c @ Wᵀ (+ b)          one GEMM into a reused (C, V) buffer, in the weight's dtype
    loss, dlogits_c                           the kernel above, in place on that buffer
    d_hidden_c = dlogits_c @ W                written into the (N, H) d_hidden buffer (only if hidden needs grad)
    dW        += dlogits_cᵀ @ hidden_c        addmm into a (V, H) buffer, only when weight.requires_grad
    db        += Σ_rows dlogits_c             fp32, only when bias.requires_grad

so the gradients are finished by the end of the forward. The backward only multiplies them by grad_output (in
place: the stored gradients are handed out once; a second backward through the same graph raises). A frozen
lm_head (LoRA) gets no dW and no (V, H) buffer.

Chunk size: C = min(N, max(N·H // V, 2²⁸ bytes // (V · elt))) rows, rounded down to a multiple of 64 when
C >= 64. The first term makes the chunk's logits the size of the hidden states (Liger's rule); the 256 MiB
floor keeps the GEMMs large and bounds how often dW (V·H, read and written by each addmm) is re-streamed.

Memory (bytes; elt = 2 for bf16 weights, N tokens, V vocab, H hidden):

    HF path (lm_head, then ForCausalLMLoss):   2·N·V·elt  +  3·N·V·4
        N·V·elt   logits from lm_head
        N·V·4     logits.float()
        N·V·4     log_softmax output, saved for backward
        N·V·4     its gradient in backward (the softmax − onehot term)
        N·V·elt   that gradient cast back to the logits dtype for the lm_head backward
    fused path:                               C·V·elt  +  N·H·elt_h  +  N·4  (+ V·H·elt if dW, + V·4 if db)
        C·V·elt   one chunk of logits/dlogits, reused across chunks
        N·H·elt_h d_hidden (same size and dtype as hidden), kept from forward to backward
        N·4       per-token fp32 losses

    Llama-3.1-8B, N = 8192, bf16: HF ≈ 4.2 GB + 12.6 GB = 16.8 GB; fused ≈ 0.27 GB + 0.07 GB (+ 1.05 GB dW).

The HF line is an upper bound (not every copy is live at once): bench/kernels_bench.py on one H200 (torch 2.11,
Triton 3.6) measured an allocator peak above the inputs of 12.0 GiB for the HF path against 0.31 GiB fused with
a frozen head and 1.3 GiB with a trainable one, at 26.6 vs 35.7 ms and 41.4 vs 47.3 ms forward+backward.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._utils import ensure_contiguous

# Vocab block per loop iteration: 32K fp32 logits in registers across 32 warps (32 values per thread).
MAX_VOCAB_BLOCK = 32768
# Lower bound on one chunk's logits, in bytes (see module docstring).
MIN_CHUNK_BYTES = 1 << 28


@triton.jit
def _cross_entropy_kernel(
    X_ptr,  # pointer to logits (n_rows, n_cols); overwritten with dloss/dlogits when COMPUTE_GRAD
    X_row_stride,  # int: elements between rows of X
    Y_ptr,  # pointer to int labels (n_rows,), contiguous
    LOSS_ptr,  # pointer to fp32 per-row loss (n_rows,), already divided by n
    DIV_ptr,  # pointer to a 1-element fp32 tensor holding n (the normaliser)
    STATS_ptr,  # pointer to fp32 (n_rows, 3): entropy, mean logit, target is the argmax; written when STATS
    n_cols,  # int: vocab size V
    ignore_index,  # int: label value that contributes neither loss nor gradient
    COMPUTE_GRAD: tl.constexpr,  # write the gradient over the logits
    STATS: tl.constexpr,  # also write the row's statistics (see module docstring)
    BLOCK_SIZE: tl.constexpr,  # vocab columns per iteration
):
    row = tl.program_id(0).to(tl.int64)
    x_row = X_ptr + row * X_row_stride
    y = tl.load(Y_ptr + row)

    if y == ignore_index:
        tl.store(LOSS_ptr + row, 0.0)
        if STATS:
            for k in range(3):
                tl.store(STATS_ptr + row * 3 + k, 0.0)
        if COMPUTE_GRAD:
            for start in range(0, n_cols, BLOCK_SIZE):
                cols = start + tl.arange(0, BLOCK_SIZE)
                tl.store(x_row + cols, tl.zeros([BLOCK_SIZE], dtype=X_ptr.dtype.element_ty), mask=cols < n_cols)
        return

    inv_n = 1.0 / tl.load(DIV_ptr)
    # read x_y before the gradient pass overwrites the row
    x_y = tl.load(x_row + y).to(tl.float32)

    # pass 1: online logsumexp; m = running max, d = Σ exp(x − m)
    # (STATS: s = Σ exp(x − m)·x rescaled like d, z = Σ x, m_before = max of the columns before y)
    m = float("-inf")
    d = 0.0
    s = 0.0
    z = 0.0
    m_before = float("-inf")
    for start in range(0, n_cols, BLOCK_SIZE):
        cols = start + tl.arange(0, BLOCK_SIZE)
        mask = cols < n_cols
        x = tl.load(x_row + cols, mask=mask, other=float("-inf")).to(tl.float32)
        m_new = tl.maximum(m, tl.max(x, axis=0))
        scale = tl.exp(m - m_new)
        e = tl.exp(x - m_new)
        d = d * scale + tl.sum(e, axis=0)
        if STATS:
            x0 = tl.where(mask, x, 0.0)
            s = s * scale + tl.sum(e * x0, axis=0)
            z += tl.sum(x0, axis=0)
            m_before = tl.maximum(m_before, tl.max(tl.where(cols < y, x, float("-inf")), axis=0))
        m = m_new
    lse = m + tl.log(d)
    tl.store(LOSS_ptr + row, (lse - x_y) * inv_n)
    if STATS:
        tl.store(STATS_ptr + row * 3, lse - s / d)
        tl.store(STATS_ptr + row * 3 + 1, z / n_cols)
        tl.store(STATS_ptr + row * 3 + 2, ((x_y >= m) & (x_y > m_before)).to(tl.float32))

    # pass 2: dx_j = (exp(x_j − lse) − [j = y]) / n
    if COMPUTE_GRAD:
        for start in range(0, n_cols, BLOCK_SIZE):
            cols = start + tl.arange(0, BLOCK_SIZE)
            mask = cols < n_cols
            x = tl.load(x_row + cols, mask=mask, other=float("-inf")).to(tl.float32)
            p = tl.exp(x - lse)
            grad = tl.where(cols == y, p - 1.0, p) * inv_n
            tl.store(x_row + cols, grad.to(X_ptr.dtype.element_ty), mask=mask)


def _vocab_block(n_cols: int) -> tuple[int, int]:
    block = min(triton.next_power_of_2(n_cols), MAX_VOCAB_BLOCK)
    if block >= 16384:
        num_warps = 32
    elif block >= 4096:
        num_warps = 16
    elif block >= 1024:
        num_warps = 8
    else:
        num_warps = 4
    return block, num_warps


def normaliser(
    labels: torch.Tensor, ignore_index: int, reduction: str, num_items_in_batch=None
) -> torch.Tensor:
    """The 1-element fp32 divisor n on labels' device (see module docstring); never syncs with the host."""
    if reduction not in ("mean", "sum"):
        raise ValueError(f"reduction must be 'mean' or 'sum', got {reduction!r}")
    if num_items_in_batch is not None:
        if reduction == "sum":
            raise ValueError("num_items_in_batch only applies to reduction='mean'")
        n = torch.as_tensor(num_items_in_batch, device=labels.device)
        return n.to(torch.float32).reshape(1)
    if reduction == "sum":
        return torch.ones(1, dtype=torch.float32, device=labels.device)
    return (labels != ignore_index).sum().clamp_min(1).to(torch.float32).reshape(1)


def cross_entropy_forward_(
    logits: torch.Tensor,
    labels: torch.Tensor,
    divisor: torch.Tensor,
    ignore_index: int = -100,
    compute_grad: bool = True,
    block_size: int | None = None,
    stats: torch.Tensor | None = None,
) -> torch.Tensor:
    """Per-row losses (fp32, divided by `divisor`); overwrites `logits` with dloss/dlogits if compute_grad.

    `logits` is (rows, V) with a contiguous last dim; its row stride may be anything (e.g. a chunk of a buffer).
    `block_size` overrides the vocab block (tests use it to force several blocks per row). `stats`, a contiguous
    fp32 (rows, 3) tensor, receives each row's entropy, mean logit and whether the label is the argmax (1.0/0.0;
    the first maximum, as torch.argmax), all 0 for ignored rows.
    """
    n_rows, n_cols = logits.shape
    if logits.stride(-1) != 1:
        raise ValueError("logits must have a contiguous last dimension")
    if stats is not None and (stats.shape != (n_rows, 3) or stats.dtype != torch.float32 or not stats.is_contiguous()):
        raise ValueError(f"stats must be a contiguous fp32 ({n_rows}, 3) tensor")
    labels = labels.contiguous()
    loss = torch.empty(n_rows, dtype=torch.float32, device=logits.device)
    if n_rows == 0:
        return loss
    block, num_warps = _vocab_block(n_cols)
    if block_size is not None:
        block = block_size
    _cross_entropy_kernel[(n_rows,)](
        logits, logits.stride(0), labels, loss, divisor, stats if stats is not None else loss,
        n_cols, ignore_index,
        COMPUTE_GRAD=compute_grad,
        STATS=stats is not None,
        BLOCK_SIZE=block,
        num_warps=num_warps,
    )  # fmt: skip
    return loss


class CrossEntropyFunction(torch.autograd.Function):
    """Loss over materialized logits; the logits buffer is overwritten with its gradient during forward.

    Only use it where nothing else reads the logits after the loss (the usual `lm_head -> loss` graph): the
    kernel writes through the raw pointer, so autograd cannot see the overwrite.
    """

    @staticmethod
    def forward(ctx, logits, labels, ignore_index=-100, reduction="mean", num_items_in_batch=None):
        if logits.stride(-1) != 1:
            logits = logits.contiguous()
        divisor = normaliser(labels, ignore_index, reduction, num_items_in_batch)
        compute_grad = ctx.needs_input_grad[0]
        loss_rows = cross_entropy_forward_(logits, labels, divisor, ignore_index, compute_grad)
        ctx.grads = (logits if compute_grad else None,)
        return loss_rows.sum()

    @staticmethod
    def backward(ctx, grad_output):
        (grad_logits,) = _consume(ctx, grad_output)
        return grad_logits, None, None, None, None


def cross_entropy(
    logits: torch.Tensor,
    labels: torch.Tensor,
    ignore_index: int = -100,
    reduction: str = "mean",
    num_items_in_batch=None,
) -> torch.Tensor:
    """Cross-entropy of (N, V) logits against (N,) labels; the logits buffer becomes its own gradient."""
    return CrossEntropyFunction.apply(logits, labels, ignore_index, reduction, num_items_in_batch)


def _consume(ctx, grad_output: torch.Tensor) -> tuple:
    """Scale the gradients stored on ctx by grad_output, in place, and hand them out exactly once."""
    grads = getattr(ctx, "grads", None)
    if grads is None:
        raise RuntimeError("this loss was already backpropagated; its in-place gradients cannot be reused")
    ctx.grads = None
    return tuple(None if g is None else g.mul_(grad_output.to(g.dtype)) for g in grads)


def _chunk_rows(n_rows: int, hidden: int, vocab: int, elt_bytes: int) -> int:
    """Token rows per chunk, C = min(N, max(N·H // V, MIN_CHUNK_BYTES // (V·elt))), a multiple of 64 if >= 64."""
    rows = max(n_rows * hidden // vocab, MIN_CHUNK_BYTES // (vocab * elt_bytes), 1)
    if rows >= 64:
        rows -= rows % 64
    return min(rows, n_rows)


def _compute_dtype(weight: torch.Tensor) -> torch.dtype:
    if torch.is_autocast_enabled(weight.device.type):
        return torch.get_autocast_dtype(weight.device.type)
    return weight.dtype


def fused_linear_cross_entropy_forward(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    labels: torch.Tensor,
    bias: torch.Tensor | None = None,
    ignore_index: int = -100,
    reduction: str = "mean",
    num_items_in_batch=None,
    chunk_size: int | None = None,
    need_grad_hidden: bool = True,
    need_grad_weight: bool = False,
    need_grad_bias: bool = False,
    compute_dtype: torch.dtype | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None, torch.Tensor | None]:
    """Loss and (d_hidden, dW, db) for `cross_entropy(hidden @ weight.T + bias, labels)`, chunked over tokens."""
    n_rows, n_hidden = hidden.shape
    vocab = weight.shape[0]
    if weight.shape[1] != n_hidden:
        raise ValueError(f"weight {tuple(weight.shape)} does not match hidden size {n_hidden}")
    if labels.shape != (n_rows,):
        raise ValueError(f"labels {tuple(labels.shape)} do not match {n_rows} hidden rows")

    dtype = compute_dtype or weight.dtype
    w = weight.to(dtype)  # a (V, H) copy only when autocast asks for another dtype than the weight's
    b = bias.to(dtype) if bias is not None else None
    divisor = normaliser(labels, ignore_index, reduction, num_items_in_batch)
    compute_grad = need_grad_hidden or need_grad_weight or need_grad_bias

    loss_rows = torch.empty(n_rows, dtype=torch.float32, device=hidden.device)
    grad_hidden = torch.empty_like(hidden) if need_grad_hidden else None
    grad_weight = torch.zeros_like(weight) if need_grad_weight else None
    grad_bias = torch.zeros(vocab, dtype=torch.float32, device=hidden.device) if need_grad_bias else None

    chunk = chunk_size or _chunk_rows(n_rows, n_hidden, vocab, w.element_size())
    chunk = max(1, min(chunk, n_rows))
    logits_buf = torch.empty((chunk, vocab), dtype=dtype, device=hidden.device)
    for start in range(0, n_rows, chunk):
        end = min(start + chunk, n_rows)
        h = hidden[start:end].to(dtype)
        logits = logits_buf[: end - start]
        # logits_c = h_c @ Wᵀ (+ b)
        if b is None:
            torch.mm(h, w.t(), out=logits)
        else:
            torch.addmm(b, h, w.t(), out=logits)
        loss_rows[start:end] = cross_entropy_forward_(logits, labels[start:end], divisor, ignore_index, compute_grad)
        if not compute_grad:
            continue
        # logits now holds dlogits_c
        if grad_hidden is not None:  # d_hidden_c = dlogits_c @ W
            if grad_hidden.dtype == dtype:
                torch.mm(logits, w, out=grad_hidden[start:end])
            else:
                grad_hidden[start:end] = logits @ w
        if grad_weight is not None:  # dW += dlogits_cᵀ @ h_c
            if grad_weight.dtype == dtype:
                grad_weight.addmm_(logits.t(), h)
            else:
                grad_weight += logits.t() @ h
        if grad_bias is not None:  # db += Σ_rows dlogits_c
            grad_bias += logits.sum(0, dtype=torch.float32)

    loss = loss_rows.sum()
    if grad_bias is not None:
        grad_bias = grad_bias.to(bias.dtype)
    return loss, grad_hidden, grad_weight, grad_bias


class FusedLinearCrossEntropyFunction(torch.autograd.Function):
    """CE(hidden @ Wᵀ + b, labels) without materializing the logits; gradients are computed in forward."""

    @staticmethod
    @ensure_contiguous
    def forward(
        ctx, hidden, weight, labels, bias=None, ignore_index=-100, reduction="mean", num_items_in_batch=None,
        chunk_size=None,
    ):  # fmt: skip
        # Under autocast the GEMMs run in the autocast dtype (as lm_head would); the casts are explicit below.
        dtype = _compute_dtype(weight)
        with torch.autocast(hidden.device.type, enabled=False):
            loss, grad_hidden, grad_weight, grad_bias = fused_linear_cross_entropy_forward(
                hidden, weight, labels, bias, ignore_index, reduction, num_items_in_batch, chunk_size,
                need_grad_hidden=ctx.needs_input_grad[0],
                need_grad_weight=ctx.needs_input_grad[1],
                need_grad_bias=bias is not None and ctx.needs_input_grad[3],
                compute_dtype=dtype,
            )  # fmt: skip
        ctx.grads = (grad_hidden, grad_weight, grad_bias)
        return loss

    @staticmethod
    def backward(ctx, grad_output):
        grad_hidden, grad_weight, grad_bias = _consume(ctx, grad_output)
        return grad_hidden, grad_weight, None, grad_bias, None, None, None, None


def fused_linear_cross_entropy(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    labels: torch.Tensor,
    bias: torch.Tensor | None = None,
    ignore_index: int = -100,
    reduction: str = "mean",
    num_items_in_batch=None,
    chunk_size: int | None = None,
) -> torch.Tensor:
    """Cross-entropy of `hidden (N, H) @ weight (V, H).T (+ bias)` against `labels (N,)`, logits never held.

    reduction="mean" divides by the non-ignored label count, or by `num_items_in_batch` when given (so losses of
    gradient-accumulation micro-batches add up to the mean over the whole step); "sum" does not divide. dW is
    computed only when `weight.requires_grad`. `chunk_size` (token rows) overrides the automatic choice.
    """
    return FusedLinearCrossEntropyFunction.apply(
        hidden, weight, labels, bias, ignore_index, reduction, num_items_in_batch, chunk_size
    )

