"""bitsandbytes' CPU 4-bit dequantisation, as the runtime installs it (``ftplan_runtime.bnb_cpu``): exact on every
shape, rows that are not whole 64-blocks included, and used by a 4-bit layer's training forward."""

from __future__ import annotations

import pytest
import torch

bnb = pytest.importorskip("bitsandbytes")
F = pytest.importorskip("bitsandbytes.functional")

from ftplan_runtime.bnb_cpu import use_exact_cpu_dequantize  # noqa: E402


def decode(packed: torch.Tensor, state) -> torch.Tensor:
    """The flat layout, value by value: code 2i in the high nibble of byte i, block b scaled by absmax[b]."""
    table = F.get_4bit_type(state.quant_type, device="cpu").tolist()
    absmax = F.dequantize_blockwise(state.absmax, state.state2) + state.offset if state.nested else state.absmax
    out = []
    for i, byte in enumerate(packed.reshape(-1).tolist()):
        for j, code in enumerate((byte >> 4, byte & 15)):
            k = 2 * i + j
            if k < state.shape.numel():
                out.append(table[code] * float(absmax[k // state.blocksize]))
    return torch.tensor(out).reshape(state.shape)


@pytest.mark.parametrize("shape", [(4, 96), (13, 160), (3, 64), (37, 33), (1, 1)])
@pytest.mark.parametrize("nested", [True, False], ids=["double-quant", "plain-absmax"])
@pytest.mark.parametrize("quant_type", ["nf4", "fp4"])
def test_dequantize_reads_the_flat_layout_on_every_shape(shape, nested, quant_type):
    use_exact_cpu_dequantize()
    torch.manual_seed(0)
    weight = torch.randn(shape) * 0.05
    packed, state = F.quantize_4bit(weight, blocksize=64, compress_statistics=nested, quant_type=quant_type)
    got = F.dequantize_4bit(packed, state)
    torch.testing.assert_close(got, decode(packed, state), rtol=1e-6, atol=1e-7)
    # within half the widest gap of the code table times each block's absmax (NF4: 0.304, FP4: 0.333 of absmax)
    absmax = weight.reshape(-1).abs()
    bound = torch.stack([absmax[i:i + 64].max() for i in range(0, absmax.numel(), 64)])
    assert ((got - weight).abs().reshape(-1) <= 0.17 * bound.repeat_interleave(64)[: absmax.numel()] + 1e-7).all()


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_output_is_the_rounded_fp32_value(dtype):
    use_exact_cpu_dequantize()
    weight = torch.randn(6, 96) * 0.05
    packed, state = F.quantize_4bit(weight.to(dtype), blocksize=64, quant_type="nf4")
    got = F.dequantize_4bit(packed, state)
    assert got.dtype == dtype
    torch.testing.assert_close(got, decode(packed, state).to(dtype), rtol=0, atol=0)


def test_a_4bit_layer_trains_on_the_weights_it_was_given():
    """A Linear4bit of a shape bitsandbytes' native CPU kernel misreads: its training forward and input gradient
    are those of the dequantised weight."""
    use_exact_cpu_dequantize()
    torch.manual_seed(1)
    dense = torch.nn.Linear(96, 40, bias=False)
    layer = bnb.nn.Linear4bit(96, 40, bias=False, quant_type="nf4", compute_dtype=torch.float32)
    layer.weight = bnb.nn.Params4bit(dense.weight.data.clone(), requires_grad=False, quant_type="nf4")._quantize("cpu")
    layer.train()
    weight = F.dequantize_4bit(layer.weight.data, layer.weight.quant_state)
    assert (weight - dense.weight).abs().max() < 0.17 * dense.weight.abs().max()
    x = torch.randn(5, 96, requires_grad=True)
    out = layer(x)
    torch.testing.assert_close(out, x @ weight.t(), rtol=1e-5, atol=1e-6)
    out.sum().backward()
    torch.testing.assert_close(x.grad, torch.ones(5, 40) @ weight, rtol=1e-5, atol=1e-6)


def test_the_exact_kernel_replaces_a_kernel_bitsandbytes_registered_from_python(tmp_path):
    """Where a CPU kernel is already registered from Python (bitsandbytes does so on some releases; here a stand-in
    that raises, put over bitsandbytes' own), the runtime's kernel still takes its place: torch 2.11 refuses a
    second Python registration unless the override is explicit. In a fresh process, so this test's stand-in kernel touches no other test."""
    import subprocess
    import sys

    script = tmp_path / "override.py"
    script.write_text(
        "import torch, bitsandbytes.functional as F\n"
        "def stand_in(*args):\n"
        "    raise AssertionError('the stand-in kernel ran')\n"
        "stand_ins = torch.library.Library('bitsandbytes', 'IMPL')\n"  # over bitsandbytes' own, where it has one
        "stand_ins.impl('dequantize_4bit', stand_in, 'CPU', allow_override=True)\n"
        "from ftplan_runtime.bnb_cpu import use_exact_cpu_dequantize\n"
        "use_exact_cpu_dequantize()\n"
        "use_exact_cpu_dequantize()  # idempotent\n"
        "w = torch.randn(4, 96) * 0.05\n"
        "packed, state = F.quantize_4bit(w, blocksize=64, quant_type='nf4')\n"
        "print(float((F.dequantize_4bit(packed, state) - w).abs().max() / w.abs().max()))\n")
    r = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-3000:]
    # the stand-in never ran (it raises), and the decode is an NF4 rounding: within half the widest gap of the table
    assert float(r.stdout.strip().splitlines()[-1]) <= 0.152
