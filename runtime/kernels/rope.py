"""Fused rotary position embedding on q and k in one launch (HF rotate-half layout).

HF computes, with x = [x₁ | x₂] split at D/2 and cos = [c₁ | c₂], sin = [s₁ | s₂] as `LlamaRotaryEmbedding`
returns them (c₁ = c₂ and s₁ = s₂ there, but nothing below relies on it):

    rotate_half(x) = [−x₂ | x₁]
    out            = x·cos + rotate_half(x)·sin
    out₁ = x₁·c₁ − x₂·s₁
    out₂ = x₂·c₂ + x₁·s₂

The backward is the transpose of that linear map:

    dx₁ = dout₁·c₁ + dout₂·s₂
    dx₂ = dout₂·c₂ − dout₁·s₁

HF's eager version allocates q·cos, the two halves of rotate_half, their `cat`, the product with sin and the
sum, per tensor. Here one program per (batch, position) loads cos/sin once, rotates every q and k head of that
token in fp32 and writes the result straight into the output buffers: no clone/cat/rotate_half temporaries,
nothing saved for backward except cos and sin (which the model keeps anyway).

q and k may be strided views (the `view(...).transpose(1, 2)` HF produces); only the head dim must be
contiguous. Outputs keep q's and k's dtypes (HF promotes to cos's dtype, which only differs under autocast).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl


@triton.jit
def _rope_kernel(
    Q_ptr,  # pointer to q (input), viewed as (B, Hq, S, D), head dim contiguous
    Q_sb, Q_sh, Q_ss,  # int: q strides for batch, head, position
    QO_ptr,  # pointer to q output, (B, Hq, S, D)
    QO_sb, QO_sh, QO_ss,  # int: output strides
    K_ptr,  # pointer to k (input), (B, Hk, S, D)
    K_sb, K_sh, K_ss,  # int
    KO_ptr,  # pointer to k output, (B, Hk, S, D)
    KO_sb, KO_sh, KO_ss,  # int
    COS_ptr,  # pointer to cos, (B or 1, S, D), head dim contiguous
    SIN_ptr,  # pointer to sin, same shape and strides as cos
    CS_sb, CS_ss,  # int: cos/sin strides for batch (0 when broadcast) and position
    seq_len,  # int: S
    n_q_heads,  # int: Hq
    n_k_heads,  # int: Hk
    half_dim,  # int: D / 2
    BACKWARD: tl.constexpr,  # apply the transpose rotation (dx from dout)
    BLOCK_HQ: tl.constexpr,
    BLOCK_HK: tl.constexpr,
    BLOCK_D2: tl.constexpr,
):
    pid = tl.program_id(0).to(tl.int64)
    b = pid // seq_len
    s = pid % seq_len

    d = tl.arange(0, BLOCK_D2)
    d_mask = d < half_dim
    cs_off = b * CS_sb + s * CS_ss
    c1 = tl.load(COS_ptr + cs_off + d, mask=d_mask, other=0.0).to(tl.float32)[None, :]
    c2 = tl.load(COS_ptr + cs_off + half_dim + d, mask=d_mask, other=0.0).to(tl.float32)[None, :]
    s1 = tl.load(SIN_ptr + cs_off + d, mask=d_mask, other=0.0).to(tl.float32)[None, :]
    s2 = tl.load(SIN_ptr + cs_off + half_dim + d, mask=d_mask, other=0.0).to(tl.float32)[None, :]

    # ---- q: all heads of this token as a (BLOCK_HQ, BLOCK_D2) tile per half
    hq = tl.arange(0, BLOCK_HQ)[:, None]
    q_mask = (hq < n_q_heads) & d_mask[None, :]
    q_in = Q_ptr + b * Q_sb + s * Q_ss + hq * Q_sh + d[None, :]
    x1 = tl.load(q_in, mask=q_mask, other=0.0).to(tl.float32)
    x2 = tl.load(q_in + half_dim, mask=q_mask, other=0.0).to(tl.float32)
    if BACKWARD:
        o1 = x1 * c1 + x2 * s2  # dx₁ = dout₁·c₁ + dout₂·s₂
        o2 = x2 * c2 - x1 * s1  # dx₂ = dout₂·c₂ − dout₁·s₁
    else:
        o1 = x1 * c1 - x2 * s1  # out₁ = x₁·c₁ − x₂·s₁
        o2 = x2 * c2 + x1 * s2  # out₂ = x₂·c₂ + x₁·s₂
    q_out = QO_ptr + b * QO_sb + s * QO_ss + hq * QO_sh + d[None, :]
    tl.store(q_out, o1.to(QO_ptr.dtype.element_ty), mask=q_mask)
    tl.store(q_out + half_dim, o2.to(QO_ptr.dtype.element_ty), mask=q_mask)

    # ---- k: same rotation, its own head count (GQA)
    hk = tl.arange(0, BLOCK_HK)[:, None]
    k_mask = (hk < n_k_heads) & d_mask[None, :]
    k_in = K_ptr + b * K_sb + s * K_ss + hk * K_sh + d[None, :]
    y1 = tl.load(k_in, mask=k_mask, other=0.0).to(tl.float32)
    y2 = tl.load(k_in + half_dim, mask=k_mask, other=0.0).to(tl.float32)
    if BACKWARD:
        p1 = y1 * c1 + y2 * s2
        p2 = y2 * c2 - y1 * s1
    else:
        p1 = y1 * c1 - y2 * s1
        p2 = y2 * c2 + y1 * s2
    k_out = KO_ptr + b * KO_sb + s * KO_ss + hk * KO_sh + d[None, :]
    tl.store(k_out, p1.to(KO_ptr.dtype.element_ty), mask=k_mask)
    tl.store(k_out + half_dim, p2.to(KO_ptr.dtype.element_ty), mask=k_mask)


def _last_dim_contiguous(x: torch.Tensor) -> torch.Tensor:
    return x if x.stride(-1) == 1 else x.contiguous()


def _normalize_cos_sin(cos: torch.Tensor, sin: torch.Tensor, batch: int, seq_len: int, head_dim: int):
    """Bring cos/sin to (B or 1, S, D) with a contiguous head dim; return them and their (batch, pos) strides."""
    if cos.shape != sin.shape:
        raise ValueError(f"cos and sin shapes differ: {tuple(cos.shape)} vs {tuple(sin.shape)}")
    if cos.dim() == 2:
        cos, sin = cos.unsqueeze(0), sin.unsqueeze(0)
    if cos.dim() != 3 or cos.shape[1] != seq_len or cos.shape[0] not in (1, batch):
        raise ValueError(f"cos/sin of shape {tuple(cos.shape)} do not fit (batch={batch}, seq={seq_len})")
    if cos.shape[-1] != head_dim:
        raise ValueError(f"partial rotary (cos dim {cos.shape[-1]} != head dim {head_dim}) is not supported")
    cos, sin = cos.contiguous(), sin.contiguous()
    stride_b = 0 if cos.shape[0] == 1 else cos.stride(0)
    return cos, sin, stride_b, cos.stride(1)


def _launch(q, k, q_out, k_out, cos, sin, cs_sb, cs_ss, backward: bool) -> None:
    batch, n_q_heads, seq_len, head_dim = q.shape
    n_k_heads = k.shape[1]
    half = head_dim // 2
    block_d2 = triton.next_power_of_2(half)
    block_hq = triton.next_power_of_2(n_q_heads)
    block_hk = triton.next_power_of_2(n_k_heads)
    # A (32 heads x 64) fp32 tile per half is 8 KiB; 4 warps up to that, 8 beyond.
    num_warps = 4 if block_hq * block_d2 <= 2048 else 8
    _rope_kernel[(batch * seq_len,)](
        q, q.stride(0), q.stride(1), q.stride(2),
        q_out, q_out.stride(0), q_out.stride(1), q_out.stride(2),
        k, k.stride(0), k.stride(1), k.stride(2),
        k_out, k_out.stride(0), k_out.stride(1), k_out.stride(2),
        cos, sin, cs_sb, cs_ss,
        seq_len, n_q_heads, n_k_heads, half,
        BACKWARD=backward,
        BLOCK_HQ=block_hq,
        BLOCK_HK=block_hk,
        BLOCK_D2=block_d2,
        num_warps=num_warps,
    )  # fmt: skip


def rope_forward(q, k, cos, sin, cs_sb, cs_ss):
    """Rotate (B, H, S, D) views q and k; outputs keep each input's strides."""
    q_out, k_out = torch.empty_like(q), torch.empty_like(k)
    if q.numel() and k.numel():
        _launch(q, k, q_out, k_out, cos, sin, cs_sb, cs_ss, backward=False)
    return q_out, k_out


