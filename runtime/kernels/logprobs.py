"""Per-token log-probabilities of a linear head without the logits: the fused linear log-prob op of preference losses.

    logp_i = log softmax(h_i Wᵀ + b)[y_i] = x_i,y_i − lse_i,      x = hidden @ Wᵀ (+ b),  lse_i = log Σ_j e^(x_ij)

`fused_linear_logprobs(hidden (N, H), weight (V, H), labels (N,), bias=None)` returns logp (N,) in fp32 and never
holds the N×V logits. Rows whose label is ignore_index give 0 and cost nothing: the op scores only the M rows with a
label (one host sync to find them), gathering each chunk's hidden rows, so a DPO batch pays for its completion
tokens, not its prompts. `fused_linear_logprobs_stats` also returns what TRL's preference trainers log per token
(entropy, mean logit, whether the label is the argmax), computed in the same pass and not differentiable.

It reuses the cross-entropy kernel of `cross_entropy.py` with the normaliser n = 1, which gives
lse_i − x_i,y_i = −logp_i and, in place over the chunk's logits, softmax_i − onehot(y_i) = −∂logp_i/∂x_i. Unlike
the cross-entropy loss, the upstream gradient g_i = ∂L/∂logp_i is per token (DPO weighs each sequence's log-prob
by its own σ term), so the gradients cannot be finished in the forward:

    ∂L/∂h_i = −g_i · (softmax_i − onehot_i) @ W         = −g_i · D_i,  D = (softmax − onehot) @ W
    ∂L/∂W   = −Σ_i g_i (softmax_i − onehot_i)ᵀ h_i      = −(softmax − onehot)ᵀ (g ⊙ h)
    ∂L/∂b   = −Σ_i g_i (softmax_i − onehot_i)

Frozen head (LoRA, QLoRA: the usual DPO case). The forward walks chunks of C scored rows:

    logits_c = h_c @ Wᵀ (+ b)          one GEMM into a reused (C, V) buffer, in the weight's (or autocast) dtype
    −logp_c, softmax − onehot          the cross-entropy kernel, in place on that buffer
    D_c = (softmax − onehot)_c @ W      written into an (M, H) buffer (only if hidden needs grad)

and the backward only scales D's rows by −g (in place) and scatters them into the (N, H) gradient. Two GEMMs of
2·M·V·H FLOPs in all (a recomputing backward would need three), and nothing of size V is kept across the step.

Trainable head (full fine-tune, lm_head in modules_to_save): dW needs g, which the forward does not have, and
holding the (M, V) softmax until the backward is what the op exists to avoid. So the forward only computes logp
(one GEMM) and saves the hidden states; the backward recomputes each chunk's logits (one GEMM), runs the kernel,
and folds g into the small operands instead of the (C, V) buffer: D_c = (softmax − onehot)_c @ W scaled row-wise
by −g (one GEMM), dW += (softmax − onehot)_cᵀ @ (−g ⊙ h_c) (one GEMM), db += (softmax − onehot)_cᵀ @ (−g_c).
Four GEMMs in all; the alternative (D in the forward too) costs the same four and holds D and h together.

Chunk size: C = min(M, max(M·H // V, 2²⁸ bytes // (V · elt))) rows, a multiple of 64 when >= 64: the rule of
`cross_entropy._chunk_rows`, applied to the scored rows.

Memory (bytes; N rows, M scored, V vocab, H hidden, elt = 2 for bf16 weights, elt_h the hidden dtype):

    HF log_softmax(lm_head(h)).gather:  N·V·elt + 2·N·V·4       logits, fp32 log-softmax (saved), its gradient
    TRL 1.16 chunked head (kernels: none): 4096×32768 tile·elt + N·H·4 (fp32 hidden gradient in backward; + V·H·4
                                        fp32 dW when the head trains) + 8·N·4 statistics; 3 GEMMs (frozen head)
    fused, frozen head:                 C·V·elt + C·H·elt + M·H·elt_h + N·4     chunk, gathered rows, D, logp
                                        D lives from the forward to the backward (during a DPO reference pass too)
    fused, trainable head:              forward C·V·elt + C·H·elt + N·4, saves h (N·H·elt_h);
                                        backward C·V·elt + N·H·elt_h (∂L/∂h) + V·H·elt (dW) (+ V·4 for db)
    no grad (a reference model):        C·V·elt + C·H·elt + N·4

    Llama-3.1-8B DPO, 4 × 1024 tokens (M = 2048 answer tokens), bf16, frozen head: C = 1024, so
    0.27 GB chunk + 8 MB gathered rows + 17 MB D; HF would hold 4.2 GB of logits + 8.4 GB fp32.

dW accumulates in the weight's dtype across chunks (as `cross_entropy.py` does; a fp32 accumulator would add V·H·4
bytes). Under autocast the GEMMs run in the autocast dtype and a weight of another dtype is cast once per pass
(a V×H copy, as lm_head itself would under autocast).
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from ._utils import ensure_contiguous
from .cross_entropy import _chunk_rows, _compute_dtype, cross_entropy_forward_


class LogprobStats(NamedTuple):
    """Per-token outputs of `fused_linear_logprobs_stats` (0 / False at ignored rows)."""

    logprobs: torch.Tensor
    """(N,) fp32 log p(label | hidden); differentiable."""
    entropy: torch.Tensor
    """(N,) fp32 entropy of the predicted distribution (not differentiable)."""
    mean_logits: torch.Tensor
    """(N,) fp32 mean of the row's logits over the vocabulary (not differentiable)."""
    is_top1: torch.Tensor
    """(N,) bool: the label is the first argmax of the row's logits (not differentiable)."""


