"""The accelerate config of a training stage (``accelerate.yaml``), as a typed dict.

Keys are those of accelerate 1.15's ``ClusterConfig`` (``accelerate/commands/config/config_args.py``), which
rejects unknown top-level keys. Values that differ per node under Slurm (``machine_rank``, the head node's
address, ``num_machines``) are overridden on the ``accelerate launch`` command line; the file holds the values
for a run on one machine. accelerate's launcher divides ``num_processes`` (the total over all nodes) by
``num_machines`` for each node's torchrun, and reaches the head node through torchrun's static rendezvous at
``<head>:<port>``. (``same_network`` is kept for accelerate's config tools; the 1.15 launcher ignores the file's
value because its ``--same_network`` flag defaults to false, which changes nothing for a static rendezvous.)

Two accelerate rules shape the file:

* with a DeepSpeed config file, accelerate refuses ``mixed_precision`` (and the other DeepSpeed fields) in the
  YAML — the precision lives in the DeepSpeed JSON's ``bf16``/``fp16`` blocks — so it is left out; and on
  several nodes accelerate would start DeepSpeed through pdsh (ssh) unless ``deepspeed_multinode_launcher`` is
  ``standard`` (one launcher per node, as the sbatch scripts start them);
* FSDP2 wraps each decoder layer (``TRANSFORMER_BASED_WRAP`` by the family's layer class) and saves a full state
  dict, so the saved model loads without FSDP. ``fsdp_activation_checkpointing`` is always off: the runtime
  recomputes layers through the trainer's ``gradient_checkpointing`` (the stage's setting), and transformers
  refuses both at once.
"""

from __future__ import annotations

from typing import Any

from ..resolved_stage import ResolvedStage, TrainingFacts

DECODER_LAYER_CLASSES: dict[str, str] = {
    "gemma2": "Gemma2DecoderLayer", "gemma3": "Gemma3DecoderLayer", "llama": "LlamaDecoderLayer",
    "mistral": "MistralDecoderLayer", "mixtral": "MixtralDecoderLayer", "phi3": "Phi3DecoderLayer",
    "qwen2": "Qwen2DecoderLayer", "qwen3": "Qwen3DecoderLayer",
}
"""Architecture family -> transformers' decoder layer class (the FSDP wrapping unit)."""

_MIXED_PRECISION = {"bf16": "bf16", "fp16": "fp16", "fp32": "no"}


def fsdp_config(facts: TrainingFacts, family: str | None) -> dict[str, Any]:
    """accelerate's ``fsdp_config`` block for FSDP2."""
    config: dict[str, Any] = {
        "fsdp_activation_checkpointing": False,
        "fsdp_auto_wrap_policy": "TRANSFORMER_BASED_WRAP",
        "fsdp_cpu_ram_efficient_loading": True,
        "fsdp_offload_params": facts.offload_params or facts.offload_optimizer,
        "fsdp_reshard_after_forward": True,
        "fsdp_state_dict_type": "FULL_STATE_DICT",
        "fsdp_version": 2,
    }
    layer = DECODER_LAYER_CLASSES.get(family or "")
    if layer is not None:  # otherwise accelerate wraps the model's own ``_no_split_modules``
        config["fsdp_transformer_layer_cls_to_wrap"] = layer
    return config


def accelerate_config(facts: ResolvedStage, *, precision: str, main_process_port: int, deepspeed_file: str | None,
                      family: str | None) -> dict[str, Any]:
    """The accelerate YAML of a training stage; ``deepspeed_file`` is the DeepSpeed JSON's path from the root.

    ZeRO-3 builds the model partitioned (``zero3_init_flag``) except on a 4-bit (QLoRA) base, which is quantized
    when it loads and cannot be built on the meta device."""
    t = facts.train
    if t is None:
        raise AssertionError(f"stage '{facts.id}' does not train")
    dtype = t.distributed_type
    config: dict[str, Any] = {
        "compute_environment": "LOCAL_MACHINE",
        "debug": False,
        "distributed_type": dtype,
        "machine_rank": 0,
        "main_process_port": main_process_port,
        "main_training_function": "main",
        "num_machines": facts.nodes,
        "num_processes": facts.world_size,
        "rdzv_backend": "static",
        "same_network": True,
        "use_cpu": facts.device == "cpu",
    }
    if dtype == "DEEPSPEED":
        if deepspeed_file is None:
            raise AssertionError("a DeepSpeed stage needs its deepspeed.json path")
        # "standard": one torch launcher per node, started by srun; accelerate's default (pdsh) would ssh into
        # the other nodes itself.
        config["deepspeed_config"] = {"deepspeed_config_file": deepspeed_file,
                                      "deepspeed_multinode_launcher": "standard",
                                      "zero3_init_flag": t.zero_stage == 3 and not t.quantized_base}
    else:
        config["mixed_precision"] = _MIXED_PRECISION[precision]
    if dtype == "FSDP":
        config["fsdp_config"] = fsdp_config(t, family)
    return config
