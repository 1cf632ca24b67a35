"""Fused linear log-probs (`kernels/logprobs.py`) against log_softmax(hidden @ Wᵀ + b).gather on odd shapes.

Forward values, the per-token statistics, and the gradients of hidden, weight and bias for arbitrary per-token
upstream gradients, with a frozen head (gradient prepared in the forward) and a trainable one (recomputed in the
backward), in fp32 (tight) and bf16 / fp16 (relative error <= 1e-2 against the fp32 reference on the same inputs).
"""

import pytest
import torch

from ftplan_runtime.kernels import fused_linear_logprobs, fused_linear_logprobs_stats
from ftplan_runtime.kernels.cross_entropy import cross_entropy_forward_
from ftplan_runtime.kernels.logprobs import FusedLinearLogprobsFunction

IGNORE = -100
SHAPES = [(37, 29, 203), (5, 16, 67), (70, 24, 1031)]  # (N, H, V): no multiples of anything useful
LOW = [torch.bfloat16, torch.float16]


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    """Norm-wise relative error of a against the reference b."""
    a, b = a.detach().float(), b.detach().float()
    return float((a - b).norm() / b.norm().clamp_min(1e-12))


def make(n, h, v, dtype, *, bias=False, ignored=(0, 3, 4), scale=1.0):
    hidden = torch.randn(n, h).to(dtype)
    weight = (torch.randn(v, h) * scale / h**0.5).to(dtype)
    b = (torch.randn(v) * 0.5).to(dtype) if bias else None
    labels = torch.randint(0, v, (n,))
    labels[[i for i in ignored if i < n]] = IGNORE
    return hidden, weight, b, labels


def reference(hidden, weight, bias, labels):
    """fp32 log_softmax(hidden @ Wᵀ + b).gather(labels), 0 at ignored rows (autograd-able)."""
    logits = hidden.float() @ weight.float().t()
    if bias is not None:
        logits = logits + bias.float()
    logp = torch.log_softmax(logits, -1)
    keep = labels != IGNORE
    out = logp.gather(1, labels.clamp_min(0)[:, None])[:, 0]
    return torch.where(keep, out, torch.zeros_like(out)), logits


def leaves(*tensors, grads=(True, True, True)):
    return [None if t is None else t.detach().clone().float().requires_grad_(g) for t, g in zip(tensors, grads)]


# --------------------------------------------------------------------------------------------- forward


@pytest.mark.parametrize("n, h, v", SHAPES)
@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("chunk", [None, 7])  # 7: several chunks, the last one short
def test_forward_fp32(n, h, v, bias, chunk):
    hidden, weight, b, labels = make(n, h, v, torch.float32, bias=bias)
    ref, _ = reference(hidden, weight, b, labels)
    out = fused_linear_logprobs(hidden, weight, labels, b, chunk_size=chunk)
    assert out.dtype == torch.float32 and out.shape == (n,)
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)
    assert torch.all(out[labels == IGNORE] == 0)


@pytest.mark.parametrize("dtype", LOW)
@pytest.mark.parametrize("n, h, v", SHAPES[:2])
def test_forward_low_precision(dtype, n, h, v):
    hidden, weight, b, labels = make(n, h, v, dtype, bias=True)
    ref, _ = reference(hidden, weight, b, labels)  # fp32 math on the same rounded inputs
    out = fused_linear_logprobs(hidden, weight, labels, b, chunk_size=6)
    assert rel(out, ref) <= 1e-2


def test_all_rows_scored_and_all_ignored():
    hidden, weight, _, labels = make(9, 12, 41, torch.float32, ignored=())
    torch.testing.assert_close(fused_linear_logprobs(hidden, weight, labels), reference(hidden, weight, None, labels)[0])
    h = hidden.clone().requires_grad_()
    out = fused_linear_logprobs(h, weight, torch.full((9,), IGNORE))
    assert torch.equal(out, torch.zeros(9))
    out.sum().backward()
    assert torch.equal(h.grad, torch.zeros_like(h))


def test_no_grad_path_computes_only_logprobs():
    hidden, weight, _, labels = make(11, 8, 53, torch.float32)
    h, w = hidden.clone().requires_grad_(), weight.clone().requires_grad_()
    with torch.no_grad():
        out = fused_linear_logprobs(h, w, labels)
    assert out.grad_fn is None and not out.requires_grad
    torch.testing.assert_close(out, reference(hidden, weight, None, labels)[0])


