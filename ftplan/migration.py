"""Keys and values users bring from Axolotl, TRL, transformers' ``TrainingArguments``, PEFT and accelerate,
mapped to the ftplan field that does the same job and to where that field lives.

An unknown key that is in ``ALIASES`` is answered with the ftplan way to write it, at the place it was
written (``lora_r: 16`` on a training stage -> ``adapter: {type: lora, r: 16}``), instead of a spelling
neighbour (``deepspeed`` is not a typo of ``seed``) or a "check the indentation" note. Keys with no ftplan
equivalent say so plainly. ``VALUE_ALIASES`` does the same for foreign values of ftplan fields
(``optimizer: adamw_torch``, ``format: chat_template``), and ``foreign_config`` recognises a whole Axolotl or
TRL/transformers config pasted as a pipeline.

Places are where a key was written (or where an ftplan field lives): ``top`` (the document), ``model``,
``hardware``, ``data`` (a data stage), ``dataset`` (an entry of a data stage's ``datasets``), ``train`` (an SFT
or DPO stage), ``dpo`` (a DPO stage only, as a home), ``adapter`` (a training stage's ``adapter``), ``other``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Callable

__all__ = ["ALIASES", "Alias", "VALUE_ALIASES", "alias_fills", "alias_for", "alias_hint", "foreign_config",
           "place_of", "shown", "value_hint"]

AXOLOTL = "Axolotl"
TRL = "TRL/transformers"
PEFT = "PEFT"
ACCELERATE = "accelerate"

Convert = Callable[[Any, str], "str | None"]
"""(value as parsed, value as shown in a snippet) -> the ftplan value to write, or None when there is none."""


@dataclass(frozen=True)
class Alias:
    """One foreign key: the ftplan field it becomes, where that field lives, and how to write the value."""

    field: str | None
    """The ftplan field (``micro_batch``), or None when ftplan has no equivalent."""
    home: str = "train"
    """Where that field lives (a place, see the module docstring)."""
    sources: tuple[str, ...] = (AXOLOTL,)
    """The tools that use this key (names the pasted config in ``foreign_config``)."""
    convert: Convert | None = None
    """The ftplan value for what was written; default: the value as written."""
    note: str = ""
    """A clause appended to the hint (``{value}`` is the value as written); for ``field=None``, why."""
    otherwise: str = ""
    """The whole hint when ``convert`` finds no ftplan value (``{value}`` is the value as written)."""
    text: str = ""
    """The whole hint wherever the key is written (``{value}`` is the value as written)."""
    places: frozenset[str] | None = None
    """Where the key is foreign; None: wherever ftplan does not know it."""


# --- value converters -------------------------------------------------------------------------------------

def _truthy(value: Any) -> bool | None:
    """True/False for a boolean-like value (``true``, ``"yes"``, ``1``, ``"auto"`` counts as true), else None."""
    if isinstance(value, bool):
        return value
    if isinstance(value, (int, float)):
        return bool(value)
    if isinstance(value, str):
        low = value.strip().lower()
        if low in ("true", "yes", "on", "1", "auto"):
            return True
        if low in ("false", "no", "off", "0", "none", ""):
            return False
    return None


def _checkpointing(value: Any) -> str:
    """Axolotl's and TRL's ``gradient_checkpointing``: ``offload`` (Axolotl's ``offload``/``offload_disk``), else
    ``true`` or ``false``."""
    if isinstance(value, str) and value.strip().lower() in ("offload", "offload_disk"):
        return "offload"
    return "false" if _truthy(value) is False else "true"


def _when_true(result: str) -> Convert:
    """``result`` for a true-like value (``bf16: true`` -> ``bf16``), None otherwise."""
    return lambda value, written: result if _truthy(value) else None


def _mapped(table: dict[str, str], *, keep: tuple[str, ...] = ()) -> Convert:
    """The table's value for a written text (case-insensitive); values in ``keep`` pass unchanged."""
    def convert(value: Any, written: str) -> str | None:
        if not isinstance(value, str):
            return None
        low = value.strip().lower()
        return low if low in keep else table.get(low)
    return convert


def _bool_map(if_true: str, if_false: str) -> Convert:
    """``if_true``/``if_false`` for a boolean-like value."""
    def convert(value: Any, written: str) -> str | None:
        flag = _truthy(value)
        return None if flag is None else (if_true if flag else if_false)
    return convert


def _columns(name: str) -> Convert:
    """``field_messages: conversations`` -> ``{messages: conversations}``."""
    return lambda value, written: f"{{{name}: {written}}}" if isinstance(value, str) else None


def _fraction(value: Any, written: str) -> str | None:
    """A validation fraction below 0.5 as written; a row count has no direct equivalent."""
    if isinstance(value, (int, float)) and not isinstance(value, bool) and 0 <= value < 0.5:
        return written
    return None


def _zero_stage(value: Any, written: str) -> str | None:
    """The ZeRO stage a DeepSpeed config path names (``zero3_bf16.json`` -> ``zero3``), else None."""
    if not isinstance(value, str):
        return None
    m = re.search(r"(?:zero|stage|z)[_-]?([123])", value.lower())
    return f"zero{m[1]}" if m else None


def _attention(value: Any, written: str) -> str | None:
    """transformers' ``attn_implementation`` names -> ftplan's ``attention``."""
    return _mapped(_ATTENTION_VALUES, keep=("sdpa", "eager", "flex_attention", "flash_attention_2",
                                            "flash_attention_3"))(value, written)


def _dataset_format(value: Any, written: str) -> str | None:
    """Axolotl's dataset ``type`` -> ftplan's dataset ``format``."""
    if not isinstance(value, str):
        return None
    low = value.strip().lower()
    if low in _FORMAT_VALUES:
        return _FORMAT_VALUES[low]
    if low.startswith("alpaca"):
        return "alpaca"
    if low.startswith("sharegpt"):
        return "sharegpt"
    if "." in low:  # Axolotl's preference strategies: chatml.intel, llama3.argilla, chat_template.default, ...
        return "preference"
    return None


_ATTENTION_VALUES = {"flash_attention": "flash_attention_2", "flash_attn": "flash_attention_2",
                     "flash_attn_2": "flash_attention_2", "flash_attention2": "flash_attention_2",
                     "fa2": "flash_attention_2", "fa3": "flash_attention_3", "flash_attn_3": "flash_attention_3",
                     "sdp": "sdpa", "sdp_attention": "sdpa", "torch": "sdpa", "flex": "flex_attention"}

_FORMAT_VALUES = {"alpaca": "alpaca", "sharegpt": "sharegpt", "chat_template": "messages", "messages": "messages",
                  "openai": "messages", "conversation": "messages", "completion": "text", "pretrain": "text",
                  "text": "text", "input_output": "prompt_completion", "prompt_completion": "prompt_completion",
                  "preference": "preference", "kto": "kto"}

_OPTIMIZER_VALUES = {"adamw_torch": "adamw", "adamw_torch_fused": "adamw", "adamw_hf": "adamw",
                     "adamw_apex_fused": "adamw", "adam": "adamw", "adamw_bnb_8bit": "adamw_8bit",
                     "bnb_adamw_8bit": "adamw_8bit", "adamw_8bit": "adamw_8bit", "8bit_adamw": "adamw_8bit",
                     "paged_adamw_8bit": "paged_adamw_8bit", "paged_adamw": "paged_adamw_8bit"}

_SCHEDULERS = ("cosine", "linear", "constant", "constant_with_warmup")

_PRECISION_VALUES = {"bf16": "bf16", "bfloat16": "bf16", "torch.bfloat16": "bf16", "auto": "bf16",
                     "fp16": "fp16", "float16": "fp16", "half": "fp16", "torch.float16": "fp16",
                     "fp32": "fp32", "float32": "fp32", "float": "fp32", "no": "fp32", "torch.float32": "fp32"}

_NO_HUB = "it does not push to the Hugging Face Hub (upload the stage's output folder `<output_dir>/<stage id>/`)"
_ARCH = ("it reads the architecture from the model's config.json or its catalog (`model: {architecture: ...}` "
         "for an uncatalogued hub id)")
_EVAL_ONE_BATCH = "evaluation uses the stage's `micro_batch`"
_STEPS = "ftplan counts in optimizer steps"


def _wandb(env: str) -> Alias:
    """A W&B setting: trackers are chosen with ``report_to``; W&B reads its own settings from the environment."""
    return Alias("report_to", sources=(AXOLOTL,), convert=lambda v, r: "[wandb]",
                 note=f"set it with `hardware: {{env: {{{env}: {{value}}}}}}`")


ALIASES: dict[str, Alias] = {
    # --- the model --------------------------------------------------------------------------------------
    "base_model": Alias("base", "model"),
    "model_name_or_path": Alias("base", "model", (TRL,)),
    "base_model_config": Alias(None, sources=(AXOLOTL,), note="it reads config.json from `model.base`"),
    "revision_of_model": Alias("revision", "model"),
    "model_revision": Alias("revision", "model", (TRL,)),
    "tokenizer_config": Alias("tokenizer", "model"),
    "tokenizer_name": Alias("tokenizer", "model", (TRL,)),
    "tokenizer_name_or_path": Alias("tokenizer", "model", (TRL,)),
    "model_type": Alias(None, note=_ARCH),
    "model_config_type": Alias(None, note=_ARCH),
    "tokenizer_type": Alias(None, note="it loads the tokenizer that belongs to `model.base` (or `model.tokenizer`)"),
    "tokenizer_use_fast": Alias(None, note="it always loads the fast tokenizer"),
    "trust_remote_code": Alias(None, sources=(AXOLOTL, TRL),
                               note="it trains catalogued architectures with transformers' own model code"),
    "is_llama_derived_model": Alias(None, note=_ARCH),
    "is_mistral_derived_model": Alias(None, note=_ARCH),
    "is_qwen_derived_model": Alias(None, note=_ARCH),
    "chat_template": Alias("chat_template", "model", (AXOLOTL, TRL),
                           convert=lambda v, w: "tokenizer" if v == "tokenizer_default" else (
                               None if v == "jinja" else w),
                           otherwise="save the template as a .jinja file and write `model: {chat_template: "
                           "template.jinja}` (the path is relative to the pipeline file)"),
    "chat_template_jinja": Alias("chat_template", "model", convert=lambda v, r: None,
                                 otherwise="save the template as a .jinja file and write `model: {chat_template: "
                                 "template.jinja}` (the path is relative to the pipeline file)"),
    "conversation": Alias("chat_template", "model", convert=lambda v, r: None,
                          otherwise="ftplan formats conversations with `model: {chat_template: ...}` (`tokenizer`, "
                          "`chatml`, `llama3` or a .jinja file)"),
    "tokens": Alias("add_special_tokens", "model"),
    "special_tokens": Alias(None, text="ftplan keeps the tokenizer's own special tokens (pad, bos, eos); new "
                            "tokens go in `model: {add_special_tokens: [...]}`; remove it"),
    # --- hardware and launch ----------------------------------------------------------------------------
    "num_processes": Alias("gpus_per_node", "hardware", (ACCELERATE,)),
    "nproc_per_node": Alias("gpus_per_node", "hardware", (ACCELERATE,)),
    "num_machines": Alias("nodes", "hardware", (ACCELERATE,)),
    "nnodes": Alias("nodes", "hardware", (ACCELERATE,)),
    "hf_use_auth_token": Alias(None, text="export `HF_TOKEN` in the environment that runs the stages; remove it"),
    "use_auth_token": Alias(None, sources=(TRL,),
                            text="export `HF_TOKEN` in the environment that runs the stages; remove it"),
    "hub_token": Alias(None, sources=(TRL,), text="export `HF_TOKEN` in the environment that runs the stages; "
                       "remove it"),
    "output_dir": Alias("output_dir", "top", (AXOLOTL, TRL)),
    "run_name": Alias("name", "top", (TRL,), note="the pipeline `name` names its jobs and runs"),
    # --- the adapter ------------------------------------------------------------------------------------
    "adapter": Alias("type", "adapter", places=frozenset({"top", "data", "dataset", "model", "hardware", "other"}),
                     text="the adapter is chosen per training stage: write `adapter: {type: {value}}` on a "
                     "`kind: sft` stage (with `r`, `alpha`, `dropout`, `targets` inside it)"),
    "lora_r": Alias("r", "adapter", (AXOLOTL, PEFT)),
    "lora_rank": Alias("r", "adapter", (AXOLOTL, PEFT)),
    "lora_alpha": Alias("alpha", "adapter", (AXOLOTL, PEFT)),
    "lora_dropout": Alias("dropout", "adapter", (AXOLOTL, PEFT)),
    "lora_target_modules": Alias("targets", "adapter"),
    "target_modules": Alias("targets", "adapter", (PEFT, TRL)),
    "lora_target_linear": Alias("targets", "adapter", convert=_when_true("all-linear"),
                                otherwise="list the modules instead: `adapter: {targets: [q_proj, v_proj]}`; "
                                "remove it"),
    "lora_modules_to_save": Alias("modules_to_save", "adapter"),
    "peft_use_dora": Alias("type", "adapter", convert=_when_true("dora"), otherwise="remove it"),
    "use_dora": Alias("type", "adapter", (PEFT, TRL), convert=_when_true("dora"), otherwise="remove it"),
    "lora_fan_in_fan_out": Alias(None, sources=(AXOLOTL, PEFT)),
    "peft_use_rslora": Alias(None, note="it scales the update by `alpha / r`"),
    "use_rslora": Alias(None, sources=(PEFT, TRL), note="it scales the update by `alpha / r`"),
    "lora_model_dir": Alias(None, text="to keep training an earlier stage's adapter, give the later stage "
                            "`input: <that stage>` and `adapter: continue` (DPO); remove it"),
    "load_in_4bit": Alias("type", "adapter", (AXOLOTL, TRL), convert=_when_true("qlora"),
                          note="QLoRA loads the base in 4-bit NF4",
                          otherwise="remove it (`lora` keeps the base in 16-bit)"),
    "load_in_8bit": Alias(None, sources=(AXOLOTL, TRL),
                          text="ftplan has no 8-bit base: it offers QLoRA with a 4-bit base (`adapter: {type: "
                          "qlora}`) or LoRA on a 16-bit base (`adapter: {type: lora}`); remove it"),
    "bnb_4bit_quant_type": Alias(None, sources=(TRL,), text="QLoRA is `adapter: {type: qlora}` (NF4 with double "
                                 "quantization, compute in the stage's `precision`); remove it"),
    "bnb_4bit_use_double_quant": Alias(None, sources=(TRL,), text="QLoRA is `adapter: {type: qlora}` (NF4 with "
                                       "double quantization, compute in the stage's `precision`); remove it"),
    "bnb_4bit_compute_dtype": Alias(None, sources=(TRL,), text="QLoRA computes in the stage's `precision` "
                                    "(`precision: bf16`); remove it"),
    "bnb_config_kwargs": Alias(None, text="QLoRA is `adapter: {type: qlora}` (NF4 with double quantization); "
                               "remove it"),
    "quantization_config": Alias(None, sources=(TRL,), text="QLoRA is `adapter: {type: qlora}` (NF4 with double "
                                 "quantization); remove it"),
    # --- optimisation -----------------------------------------------------------------------------------
    "lr": Alias("learning_rate", sources=(AXOLOTL, TRL)),
    "learning_rate": Alias("learning_rate", sources=(AXOLOTL, TRL)),
    "num_epochs": Alias("epochs"),
    "num_train_epochs": Alias("epochs", sources=(TRL,)),
    "max_steps": Alias("max_steps", sources=(AXOLOTL, TRL)),
    "micro_batch_size": Alias("micro_batch"),
    "per_device_train_batch_size": Alias("micro_batch", sources=(TRL,)),
    "batch_size": Alias("micro_batch", note="the batch per optimizer step is micro_batch × grad_accum × GPUs"),
    "eval_batch_size": Alias(None, note=_EVAL_ONE_BATCH),
    "per_device_eval_batch_size": Alias(None, sources=(TRL,), note=_EVAL_ONE_BATCH),
    "gradient_accumulation_steps": Alias("grad_accum", sources=(AXOLOTL, TRL)),
    "bf16": Alias("precision", sources=(AXOLOTL, TRL), convert=_when_true("bf16"),
                  otherwise="bf16 is the default `precision`; to train in another, write `precision: fp16` or "
                  "`precision: fp32`"),
    "bfloat16": Alias("precision", convert=_when_true("bf16"),
                      otherwise="bf16 is the default `precision`; to train in another, write `precision: fp16` or "
                      "`precision: fp32`"),
    "fp16": Alias("precision", sources=(AXOLOTL, TRL), convert=_when_true("fp16"),
                  otherwise="remove it (`precision` is bf16 unless you set it)"),
    "float16": Alias("precision", convert=_when_true("fp16"),
                     otherwise="remove it (`precision` is bf16 unless you set it)"),
    "fp32": Alias("precision", convert=_when_true("fp32"),
                  otherwise="remove it (`precision` is bf16 unless you set it)"),
    "float32": Alias("precision", convert=_when_true("fp32"),
                     otherwise="remove it (`precision` is bf16 unless you set it)"),
    "tf32": Alias(None, sources=(AXOLOTL, TRL), text="ftplan has no `tf32` switch: `precision` picks bf16, fp16 "
                  "or fp32 compute; remove it"),
    "mixed_precision": Alias("precision", sources=(ACCELERATE,), convert=_mapped(_PRECISION_VALUES)),
    "torch_dtype": Alias("precision", sources=(AXOLOTL, TRL), convert=_mapped(_PRECISION_VALUES),
                         note="the base weights load in the training precision"),
    "optim": Alias("optimizer", sources=(TRL,), convert=_mapped(_OPTIMIZER_VALUES, keep=("adamw",)),
                   otherwise="ftplan's `optimizer` is adamw, adamw_8bit or paged_adamw_8bit: write "
                   "`optimizer: adamw` on the training stage"),
    "optimizer": Alias("optimizer", convert=_mapped(_OPTIMIZER_VALUES, keep=("adamw",)),
                       otherwise="ftplan's `optimizer` is adamw, adamw_8bit or paged_adamw_8bit: write "
                       "`optimizer: adamw` on the training stage"),
    "lr_scheduler_type": Alias("lr_scheduler", sources=(TRL,), convert=_mapped({}, keep=_SCHEDULERS),
                               otherwise="ftplan's `lr_scheduler` is cosine, linear, constant or "
                               "constant_with_warmup: write `lr_scheduler: cosine` on the training stage"),
    "lr_scheduler": Alias("lr_scheduler", convert=_mapped({}, keep=_SCHEDULERS),
                          otherwise="ftplan's `lr_scheduler` is cosine, linear, constant or constant_with_warmup: "
                          "write `lr_scheduler: cosine` on the training stage"),
    "lr_scheduler_kwargs": Alias(None, sources=(TRL,), note="the schedules take no arguments"),
    "cosine_min_lr_ratio": Alias(None, note="the `cosine` schedule decays to 0"),
    "cosine_constant_lr_ratio": Alias(None, note="the `cosine` schedule decays to 0"),
    "warmup_ratio": Alias("warmup_ratio", sources=(AXOLOTL, TRL)),
    "warmup_steps": Alias("warmup_steps", sources=(AXOLOTL, TRL)),
    "weight_decay": Alias("weight_decay", sources=(AXOLOTL, TRL)),
    "max_grad_norm": Alias("max_grad_norm", sources=(AXOLOTL, TRL)),
    "adam_beta1": Alias(None, sources=(AXOLOTL, TRL), note="its AdamW uses the torch defaults"),
    "adam_beta2": Alias(None, sources=(AXOLOTL, TRL), note="its AdamW uses the torch defaults"),
    "adam_epsilon": Alias(None, sources=(AXOLOTL, TRL), note="its AdamW uses the torch defaults"),
    "gradient_checkpointing": Alias("gradient_checkpointing", sources=(AXOLOTL, TRL),
                                    convert=lambda v, w: _checkpointing(v)),
    "gradient_checkpointing_kwargs": Alias(None, sources=(AXOLOTL, TRL),
                                           note="it recomputes each decoder layer (non-reentrant)"),
    "seed": Alias("seed", sources=(AXOLOTL, TRL), note="the data stage's own `seed` shuffles and splits the rows"),
    "group_by_length": Alias(None, sources=(AXOLOTL, TRL)),
    "neftune_noise_alpha": Alias(None, sources=(AXOLOTL, TRL)),
    "early_stopping_patience": Alias(None, note="set `max_steps` or `epochs`; `load_best_model_at_end` keeps "
                                     "the best checkpoint"),
    # --- memory, attention, kernels, distribution -------------------------------------------------------
    "flash_attention": Alias("attention", convert=_when_true("flash_attention_2"),
                             otherwise="remove it (`attention` is sdpa unless you set it)"),
    "sdp_attention": Alias("attention", convert=_when_true("sdpa"), otherwise="remove it"),
    "flex_attention": Alias("attention", convert=_when_true("flex_attention"), otherwise="remove it"),
    "eager_attention": Alias("attention", convert=_when_true("eager"), otherwise="remove it"),
    "xformers_attention": Alias(None, text="ftplan has no xformers backend: use `attention: sdpa` or "
                                "`attention: flash_attention_2`; remove it"),
    "s2_attention": Alias(None),
    "attn_implementation": Alias("attention", sources=(TRL,), convert=_attention,
                                 otherwise="ftplan's `attention` is sdpa, flash_attention_2, flash_attention_3, "
                                 "flex_attention or eager"),
    "use_liger_kernel": Alias("kernels", sources=(TRL,), convert=_when_true("ftplan"),
                              note="fused RMSNorm, SwiGLU, RoPE and cross-entropy", otherwise="remove it"),
    "liger_fused_linear_cross_entropy": Alias("kernels", convert=_when_true("ftplan"),
                                              note="fused RMSNorm, SwiGLU, RoPE and cross-entropy",
                                              otherwise="remove it"),
    "liger_rms_norm": Alias("kernels", convert=_when_true("ftplan"), otherwise="remove it",
                            note="fused RMSNorm, SwiGLU, RoPE and cross-entropy"),
    "liger_glu_activation": Alias("kernels", convert=_when_true("ftplan"), otherwise="remove it",
                                  note="fused RMSNorm, SwiGLU, RoPE and cross-entropy"),
    "liger_rope": Alias("kernels", convert=_when_true("ftplan"), otherwise="remove it",
                        note="fused RMSNorm, SwiGLU, RoPE and cross-entropy"),
    "plugins": Alias(None, note="`kernels: ftplan` on a training stage gives fused kernels"),
    "torch_compile": Alias(None, sources=(AXOLOTL, TRL), note="`kernels: ftplan` fuses RMSNorm, SwiGLU, RoPE "
                           "and the loss instead"),
    "deepspeed": Alias("distributed", sources=(AXOLOTL, TRL), convert=_zero_stage,
                       note="ftplan writes the DeepSpeed JSON itself (offload: `distributed: {strategy: zero3, "
                       "offload_optimizer: true}`)",
                       otherwise="write `distributed: zero2` or `distributed: zero3` on the training stage: ftplan "
                       "writes the DeepSpeed JSON itself (offload: `distributed: {strategy: zero3, "
                       "offload_optimizer: true}`)"),
    "fsdp": Alias("distributed", sources=(AXOLOTL, TRL), convert=lambda v, r: "fsdp2" if v else None,
                  note="ftplan configures FSDP2 itself (offload: `distributed: {strategy: fsdp2, "
                  "offload_params: true}`)", otherwise="remove it"),
    "fsdp_config": Alias("distributed", sources=(AXOLOTL, TRL), convert=lambda v, r: "fsdp2",
                         note="ftplan configures FSDP2 itself (offload: `distributed: {strategy: fsdp2, "
                         "offload_params: true}`)"),
    "fsdp_version": Alias("distributed", convert=lambda v, r: "fsdp2",
                          note="ftplan configures FSDP2 itself"),
    "ddp_timeout": Alias(None, sources=(AXOLOTL, TRL), note="it launches DDP itself (`distributed: ddp`)"),
    "ddp_find_unused_parameters": Alias(None, sources=(AXOLOTL, TRL),
                                        note="it launches DDP itself (`distributed: ddp`)"),
    "ddp_bucket_cap_mb": Alias(None, sources=(AXOLOTL, TRL), note="it launches DDP itself (`distributed: ddp`)"),
    "gpu_memory_limit": Alias(None, note="`ftplan check` estimates the memory per GPU against `hardware.gpu`"),
    "low_cpu_mem_usage": Alias(None, sources=(AXOLOTL, TRL)),
    # --- evaluation, saving, logging --------------------------------------------------------------------
    "eval_steps": Alias("eval_steps", sources=(AXOLOTL, TRL)),
    "save_steps": Alias("save_steps", sources=(AXOLOTL, TRL)),
    "logging_steps": Alias("logging_steps", sources=(AXOLOTL, TRL)),
    "save_total_limit": Alias("save_total_limit", sources=(AXOLOTL, TRL)),
    "load_best_model_at_end": Alias("load_best_model_at_end", sources=(AXOLOTL, TRL)),
    "evals_per_epoch": Alias("eval_steps", convert=lambda v, r: None,
                             otherwise=f"{_STEPS}: write `eval_steps: N` on the training stage; remove it"),
    "saves_per_epoch": Alias("save_steps", convert=lambda v, r: None,
                             otherwise=f"{_STEPS}: write `save_steps: N` on the training stage; remove it"),
    "eval_strategy": Alias("eval_steps", sources=(TRL,), convert=lambda v, r: None,
                           otherwise=f"{_STEPS}: write `eval_steps: N` on the training stage; remove it"),
    "evaluation_strategy": Alias("eval_steps", sources=(TRL,), convert=lambda v, r: None,
                                 otherwise=f"{_STEPS}: write `eval_steps: N` on the training stage; remove it"),
    "save_strategy": Alias("save_steps", sources=(TRL,), convert=lambda v, r: None,
                           otherwise=f"{_STEPS}: write `save_steps: N` on the training stage (default: save at the "
                           "end); remove it"),
    "logging_strategy": Alias(None, sources=(TRL,), note="it logs every `logging_steps`"),
    "logging_first_step": Alias(None, sources=(TRL,)),
    "logging_dir": Alias(None, sources=(TRL,), note="tensorboard logs go to the stage's output folder"),
    "do_train": Alias(None, sources=(TRL,), note="every training stage trains"),
    "do_eval": Alias(None, sources=(TRL,), note="a stage evaluates when `eval_steps` is set"),
    "overwrite_output_dir": Alias(None, sources=(TRL,), note="each stage writes its own folder"),
    "save_safetensors": Alias(None, sources=(AXOLOTL, TRL), note="it always saves safetensors"),
    "save_only_model": Alias(None, sources=(AXOLOTL, TRL)),
    "resume_from_checkpoint": Alias(None, sources=(AXOLOTL, TRL),
                                    note="a requeued stage resumes from its last checkpoint by itself"),
    "auto_resume_from_checkpoints": Alias(None, note="a requeued stage resumes from its last checkpoint by itself"),
    "report_to": Alias("report_to", sources=(TRL,), convert=lambda v, w: w if isinstance(v, list) else (
        "[]" if str(v).lower() == "none" else f"[{w}]")),
    "wandb_project": _wandb("WANDB_PROJECT"),
    "wandb_entity": _wandb("WANDB_ENTITY"),
    "wandb_name": _wandb("WANDB_NAME"),
    "wandb_run_id": _wandb("WANDB_RUN_ID"),
    "wandb_watch": _wandb("WANDB_WATCH"),
    "wandb_log_model": _wandb("WANDB_LOG_MODEL"),
    "wandb_mode": _wandb("WANDB_MODE"),
    "use_wandb": Alias("report_to", convert=_when_true("[wandb]"), otherwise="remove it"),
    "use_mlflow": Alias("report_to", convert=_when_true("[mlflow]"), otherwise="remove it"),
    "mlflow_tracking_uri": Alias("report_to", convert=lambda v, r: "[mlflow]",
                                 note="set it with `hardware: {env: {MLFLOW_TRACKING_URI: {value}}}`"),
    "mlflow_experiment_name": Alias("report_to", convert=lambda v, r: "[mlflow]",
                                    note="set it with `hardware: {env: {MLFLOW_EXPERIMENT_NAME: {value}}}`"),
    "use_tensorboard": Alias("report_to", convert=_when_true("[tensorboard]"), otherwise="remove it"),
    "hub_model_id": Alias(None, sources=(AXOLOTL, TRL), note=_NO_HUB),
    "hub_strategy": Alias(None, sources=(AXOLOTL, TRL), note=_NO_HUB),
    "hub_private_repo": Alias(None, sources=(TRL,), note=_NO_HUB),
    "push_to_hub": Alias(None, sources=(TRL,), note=_NO_HUB),
    "push_dataset_to_hub": Alias(None, note=_NO_HUB),
    # --- preference training ----------------------------------------------------------------------------
    "rl": Alias(None, text="preference training is a stage of its own: add `{id: dpo, kind: dpo, input: <sft "
                "stage>, data: <data stage>, learning_rate: 5e-6, adapter: continue}` (without `input` it starts "
                "from the base model, with a new adapter); `ftplan import axolotl` converts a whole config; remove it"),
    "rpo_alpha": Alias("sft_weight", "dpo", (AXOLOTL, TRL), note="the chosen answer's NLL added to the DPO loss"),
    "cpo_alpha": Alias("sft_weight", "dpo", (AXOLOTL, TRL), note="with `loss_type: simpo`"),
    "dpo_beta": Alias("beta", "dpo"),
    "rl_beta": Alias("beta", "dpo"),
    "beta": Alias("beta", "dpo", (TRL,)),
    "dpo_label_smoothing": Alias("label_smoothing", "dpo"),
    "label_smoothing": Alias("label_smoothing", "dpo", (TRL,)),
    "loss_type": Alias("loss_type", "dpo", (TRL,)),
    "precompute_ref_log_probs": Alias("reference", "dpo", (TRL,), convert=_bool_map("precomputed", "live")),
    "ref_model": Alias(None, sources=(TRL,), note="the DPO reference is the result of the stage's `input` "
                       "(`ftplan check -v` names it)"),
    "max_prompt_length": Alias(None, sources=(TRL,), note="`max_seq_len` on the data stage bounds the prompt "
                               "and answer together"),
    "max_completion_length": Alias(None, sources=(TRL,), note="`max_seq_len` on the data stage bounds the "
                                   "prompt and answer together"),
    # --- data ---------------------------------------------------------------------------------------------
    "datasets": Alias("datasets", "data", places=frozenset({"top", "train", "model", "hardware", "other"}),
                      text="datasets belong to a data stage: write `stages: [{id: data, kind: data, max_seq_len: "
                      "2048, datasets: [{path: ..., format: ...}]}, ...]` and point training stages at it with "
                      "`data: data`"),
    "test_datasets": Alias(None, text="ftplan holds out a validation split with `val_fraction` on the data "
                           "stage; remove it"),
    "dataset_name": Alias(None, sources=(TRL,), text="datasets belong to a data stage: write `datasets: [{path: "
                          "{value}, format: messages}]` on a `kind: data` stage"),
    "dataset_text_field": Alias(None, sources=(TRL,), text="write `columns: {text: {value}}` on a `format: "
                                "text` dataset of the data stage"),
    "dataset_kwargs": Alias(None, sources=(TRL,)),
    "sequence_len": Alias("max_seq_len", "data"),
    "max_seq_length": Alias("max_seq_len", "data", (TRL,)),
    "max_length": Alias("max_seq_len", "data", (TRL,)),
    "model_max_length": Alias("max_seq_len", "data", (TRL,)),
    "max_seq_len": Alias("max_seq_len", "data", (AXOLOTL, TRL)),
    "sample_packing": Alias("packing", "data"),
    "packing": Alias("packing", "data", (TRL,)),
    "eval_sample_packing": Alias(None, note="a data stage with `packing: true` packs its validation rows too"),
    "pad_to_sequence_len": Alias(None, note="it pads each batch to its longest row"),
    "sample_packing_eff_est": Alias(None),
    "train_on_inputs": Alias("loss_on", "data", convert=_bool_map("all", "completion")),
    "completion_only_loss": Alias("loss_on", "data", (TRL,), convert=_bool_map("completion", "all")),
    "assistant_only_loss": Alias("loss_on", "data", (TRL,), convert=_bool_map("completion", "all")),
    "val_set_size": Alias("val_fraction", "data", convert=_fraction,
                          otherwise="ftplan's `val_fraction` is a fraction of the rows below 0.5: write "
                          "`val_fraction: 0.05` on the data stage"),
    "eval_split_size": Alias("val_fraction", "data", convert=_fraction,
                             otherwise="ftplan's `val_fraction` is a fraction of the rows below 0.5: write "
                             "`val_fraction: 0.05` on the data stage"),
    "shuffle_merged_datasets": Alias(None, note="the data stage always shuffles with its `seed`"),
    "dataset_prepared_path": Alias(None, note="the data stage writes its tokenized rows to "
                                   "`<output_dir>/<data stage id>/`"),
    "dataset_processes": Alias(None),
    "dataset_num_proc": Alias(None, sources=(TRL,)),
    "dataloader_num_workers": Alias(None, sources=(AXOLOTL, TRL)),
    "dataloader_pin_memory": Alias(None, sources=(AXOLOTL, TRL)),
    "remove_unused_columns": Alias(None, sources=(TRL,)),
    # --- one dataset entry (Axolotl's datasets[] keys) ----------------------------------------------------
    "type": Alias("format", "dataset", convert=_dataset_format, places=frozenset({"dataset"}),
                  otherwise="ftplan's dataset `format` is alpaca, sharegpt, messages, prompt_completion, text, "
                  "preference or kto: write `format: messages` (and map other column names with `columns`)"),
    "ds_type": Alias(None, note="it reads the file type from the extension (.jsonl, .json, .parquet, .csv)",
                     places=frozenset({"dataset"})),
    "data_files": Alias("path", "dataset", places=frozenset({"dataset"})),
    "name": Alias(None, places=frozenset({"dataset"})),
    "shards": Alias(None, places=frozenset({"dataset"}), note="use `max_rows` to read the first rows only"),
    "train_on_split": Alias("split", "dataset", places=frozenset({"dataset"})),
    "field_messages": Alias("columns", "dataset", convert=_columns("messages")),
    "message_field_role": Alias("columns", "dataset", convert=_columns("role")),
    "message_field_content": Alias("columns", "dataset", convert=_columns("content")),
    "message_property_mappings": Alias("columns", "dataset", convert=lambda v, r: "{role: ..., content: ...}"),
    "field_instruction": Alias("columns", "dataset", convert=_columns("instruction")),
    "field_input": Alias("columns", "dataset", convert=_columns("input")),
    "field_output": Alias("columns", "dataset", convert=_columns("output")),
    "field_system": Alias("columns", "dataset", convert=_columns("system")),
    "field_prompt": Alias("columns", "dataset", convert=_columns("prompt")),
    "field_chosen": Alias("columns", "dataset", convert=_columns("chosen")),
    "field_rejected": Alias("columns", "dataset", convert=_columns("rejected")),
    "train_on_eos": Alias(None, places=frozenset({"dataset", "data", "train", "top"}),
                          note="the data stage's `loss_on` picks the trained tokens"),
    "roles_to_train": Alias(None, note="the data stage's `loss_on` picks the trained tokens"),
    # --- Axolotl housekeeping with no counterpart -----------------------------------------------------------
    "strict": Alias(None, note="unknown keys are always errors"),
    "debug": Alias(None),
    "local_rank": Alias(None, note="the launcher sets each process's rank"),
    "eval_table_size": Alias(None),
    "eval_max_new_tokens": Alias(None),
    "eval_causal_lm_metrics": Alias(None),
    "loss_watchdog_threshold": Alias(None),
    "loss_watchdog_patience": Alias(None),
    "unfrozen_parameters": Alias(None, note="an adapter stage trains `adapter.modules_to_save` in full; "
                                 "`adapter: {type: full}` trains every weight"),
}
"""Foreign key -> what it is in ftplan. Keys that are ftplan fields too (``learning_rate``, ``seed``,
``datasets``) are here for the places Axolotl and TRL write them (the top level) and ftplan does not."""


def _table_hint(field: str, table: dict[str, str], what: str) -> Callable[[str], "str | None"]:
    """A value hint from a table of foreign values: ``what `adamw_torch` is ftplan's `optimizer: adamw```."""
    def hint(value: str) -> str | None:
        target = table.get(value.strip().lower())
        if target is None or target == value:
            return None
        return f"{what} `{value}` is ftplan's `{field}: {target}`: write `{field}: {target}`"
    return hint


_DTYPES = {k: v for k, v in _PRECISION_VALUES.items() if k != "auto"}


def _precision_value(value: str) -> str | None:
    """``precision: auto`` / ``tf32`` / ``bfloat16``."""
    low = value.strip().lower()
    if low == "auto":
        return ("ftplan needs the precision spelled out: write `precision: bf16` (the check says when the GPU "
                "lacks bf16), `fp16` or `fp32`")
    if low == "tf32":
        return "ftplan has no tf32 precision: write `precision: bf16` (or `fp32`)"
    return _table_hint("precision", _DTYPES, "the dtype")(value)


def _format_value(value: str) -> str | None:
    """Axolotl dataset types written as ``format``."""
    target = _dataset_format(value, value)
    if target is None or target == value:
        return None
    extra = " (role/content turns; map other key names with `columns`)" if target == "messages" else ""
    return f"Axolotl's dataset type `{value}` is ftplan's `format: {target}`{extra}: write `format: {target}`"


def _strategy_value(value: str) -> str | None:
    """A DeepSpeed JSON path, ``fsdp`` or accelerate's ``MULTI_GPU`` written as the distributed strategy."""
    low = value.strip().lower()
    stage = _zero_stage(value, value)
    if low.endswith(".json") or "deepspeed" in low or "ds_config" in low:
        pick = f"`distributed: {stage}`" if stage else "`distributed: zero2` or `distributed: zero3`"
        return (f"write {pick}: ftplan writes the DeepSpeed JSON itself (offload: `distributed: {{strategy: "
                f"{stage or 'zero3'}, offload_optimizer: true}}`)")
    if low in ("fsdp", "fsdp1", "full_shard", "shard_grad_op", "hybrid_shard"):
        return "ftplan shards with FSDP2: write `distributed: fsdp2`"
    if low in ("multi_gpu", "data_parallel", "dp"):
        return "write `distributed: ddp` (one process per GPU)"
    return None


def _scheduler_value(value: str) -> str | None:
    """transformers schedules ftplan does not offer."""
    if value.strip().lower() in ("cosine_with_min_lr", "cosine_with_restarts", "warmup_stable_decay", "rex",
                                 "one_cycle", "polynomial", "inverse_sqrt", "reduce_lr_on_plateau"):
        return ("ftplan's schedules are cosine (to 0), linear, constant and constant_with_warmup: write "
                "`lr_scheduler: cosine`")
    return None


def _report_value(value: str) -> str | None:
    """transformers' ``report_to: none`` / ``all``."""
    low = value.strip().lower()
    if low == "none":
        return "write `report_to: []` for no tracker"
    if low == "all":
        return "list the trackers: `report_to: [tensorboard, wandb]`"
    return None


VALUE_ALIASES: dict[str, Callable[[str], "str | None"]] = {
    "optimizer": _table_hint("optimizer", _OPTIMIZER_VALUES, "transformers'"),
    "precision": _precision_value,
    "dtype": _table_hint("dtype", _DTYPES, "the dtype"),
    "attention": _table_hint("attention", _ATTENTION_VALUES, "the backend"),
    "format": _format_value,
    "distributed": _strategy_value,
    "strategy": _strategy_value,
    "lr_scheduler": _scheduler_value,
    "report_to": _report_value,
}
"""ftplan field -> a function from a foreign value written there to the hint naming ftplan's value (or None)."""


# --- lookups ----------------------------------------------------------------------------------------------

def place_of(model: Any) -> str:
    """The place a schema model is (``top``, ``model``, ``hardware``, ``data``, ``dataset``, ``train``,
    ``adapter`` or ``other``), from the model class holding a key."""
    from .schemas import DataStage, FullFinetune, HardwareSpec, LoraAdapter, ModelSpec, Pipeline, TrainingArgs
    from .schemas.datasets import _DatasetBase

    if model is None or not isinstance(model, type):
        return "other"
    for cls, place in ((Pipeline, "top"), (ModelSpec, "model"), (HardwareSpec, "hardware"), (DataStage, "data"),
                       (_DatasetBase, "dataset"), (TrainingArgs, "train"),
                       (LoraAdapter, "adapter"), (FullFinetune, "adapter")):
        if issubclass(model, cls):
            return place
    return "other"


def alias_for(key: Any, place: str) -> Alias | None:
    """The alias of a key written at ``place`` (None when the key is not a known foreign key there)."""
    alias = ALIASES.get(key) if isinstance(key, str) else None
    if alias is None or (alias.places is not None and place not in alias.places):
        return None
    if alias.field == key and _at_home(alias.home, place, is_dpo=True):
        return None  # ftplan's own key at its own place is no foreign key
    return alias


def alias_fills(key: Any, place: str) -> str | None:
    """The key of the mapping at ``place`` that a foreign key written there stands for (``type`` in a dataset ->
    ``format``; ``base_model`` at the top level -> ``model``), else None. A "missing required key" error for
    that key is the same problem, told better by the alias."""
    alias = alias_for(key, place)
    if alias is None or alias.field is None or alias.text:
        return None
    if alias.home == place:
        return alias.field
    if place == "top" and alias.home in ("model", "hardware"):
        return alias.home
    return None


def shown(value: Any, raw: str | None) -> str:
    """A value as it goes into a YAML snippet: scalars as written, short lists in flow style, else ``...``."""
    if raw:
        return raw if len(raw) <= 60 else "..."
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return str(value)
    if isinstance(value, str):
        plain = value and re.fullmatch(r"[A-Za-z0-9_./@:+-]+", value) and not value[0] in "@-:"
        text = value if plain else '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
        return text if len(text) <= 60 else "..."
    if isinstance(value, list) and all(isinstance(v, (str, int, float)) and not isinstance(v, bool) for v in value):
        text = "[" + ", ".join(shown(v, None) for v in value) + "]"
        return text if len(text) <= 60 else "[...]"
    return "..."


def _at_home(home: str, place: str, *, is_dpo: bool) -> bool:
    """True when a field living at ``home`` can be written at ``place`` as it is."""
    if home == "dpo":
        return place == "train" and is_dpo
    return home == place


def alias_hint(key: Any, value: Any, raw: str | None, place: str, *, is_dpo: bool = False,
               data_stage: str | None = None, adapter_type: str | None = None) -> str | None:
    """How to write a foreign key the ftplan way at the place it was written, or None when it is not one.

    ``is_dpo``: the key sits on a DPO stage; ``data_stage``: the data stage a training stage reads (named in
    the hint); ``adapter_type``: the type of the stage's adapter, if it declares one."""
    alias = alias_for(key, place)
    if alias is None:
        return None
    if alias.field == key and _at_home(alias.home, place, is_dpo=is_dpo):
        return None
    written = shown(value, raw)
    if alias.text:
        return alias.text.replace("{value}", written)
    if alias.field is None:
        return f"ftplan has no `{key}`" + (f": {alias.note}" if alias.note else "") + "; remove it"
    if value is None:  # Axolotl's templates list many keys left empty
        home = "this stage's" if _at_home(alias.home, place, is_dpo=is_dpo) else "ftplan's"
        return f"it is empty: remove it; {home} `{alias.field}` is set {_where(alias.home, place, data_stage)}"
    target = alias.convert(value, written) if alias.convert else written
    if target is None:
        return (alias.otherwise or "remove it").replace("{value}", written)
    snippet, wrapped = _snippet(alias, place, target, adapter_type)
    if _at_home(alias.home, place, is_dpo=is_dpo):
        head = f"ftplan calls it `{alias.field}`: write `{snippet}`"
    else:
        name = f"`{alias.field}`" if alias.field == key else f"ftplan's `{alias.field}`"
        head = f"{name} is set {_where(alias.home, place, data_stage)}: write `{snippet}`" + (
            "" if wrapped else " there")
    note = alias.note.replace("{value}", written)
    return head + (f"; {note}" if note else "")


def _snippet(alias: Alias, place: str, value: str, adapter_type: str | None) -> tuple[str, bool]:
    """The YAML to write, and whether it carries its enclosing key (``adapter: {...}``)."""
    field = alias.field
    wrap = {"adapter": "adapter", "model": "model", "hardware": "hardware"}.get(alias.home)
    if wrap is None or place == alias.home:
        return f"{field}: {value}", False
    if wrap == "adapter":
        if field == "type":
            return f"adapter: {{type: {value}}}", True
        return f"adapter: {{type: {adapter_type or 'lora'}, {field}: {value}}}", True
    return f"{wrap}: {{{field}: {value}}}", True


def _where(home: str, place: str, data_stage: str | None) -> str:
    """Where a field lives, in words, as seen from ``place``."""
    if home == "train":
        return "on each training stage (`kind: sft` or `dpo`)"
    if home == "dpo":
        return "on a DPO stage (`kind: dpo`)"
    if home == "data":
        if place == "train" and data_stage:
            return f"on the data stage '{data_stage}' this stage reads"
        return "on the data stage (`kind: data`)"
    if home == "dataset":
        return "on each entry of a data stage's `datasets`"
    if home == "adapter":
        return "in this stage's `adapter`" if place == "train" else "in a training stage's `adapter`"
    if home == "top":
        return "once at the top level"
    return f"under `{home}`"


def value_hint(field: str, value: Any) -> str | None:
    """What ftplan calls a foreign value of ``field`` (``optimizer: adamw_torch`` -> ``adamw``), or None."""
    hint = VALUE_ALIASES.get(field)
    return hint(value) if hint is not None and isinstance(value, str) else None


def foreign_config(data: Any, *, threshold: int = 3) -> tuple[str, str] | None:
    """(message, hint) of the one diagnostic that leads the report when ``data`` looks like a whole Axolotl or
    TRL/transformers config rather than a pipeline, else None.

    It needs ``threshold`` top-level keys whose names ftplan never uses (``base_model``, ``micro_batch_size``;
    ftplan's own names written at the top level, such as ``learning_rate``, do not count) and no ``stages``
    list, so a pipeline with a typo or two never qualifies."""
    from .schema_hints import all_field_names

    if not isinstance(data, dict) or isinstance(data.get("stages"), list):
        return None
    ours = all_field_names()
    keys = [k for k in data if isinstance(k, str) and alias_for(k, "top") is not None]
    foreign = [k for k in keys if k not in ours]
    if len(foreign) < threshold:
        return None
    axolotl = sum(AXOLOTL in ALIASES[k].sources for k in keys)
    trl = sum(TRL in ALIASES[k].sources for k in keys)
    name = ("an Axolotl config" if axolotl > trl else "a TRL/transformers training config" if trl > axolotl
            else "an Axolotl or TRL config")
    listed = ", ".join(foreign[:3]) + (", …" if len(foreign) > 3 else "")
    return (f"this looks like {name} ({listed}), not an ftplan pipeline",
            "an ftplan pipeline is `name`, `model: {base: ...}`, `hardware: {gpu: ...}` and a list of `stages` (a "
            "`kind: data` stage holding the datasets, then `kind: sft`/`dpo` stages); start from an example such as "
            "examples/llama3-8b-qlora-24gb.yaml, and see the errors below for where each key goes")
