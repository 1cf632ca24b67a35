"""Cross-entropy kernel (in-place dlogits) and fused linear cross-entropy vs torch's cross_entropy."""

import pytest
import torch
import torch.nn.functional as F

from ftplan_runtime.kernels import cross_entropy, fused_linear_cross_entropy
from ftplan_runtime.kernels.cross_entropy import _chunk_rows, cross_entropy_forward_, normaliser

IGNORE = -100
DTYPES = [(torch.float32, 1e-5, 1e-5), (torch.bfloat16, 2e-2, 2e-2)]


def make_labels(n_rows, vocab, ignored=(1, 5, 6)):
    labels = torch.randint(0, vocab, (n_rows,))
    labels[list(i for i in ignored if i < n_rows)] = IGNORE
    return labels


# --------------------------------------------------------------------------- kernel on materialized logits


@pytest.mark.parametrize("n_rows, vocab", [(13, 517), (1, 3), (9, 2048)])  # 517: not a multiple of the block
@pytest.mark.parametrize("block_size", [None, 128])  # 128 forces several online-logsumexp blocks per row
@pytest.mark.parametrize("dtype, atol, rtol", DTYPES)
def test_kernel_loss_and_inplace_grad(n_rows, vocab, block_size, dtype, atol, rtol):
    logits = (torch.randn(n_rows, vocab) * 4).to(dtype)
    labels = make_labels(n_rows, vocab)
    ref_logits = logits.float().requires_grad_()
    ref = F.cross_entropy(ref_logits, labels, ignore_index=IGNORE)
    ref.backward()

    buf = logits.clone()
    divisor = normaliser(labels, IGNORE, "mean")
    loss_rows = cross_entropy_forward_(buf, labels, divisor, IGNORE, compute_grad=True, block_size=block_size)
    torch.testing.assert_close(loss_rows.sum(), ref, atol=atol, rtol=rtol)
    assert torch.all(loss_rows[labels == IGNORE] == 0)
    # buf now holds dloss/dlogits in the logits dtype; ignored rows are exactly zero
    torch.testing.assert_close(buf.float(), ref_logits.grad, atol=atol, rtol=rtol)
    assert torch.all(buf[labels == IGNORE] == 0)


def test_kernel_without_grad_leaves_logits():
    logits = torch.randn(4, 50)
    buf = logits.clone()
    labels = make_labels(4, 50)
    loss = cross_entropy_forward_(buf, labels, normaliser(labels, IGNORE, "sum"), IGNORE, compute_grad=False)
    torch.testing.assert_close(loss.sum(), F.cross_entropy(logits, labels, reduction="sum"))
    assert torch.equal(buf, logits)


def test_kernel_strided_rows():
    # a chunk of a wider buffer: row stride 70, last dim contiguous
    wide = torch.randn(5, 70)
    logits = wide[:, :61]
    labels = torch.randint(0, 61, (5,))
    ref = F.cross_entropy(logits, labels, reduction="sum")
    loss = cross_entropy_forward_(logits, labels, normaliser(labels, IGNORE, "sum"), IGNORE, compute_grad=False)
    torch.testing.assert_close(loss.sum(), ref)


@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_cross_entropy_function(reduction):
    logits = torch.randn(11, 97)
    labels = make_labels(11, 97)
    x = logits.clone().requires_grad_()
    y = x * 1.0  # the Function overwrites its input; keep the leaf intact
    loss = cross_entropy(y, labels, reduction=reduction)
    (loss * 3).backward()

    x2 = logits.clone().requires_grad_()
    ref = F.cross_entropy(x2, labels, ignore_index=IGNORE, reduction=reduction)
    (ref * 3).backward()
    torch.testing.assert_close(loss, ref)
    torch.testing.assert_close(x.grad, x2.grad)


def test_all_ignored_gives_zero_not_nan():
    logits = torch.randn(4, 33).requires_grad_()
    labels = torch.full((4,), IGNORE)
    loss = cross_entropy(logits * 1.0, labels)
    loss.backward()
    assert loss.item() == 0.0 and torch.all(logits.grad == 0)


# --------------------------------------------------------------------------- fused linear cross-entropy


def reference_flce(hidden, weight, labels, bias=None, reduction="mean", num_items_in_batch=None):
    """HF path: lm_head in the weight dtype, then ForCausalLMLoss-style fp32 cross-entropy."""
    logits = hidden @ weight.t()
    if bias is not None:
        logits = logits + bias
    if num_items_in_batch is not None:
        return F.cross_entropy(logits.float(), labels, ignore_index=IGNORE, reduction="sum") / num_items_in_batch
    return F.cross_entropy(logits.float(), labels, ignore_index=IGNORE, reduction=reduction)


def leaves(*tensors, grads):
    return [t.detach().clone().requires_grad_(g) if t is not None else None for t, g in zip(tensors, grads)]


@pytest.mark.parametrize("n_rows, hidden, vocab", [(21, 33, 517), (8, 16, 300)])
@pytest.mark.parametrize("chunk_size", [None, 1, 4])
@pytest.mark.parametrize("dtype, atol, rtol", DTYPES)
@pytest.mark.parametrize("trainable_weight", [False, True])
def test_flce_matches_reference(n_rows, hidden, vocab, chunk_size, dtype, atol, rtol, trainable_weight):
    h = torch.randn(n_rows, hidden).to(dtype)
    w = (torch.randn(vocab, hidden) * 0.3).to(dtype)
    labels = make_labels(n_rows, vocab)

    h1, w1 = leaves(h, w, grads=(True, trainable_weight))
    loss = fused_linear_cross_entropy(h1, w1, labels, chunk_size=chunk_size)
    (loss * 2.5).backward()  # backward scales the stored grads by grad_output

    h2, w2 = leaves(h, w, grads=(True, trainable_weight))
    ref = reference_flce(h2, w2, labels)
    (ref * 2.5).backward()

    assert loss.dtype == torch.float32
    torch.testing.assert_close(loss, ref, atol=atol, rtol=rtol)
    torch.testing.assert_close(h1.grad, h2.grad, atol=atol, rtol=rtol)
    if trainable_weight:
        torch.testing.assert_close(w1.grad, w2.grad, atol=atol, rtol=rtol)
    else:
        assert w1.grad is None  # frozen lm_head: no dW computed