def _scored_rows(labels: torch.Tensor, ignore_index: int) -> torch.Tensor | None:
    """Indices of the rows with a label, or None when every row has one (one host sync)."""
    rows = (labels != ignore_index).nonzero().squeeze(1)
    return None if rows.numel() == labels.numel() else rows


def _chunk(hidden: torch.Tensor, labels: torch.Tensor, rows: torch.Tensor | None, start: int, end: int, dtype):
    """(hidden rows, labels) of scored rows start..end, the hidden rows in `dtype`."""
    if rows is None:
        return hidden[start:end].to(dtype), labels[start:end]
    idx = rows[start:end]
    return hidden.index_select(0, idx).to(dtype), labels.index_select(0, idx)


def _project(h: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None, out: torch.Tensor) -> torch.Tensor:
    """out = h @ wᵀ (+ b)."""
    if b is None:
        return torch.mm(h, w.t(), out=out)
    return torch.addmm(b, h, w.t(), out=out)


def _scatter_rows(values: torch.Tensor, rows: torch.Tensor | None, n_rows: int) -> torch.Tensor:
    """`values` (M, ...) placed at `rows` of a zero (n_rows, ...) tensor (as is when every row is scored)."""
    if rows is None:
        return values
    return values.new_zeros((n_rows, *values.shape[1:])).index_copy_(0, rows, values)


def linear_logprobs_forward(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    labels: torch.Tensor,
    bias: torch.Tensor | None = None,
    ignore_index: int = -100,
    chunk_size: int | None = None,
    *,
    compute_dtype: torch.dtype | None = None,
    need_d_hidden: bool = False,
    stats: bool = False,
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None, torch.Tensor | None, int]:
    """(logp (N,), stats (N, 3) or None, D (M, H) or None, scored rows or None, chunk) of `hidden @ weight.T (+ b)`.

    D = (softmax − onehot) @ W of the scored rows (the gradient of −logp with respect to their hidden states), in
    hidden's dtype, when `need_d_hidden`. Rows are None when every row is scored.
    """
    n_rows, n_hidden = hidden.shape
    vocab = weight.shape[0]
    if weight.shape[1] != n_hidden:
        raise ValueError(f"weight {tuple(weight.shape)} does not match hidden size {n_hidden}")
    if labels.shape != (n_rows,):
        raise ValueError(f"labels {tuple(labels.shape)} do not match {n_rows} hidden rows")
    if bias is not None and bias.shape != (vocab,):
        raise ValueError(f"bias {tuple(bias.shape)} does not match vocabulary size {vocab}")
    dtype = compute_dtype or weight.dtype
    w = weight.to(dtype)
    b = bias.to(dtype) if bias is not None else None
    rows = _scored_rows(labels, ignore_index)
    scored = n_rows if rows is None else rows.numel()
    chunk = max(1, min(chunk_size or _chunk_rows(scored, n_hidden, vocab, w.element_size()), max(scored, 1)))

    neg_logp = torch.empty(scored, dtype=torch.float32, device=hidden.device)
    row_stats = torch.empty((scored, 3), dtype=torch.float32, device=hidden.device) if stats else None
    d_hidden = torch.empty((scored, n_hidden), dtype=hidden.dtype, device=hidden.device) if need_d_hidden else None
    one = torch.ones(1, dtype=torch.float32, device=hidden.device)
    logits_buf = torch.empty((chunk, vocab), dtype=dtype, device=hidden.device) if scored else None
    for start in range(0, scored, chunk):
        end = min(start + chunk, scored)
        h, y = _chunk(hidden, labels, rows, start, end, dtype)
        logits = _project(h, w, b, logits_buf[: end - start])
        neg_logp[start:end] = cross_entropy_forward_(
            logits, y, one, ignore_index, compute_grad=d_hidden is not None,
            stats=row_stats[start:end] if row_stats is not None else None)  # fmt: skip
        if d_hidden is not None:  # logits now holds softmax − onehot
            if d_hidden.dtype == dtype:
                torch.mm(logits, w, out=d_hidden[start:end])
            else:
                d_hidden[start:end] = logits @ w
    logp = _scatter_rows(neg_logp.neg_(), rows, n_rows)
    full_stats = _scatter_rows(row_stats, rows, n_rows) if row_stats is not None else None
    return logp, full_stats, d_hidden, rows, chunk