def rope_backward(dq_out, dk_out, cos, sin, cs_sb, cs_ss):
    """Apply the transpose rotation to the upstream grads; returns fresh (dq, dk)."""
    dq_out, dk_out = _last_dim_contiguous(dq_out), _last_dim_contiguous(dk_out)
    dq, dk = torch.empty_like(dq_out), torch.empty_like(dk_out)
    if dq.numel() and dk.numel():
        _launch(dq_out, dk_out, dq, dk, cos, sin, cs_sb, cs_ss, backward=True)
    return dq, dk


class RoPEFunction(torch.autograd.Function):
    """(q·cos + rotate_half(q)·sin, k·cos + rotate_half(k)·sin); saves only cos and sin."""

    @staticmethod
    def forward(ctx, q, k, cos, sin, unsqueeze_dim=1):
        if unsqueeze_dim not in (1, 2):
            raise ValueError(f"unsqueeze_dim must be 1 (B, H, S, D) or 2 (B, S, H, D), got {unsqueeze_dim}")
        if q.dim() != 4 or k.dim() != 4:
            raise ValueError("q and k must be 4-D")
        if unsqueeze_dim == 2:  # (B, S, H, D) -> (B, H, S, D) views; no copy
            q, k = q.transpose(1, 2), k.transpose(1, 2)
        q, k = _last_dim_contiguous(q), _last_dim_contiguous(k)
        batch, _, seq_len, head_dim = q.shape
        if head_dim % 2:
            raise ValueError(f"head dim must be even, got {head_dim}")
        if k.shape[0] != batch or k.shape[2] != seq_len or k.shape[3] != head_dim:
            raise ValueError(f"q {tuple(q.shape)} and k {tuple(k.shape)} disagree outside the head count")
        cos, sin, cs_sb, cs_ss = _normalize_cos_sin(cos, sin, batch, seq_len, head_dim)

        q_out, k_out = rope_forward(q, k, cos, sin, cs_sb, cs_ss)
        ctx.save_for_backward(cos, sin)
        ctx.cs_strides = (cs_sb, cs_ss)
        ctx.unsqueeze_dim = unsqueeze_dim
        if unsqueeze_dim == 2:
            q_out, k_out = q_out.transpose(1, 2), k_out.transpose(1, 2)
        return q_out, k_out

    @staticmethod
    def backward(ctx, dq_out, dk_out):
        cos, sin = ctx.saved_tensors
        if ctx.unsqueeze_dim == 2:
            dq_out, dk_out = dq_out.transpose(1, 2), dk_out.transpose(1, 2)
        dq, dk = rope_backward(dq_out, dk_out, cos, sin, *ctx.cs_strides)
        if ctx.unsqueeze_dim == 2:
            dq, dk = dq.transpose(1, 2), dk.transpose(1, 2)
        return dq, dk, None, None, None


def apply_rotary_pos_emb(q, k, cos, sin, unsqueeze_dim: int = 1):
    """Drop-in for HF's `apply_rotary_pos_emb(q, k, cos, sin, unsqueeze_dim=1)` using the fused kernel.

    cos/sin are (batch or 1, seq, head_dim) as the HF rotary modules return them; they must not require grad.
    """
    if cos.requires_grad or sin.requires_grad:
        raise ValueError("fused RoPE does not propagate gradients into cos/sin")
    return RoPEFunction.apply(q, k, cos, sin, unsqueeze_dim)