@pytest.mark.parametrize("dtype, atol, rtol", DTYPES)
def test_flce_bias(dtype, atol, rtol):
    h = torch.randn(10, 12).to(dtype)
    w = (torch.randn(77, 12) * 0.3).to(dtype)
    b = torch.randn(77).to(dtype)
    labels = make_labels(10, 77)
    h1, w1, b1 = leaves(h, w, b, grads=(True, True, True))
    fused_linear_cross_entropy(h1, w1, labels, b1, chunk_size=3).backward()
    h2, w2, b2 = leaves(h, w, b, grads=(True, True, True))
    reference_flce(h2, w2, labels, b2).backward()
    for got, want in ((h1.grad, h2.grad), (w1.grad, w2.grad), (b1.grad, b2.grad)):
        torch.testing.assert_close(got, want, atol=atol, rtol=rtol)


def test_flce_all_ignored_chunk():
    # rows 4..11 are ignored: with chunk_size 4, two whole chunks contribute nothing
    h = torch.randn(14, 9)
    w = torch.randn(41, 9)
    labels = torch.randint(0, 41, (14,))
    labels[4:12] = IGNORE
    h1, w1 = leaves(h, w, grads=(True, True))
    loss = fused_linear_cross_entropy(h1, w1, labels, chunk_size=4)
    loss.backward()
    h2, w2 = leaves(h, w, grads=(True, True))
    ref = reference_flce(h2, w2, labels)
    ref.backward()
    torch.testing.assert_close(loss, ref)
    torch.testing.assert_close(h1.grad, h2.grad)
    torch.testing.assert_close(w1.grad, w2.grad)
    assert torch.all(h1.grad[4:12] == 0)


def test_flce_fully_ignored_batch_is_zero():
    h = torch.randn(5, 8, requires_grad=True)
    w = torch.randn(20, 8)
    loss = fused_linear_cross_entropy(h, w, torch.full((5,), IGNORE))
    loss.backward()
    assert loss.item() == 0.0 and torch.all(h.grad == 0)


def test_flce_num_items_in_batch_accumulates_like_one_batch():
    # two gradient-accumulation micro-batches normalised by the step's label count equal one big batch
    h = torch.randn(16, 10)
    w = torch.randn(53, 10) * 0.3
    labels = make_labels(16, 53, ignored=(0, 1, 2, 9, 15))
    n_items = int((labels != IGNORE).sum())

    h1, w1 = leaves(h, w, grads=(True, True))
    total = 0.0
    for rows in (slice(0, 7), slice(7, 16)):
        part = fused_linear_cross_entropy(h1[rows], w1, labels[rows], num_items_in_batch=torch.tensor(n_items))
        part.backward()
        total = total + part.detach()

    h2, w2 = leaves(h, w, grads=(True, True))
    ref = reference_flce(h2, w2, labels)
    ref.backward()
    torch.testing.assert_close(total, ref)
    torch.testing.assert_close(h1.grad, h2.grad)
    torch.testing.assert_close(w1.grad, w2.grad)

    # and equals HF's sum / num_items_in_batch on one micro-batch
    got = fused_linear_cross_entropy(h[:7], w, labels[:7], num_items_in_batch=n_items)
    torch.testing.assert_close(got, reference_flce(h[:7], w, labels[:7], num_items_in_batch=n_items))


def test_flce_sum_reduction_and_no_grad():
    h = torch.randn(6, 8)
    w = torch.randn(30, 8)
    labels = make_labels(6, 30)
    with torch.no_grad():
        loss = fused_linear_cross_entropy(h, w, labels, reduction="sum")
    torch.testing.assert_close(loss, reference_flce(h, w, labels, reduction="sum"))


def test_flce_second_backward_raises():
    h = torch.randn(4, 8, requires_grad=True)
    loss = fused_linear_cross_entropy(h, torch.randn(16, 8), torch.randint(0, 16, (4,)))
    loss.backward(retain_graph=True)
    with pytest.raises(RuntimeError, match="already backpropagated"):
        loss.backward()


def test_flce_rejects_bad_shapes():
    with pytest.raises(ValueError, match="hidden size"):
        fused_linear_cross_entropy(torch.randn(4, 8), torch.randn(16, 9), torch.zeros(4, dtype=torch.long))
    with pytest.raises(ValueError, match="labels"):
        fused_linear_cross_entropy(torch.randn(4, 8), torch.randn(16, 8), torch.zeros(5, dtype=torch.long))


def test_chunk_rule():
    # Llama-3.1-8B at 8192 tokens: logits chunk >= 256 MiB floor -> 1024 rows of 128256 bf16
    assert _chunk_rows(8192, 4096, 128256, 2) == 1024
    # small vocab, many tokens: chunk x V ~ N x H wins (65536 * 4096 / 32768 = 8192 rows)
    assert _chunk_rows(65536, 4096, 32768, 2) == 8192
    assert _chunk_rows(10, 4096, 128256, 2) == 10