def linear_logprobs_backward(
    grad_logp: torch.Tensor,
    hidden: torch.Tensor,
    weight: torch.Tensor,
    labels: torch.Tensor,
    bias: torch.Tensor | None,
    rows: torch.Tensor | None,
    chunk: int,
    ignore_index: int = -100,
    *,
    compute_dtype: torch.dtype,
    need_grad_hidden: bool,
    need_grad_weight: bool,
    need_grad_bias: bool,
) -> tuple[torch.Tensor | None, torch.Tensor | None, torch.Tensor | None]:
    """(∂L/∂hidden, ∂L/∂W, ∂L/∂b) for upstream ∂L/∂logp = `grad_logp` (N,), recomputing each chunk's logits."""
    n_rows, n_hidden = hidden.shape
    vocab = weight.shape[0]
    dtype = compute_dtype
    w = weight.to(dtype)
    b = bias.to(dtype) if bias is not None else None
    scored = n_rows if rows is None else rows.numel()
    # −g of the scored rows: the sign turns the kernel's softmax − onehot into ∂logp/∂x
    neg_g = grad_logp.to(torch.float32).neg()
    if rows is not None:
        neg_g = neg_g.index_select(0, rows)

    grad_hidden = None
    if need_grad_hidden:  # every row is written when every row is scored
        grad_hidden = torch.empty_like(hidden) if rows is None else torch.zeros_like(hidden)
    grad_weight = torch.zeros_like(weight) if need_grad_weight else None
    grad_bias = torch.zeros(vocab, dtype=torch.float32, device=hidden.device) if need_grad_bias else None
    one = torch.ones(1, dtype=torch.float32, device=hidden.device)
    logits_buf = torch.empty((min(chunk, scored), vocab), dtype=dtype, device=hidden.device) if scored else None
    for start in range(0, scored, chunk):
        end = min(start + chunk, scored)
        h, y = _chunk(hidden, labels, rows, start, end, dtype)
        s = neg_g[start:end, None]
        logits = _project(h, w, b, logits_buf[: end - start])
        cross_entropy_forward_(logits, y, one, ignore_index, compute_grad=True)  # logits := softmax − onehot
        if grad_hidden is not None:  # ∂L/∂h_c = −g ⊙ ((softmax − onehot)_c @ W)
            d_h = (logits @ w).mul_(s)
            if rows is None:
                grad_hidden[start:end] = d_h
            else:
                grad_hidden.index_copy_(0, rows[start:end], d_h.to(grad_hidden.dtype))
        if grad_weight is not None:  # ∂L/∂W += (softmax − onehot)_cᵀ @ (−g ⊙ h_c)
            scaled_h = (h.float() * s).to(dtype)
            if grad_weight.dtype == dtype:
                grad_weight.addmm_(logits.t(), scaled_h)
            else:
                grad_weight += logits.t() @ scaled_h
        if grad_bias is not None:  # ∂L/∂b += (softmax − onehot)_cᵀ @ (−g_c)
            grad_bias += (logits.t() @ s.to(dtype)).squeeze(1).float()
    if grad_bias is not None and bias is not None:
        grad_bias = grad_bias.to(bias.dtype)
    return grad_hidden, grad_weight, grad_bias


