"""Shared launch helpers for the ftplan Triton kernels.

- `row_block_settings(n)`: BLOCK_SIZE / num_warps for kernels that hold one row of `n` columns in registers.
- `elementwise_settings()`: block size and warps for flat elementwise kernels.
- `ensure_contiguous`: decorator that makes every tensor argument contiguous before a host launcher runs.
- `interpreter_active()`: True when Triton runs kernels through its CPU interpreter (`TRITON_INTERPRET=1`).
- `num_programs_for_reduction(device, n_rows)`: how many persistent programs share a cross-row reduction.

Triton decides between the compiled and interpreted JIT when a `@triton.jit` function is *defined*, i.e. when
the kernel modules are imported, not when triton itself is imported. So `TRITON_INTERPRET=1` has to be in the
environment before `ftplan_runtime.kernels.<op>` is first imported (tests/runtime/kernels/conftest.py does that
and reloads the modules if something imported them earlier).
"""

from __future__ import annotations

import functools
import os

import torch
import triton

# One program holds at most this many elements of a row in registers (64K fp32 = 256 KiB across the CTA).
MAX_FUSED_SIZE = 65536


def interpreter_active() -> bool:
    """Whether Triton kernels defined now run in the CPU interpreter (TRITON_INTERPRET=1)."""
    return os.environ.get("TRITON_INTERPRET", "0").strip().lower() in ("1", "true", "on", "yes")


def row_block_settings(n_cols: int) -> tuple[int, int]:
    """BLOCK_SIZE (next power of two >= n_cols) and num_warps for a one-row-per-program kernel.

    The warp thresholds are the ones Unsloth's `calculate_settings` uses
    (https://github.com/unslothai/unsloth/blob/015bdef/unsloth/kernels/utils.py): 4 warps up to a 2K block,
    8 up to 8K, 16 up to 32K, 32 above. On Hopper that keeps 16-64 fp32 values per thread.
    """
    block = triton.next_power_of_2(n_cols)
    if block > MAX_FUSED_SIZE:
        raise ValueError(f"row of {n_cols} columns exceeds the fused limit of {MAX_FUSED_SIZE}")
    if block >= 32768:
        num_warps = 32
    elif block >= 8192:
        num_warps = 16
    elif block >= 2048:
        num_warps = 8
    else:
        num_warps = 4
    return block, num_warps


def elementwise_settings() -> tuple[int, int]:
    """(BLOCK_SIZE, num_warps) for flat elementwise kernels: 1024 elements per program, 4 warps (8 per thread).

    Large enough for 128-bit vector loads of bf16 on Hopper, small enough that an 8K x 14336 SwiGLU has
    ~115K programs to spread over 132 SMs.
    """
    return 1024, 4


def num_programs_for_reduction(device: torch.device, n_rows: int) -> int:
    """Programs used by kernels that reduce across rows (e.g. RMSNorm dW): one per SM, never more than rows.

    Each program walks a contiguous slab of rows and writes one fp32 partial; the partials are summed on the
    host side with a single `sum(0)`. Under the interpreter programs run one after another, so use few.
    """
    if device.type == "cuda" and not interpreter_active():
        sms = torch.cuda.get_device_properties(device).multi_processor_count
    else:
        sms = 4
    return max(1, min(sms, n_rows))


def ensure_contiguous(fn):
    """Call `fn` with every tensor argument made contiguous (a no-op for tensors that already are)."""

    def _contig(x):
        return x.contiguous() if isinstance(x, torch.Tensor) else x

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        args = [_contig(a) for a in args]
        kwargs = {k: _contig(v) for k, v in kwargs.items()}
        return fn(*args, **kwargs)

    return wrapper
