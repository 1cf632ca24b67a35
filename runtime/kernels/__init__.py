"""ftplan's Triton kernels (`kernels: ftplan` in a pipeline): RMSNorm, SwiGLU, RoPE, cross-entropy and fused
linear cross-entropy, plus the patcher that applies them to a HF causal LM.

Only autograd-level entry points are exported; the kernels and host launchers stay in their op modules.
Triton picks compiled vs interpreted kernels when these modules are imported: on a machine without CUDA, set
TRITON_INTERPRET=1 before importing this package.
"""

from .cross_entropy import (
    CrossEntropyFunction,
    FusedLinearCrossEntropyFunction,
    cross_entropy,
    fused_linear_cross_entropy,
)
from .patch import (
    KernelPatchError,
    KernelReport,
    apply_ftplan_kernels,
    causal_lm_loss,
    revert_ftplan_kernels,
)
from .rms_norm import RMSNormFunction, rms_norm
from .rope import RoPEFunction, apply_rotary_pos_emb
from .swiglu import SwiGLUFunction, swiglu

__all__ = [
    "CrossEntropyFunction",
    "FusedLinearCrossEntropyFunction",
    "KernelPatchError",
    "KernelReport",
    "RMSNormFunction",
    "RoPEFunction",
    "SwiGLUFunction",
    "apply_ftplan_kernels",
    "apply_rotary_pos_emb",
    "causal_lm_loss",
    "cross_entropy",
    "fused_linear_cross_entropy",
    "revert_ftplan_kernels",
    "rms_norm",
    "swiglu",
]
