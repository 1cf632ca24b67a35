"""Fused LoRA Functions (projection group, single projection, SwiGLU MLP) against an fp32 PyTorch reference, on
16-bit and NF4 bases, at odd shapes: 37 tokens, hidden 96, intermediate / outputs 176, ranks 8 and 16."""

import pytest
import torch
import torch.nn.functional as F

from ftplan_runtime.kernels.lora import (
    FrozenLinear,
    LoRAMLPFunction,
    LoRAProjection,
    LoRAProjectionsFunction,
    swiglu_backward_in_place,
)
from ftplan_runtime.kernels.nf4 import nf4_weight, release_shared_buffers, shared_buffers

bnb_functional = pytest.importorskip("bitsandbytes.functional")

TOKENS, HIDDEN, INTERMEDIATE = 37, 96, 176
LOW_PRECISION = 1e-2  # relative error (norm-wise) allowed for bf16 / fp16 against the fp32 reference


def relative_error(got: torch.Tensor, want: torch.Tensor) -> float:
    got, want = got.detach().float(), want.detach().float()
    return float((got - want).norm() / want.norm().clamp_min(1e-30))


def assert_matches(got, want, dtype):
    if dtype == torch.float32:
        torch.testing.assert_close(got.float(), want.float(), atol=1e-4, rtol=1e-4)
    else:
        assert relative_error(got, want) <= LOW_PRECISION, relative_error(got, want)


class Base:
    """A frozen base weight as the fused path sees it and as the reference computes with it (fp32)."""

    def __init__(self, out_features: int, in_features: int, dtype, nf4: bool, bias: bool = False):
        weight = (torch.randn(out_features, in_features) / in_features**0.5).to(dtype)
        self.bias = (torch.randn(out_features) * 0.1).to(dtype) if bias else None
        if nf4:
            packed, state = bnb_functional.quantize_4bit(weight, compress_statistics=True, quant_type="nf4")
            self.frozen = FrozenLinear(nf4=nf4_weight(packed, state), bias=self.bias)
            self.reference = bnb_functional.dequantize_4bit(packed, state).float()  # what bitsandbytes computes with
        else:
            self.frozen = FrozenLinear(weight=weight, bias=self.bias)
            self.reference = weight.float()

    def __call__(self, x):
        return F.linear(x, self.reference, None if self.bias is None else self.bias.float())


def adapter(rank: int, out_features: int, in_features: int, dtype=torch.float32):
    """(A, B) leaf tensors; fp32 by default, as PEFT keeps them under autocast_adapter_dtype."""
    a = (torch.randn(rank, in_features) / in_features**0.5).to(dtype).requires_grad_()
    b = (torch.randn(out_features, rank) * 0.5).to(dtype).requires_grad_()
    return a, b


def reference_projection(x, base, a, b, scaling):
    y = base(x)
    return y if a is None else y + scaling * (x @ a.float().t()) @ b.float().t()


def leaves(x, adapters):
    return [x] + [t for pair in adapters if pair is not None for t in pair]


def grads_of(outputs, inputs, upstream):
    return torch.autograd.grad(outputs, inputs, upstream)


