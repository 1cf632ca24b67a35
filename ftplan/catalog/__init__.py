"""Catalogs the VRAM estimator and pre-launch checks read: GPUs, model shapes, and what derives from a shape."""

from ftplan.catalog.architecture import (
    GGUF_FAMILIES,
    LinearModule,
    ParamCounts,
    gguf_supported,
    largest_layer_params,
    linear_modules,
    lora_params,
    matmul_params,
    param_counts,
    target_module_names,
    unknown_targets,
)
from ftplan.catalog.gpus import GPUS, GpuSpec, get_gpu, gpu_keys
from ftplan.catalog.models import MODELS, SUPPORTED_MODEL_TYPES, ModelShape, from_hf_config, get_model, model_keys

__all__ = [
    "GGUF_FAMILIES", "GPUS", "MODELS", "SUPPORTED_MODEL_TYPES",
    "GpuSpec", "LinearModule", "ModelShape", "ParamCounts",
    "from_hf_config", "get_gpu", "get_model", "gguf_supported", "gpu_keys", "largest_layer_params",
    "linear_modules", "lora_params", "matmul_params", "model_keys", "param_counts", "target_module_names",
    "unknown_targets",
]
