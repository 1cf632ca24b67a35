"""Fused RMSNorm vs the HF eager modules (LlamaRMSNorm casting, GemmaRMSNorm (1+w) casting)."""

import pytest
import torch

from ftplan_runtime.kernels import rms_norm


def llama_rms_norm(x, w, eps):  # transformers LlamaRMSNorm.forward
    h = x.to(torch.float32)
    h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + eps)
    return w * h.to(x.dtype)


def gemma_rms_norm(x, w, eps):  # transformers GemmaRMSNorm.forward
    h = x.float()
    h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + eps)
    return (h * (1.0 + w.float())).type_as(x)


VARIANTS = {"llama": (llama_rms_norm, 0.0), "gemma": (gemma_rms_norm, 1.0)}


@pytest.mark.parametrize("shape", [(3, 7, 33), (2, 64), (1, 1, 4097), (5, 3, 2, 24)])  # weird shapes
@pytest.mark.parametrize(
    "dtype, atol, rtol",
    [(torch.float32, 1e-5, 1e-5), (torch.bfloat16, 5e-2, 2e-2)],
)
@pytest.mark.parametrize("variant", ["llama", "gemma"])
@pytest.mark.parametrize("trainable_weight", [True, False])
def test_rms_norm_matches_hf(shape, dtype, atol, rtol, variant, trainable_weight):
    reference, offset = VARIANTS[variant]
    eps = 1e-6
    hidden = shape[-1]
    x = (torch.randn(shape) * 3).to(dtype)
    w = (torch.randn(hidden) * 0.1 + (0.0 if offset else 1.0)).to(dtype)
    dy = torch.randn(shape).to(dtype)

    x1, w1 = x.clone().requires_grad_(), w.clone().requires_grad_(trainable_weight)
    y1 = rms_norm(x1, w1, eps, offset=offset, casting_mode=variant)
    y1.backward(dy)

    x2, w2 = x.clone().requires_grad_(), w.clone().requires_grad_(trainable_weight)
    y2 = reference(x2, w2, eps)
    y2.backward(dy)

    assert y1.dtype == y2.dtype and y1.shape == y2.shape
    torch.testing.assert_close(y1, y2, atol=atol, rtol=rtol)
    torch.testing.assert_close(x1.grad, x2.grad, atol=atol, rtol=rtol)
    if trainable_weight:
        # dW sums over all rows; allow for the row count in the bf16 tolerance
        n_rows = x.numel() // hidden
        torch.testing.assert_close(w1.grad, w2.grad, atol=atol * max(1, n_rows**0.5), rtol=rtol)
    else:
        assert w1.grad is None


def test_mixed_dtypes_promote_like_hf():
    # bf16 activations with an fp32 weight: HF's `weight * x.to(bf16)` returns fp32
    x = torch.randn(4, 16).to(torch.bfloat16)
    w = torch.randn(16, requires_grad=True)
    y = rms_norm(x, w, 1e-5)
    ref = llama_rms_norm(x, w, 1e-5)
    assert y.dtype == torch.float32
    # x̂ is rounded to bf16 inside, so bf16 tolerances apply (the interpreter truncates where GPUs round)
    torch.testing.assert_close(y, ref, atol=2e-2, rtol=1e-2)


def test_non_contiguous_input_and_empty():
    x = torch.randn(6, 40)[:, :33]  # row stride 40, not contiguous
    w = torch.randn(33)
    torch.testing.assert_close(rms_norm(x, w), llama_rms_norm(x, w, 1e-6), atol=1e-5, rtol=1e-5)
    empty = torch.empty(0, 33, requires_grad=True)
    out = rms_norm(empty, w)
    out.sum().backward()
    assert out.shape == (0, 33) and empty.grad.shape == (0, 33)


def test_bad_arguments():
    with pytest.raises(ValueError, match="casting_mode"):
        rms_norm(torch.randn(2, 8), torch.ones(8), casting_mode="none")
    with pytest.raises(ValueError, match="weight shape"):
        rms_norm(torch.randn(2, 8), torch.ones(9))