DTYPES = [torch.float32, torch.bfloat16, torch.float16]


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("nf4", [False, True], ids=["16bit", "nf4"])
def test_qkv_group_matches_reference(dtype, nf4):
    # q: rank 8 with a bias (Qwen2), k: no adapter, v: rank 16
    outs, ranks, scalings = (INTERMEDIATE, 48, 80), (8, None, 16), (2.0, 0.0, 0.5)
    bases = [Base(n, HIDDEN, dtype, nf4, bias=(i == 0)) for i, n in enumerate(outs)]
    adapters = [adapter(r, n, HIDDEN) if r else None for r, n in zip(ranks, outs)]
    x = torch.randn(1, TOKENS, HIDDEN).to(dtype).requires_grad_()
    projections = tuple(LoRAProjection(base.frozen, s, pair is not None)
                        for base, s, pair in zip(bases, scalings, adapters))

    ys = LoRAProjectionsFunction.apply(x, projections, *[t for p in adapters if p is not None for t in p])
    upstream = [torch.randn_like(y) for y in ys]
    got = grads_of(ys, leaves(x, adapters), upstream)

    x32 = x.detach().float().requires_grad_()
    refs = [reference_projection(x32, base, *(pair or (None, None)), s)
            for base, pair, s in zip(bases, adapters, scalings)]
    want = grads_of(refs, leaves(x32, adapters), [u.float() for u in upstream])

    for y, ref, n in zip(ys, refs, outs):
        assert y.dtype == dtype and y.shape == (1, TOKENS, n)
        assert_matches(y, ref, dtype)
    assert got[0].dtype == dtype  # dX in the input's dtype, adapter grads in the adapters' (fp32)
    assert all(g.dtype == torch.float32 for g in got[1:])
    for g, w in zip(got, want):
        assert_matches(g, w, dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_single_projection_like_o_proj(dtype):
    base = Base(HIDDEN, INTERMEDIATE, dtype, nf4=False)
    a, b = adapter(16, HIDDEN, INTERMEDIATE, dtype)  # adapters in the compute dtype too
    x = torch.randn(3, 13, INTERMEDIATE).to(dtype).requires_grad_()
    (y,) = LoRAProjectionsFunction.apply(x, (LoRAProjection(base.frozen, 0.25, True),), a, b)
    upstream = torch.randn_like(y)
    got = grads_of(y, [x, a, b], upstream)
    x32 = x.detach().float().requires_grad_()
    ref = reference_projection(x32, base, a, b, 0.25)
    want = grads_of(ref, [x32, a, b], upstream.float())
    assert_matches(y, ref, dtype)
    for g, w in zip(got, want):
        assert g.dtype == dtype
        assert_matches(g, w, dtype)


def reference_mlp(x, bases, adapters, scalings):
    gate, up, down = (reference_projection(x, base, *(pair or (None, None)), s)
                      for base, pair, s in zip(bases[:2], adapters[:2], scalings[:2])), None, None
    e, g = gate
    h = F.silu(e) * g
    return reference_projection(h, bases[2], *(adapters[2] or (None, None)), scalings[2])


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("nf4", [False, True], ids=["16bit", "nf4"])
@pytest.mark.parametrize("ranks", [(8, 16, 8), (16, None, 8)], ids=["all-three", "gate-down"])
def test_mlp_matches_reference(dtype, nf4, ranks):
    shapes = ((INTERMEDIATE, HIDDEN), (INTERMEDIATE, HIDDEN), (HIDDEN, INTERMEDIATE))
    scalings = (2.0, 1.0, 0.5)
    bases = [Base(n, k, dtype, nf4) for n, k in shapes]
    adapters = [adapter(r, n, k) if r else None for r, (n, k) in zip(ranks, shapes)]
    x = torch.randn(TOKENS, HIDDEN).to(dtype).requires_grad_()
    projections = tuple(LoRAProjection(base.frozen, s if pair else 0.0, pair is not None)
                        for base, s, pair in zip(bases, scalings, adapters))

    y = LoRAMLPFunction.apply(x, projections, *[t for p in adapters if p is not None for t in p])
    upstream = torch.randn_like(y)
    got = grads_of(y, leaves(x, adapters), upstream)

    x32 = x.detach().float().requires_grad_()
    ref = reference_mlp(x32, bases, adapters, scalings)
    want = grads_of(ref, leaves(x32, adapters), upstream.float())
    assert y.dtype == dtype and y.shape == (TOKENS, HIDDEN)
    assert_matches(y, ref, dtype)
    for g, w in zip(got, want):
        assert_matches(g, w, dtype)


def saved_numels(fn):
    """Element counts of every tensor autograd saves while `fn` runs (what stays alive until backward)."""
    numels = []

    def pack(t):
        numels.append(t.numel())
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = fn()
    return sorted(numels), out


@pytest.mark.parametrize("nf4", [False, True], ids=["16bit", "nf4"])
def test_mlp_saves_x_e_g_and_the_small_products_only(nf4):
    shapes = ((INTERMEDIATE, HIDDEN), (INTERMEDIATE, HIDDEN), (HIDDEN, INTERMEDIATE))
    bases = [Base(n, k, torch.float32, nf4) for n, k in shapes]
    adapters = [adapter(8, n, k) for n, k in shapes]
    x = torch.randn(TOKENS, HIDDEN, requires_grad=True)
    projections = tuple(LoRAProjection(b.frozen, 1.0, True) for b in bases)
    numels, y = saved_numels(lambda: LoRAMLPFunction.apply(x, projections, *[t for p in adapters for t in p]))
    # x, e, g, Z of gate+up (rank 8 + 8), Z of down (rank 8), and the six adapter matrices; no h, no base output
    # of down, no weight (a base weight has INTERMEDIATE * HIDDEN elements)
    expected = [TOKENS * HIDDEN, TOKENS * INTERMEDIATE, TOKENS * INTERMEDIATE, TOKENS * 16, TOKENS * 8]
    expected += [a.numel() for p in adapters for a in p]
    assert numels == sorted(expected)
    y.sum().backward()


def test_nf4_buffer_reused_between_layers_keeps_gradients_right():
    """Layer 2's forward overwrites the shared buffer before layer 1's backward: nothing may depend on it."""
    release_shared_buffers()
    shapes = ((INTERMEDIATE, HIDDEN), (INTERMEDIATE, HIDDEN), (HIDDEN, INTERMEDIATE))
    layers = []
    for _ in range(2):
        bases = [Base(n, k, torch.float32, nf4=True) for n, k in shapes]
        adapters = [adapter(8, n, k) for n, k in shapes]
        layers.append((bases, adapters))
    x = torch.randn(TOKENS, HIDDEN, requires_grad=True)

    h = x
    for bases, adapters in layers:
        projections = tuple(LoRAProjection(b.frozen, 1.0, True) for b in bases)
        h = h + LoRAMLPFunction.apply(h, projections, *[t for p in adapters for t in p])
    inputs = [x] + [t for _, adapters in layers for p in adapters for t in p]
    got = torch.autograd.grad(h.sum(), inputs)

    r = x
    for bases, adapters in layers:
        r = r + reference_mlp(r, bases, adapters, (1.0, 1.0, 1.0))
    want = torch.autograd.grad(r.sum(), inputs)
    # fp32 through two residual layers: summation order alone moves the last bits; a stale weight would not
    torch.testing.assert_close(h, r, atol=1e-3, rtol=1e-3)
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, atol=1e-3, rtol=1e-3)
    assert len(shared_buffers()) == 1  # one buffer served all twelve dequantisations


