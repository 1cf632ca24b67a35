"""Fused SiLU(gate)·up vs `F.silu(gate) * up` (what LlamaMLP computes)."""

import pytest
import torch
import torch.nn.functional as F

from ftplan_runtime.kernels import swiglu


@pytest.mark.parametrize("shape", [(3, 7, 33), (2, 1037), (1, 1, 1), (4, 5, 6, 7)])  # weird shapes
@pytest.mark.parametrize(
    "dtype, atol, rtol",
    # bf16: the reference rounds silu(a) before the product; the interpreter truncates where GPUs round
    [(torch.float32, 1e-5, 1e-5), (torch.bfloat16, 2e-2, 2e-2)],
)
def test_swiglu_matches_reference(shape, dtype, atol, rtol):
    a = (torch.randn(shape) * 3).to(dtype)
    b = torch.randn(shape).to(dtype)
    dh = torch.randn(shape).to(dtype)

    a1, b1 = a.clone().requires_grad_(), b.clone().requires_grad_()
    h1 = swiglu(a1, b1)
    h1.backward(dh)

    a2, b2 = a.clone().requires_grad_(), b.clone().requires_grad_()
    h2 = F.silu(a2) * b2
    h2.backward(dh)

    assert h1.dtype == dtype and h1.shape == shape
    torch.testing.assert_close(h1, h2, atol=atol, rtol=rtol)
    torch.testing.assert_close(a1.grad, a2.grad, atol=atol, rtol=rtol)
    torch.testing.assert_close(b1.grad, b2.grad, atol=atol, rtol=rtol)


def test_saves_only_inputs_and_leaves_them_intact():
    a = torch.randn(5, 19, requires_grad=True)
    b = torch.randn(5, 19, requires_grad=True)
    a_before, b_before = a.detach().clone(), b.detach().clone()
    h = swiglu(a, b)
    saved = h.grad_fn.saved_tensors
    assert len(saved) == 2 and saved[0] is a and saved[1] is b
    h.sum().backward()
    assert torch.equal(a.detach(), a_before) and torch.equal(b.detach(), b_before)


def test_strided_float64_inputs():
    # gate/up as strided views of one buffer; float64 goes through the fp32 kernel math
    base = torch.randn(6, 2, 11, dtype=torch.float64, requires_grad=True)
    a, b = base[:, 0], base[:, 1]
    h = swiglu(a, b)
    (grad,) = torch.autograd.grad(h.sum(), base)
    ref = F.silu(a) * b
    (ref_grad,) = torch.autograd.grad(ref.sum(), base)
    assert h.dtype == torch.float64
    torch.testing.assert_close(h, ref, atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(grad, ref_grad, atol=1e-6, rtol=1e-6)


def test_shape_mismatch_raises():
    with pytest.raises(ValueError, match="shapes differ"):
        swiglu(torch.randn(2, 3), torch.randn(3, 2))