def test_noncontiguous_hidden_rows():
    wide = torch.randn(13, 40)
    hidden = wide[:, 5:25]  # a view with row stride 40
    weight = torch.randn(31, 20) / 20**0.5
    labels = torch.randint(0, 31, (13,))
    torch.testing.assert_close(fused_linear_logprobs(hidden, weight, labels),
                               reference(hidden, weight, None, labels)[0])


# --------------------------------------------------------------------------------------------- gradients


def _grads_vs_reference(dtype, n, h, v, *, train_weight, bias, chunk, tol):
    hidden, weight, b, labels = make(n, h, v, dtype, bias=bias)
    upstream = torch.randn(n) * 3  # per-token, both signs, as DPO's sequence weights are
    rh, rw, rb = leaves(hidden, weight, b, grads=(True, train_weight, train_weight))
    ref, _ = reference(rh, rw, rb, labels)
    (ref * upstream).sum().backward()

    fh = hidden.clone().requires_grad_()
    fw = weight.clone().requires_grad_(train_weight)
    fb = b.clone().requires_grad_(train_weight) if b is not None else None
    out = fused_linear_logprobs(fh, fw, labels, fb, chunk_size=chunk)
    (out * upstream.to(out.dtype)).sum().backward()

    assert fh.grad.dtype == dtype and fh.grad.shape == hidden.shape
    assert torch.all(fh.grad[labels == IGNORE] == 0)
    pairs = [(fh.grad, rh.grad)]
    if train_weight:
        assert fw.grad.dtype == dtype
        pairs.append((fw.grad, rw.grad))
        if bias:
            pairs.append((fb.grad, rb.grad))
    else:
        assert fw.grad is None
    for got, want in pairs:
        if dtype == torch.float32:
            torch.testing.assert_close(got, want, atol=tol, rtol=tol)
        else:
            assert rel(got, want) <= tol, (got.shape, rel(got, want))


@pytest.mark.parametrize("n, h, v", SHAPES)
@pytest.mark.parametrize("train_weight", [False, True], ids=["frozen", "trainable"])
@pytest.mark.parametrize("bias", [False, True])
def test_gradients_fp32(n, h, v, train_weight, bias):
    _grads_vs_reference(torch.float32, n, h, v, train_weight=train_weight, bias=bias, chunk=8, tol=1e-5)


@pytest.mark.parametrize("dtype", LOW)
@pytest.mark.parametrize("train_weight", [False, True], ids=["frozen", "trainable"])
def test_gradients_low_precision(dtype, train_weight):
    _grads_vs_reference(dtype, 37, 29, 203, train_weight=train_weight, bias=True, chunk=None, tol=1e-2)


def test_bias_alone_trainable():
    hidden, weight, b, labels = make(10, 6, 23, torch.float32, bias=True)
    upstream = torch.randn(10)
    rb = b.clone().requires_grad_()
    (reference(hidden, weight, rb, labels)[0] * upstream).sum().backward()
    fh, fb = hidden.clone().requires_grad_(), b.clone().requires_grad_()
    (fused_linear_logprobs(fh, weight, labels, fb, chunk_size=3) * upstream).sum().backward()
    torch.testing.assert_close(fb.grad, rb.grad, atol=1e-5, rtol=1e-5)
    assert fh.grad is not None


def test_autocast_bf16_with_fp32_weights():
    """Under autocast the GEMMs run in bf16, as lm_head would; the result stays close to the fp32 reference."""
    hidden, weight, _, labels = make(21, 18, 97, torch.float32)
    upstream = torch.randn(21)
    rh = hidden.clone().requires_grad_()
    (reference(rh, weight, None, labels)[0] * upstream).sum().backward()
    fh = hidden.clone().requires_grad_()
    with torch.autocast("cuda" if fh.is_cuda else "cpu", dtype=torch.bfloat16):
        out = fused_linear_logprobs(fh, weight, labels)
    (out * upstream).sum().backward()
    assert fh.grad.dtype == torch.float32
    assert rel(out, reference(hidden, weight, None, labels)[0]) <= 1e-2 and rel(fh.grad, rh.grad) <= 1e-2