class FusedLinearLogprobsFunction(torch.autograd.Function):
    """log p(labels | hidden) under `hidden @ Wᵀ + b` without materializing the logits (see the module docstring).

    Outputs logp (N,) fp32, and with `stats` the non-differentiable (N, 3) fp32 entropy / mean logit / is-argmax.
    """

    @staticmethod
    @ensure_contiguous
    def forward(ctx, hidden, weight, labels, bias=None, ignore_index=-100, chunk_size=None, stats=False):
        ctx.set_materialize_grads(False)
        dtype = _compute_dtype(weight)
        need_h, need_w = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        need_b = bias is not None and ctx.needs_input_grad[3]
        recompute = need_w or need_b  # a trainable head: everything in the backward (module docstring)
        with torch.autocast(hidden.device.type, enabled=False):
            logp, row_stats, d_hidden, rows, chunk = linear_logprobs_forward(
                hidden, weight, labels, bias, ignore_index, chunk_size, compute_dtype=dtype,
                need_d_hidden=need_h and not recompute, stats=stats)  # fmt: skip
        ctx.recompute = recompute
        ctx.needs = (need_h, need_w, need_b)
        ctx.n_rows = hidden.shape[0]
        if recompute:
            ctx.save_for_backward(hidden, weight, labels, bias, rows)
            ctx.dtype, ctx.chunk, ctx.ignore_index = dtype, chunk, ignore_index
        else:
            ctx.d_hidden, ctx.rows = d_hidden, rows
        if row_stats is None:
            return logp
        ctx.mark_non_differentiable(row_stats)
        return logp, row_stats

    @staticmethod
    def backward(ctx, grad_logp, *_):
        if grad_logp is None or not any(ctx.needs):
            return None, None, None, None, None, None, None
        if ctx.recompute:
            hidden, weight, labels, bias, rows = ctx.saved_tensors
            need_h, need_w, need_b = ctx.needs
            with torch.autocast(hidden.device.type, enabled=False):
                grads = linear_logprobs_backward(
                    grad_logp, hidden, weight, labels, bias, rows, ctx.chunk, ctx.ignore_index,
                    compute_dtype=ctx.dtype, need_grad_hidden=need_h, need_grad_weight=need_w,
                    need_grad_bias=need_b)  # fmt: skip
            return grads[0], grads[1], None, grads[2], None, None, None
        d_hidden = getattr(ctx, "d_hidden", None)
        if d_hidden is None:
            raise RuntimeError("this log-prob was already backpropagated; its stored gradient cannot be reused")
        ctx.d_hidden = None
        neg_g = grad_logp.to(torch.float32).neg()
        if ctx.rows is not None:
            neg_g = neg_g.index_select(0, ctx.rows)
        grad_hidden = _scatter_rows(d_hidden.mul_(neg_g[:, None]), ctx.rows, ctx.n_rows)
        return grad_hidden, None, None, None, None, None, None


def fused_linear_logprobs(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    labels: torch.Tensor,
    bias: torch.Tensor | None = None,
    ignore_index: int = -100,
    chunk_size: int | None = None,
) -> torch.Tensor:
    """log p(labels | hidden) (N,) fp32 under the head `hidden (N, H) @ weight (V, H).T (+ bias)`, logits never held.

    Rows labelled `ignore_index` give 0. Differentiable in hidden, weight and bias for any upstream gradient; with
    no gradient needed (e.g. a reference model under `torch.no_grad()`) only the log-probs are computed.
    `chunk_size` (token rows) overrides the automatic choice.
    """
    return FusedLinearLogprobsFunction.apply(hidden, weight, labels, bias, ignore_index, chunk_size, False)


def fused_linear_logprobs_stats(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    labels: torch.Tensor,
    bias: torch.Tensor | None = None,
    ignore_index: int = -100,
    chunk_size: int | None = None,
) -> LogprobStats:
    """`fused_linear_logprobs` plus each row's entropy, mean logit and is-argmax, from the same pass over the logits
    (what TRL's DPO and KTO trainers log; not differentiable)."""
    logp, row_stats = FusedLinearLogprobsFunction.apply(hidden, weight, labels, bias, ignore_index, chunk_size, True)
    return LogprobStats(logp, row_stats[:, 0], row_stats[:, 1], row_stats[:, 2] > 0.5)
