"""NF4 dequantisation (Triton) against bitsandbytes' own dequantize_4bit and a PyTorch reference of the layout."""

import copy

import pytest
import torch

from ftplan_runtime.kernels.nf4 import (
    Nf4FormatError,
    dequantize_nf4,
    dequantize_nf4_shared,
    nf4_weight,
    release_shared_buffers,
    shared_buffers,
)

bnb_functional = pytest.importorskip("bitsandbytes.functional")

# bf16 keeps 8 significant bits, fp16 11: a rounded (or, under the interpreter, truncated) value is within one ulp
ULP = {torch.float32: 0.0, torch.bfloat16: 2.0**-7, torch.float16: 2.0**-10}


def quantize(weight: torch.Tensor, nested: bool, blocksize: int = 64):
    """bitsandbytes' NF4 quantisation: (packed uint8, QuantState), the layout Params4bit holds."""
    return bnb_functional.quantize_4bit(weight, blocksize=blocksize, compress_statistics=nested, quant_type="nf4")


def reference_dequantize(packed: torch.Tensor, state) -> torch.Tensor:
    """The layout in plain PyTorch, fp32: high nibble first, absmax per block, double-quantised absmax decoded."""
    packed = packed.reshape(-1).to(torch.int64)
    codes = torch.stack([packed >> 4, packed & 15], dim=1).reshape(-1)
    n = state.shape[0] * state.shape[1]
    values = state.code.float()[codes[:n]]
    if state.nested:
        absmax = state.state2.code.float()[state.absmax.to(torch.int64)]
        absmax = absmax * state.state2.absmax.float().repeat_interleave(state.state2.blocksize)[: absmax.numel()]
        absmax = absmax + state.offset
    else:
        absmax = state.absmax.float()
    return (values * absmax.repeat_interleave(state.blocksize)[:n]).reshape(state.shape)


def bnb_fp32(packed, state) -> torch.Tensor:
    """bitsandbytes' dequantisation before its final rounding to the weight's dtype (on the CPU, the exact kernel
    the runtime registers for it: ``ftplan_runtime.bnb_cpu``; on a GPU, bitsandbytes' CUDA kernel)."""
    state32 = copy.copy(state)
    state32.dtype = torch.float32
    return bnb_functional.dequantize_4bit(packed, state32)


@pytest.mark.parametrize("shape", [(176, 96), (37, 33), (1, 1), (5, 7000)])  # odd counts, partial blocks
@pytest.mark.parametrize("nested", [True, False], ids=["double-quant", "plain-absmax"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16], ids=str)
def test_matches_bitsandbytes(shape, nested, dtype):
    weight = torch.randn(shape, dtype=dtype) * 0.05
    packed, state = quantize(weight, nested)
    want = bnb_fp32(packed, state)
    torch.testing.assert_close(reference_dequantize(packed, state), want, atol=0, rtol=0)  # the layout as read

    got32 = dequantize_nf4(nf4_weight(packed, state), dtype=torch.float32)
    assert torch.equal(got32, want)  # the same fp32 arithmetic, bit for bit

    got = dequantize_nf4(nf4_weight(packed, state))  # default: the dtype it was quantised from, like bnb
    assert got.dtype == dtype and got.shape == shape
    err = (got.float() - want).abs()
    assert bool((err <= want.abs() * ULP[dtype]).all())  # one rounding, at most one ulp
    assert float(err.norm() / want.norm().clamp_min(1e-30)) <= 1e-2
    assert torch.equal(got, bnb_functional.dequantize_4bit(packed, state))  # rounded to nearest even, as bnb does


def test_blocksize_128_and_nibble_order():
    weight = torch.randn(40, 90) * 0.1
    packed, state = quantize(weight, nested=True, blocksize=128)
    assert torch.equal(dequantize_nf4(nf4_weight(packed, state)), bnb_fp32(packed, state))

    # hand-built: element 0 in the high nibble of byte 0; code 0 = -1, 7 = 0, 15 = +1 in the NF4 table
    _, state = quantize(torch.ones(1, 4), nested=False)
    state.absmax = torch.tensor([2.0])
    packed = torch.tensor([[0x0F], [0x70]], dtype=torch.uint8)
    assert dequantize_nf4(nf4_weight(packed, state)).tolist() == [[-2.0, 2.0, 0.0, -2.0]]


def test_writes_into_the_given_buffer():
    packed, state = quantize(torch.randn(37, 33), nested=True)
    out = torch.full((37 * 33 + 5,), float("nan"))
    got = dequantize_nf4(nf4_weight(packed, state), out=out[: 37 * 33])
    assert got.data_ptr() == out.data_ptr() and got.shape == (37, 33)
    assert torch.isnan(out[-5:]).all()  # nothing written past the weight
    with pytest.raises(ValueError, match="contiguous"):
        dequantize_nf4(nf4_weight(packed, state), out=torch.empty(37, 34)[:, :33])
    with pytest.raises(ValueError, match="fp32, bf16 or fp16"):
        dequantize_nf4(nf4_weight(packed, state), out=torch.empty(37 * 33, dtype=torch.float64))


def test_shared_buffer_is_reused_and_grows():
    release_shared_buffers()
    big_packed, big_state = quantize(torch.randn(64, 96), nested=True)
    small_packed, small_state = quantize(torch.randn(30, 20), nested=True)
    big = dequantize_nf4_shared(nf4_weight(big_packed, big_state), torch.float32)
    big_copy = big.clone()
    small = dequantize_nf4_shared(nf4_weight(small_packed, small_state), torch.float32)
    assert small.data_ptr() == big.data_ptr()  # one buffer for both weights
    assert torch.equal(small, bnb_fp32(small_packed, small_state))
    assert not torch.equal(big.reshape(-1)[: small.numel()], big_copy.reshape(-1)[: small.numel()])  # overwritten
    assert len(shared_buffers()) == 1

    larger_packed, larger_state = quantize(torch.randn(100, 96), nested=True)
    larger = dequantize_nf4_shared(nf4_weight(larger_packed, larger_state), torch.float32)
    assert [b.numel() for b in shared_buffers().values()] == [100 * 96]
    assert torch.equal(larger, bnb_fp32(larger_packed, larger_state))
    release_shared_buffers()
    assert shared_buffers() == {}


def test_refuses_other_formats():
    packed, state = bnb_functional.quantize_4bit(torch.randn(8, 8), quant_type="fp4")
    with pytest.raises(Nf4FormatError, match="NF4 only"):
        nf4_weight(packed, state)
    packed, state = quantize(torch.randn(8, 8), nested=False)
    with pytest.raises(Nf4FormatError, match="packed bytes"):
        nf4_weight(packed[:-1], state)
