"""Fused q+k RoPE vs HF's rotate-half formula, on the strided views HF attention passes in."""

import pytest
import torch

from ftplan_runtime.kernels import apply_rotary_pos_emb


def rotate_half(x):
    x1, x2 = x[..., : x.shape[-1] // 2], x[..., x.shape[-1] // 2 :]
    return torch.cat((-x2, x1), dim=-1)


def reference_rope(q, k, cos, sin, unsqueeze_dim=1):  # transformers' apply_rotary_pos_emb
    cos, sin = cos.unsqueeze(unsqueeze_dim), sin.unsqueeze(unsqueeze_dim)
    return q * cos + rotate_half(q) * sin, k * cos + rotate_half(k) * sin


def hf_cos_sin(position_ids, head_dim, dtype, base=10000.0):  # LlamaRotaryEmbedding.forward
    inv_freq = 1.0 / (base ** (torch.arange(0, head_dim, 2, dtype=torch.float) / head_dim))
    freqs = position_ids[..., None].float() * inv_freq
    emb = torch.cat((freqs, freqs), dim=-1)
    return emb.cos().to(dtype), emb.sin().to(dtype)


def projected(batch, seq, heads, head_dim, dtype, unsqueeze_dim):
    """q/k the way HF builds them: proj(h).view(B, S, H, D), then transpose(1, 2) for unsqueeze_dim=1."""
    x = torch.randn(batch, seq, heads * head_dim).to(dtype).view(batch, seq, heads, head_dim)
    return x.transpose(1, 2) if unsqueeze_dim == 1 else x


@pytest.mark.parametrize(
    "batch, seq, q_heads, k_heads, head_dim",
    [(2, 7, 6, 2, 10), (1, 5, 4, 4, 64), (3, 1, 3, 1, 6)],  # weird shapes: head_dim/2 = 5, GQA 3:1
)
@pytest.mark.parametrize(
    "dtype, atol, rtol",
    [(torch.float32, 1e-5, 1e-5), (torch.bfloat16, 2e-2, 2e-2)],
)
@pytest.mark.parametrize("unsqueeze_dim", [1, 2])
@pytest.mark.parametrize("broadcast_batch", [False, True])
def test_rope_matches_hf(batch, seq, q_heads, k_heads, head_dim, dtype, atol, rtol, unsqueeze_dim, broadcast_batch):
    q = projected(batch, seq, q_heads, head_dim, dtype, unsqueeze_dim)
    k = projected(batch, seq, k_heads, head_dim, dtype, unsqueeze_dim)
    if broadcast_batch:
        position_ids = torch.arange(seq)[None]
    else:  # per-sequence offsets, as with packed or left-padded batches
        position_ids = torch.arange(seq)[None] + torch.arange(batch)[:, None] * 3
    cos, sin = hf_cos_sin(position_ids, head_dim, dtype)
    dq, dk = torch.randn(q.shape).to(dtype), torch.randn(k.shape).to(dtype)

    q1, k1 = q.detach().requires_grad_(), k.detach().requires_grad_()
    qo1, ko1 = apply_rotary_pos_emb(q1, k1, cos, sin, unsqueeze_dim)
    torch.autograd.backward((qo1, ko1), (dq, dk))

    q2, k2 = q.detach().clone().requires_grad_(), k.detach().clone().requires_grad_()
    qo2, ko2 = reference_rope(q2, k2, cos, sin, unsqueeze_dim)
    torch.autograd.backward((qo2, ko2), (dq, dk))

    assert qo1.shape == qo2.shape and ko1.shape == ko2.shape and qo1.dtype == dtype
    torch.testing.assert_close(qo1, qo2, atol=atol, rtol=rtol)
    torch.testing.assert_close(ko1, ko2, atol=atol, rtol=rtol)
    torch.testing.assert_close(q1.grad, q2.grad, atol=atol, rtol=rtol)
    torch.testing.assert_close(k1.grad, k2.grad, atol=atol, rtol=rtol)


def test_general_cos_sin_halves_and_no_input_mutation():
    # the kernel must not assume cos = cat(f, f): use independent halves
    q = torch.randn(2, 3, 5, 8)
    k = torch.randn(2, 1, 5, 8)
    cos, sin = torch.randn(2, 5, 8), torch.randn(2, 5, 8)
    q_before, k_before = q.clone(), k.clone()
    qo, ko = apply_rotary_pos_emb(q, k, cos, sin)
    qr, kr = reference_rope(q, k, cos, sin)
    torch.testing.assert_close(qo, qr, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(ko, kr, atol=1e-5, rtol=1e-5)
    assert torch.equal(q, q_before) and torch.equal(k, k_before)


def test_saves_only_cos_and_sin():
    q = torch.randn(1, 2, 3, 4, requires_grad=True)
    k = torch.randn(1, 2, 3, 4, requires_grad=True)
    cos, sin = hf_cos_sin(torch.arange(3)[None], 4, torch.float32)
    qo, _ = apply_rotary_pos_emb(q, k, cos, sin)
    saved = qo.grad_fn.saved_tensors
    assert len(saved) == 2 and all(t.shape == cos.shape for t in saved)


def test_rejects_unsupported_inputs():
    q, k = torch.randn(1, 2, 3, 4), torch.randn(1, 2, 3, 4)
    cos, sin = hf_cos_sin(torch.arange(3)[None], 4, torch.float32)
    with pytest.raises(ValueError, match="partial rotary"):
        apply_rotary_pos_emb(q, k, cos[..., :2], sin[..., :2])
    with pytest.raises(ValueError, match="cos/sin"):
        apply_rotary_pos_emb(q, k, cos[:, :2], sin[:, :2])
    with pytest.raises(ValueError, match="gradients into cos/sin"):
        apply_rotary_pos_emb(q, k, cos.requires_grad_(), sin)
