"""Why an Axolotl key is not carried over into the pipeline: ``migration.ALIASES`` explains the keys users bring
from Axolotl, TRL and transformers; ``REASONS`` the Axolotl-only ones it does not know."""

from __future__ import annotations

from typing import Any

from ..migration import ALIASES, alias_hint

REASONS: dict[str, str] = {
    "reward_model": "the stage is `kind: reward`",
    "num_labels": "a reward model has one output (a score)",
    "process_reward_model": "ftplan has no process reward model stage",
    "reinit_weights": "ftplan starts from the base model's trained weights",
    "eot_tokens": "the chat template's end-of-turn token ends every trained answer",
    "lora_mlp_kernel": "`kernels: ftplan` fuses the LoRA MLP on the families it supports",
    "lora_qkv_kernel": "`kernels: ftplan` fuses the LoRA projections on the families it supports",
    "lora_o_kernel": "`kernels: ftplan` fuses the LoRA projections on the families it supports",
    "fused_attn_kernel": "`attention` picks the attention kernel",
    "dataset_exact_deduplication": "the data stage keeps every row; deduplicate the file first",
    "resize_token_embeddings_to_32x": "the embeddings grow only to the tokenizer's size",
    "ddp_find_unused_parameters": "it launches DDP itself (`distributed: ddp`)",
    "accelerator_config": "ftplan writes the accelerate config of each stage itself",
    "dp_shard_size": "`distributed` picks the sharding (zero1-3, fsdp2) over every GPU",
    "dp_replicate_size": "`distributed` picks the sharding (zero1-3, fsdp2) over every GPU",
    "tensor_parallel_size": "ftplan has no tensor parallelism",
    "context_parallel_size": "ftplan has no context parallelism",
    "experimental_skip_move_to_device": "ftplan loads the model as the stage's precision and placement say",
    "use_kernels": "`kernels: ftplan` on a training stage gives fused kernels",
    "use_scattermoe": "ftplan has no mixture-of-experts kernels",
    "use_sonicmoe": "ftplan has no mixture-of-experts kernels",
    "use_onebitllms": "ftplan trains no 1-bit (BitNet) models",
    "quantization": "ftplan trains no quantization-aware (QAT) models",
    "qat": "ftplan trains no quantization-aware (QAT) models",
    "fp8": "ftplan trains in bf16, fp16 or fp32 (`precision`)",
    "muon": "ftplan's optimizers are adamw, adamw_8bit and paged_adamw_8bit",
    "dpo_use_weighting": "TRL's WPO weighting is not offered by ftplan's DPO stage",
    "dpo_padding_free": "ftplan's DPO stage pads each pair to its longer answer",
    "dpo_use_liger_kernel": "ftplan's DPO stage computes the loss with TRL's chunked head",
    "dpo_use_logits_to_keep": "ftplan's DPO stage computes the loss with TRL's chunked head",
    "dpo_norm_loss": "ftplan offers the sigmoid, ipo, hinge, robust and simpo losses (`loss_type`)",
    "remove_unused_columns": "the data stage writes only the columns the trainer reads",
    "gradient_checkpointing_kwargs": "the runtime picks non-reentrant checkpointing",
    "max_memory": "`ftplan check` estimates the memory per GPU against `hardware.gpu`",
    "lora_on_cpu": "the merge stage runs on the CPU already",
    "merge_method": "the merge stage folds the adapter into the base in one pass",
    "save_first_step": "checkpoints are saved every `save_steps` and at the end",
    "lora_target_parameters": "ftplan's adapters wrap linear modules (`targets`), not expert parameter tensors",
    "activation_offloading": "ftplan offloads the checkpoints of gradient checkpointing, not every activation: "
                             "`gradient_checkpointing: offload`",
    "do_causal_lm_eval": "evaluation reports the validation loss",
    "processor_type": "ftplan trains text models: no image or audio processor",
    "skip_prepare_dataset": "the data stage always reads, checks and tokenizes the rows",
    "torch_compile_mode": "ftplan does not torch.compile the model; `kernels: ftplan` fuses RMSNorm, SwiGLU, RoPE "
                          "and the loss",
    "flex_attn_compile_kwargs": "`attention: flex_attention` takes no options",
    "nvfp4_merge_aware": "ftplan trains bf16, fp16 or fp32 weights, or an NF4 base (QLoRA); not NVFP4",
    "dsv4_fp4_grouped_mode": "ftplan has no DeepSeek-V4 FP4 kernels",
    "use_dsv4_kernels": "ftplan has no DeepSeek-V4 FP4 kernels",
}
"""Why an Axolotl key that ``migration.ALIASES`` does not know is not carried over."""


def reason(key: str, value: Any) -> str:
    """Why a key is not carried over: the migration table's explanation, else ``REASONS``, else none known."""
    if key in REASONS:
        return REASONS[key]
    if key.startswith("swanlab") or key == "use_swanlab":
        return "ftplan reports to tensorboard, wandb or mlflow (`report_to`), not SwanLab"
    if key.startswith("fsdp_") or key.startswith("liger_"):
        return "ftplan sets its FSDP2 and kernel options itself"
    hint = alias_hint(key, value, None, "top") if key in ALIASES else None
    if hint:
        for tail in ("; remove it", ", remove it", " remove it"):
            if hint.endswith(tail):
                hint = hint[: -len(tail)]
        if hint.strip().lower() not in ("", "remove it"):
            return hint
    if value is False:
        return "false: it switches off something ftplan does not do"
    return "ftplan has no setting for it"
