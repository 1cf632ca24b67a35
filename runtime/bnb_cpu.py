"""Exact NF4/FP4 dequantisation for bitsandbytes weights on the CPU.

bitsandbytes 0.50's native CPU kernel for ``bitsandbytes::dequantize_4bit`` (used whenever its CPU library loads)
walks the packed codes row by row, as if every 64-block started a row. A block that straddles two rows, which
happens when a row's length is not a multiple of the block size, is read with the wrong scale: a (4, 96) weight
quantised and dequantised comes back with errors of 0.1 on values of 0.05, and no error is raised. The
portable (default-backend) implementation, the CUDA kernel and ftplan's Triton NF4 kernel all read the flat
layout correctly. Real checkpoints' dimensions are multiples of 64, but the tiny models of CPU rehearsals and tests
are not, and a silently wrong base would make a CPU QLoRA run train on other weights.

``use_exact_cpu_dequantize()`` registers, for CPU tensors only, a kernel that decodes the flat layout in plain
PyTorch: two 4-bit codes per byte, high nibble first, each times its block's absmax (double quantisation is
already undone by ``bitsandbytes.functional.dequantize_4bit`` before the op runs). CUDA tensors keep bitsandbytes'
kernel. The model loader calls it for every 4-bit load; it is idempotent.
"""

from __future__ import annotations

import math
from typing import Sequence

__all__ = ["dequantize_4bit_flat", "use_exact_cpu_dequantize"]

_library = None
"""The ``torch.library.Library`` fragment holding the CPU kernel (kept alive: dropping it unregisters the kernel)."""


def dequantize_4bit_flat(packed, absmax, blocksize: int, quant_type: str, shape: Sequence[int], dtype):
    """The 4-bit ``packed`` codes (uint8, or another dtype viewed as bytes) of a tensor of ``shape`` decoded with
    bitsandbytes' ``quant_type`` table ("nf4" or "fp4") and one fp32 ``absmax`` per ``blocksize`` values, in the
    flat order bitsandbytes quantises them; returned as ``dtype``."""
    import torch
    from bitsandbytes.functional import get_4bit_type

    codes = packed.reshape(-1).view(torch.uint8).to(torch.int64)
    count = math.prod(shape)
    index = torch.stack((codes >> 4, codes & 15), dim=1).reshape(-1)[:count]
    table = get_4bit_type(quant_type, device=packed.device).float()
    scale = absmax.float().repeat_interleave(blocksize)[:count]
    return (table[index] * scale).reshape(tuple(shape)).to(dtype)


def use_exact_cpu_dequantize() -> None:
    """Route bitsandbytes' CPU ``dequantize_4bit`` through ``dequantize_4bit_flat`` (see the module docstring)."""
    global _library
    if _library is not None:
        return
    import warnings

    import bitsandbytes.functional  # noqa: F401  (defines the op and its own CPU kernel first)
    import torch

    # bitsandbytes registers its CPU kernel from Python (torch.library.register_kernel); replacing it needs an
    # explicit override, which torch 2.11 does not grant by default.
    library = torch.library.Library("bitsandbytes", "IMPL")
    with warnings.catch_warnings():  # torch says that a kernel is replaced: that is the point
        warnings.filterwarnings("ignore", message="(?s).*Overriding a previously registered kernel")
        library.impl("dequantize_4bit", dequantize_4bit_flat, "CPU", allow_override=True)
    _library = library
