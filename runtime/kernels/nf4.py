"""NF4 dequantisation of bitsandbytes 4-bit weights, in Triton, into a caller-provided or shared reused buffer.

The format is bitsandbytes' `Params4bit` data with its `QuantState` (quant_type "nf4"), for a weight of
n = out_features × in_features elements in row-major order:

    packed   uint8 [ceil(n / 2)]     two 4-bit codes per byte: element 2j in the high nibble, 2j+1 in the low one
    code     fp32 [16]               the NF4 table (`quant_state.code`), indexed by a 4-bit code
    absmax   one scale per block of `blocksize` elements (64 for QLoRA), the last block possibly partial:
             plain:               fp32 [ceil(n / blocksize)]
             double-quantised:    uint8 codes q_b into the 256-entry dynamic map `state2.code`, scaled per block
                                  of `state2.blocksize` (256) codes by `state2.absmax` (fp32), plus `offset`

Math (fp32 throughout, rounded once to the output dtype, the same arithmetic as bitsandbytes' dequantize_4bit;
under the Triton interpreter, which truncates fp32 -> bf16, the kernel rounds to nearest even by hand so that
CPU tests see the GPU's values):

    absmax_b = code2[q_b] · absmax2[b // blocksize2] + offset        (double-quantised)
    w_i      = code[nibble_i] · absmax_{i // blocksize}

There is no backward: the base weights are frozen, and the fused LoRA functions (`lora.py`) dequantise again in
their backward instead of keeping the result. Nothing is saved.

`dequantize_nf4_shared` writes into one buffer per (device, dtype), grown to the largest weight seen and reused by
every call: the result is valid only until the next call on that device and dtype (GPU work is ordered on the
current stream, so a matmul queued on it reads its weight before the next dequantisation overwrites it). Callers
use the weight at once and never keep it, which is also what makes the buffer safe under gradient checkpointing:
a recomputed forward dequantises again.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from ._utils import elementwise_settings, interpreter_active

OUTPUT_DTYPES = (torch.float32, torch.bfloat16, torch.float16)


@triton.jit
def _nf4_dequantize_kernel(
    PACKED_ptr,  # uint8 [ceil(n/2)]: two codes per byte, even element in the high nibble
    CODE_ptr,  # fp32 [16]: the NF4 table
    ABSMAX_ptr,  # fp32 [n_blocks] (plain) or uint8 [n_blocks] (double-quantised codes)
    CODE2_ptr,  # fp32 [256]: dynamic map of the absmax codes (double-quantised only)
    ABSMAX2_ptr,  # fp32 [ceil(n_blocks/BLOCKSIZE2)]: scales of the absmax codes (double-quantised only)
    OFFSET_ptr,  # fp32 [1]: added to every dequantised absmax (double-quantised only)
    OUT_ptr,  # output [n], fp32 / bf16 / fp16
    n_elements,  # int: n
    BLOCKSIZE: tl.constexpr,  # elements per absmax
    BLOCKSIZE2: tl.constexpr,  # absmax values per second-level scale
    NESTED: tl.constexpr,  # absmax is double-quantised
    ROUND_BF16: tl.constexpr,  # round to nearest even by hand (the interpreter truncates fp32 -> bf16)
    BLOCK_SIZE: tl.constexpr,  # elements per program
):
    pid = tl.program_id(0).to(tl.int64)
    offs = pid * BLOCK_SIZE + tl.arange(0, BLOCK_SIZE)
    mask = offs < n_elements

    byte = tl.load(PACKED_ptr + offs // 2, mask=mask, other=0).to(tl.int32)
    nibble = tl.where(offs % 2 == 0, byte >> 4, byte & 15)
    value = tl.load(CODE_ptr + nibble, mask=mask, other=0.0)

    block = offs // BLOCKSIZE
    if NESTED:
        q = tl.load(ABSMAX_ptr + block, mask=mask, other=0).to(tl.int32)
        scale2 = tl.load(ABSMAX2_ptr + block // BLOCKSIZE2, mask=mask, other=0.0)
        # absmax_b = code2[q_b]·absmax2[b // blocksize2] + offset, a product then a sum, never one fused
        # multiply-add (the launch turns fp fusion off): bitsandbytes adds the offset in a separate op
        absmax = tl.load(CODE2_ptr + q, mask=mask, other=0.0) * scale2 + tl.load(OFFSET_ptr)
    else:
        absmax = tl.load(ABSMAX_ptr + block, mask=mask, other=0.0)
    # w_i = code[nibble_i]·absmax_{i // blocksize}
    w = value * absmax
    if ROUND_BF16:  # keep the upper 16 bits, rounded to nearest even: the bf16 value a GPU's conversion gives
        bits = w.to(tl.uint32, bitcast=True)
        bits = (bits + 0x7FFF + ((bits >> 16) & 1)) & 0xFFFF0000
        w = bits.to(tl.float32, bitcast=True)
    tl.store(OUT_ptr + offs, w.to(OUT_ptr.dtype.element_ty), mask=mask)


@dataclass(frozen=True)
class Nf4Weight:
    """One NF4 weight as bitsandbytes stores it, flattened for the kernel (see the module docstring)."""

    packed: torch.Tensor
    """uint8, ceil(n/2) bytes."""
    code: torch.Tensor
    """fp32 [16], the NF4 table."""
    absmax: torch.Tensor
    """fp32 scales, or uint8 codes when `nested`."""
    blocksize: int
    """Elements per absmax."""
    shape: tuple[int, int]
    """(out_features, in_features)."""
    dtype: torch.dtype
    """The dtype the weight was quantised from (what bitsandbytes dequantises to)."""
    nested: bool = False
    """The absmax values are double-quantised."""
    code2: torch.Tensor | None = None
    """fp32 [256], the map of the absmax codes (nested only)."""
    absmax2: torch.Tensor | None = None
    """fp32 scales of the absmax codes (nested only)."""
    blocksize2: int = 256
    """Absmax codes per second-level scale (nested only)."""
    offset: torch.Tensor | None = None
    """fp32 [1] added to every dequantised absmax (nested only)."""

    @property
    def numel(self) -> int:
        """Elements of the dequantised weight."""
        return self.shape[0] * self.shape[1]


class Nf4FormatError(ValueError):
    """A 4-bit weight that is not in the NF4 layout this kernel reads (e.g. FP4, or a 1-D shape)."""


def nf4_weight(data: torch.Tensor, quant_state) -> Nf4Weight:
    """The kernel's view of bitsandbytes' packed `data` (a Params4bit's storage) and its QuantState.

    Raises Nf4FormatError for quant types other than NF4, shapes that are not 2-D, or a packed buffer whose size
    does not match the shape."""
    if getattr(quant_state, "quant_type", None) != "nf4":
        raise Nf4FormatError(f"4-bit weight of quant_type {getattr(quant_state, 'quant_type', None)!r}; the fused "
                             "kernels dequantise NF4 only (bnb_4bit_quant_type='nf4')")
    shape = tuple(quant_state.shape)
    if len(shape) != 2:
        raise Nf4FormatError(f"NF4 weight of shape {shape}; expected (out_features, in_features)")
    packed = data.view(torch.uint8).reshape(-1) if data.dtype != torch.uint8 else data.reshape(-1)
    n = shape[0] * shape[1]
    if packed.numel() != (n + 1) // 2:
        raise Nf4FormatError(f"NF4 weight of shape {shape} needs {(n + 1) // 2} packed bytes, got {packed.numel()}")
    nested = bool(getattr(quant_state, "nested", False))
    if not nested:
        return Nf4Weight(packed, quant_state.code.float(), quant_state.absmax.float(), int(quant_state.blocksize),
                         shape, quant_state.dtype)
    state2 = quant_state.state2
    offset = quant_state.offset
    offset = offset.reshape(1).float() if isinstance(offset, torch.Tensor) else torch.tensor(
        [float(offset)], device=packed.device)
    return Nf4Weight(packed, quant_state.code.float(), quant_state.absmax, int(quant_state.blocksize), shape,
                     quant_state.dtype, nested=True, code2=state2.code.float(), absmax2=state2.absmax.float(),
                     blocksize2=int(state2.blocksize), offset=offset)


def dequantize_nf4(weight: Nf4Weight, out: torch.Tensor | None = None, dtype: torch.dtype | None = None
                   ) -> torch.Tensor:
    """Dequantise `weight` into `out` (contiguous, weight.numel elements; reshaped to weight.shape) or a new tensor
    of `dtype` (default: the dtype it was quantised from). Returns the (out_features, in_features) weight."""
    if out is None:
        out = torch.empty(weight.shape, dtype=dtype or weight.dtype, device=weight.packed.device)
    if out.dtype not in OUTPUT_DTYPES:
        raise ValueError(f"NF4 dequantisation writes fp32, bf16 or fp16, not {out.dtype}")
    if not out.is_contiguous() or out.numel() != weight.numel:
        raise ValueError(f"output buffer must be contiguous with {weight.numel} elements, got {tuple(out.shape)}")
    out = out.view(weight.shape)
    n = weight.numel
    if n == 0:
        return out
    block, num_warps = _launch_settings()
    if weight.nested:
        code2, absmax2, offset = weight.code2, weight.absmax2, weight.offset
    else:  # unused pointers: any fp32 tensor on the device
        code2 = absmax2 = offset = weight.code
    _nf4_dequantize_kernel[(triton.cdiv(n, block),)](
        weight.packed, weight.code, weight.absmax, code2, absmax2, offset, out, n,
        BLOCKSIZE=weight.blocksize, BLOCKSIZE2=weight.blocksize2, NESTED=weight.nested,
        ROUND_BF16=out.dtype == torch.bfloat16 and interpreter_active(), BLOCK_SIZE=block, num_warps=num_warps,
        enable_fp_fusion=False,  # absmax = code2·absmax2, then + offset, each rounded: bitsandbytes' arithmetic
    )
    return out


def _launch_settings() -> tuple[int, int]:
    """(elements per program, warps): the elementwise settings on a GPU; under the interpreter, whose cost is per
    program rather than per element, 16K elements per program."""
    block, num_warps = elementwise_settings()
    return (16384 if interpreter_active() else block), num_warps


# One reused buffer per (device, dtype): see the module docstring for its contract.
_SHARED: dict[tuple[torch.device, torch.dtype], torch.Tensor] = {}


def dequantize_nf4_shared(weight: Nf4Weight, dtype: torch.dtype | None = None) -> torch.Tensor:
    """Dequantise into the shared buffer of this device and dtype (default: the weight's own dtype).

    The returned (out_features, in_features) view is overwritten by the next call for the same device and dtype:
    use it at once, never keep it."""
    dtype = dtype or weight.dtype
    key = (weight.packed.device, dtype)
    buffer = _SHARED.get(key)
    if buffer is None or buffer.numel() < weight.numel:
        _SHARED.pop(key, None)  # free the smaller one before allocating
        buffer = _SHARED[key] = torch.empty(weight.numel, dtype=dtype, device=weight.packed.device)
    return dequantize_nf4(weight, out=buffer[: weight.numel])


def shared_buffers() -> dict[tuple[torch.device, torch.dtype], torch.Tensor]:
    """The shared dequantisation buffers now allocated (a copy of the mapping, for inspection and tests)."""
    return dict(_SHARED)


def release_shared_buffers() -> None:
    """Drop the shared buffers (the next call allocates again), e.g. after training to return their memory."""
    _SHARED.clear()