def test_the_stored_gradient_is_handed_out_once():
    hidden, weight, _, labels = make(6, 5, 17, torch.float32)
    h = hidden.clone().requires_grad_()
    out = fused_linear_logprobs(h, weight, labels)
    out.sum().backward(retain_graph=True)
    with pytest.raises(RuntimeError, match="already backpropagated"):
        out.sum().backward()


def test_only_the_scored_rows_are_projected(monkeypatch):
    """Ignored rows never reach the GEMM: a batch of prompts and answers pays for its answers."""
    from ftplan_runtime.kernels import logprobs

    seen = []
    original = logprobs._project
    monkeypatch.setattr(logprobs, "_project", lambda h, w, b, out: seen.append(h.shape[0]) or original(h, w, b, out))
    hidden, weight, _, labels = make(20, 8, 29, torch.float32, ignored=range(0, 20, 2))
    fused_linear_logprobs(hidden, weight, labels, chunk_size=4)
    assert seen == [4, 4, 2]


# --------------------------------------------------------------------------------------------- statistics


@pytest.mark.parametrize("dtype, tol", [(torch.float32, 1e-5), (torch.bfloat16, 1e-2)])
def test_stats_match_torch(dtype, tol):
    hidden, weight, b, labels = make(37, 29, 203, dtype, bias=True, scale=3.0)
    labels[5:9] = torch.argmax(hidden[5:9].float() @ weight.float().t() + b.float(), -1)  # some top-1 hits
    ref, logits = reference(hidden, weight, b, labels)
    keep = labels != IGNORE
    p = torch.softmax(logits, -1)
    entropy = torch.where(keep, -(p * torch.log_softmax(logits, -1)).sum(-1), 0.0)
    mean = torch.where(keep, logits.mean(-1), 0.0)

    out = fused_linear_logprobs_stats(hidden, weight, labels, b, chunk_size=10)
    check = (lambda a, r: torch.testing.assert_close(a, r, atol=tol, rtol=tol)) if dtype == torch.float32 else (
        lambda a, r: (rel(a, r) <= tol) or pytest.fail(f"relative error {rel(a, r)}"))
    check(out.logprobs, ref)
    check(out.entropy, entropy)
    check(out.mean_logits, mean)
    if dtype == torch.float32:
        assert torch.equal(out.is_top1, (logits.argmax(-1) == labels) & keep)
    assert out.is_top1[5:9].all() and not out.is_top1[~keep].any()
    assert not out.entropy.requires_grad


def test_stats_kernel_ties_take_the_first_maximum():
    """is_top1 follows torch.argmax: a label tied with an earlier column is not the argmax."""
    logits = torch.tensor([[0.0, 3.0, 3.0, 1.0], [0.0, 3.0, 3.0, 1.0], [5.0, 1.0, 2.0, 5.0], [1.0, 2.0, 0.5, 0.0]])
    labels = torch.tensor([1, 2, 3, IGNORE])
    stats = torch.empty(4, 3)
    cross_entropy_forward_(logits.clone(), labels, torch.ones(1), IGNORE, compute_grad=False, stats=stats,
                           block_size=2)  # two vocab blocks per row
    assert stats[:, 2].tolist() == [1.0, 0.0, 0.0, 0.0]
    p = torch.softmax(logits[:3], -1)
    torch.testing.assert_close(stats[:3, 0], -(p * p.log()).sum(-1))
    torch.testing.assert_close(stats[:3, 1], logits[:3].mean(-1))
    assert stats[3].tolist() == [0.0, 0.0, 0.0]


def test_stats_gradient_flows_through_logprobs_only():
    hidden, weight, _, labels = make(8, 6, 19, torch.float32)
    h = hidden.clone().requires_grad_()
    out = FusedLinearLogprobsFunction.apply(h, weight, labels, None, IGNORE, None, True)
    logp, stats = out
    assert not stats.requires_grad
    logp.sum().backward()
    rh = hidden.clone().requires_grad_()
    reference(rh, weight, None, labels)[0].sum().backward()
    torch.testing.assert_close(h.grad, rh.grad, atol=1e-5, rtol=1e-5)