def test_autocast_computes_in_bf16_and_returns_fp32_adapter_grads():
    base = Base(INTERMEDIATE, HIDDEN, torch.bfloat16, nf4=False)
    a, b = adapter(8, INTERMEDIATE, HIDDEN)  # fp32, as PEFT keeps them
    x = torch.randn(TOKENS, HIDDEN, requires_grad=True)  # fp32 residual stream
    with torch.autocast(x.device.type, dtype=torch.bfloat16):
        (y,) = LoRAProjectionsFunction.apply(x, (LoRAProjection(base.frozen, 2.0, True),), a, b)
    assert y.dtype == torch.bfloat16
    dx, da, db = torch.autograd.grad(y.float().sum(), [x, a, b])
    assert (dx.dtype, da.dtype, db.dtype) == (torch.float32,) * 3
    x32 = x.detach().requires_grad_()
    ref = reference_projection(x32, base, a, b, 2.0)
    want = torch.autograd.grad(ref.sum(), [x32, a, b])
    assert_matches(y, ref, torch.bfloat16)
    for g, w in zip((dx, da, db), want):
        assert_matches(g, w, torch.bfloat16)


def test_partial_requires_grad():
    base = Base(48, HIDDEN, torch.float32, nf4=False)
    a, b = adapter(8, 48, HIDDEN)
    a.requires_grad_(False)
    x = torch.randn(TOKENS, HIDDEN)  # e.g. the first layer's input under frozen embeddings
    (y,) = LoRAProjectionsFunction.apply(x, (LoRAProjection(base.frozen, 1.0, True),), a, b)
    (db,) = torch.autograd.grad(y.sum(), [b])
    ref = reference_projection(x, base, a, b, 1.0)
    torch.testing.assert_close(db, torch.autograd.grad(ref.sum(), [b])[0], atol=1e-4, rtol=1e-4)


def test_retained_graph_cannot_reuse_the_overwritten_activations():
    shapes = ((INTERMEDIATE, HIDDEN), (INTERMEDIATE, HIDDEN), (HIDDEN, INTERMEDIATE))
    bases = [Base(n, k, torch.float32, nf4=False) for n, k in shapes]
    a, b = adapter(8, INTERMEDIATE, HIDDEN)
    x = torch.randn(TOKENS, HIDDEN, requires_grad=True)
    projections = (LoRAProjection(bases[0].frozen, 1.0, True), LoRAProjection(bases[1].frozen),
                   LoRAProjection(bases[2].frozen))
    y = LoRAMLPFunction.apply(x, projections, a, b)
    y.sum().backward(retain_graph=True)
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        y.sum().backward()  # e and g now hold de and dg: refused, never silently wrong


def test_swiglu_backward_in_place_kernel():
    e = torch.randn(5, 33) * 3
    g = torch.randn(5, 33)
    dh = torch.randn(5, 33)
    e_ref, g_ref = e.clone().requires_grad_(), g.clone().requires_grad_()
    h_ref = F.silu(e_ref) * g_ref
    de_ref, dg_ref = torch.autograd.grad(h_ref, [e_ref, g_ref], dh)
    swiglu_backward_in_place(dh, e, g)
    for got, want in ((dh, h_ref), (e, de_ref), (g, dg_ref)):
        torch.testing.assert_close(got, want.detach(), atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="one shape"):
        swiglu_backward_in_place(dh, e, g[:, :3])


@pytest.mark.slow
def test_lora_speed_bench_runs_every_arm(capsys):
    """bench/lora_speed.py (the GPU benchmark) on the CPU at tiny shapes: every block, base and arm still runs."""
    import importlib.util
    import json
    from pathlib import Path

    path = Path(__file__).resolve().parents[3] / "bench" / "lora_speed.py"
    spec = importlib.util.spec_from_file_location("lora_speed", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    argv = ["--device", "cuda" if torch.cuda.is_available() else "cpu", "--hidden", "32", "--intermediate", "48", "--q-heads", "2", "--kv-heads", "1",
            "--head-dim", "16", "--rank", "4", "--tokens", "5", "--warmup", "0", "--iters", "1"]
    assert bench.main(argv) == 0
    records = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    arms = {(r["block"], r["base"], r["arm"]) for r in records}
    assert arms == {(b, base, a) for b, base, a, _ in bench.configurations(bench.parse_args(argv))}
    assert len(arms) == 16 and all("ms_median" in r and "error" not in r for r in records)
