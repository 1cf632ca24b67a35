"""Per-GPU memory outside the model's tensors: CUDA context, libraries, cuBLAS workspaces, NCCL buffers, and the
caching allocator's fragmentation (reserved minus allocated)."""

from __future__ import annotations

from ..catalog.gpus import GpuSpec
from .constants import (CUBLAS_HANDLES, CUBLAS_WORKSPACE_DEFAULT_MIB, CUBLAS_WORKSPACE_MIB, CUDA_CONTEXT_MIB,
                        CUDA_LIBRARY_KERNELS_MIB, FRAGMENTATION_FACTORS, MIB, NCCL_COMMUNICATOR_MIB, NCCL_NVLS_MIB,
                        OFFLOAD_CACHED_INPUTS)
from ..units import gib_text
from .types import Term

CONTEXT_TERM = "CUDA context"
"""Name of the context term (baselines measure device memory after the context exists, so they exclude it)."""


def arch_of(gpu: GpuSpec | None) -> str:
    """Architecture key for the constant tables (Hopper when the GPU is unknown)."""
    return gpu.arch if gpu is not None and gpu.arch in CUDA_CONTEXT_MIB else "hopper"


def context(gpu: GpuSpec | None) -> Term:
    """The CUDA context created by the first CUDA call."""
    arch = arch_of(gpu)
    mib = CUDA_CONTEXT_MIB[arch]
    how = "measured on H100 and H200, torch 2.11/cu130" if arch == "hopper" else "reported/assumed for " + arch
    return Term(CONTEXT_TERM, mib * MIB, f"{mib} MiB ({how})")


def libraries(gpu: GpuSpec | None) -> Term:
    """cuBLAS workspaces plus the library kernel images loaded lazily during the first step."""
    ws = CUBLAS_WORKSPACE_MIB.get(arch_of(gpu), CUBLAS_WORKSPACE_DEFAULT_MIB)
    total = CUBLAS_HANDLES * ws + CUDA_LIBRARY_KERNELS_MIB
    return Term("CUDA libraries + cuBLAS workspaces", total * MIB,
                f"{CUBLAS_HANDLES} × {ws} MiB workspaces + {CUDA_LIBRARY_KERNELS_MIB} MiB kernels (calibrated)")


def nccl(world: int, gpu: GpuSpec | None, nvls: bool) -> list[Term]:
    """NCCL communicator buffers when more than one GPU trains."""
    if world <= 1:
        return []
    out = [Term("NCCL buffers", NCCL_COMMUNICATOR_MIB * MIB, f"one communicator, ~{NCCL_COMMUNICATOR_MIB} MiB")]
    if nvls:
        out.append(Term("NCCL NVLS buffers", NCCL_NVLS_MIB * MIB,
                        "NVLink SHARP on >2 Hopper GPUs; set NCCL_NVLS_ENABLE=0 in hardware.env to drop it"))
    return out


def fragmentation(largest_block: int, pattern: str) -> Term:
    """Reserved-but-unused memory of the caching allocator, from the largest transient block and the loss path's
    allocation pattern (``hf_held``, ``hf`` or ``chunked``)."""
    factor = FRAGMENTATION_FACTORS[pattern]
    return Term("allocator fragmentation", int(factor * largest_block),
                f"{factor} × the largest transient block ({gib_text(largest_block)}), calibrated")


def offload_cache(layer_input: int) -> Term:
    """Blocks of offloaded layer inputs the caching allocator keeps until their copies pass (``layer_input``: one
    layer's checkpoint in bytes); see ``OFFLOAD_CACHED_INPUTS``."""
    return Term("offload copy blocks (allocator cache)", OFFLOAD_CACHED_INPUTS * layer_input,
                f"{OFFLOAD_CACHED_INPUTS} layer inputs of {gib_text(layer_input)} held for their copies, calibrated")
