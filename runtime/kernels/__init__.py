"""ftplan's Triton kernels (`kernels: ftplan` in a pipeline): RMSNorm, SwiGLU, RoPE, cross-entropy and fused
linear cross-entropy, fused linear log-probs (DPO, KTO), fused LoRA projections and MLP (16-bit or NF4 bases, NF4 dequantisation), plus the patcher
that applies them to a HF causal LM.

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
from .logprobs import (
    FusedLinearLogprobsFunction,
    LogprobStats,
    fused_linear_logprobs,
    fused_linear_logprobs_stats,
)
from .lora import LoRAMLPFunction, LoRAProjectionsFunction, LoRAUnsupported, lora_mlp, lora_projections
from .nf4 import dequantize_nf4, nf4_weight
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
    "FusedLinearLogprobsFunction",
    "KernelPatchError",
    "KernelReport",
    "LoRAMLPFunction",
    "LogprobStats",
    "LoRAProjectionsFunction",
    "LoRAUnsupported",
    "RMSNormFunction",
    "RoPEFunction",
    "SwiGLUFunction",
    "apply_ftplan_kernels",
    "apply_rotary_pos_emb",
    "causal_lm_loss",
    "cross_entropy",
    "dequantize_nf4",
    "fused_linear_cross_entropy",
    "fused_linear_logprobs",
    "fused_linear_logprobs_stats",
    "lora_mlp",
    "lora_projections",
    "nf4_weight",
    "revert_ftplan_kernels",
    "rms_norm",
    "swiglu",
]
