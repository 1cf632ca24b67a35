"""The DeepSpeed JSON of a ZeRO stage, fully resolved: no ``"auto"`` anywhere, one key spelling.

Hugging Face's integration fills ``"auto"`` at run time from the trainer's arguments; ftplan fills every value
at compile time instead, so the file a reviewer reads is the file DeepSpeed runs with:

* batch: ``train_batch_size = micro_batch × grad_accum × world_size`` (DeepSpeed asserts this identity);
* clipping: the stage's ``max_grad_norm``;
* precision: a ``bf16`` and an ``fp16`` block, exactly one enabled (none for fp32);
* buckets, from the hidden size ``h`` (the rule transformers applies to ``"auto"``,
  ``integrations/deepspeed.py``): ``reduce_bucket_size = allgather_bucket_size = h²`` elements,
  ``stage3_prefetch_bucket_size = 0.9·h²`` and ``stage3_param_persistence_threshold = 10·h`` (parameters
  smaller than ten hidden vectors — norms, biases — stay resident instead of being gathered each use).
  Without a known architecture DeepSpeed's own defaults are written out;
* ZeRO-3 limits: ``stage3_max_live_parameters = stage3_max_reuse_distance = sub_group_size = 1e9`` (DeepSpeed's
  defaults, written out), and ``stage3_gather_16bit_weights_on_model_save: true`` so saving under ZeRO-3 writes
  real weights (an adapter saved without it is a 40-byte placeholder);
* offload: ``{device: cpu, pin_memory: true}`` blocks when requested. The optimizer stays the runtime's
  (``optimizer`` of the stage); DeepSpeed is told to accept it on the CPU (``zero_force_ds_cpu_optimizer:
  false``) and, for the bitsandbytes 8-bit optimizers, that it is untested (``zero_allow_untested_optimizer``).

DeepSpeed accepts the ZeRO-3 keys with or without their ``stage3_`` prefix; ftplan always writes the prefixed
spelling. DeepSpeed silently ignores unknown top-level keys, so every emitted key is checked against
``KNOWN_TOP_LEVEL_KEYS``.
"""

from __future__ import annotations

from typing import Any

from ..resolved_stage import TrainingFacts
from ..schemas import TrainingArgs

KNOWN_TOP_LEVEL_KEYS: frozenset[str] = frozenset({
    "activation_checkpointing", "aio", "amp", "autotuning", "bf16", "bfloat16", "checkpoint",
    "communication_data_type", "comms_logger", "compile", "csv_monitor", "curriculum_learning", "data_efficiency",
    "data_types", "dataloader_drop_last", "disable_allgather", "dump_state", "elasticity", "flops_profiler", "fp16",
    "gradient_accumulation_steps", "gradient_clipping", "gradient_predivide_factor", "memory_breakdown",
    "optimizer", "prescale_gradients", "scheduler", "seq_parallel_communication_data_type", "sparse_attention",
    "sparse_gradients", "steps_per_print", "tensorboard", "torch_autocast", "train_batch_size",
    "train_micro_batch_size_per_gpu", "wall_clock_breakdown", "wandb", "zero_allow_untested_optimizer",
    "zero_force_ds_cpu_optimizer", "zero_optimization",
})
"""Top-level keys DeepSpeed 0.19 reads (``deepspeed/runtime/config.py`` and ``constants.py``)."""

# DeepSpeed's defaults (deepspeed/runtime/zero/config.py), used when the hidden size is unknown.
_DEFAULT_BUCKET = 500_000_000
_DEFAULT_PREFETCH = 50_000_000
_DEFAULT_PERSISTENCE = 100_000
_ONE_BILLION = 1_000_000_000

FP16_BLOCK: dict[str, Any] = {
    "enabled": True,
    "hysteresis": 2,
    "initial_scale_power": 16,
    "loss_scale": 0,
    "loss_scale_window": 1000,
    "min_loss_scale": 1,
}
"""Dynamic loss scaling for fp16 (``loss_scale: 0`` = dynamic, starting at 2**16)."""


def unknown_top_level_keys(config: dict[str, Any]) -> list[str]:
    """Top-level keys DeepSpeed would silently ignore (misspelt or from another version), sorted."""
    return sorted(set(config) - KNOWN_TOP_LEVEL_KEYS)


def bucket_sizes(hidden_size: int | None) -> dict[str, int]:
    """Communication bucket sizes (elements) from the hidden size, or DeepSpeed's defaults when unknown."""
    if hidden_size is None:
        return {"reduce": _DEFAULT_BUCKET, "allgather": _DEFAULT_BUCKET, "prefetch": _DEFAULT_PREFETCH,
                "persistence": _DEFAULT_PERSISTENCE}
    h2 = hidden_size * hidden_size
    return {"reduce": h2, "allgather": h2, "prefetch": (9 * h2) // 10, "persistence": 10 * hidden_size}


def deepspeed_config(stage: TrainingArgs, facts: TrainingFacts, hidden_size: int | None) -> dict[str, Any]:
    """The DeepSpeed JSON for a training stage that uses ZeRO (its resolved strategy is zero1/2/3)."""
    level = facts.zero_stage
    if level is None:
        raise AssertionError(f"strategy {facts.strategy!r} does not use DeepSpeed")
    buckets = bucket_sizes(hidden_size)
    zero: dict[str, Any] = {
        "stage": level,
        "contiguous_gradients": True,
        "overlap_comm": True,
        "reduce_bucket_size": buckets["reduce"],
    }
    if level < 3:
        zero["allgather_bucket_size"] = buckets["allgather"]
        zero["reduce_scatter"] = True
    else:
        zero.update({
            "stage3_gather_16bit_weights_on_model_save": True,
            "stage3_max_live_parameters": _ONE_BILLION,
            "stage3_max_reuse_distance": _ONE_BILLION,
            "stage3_param_persistence_threshold": buckets["persistence"],
            "stage3_prefetch_bucket_size": buckets["prefetch"],
            "sub_group_size": _ONE_BILLION,
        })
    offload = {"device": "cpu", "pin_memory": True}
    if facts.offload_optimizer:
        zero["offload_optimizer"] = dict(offload)
    if facts.offload_params and level == 3:
        zero["offload_param"] = dict(offload)

    config: dict[str, Any] = {
        "bf16": {"enabled": stage.precision == "bf16"},
        "fp16": dict(FP16_BLOCK) if stage.precision == "fp16" else {"enabled": False},
        "gradient_accumulation_steps": facts.batch.grad_accum,
        "gradient_clipping": stage.max_grad_norm,
        "train_batch_size": facts.batch.effective_batch,
        "train_micro_batch_size_per_gpu": facts.batch.micro_batch,
        "zero_optimization": zero,
    }
    if facts.offload_optimizer:
        config["zero_force_ds_cpu_optimizer"] = False
    if stage.optimizer != "adamw":
        config["zero_allow_untested_optimizer"] = True
    unknown = unknown_top_level_keys(config)
    if unknown:  # pragma: no cover - guards this module against typos
        raise AssertionError(f"DeepSpeed does not know the keys {unknown}")
    return config
