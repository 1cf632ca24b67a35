"""GPU catalog: memory, precision support and datasheet peaks of the accelerators a plan can target.

``memory_mib`` is the total the driver reports (``nvidia-smi --query-gpu=memory.total``, ``rocm-smi``), not the
marketing size: GDDR cards lose a slice to ECC, HBM cards report slightly less than the nominal GB figure.
TFLOP/s are dense (no 2:4 sparsity) bf16 tensor-core peaks; bandwidths are datasheet GB/s.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

__all__ = ["GpuSpec", "GPUS", "get_gpu", "gpu_keys"]


@dataclass(frozen=True)
class GpuSpec:
    """One accelerator model as a plan sees it."""

    key: str
    """Catalog key users write in ``hardware.gpu``, lowercase, e.g. ``"h100-sxm-80gb"``."""
    name: str
    """Display name, e.g. ``"H100 SXM 80GB"``."""
    memory_mib: int
    """Total device memory as the driver reports it, in MiB (nvidia-smi ``memory.total``)."""
    compute_capability: tuple[int, int] | None
    """CUDA compute capability, e.g. ``(9, 0)``; ``None`` for AMD (see ``vendor`` and ``arch``)."""
    vendor: Literal["nvidia", "amd"]
    """Who makes it; decides CUDA vs ROCm launch details."""
    arch: str
    """Architecture family: turing, ampere, ada, hopper, blackwell, cdna3."""
    bf16: bool
    """bfloat16 tensor-core math is supported."""
    fp8: bool
    """FP8 tensor-core math is supported."""
    flash_attention_2: bool
    """FlashAttention-2 runs here (NVIDIA sm80+, AMD MI300 through the ROCm build)."""
    peak_bf16_tflops: float
    """Dense bf16 tensor peak in TFLOP/s; for cards without bf16, the dense fp16 peak."""
    memory_bandwidth_gbs: float
    """Datasheet memory bandwidth in GB/s."""
    nvlink: bool
    """Typically deployed with NVLink / xGMI between the GPUs of a node."""
    aliases: tuple[str, ...] = ()
    """Other accepted spellings (lowercase), including nvidia-smi device names."""

    @property
    def memory_gib(self) -> float:
        """Total device memory in GiB."""
        return self.memory_mib / 1024


_SPECS: tuple[GpuSpec, ...] = (
    # T4: NVIDIA T4 datasheet: 65 TFLOPS fp16 tensor (dense), 320 GB/s, no bf16/FA2 (Turing, sm75).
    # 15109 MiB is nvidia-smi with ECC on (the cloud default); 15360 MiB with ECC off.
    GpuSpec("t4", "T4 16GB", 15109, (7, 5), "nvidia", "turing", False, False, False, 65.0, 320.0, False,
            ("tesla-t4", "nvidia-t4", "t4-16gb")),
    # A10G (AWS g5): no NVIDIA datasheet; ~70 TFLOPS bf16 dense per AWS g5 material, 600 GB/s; sm86.
    # nvidia-smi reports 23028 MiB.
    GpuSpec("a10g", "A10G 24GB", 23028, (8, 6), "nvidia", "ampere", True, False, True, 70.0, 600.0, False,
            ("nvidia-a10g", "a10g-24gb")),
    # L4: NVIDIA L4 datasheet: 242 TFLOPS bf16 with sparsity -> 121 dense, 300 GB/s; nvidia-smi 23034 MiB.
    GpuSpec("l4", "L4 24GB", 23034, (8, 9), "nvidia", "ada", True, True, True, 121.0, 300.0, False,
            ("nvidia-l4", "l4-24gb")),
    # L40S: NVIDIA L40S datasheet: 733 TFLOPS bf16 with sparsity -> 362 dense, 864 GB/s; nvidia-smi 46068 MiB.
    GpuSpec("l40s", "L40S 48GB", 46068, (8, 9), "nvidia", "ada", True, True, True, 362.0, 864.0, False,
            ("nvidia-l40s", "l40s-48gb")),
    # RTX 3090: NVIDIA Ampere GA102 whitepaper: 71 TFLOPS fp16/bf16 tensor w/ fp32 accumulate (dense), 936 GB/s.
    GpuSpec("rtx-3090", "GeForce RTX 3090 24GB", 24576, (8, 6), "nvidia", "ampere", True, False, True, 71.0, 936.0,
            False, ("3090", "rtx3090", "nvidia-geforce-rtx-3090")),
    # RTX 4090: NVIDIA Ada Lovelace whitepaper: 165.2 TFLOPS fp16/bf16 tensor w/ fp32 accumulate (dense),
    # 1008 GB/s; nvidia-smi 24564 MiB.
    GpuSpec("rtx-4090", "GeForce RTX 4090 24GB", 24564, (8, 9), "nvidia", "ada", True, True, True, 165.2, 1008.0,
            False, ("4090", "rtx4090", "nvidia-geforce-rtx-4090")),
    # RTX 5090: NVIDIA RTX Blackwell GPU architecture whitepaper: 209.5 TFLOPS fp16/bf16 tensor w/ fp32 accumulate
    # (dense), 1792 GB/s; sm120; nvidia-smi 32607 MiB. FA2 needs a flash-attn build for sm120 (CUDA 12.8+).
    GpuSpec("rtx-5090", "GeForce RTX 5090 32GB", 32607, (12, 0), "nvidia", "blackwell", True, True, True, 209.5,
            1792.0, False, ("5090", "rtx5090", "nvidia-geforce-rtx-5090")),
    # A100 40GB SXM: NVIDIA A100 datasheet: 312 TFLOPS bf16 dense, 1555 GB/s; nvidia-smi 40960 MiB.
    GpuSpec("a100-sxm-40gb", "A100 SXM 40GB", 40960, (8, 0), "nvidia", "ampere", True, False, True, 312.0, 1555.0,
            True, ("a100-40gb", "a100-sxm4-40gb", "nvidia-a100-sxm4-40gb")),
    # A100 80GB SXM: NVIDIA A100 datasheet: 312 TFLOPS bf16 dense, 2039 GB/s; nvidia-smi 81920 MiB.
    GpuSpec("a100-sxm-80gb", "A100 SXM 80GB", 81920, (8, 0), "nvidia", "ampere", True, False, True, 312.0, 2039.0,
            True, ("a100-80gb", "a100-sxm4-80gb", "nvidia-a100-sxm4-80gb")),
    # A100 80GB PCIe: NVIDIA A100 datasheet: 312 TFLOPS bf16 dense, 1935 GB/s; nvidia-smi 81920 MiB.
    GpuSpec("a100-pcie-80gb", "A100 PCIe 80GB", 81920, (8, 0), "nvidia", "ampere", True, False, True, 312.0, 1935.0,
            False, ("nvidia-a100-80gb-pcie",)),
    # H100 SXM: NVIDIA H100 datasheet: 1979 TFLOPS bf16 with sparsity -> 989 dense, 3.35 TB/s; nvidia-smi 81559 MiB.
    GpuSpec("h100-sxm-80gb", "H100 SXM 80GB", 81559, (9, 0), "nvidia", "hopper", True, True, True, 989.0, 3350.0,
            True, ("h100", "h100-80gb", "h100-sxm", "nvidia-h100-80gb-hbm3")),
    # H100 PCIe: NVIDIA H100 datasheet: 1513 TFLOPS bf16 with sparsity -> 756 dense, 2 TB/s; nvidia-smi 81559 MiB.
    GpuSpec("h100-pcie-80gb", "H100 PCIe 80GB", 81559, (9, 0), "nvidia", "hopper", True, True, True, 756.0, 2000.0,
            False, ("h100-pcie", "nvidia-h100-pcie")),
    # H100 NVL: NVIDIA H100 NVL datasheet: 1671 TFLOPS bf16 with sparsity -> 835 dense, 3.9 TB/s, NVLink bridge
    # pairs; nvidia-smi 95830 MiB.
    GpuSpec("h100-nvl-94gb", "H100 NVL 94GB", 95830, (9, 0), "nvidia", "hopper", True, True, True, 835.0, 3900.0,
            True, ("h100-nvl", "nvidia-h100-nvl")),
    # H200 SXM: NVIDIA H200 datasheet: 1979 TFLOPS bf16 with sparsity -> 989 dense, 4.8 TB/s; nvidia-smi 143771 MiB.
    GpuSpec("h200-sxm-141gb", "H200 SXM 141GB", 143771, (9, 0), "nvidia", "hopper", True, True, True, 989.0, 4800.0,
            True, ("h200", "h200-141gb", "h200-sxm", "nvidia-h200")),
    # B200: NVIDIA HGX B200 datasheet: 36 PFLOPS fp16/bf16 with sparsity for 8 GPUs -> 2250 dense per GPU,
    # 64 TB/s for 8 GPUs -> 8 TB/s; sm100; nvidia-smi 183359 MiB.
    GpuSpec("b200-180gb", "B200 180GB", 183359, (10, 0), "nvidia", "blackwell", True, True, True, 2250.0, 8000.0,
            True, ("b200", "nvidia-b200")),
    # MI300X: AMD Instinct MI300X datasheet: 1307.4 TFLOPS bf16 dense, 5.3 TB/s, gfx942;
    # rocm-smi VRAM total 206141652992 B = 196592 MiB. FA2 through the ROCm flash-attention build.
    GpuSpec("mi300x-192gb", "Instinct MI300X 192GB", 196592, None, "amd", "cdna3", True, True, True, 1307.4, 5300.0,
            True, ("mi300x", "amd-instinct-mi300x")),
)

GPUS: dict[str, GpuSpec] = {spec.key: spec for spec in sorted(_SPECS, key=lambda s: s.key)}
"""Every catalogued GPU by key, keys sorted."""


def _normalize(name: str) -> str:
    return "-".join(name.strip().lower().replace("_", " ").split())


def _build_lookup() -> dict[str, GpuSpec]:
    lookup: dict[str, GpuSpec] = {}
    for spec in GPUS.values():
        for name in (spec.key, *spec.aliases):
            norm = _normalize(name)
            if norm in lookup:
                raise AssertionError(f"GPU name {name!r} is claimed twice in the catalog")
            lookup[norm] = spec
    return lookup


_LOOKUP = _build_lookup()


def get_gpu(key: str) -> GpuSpec | None:
    """Look a GPU up by key or alias, ignoring case (spaces and underscores count as hyphens); None if unknown."""
    return _LOOKUP.get(_normalize(key))


def gpu_keys() -> list[str]:
    """The catalog keys, sorted."""
    return list(GPUS)
