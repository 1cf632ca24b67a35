"""Load the model a stage starts from (``ModelSource``): weights, merged adapters, then the trained adapter.

Order for a training stage:

1. tokenizer from ``source.tokenizer`` (+ ``model.add_special_tokens``, + the pipeline's chat template);
2. full weights at the stage precision, with the promised attention implementation; the embeddings grow to the
   tokenizer when tokens were added;
3. ``source.merge`` adapters merged in order. Never into 4-bit weights: when the stage trains on a QLoRA base,
   the merge runs at 16-bit (the stage's compute dtype), is saved to ``<out>/merged_input`` and reloaded in NF4;
4. QLoRA: NF4 + double quantization + compute dtype (bitsandbytes); the embeddings, norms and head stay at the
   compute dtype (no ``prepare_model_for_kbit_training``, whose fp32 upcast costs memory and buys nothing);
5. the trained part: ``continue_adapter`` reloaded trainable, or a new ``LoraConfig``, or nothing (full).

Sharded QLoRA (ZeRO-3 or FSDP2, the FSDP-QLoRA recipe): the packed 4-bit codes are stored in the compute dtype
(``quant_storage`` of the contract), so both can partition them like any 16-bit weight, and the preflight checks the
loaded weights are. Under FSDP2 the base is quantized in host memory (``loads_4bit_on_host``): ``fully_shard`` moves it
onto the GPU one decoder layer at a time, keeping each process's shard, so no GPU holds the whole 4-bit model; and
every trainable parameter is fp32 (FSDP2 needs one dtype per sharded group, and accelerate upcasts a model's trainable
parameters only when it has no 4-bit weights).

A reward stage loads the same weights as ``AutoModelForSequenceClassification`` with one label (a ``score`` head,
initialised from the stage's seed, replaces ``lm_head``) and its adapter as PEFT's ``SEQ_CLS`` task, which trains the
head in full beside it; the graph hands it full weights only (FT212), so nothing is merged into it.

Saving helpers live here too: the tokenizer next to the weights (byte-identical copy when unchanged) and the
check that saved safetensors hold real tensors (not ZeRO-3 placeholders).
"""

from __future__ import annotations

import json
import math
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

from ftplan.schemas.adapters import LoraAdapter
from ftplan.schemas.model import ModelSpec
from ftplan.schemas.runtime_args import (AdapterRef, ModelSource, RuntimeArgs, loads_4bit_on_host, quant_storage)

from .preflight import StageError, check_4bit_storage
from .stamps import TOKENIZER_FILES

MERGED_INPUT_DIR = "merged_input"
"""Stage-local folder of the 16-bit merge a QLoRA stage reloads in 4-bit (deleted once loaded)."""



@dataclass
class LoadedModel:
    """A model ready for a trainer, with its tokenizer and how it was built."""

    model: object
    tokenizer: object
    tokenizer_changed: bool
    """Tokens were added or the chat template replaced (the tokenizer must be re-saved, not copied)."""
    peft: bool
    """The model is a PeftModel whose ``default`` adapter trains."""
    quantized: bool
    """The base weights are 4-bit (QLoRA)."""


def torch_dtype(precision: str):
    """torch dtype for a precision name (``bf16``, ``fp16``, ``fp32``)."""
    import torch

    return {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[precision]


def load_tokenizer(source: ModelSource, spec: ModelSpec):
    """The stage's tokenizer with the pipeline's added special tokens and chat template; returns (tok, changed)."""
    from transformers import AutoTokenizer

    revision = source.revision if source.tokenizer == source.weights else None
    try:
        tok = AutoTokenizer.from_pretrained(source.tokenizer, revision=revision)
    except (OSError, ValueError) as e:
        raise StageError(f"cannot load the tokenizer from '{source.tokenizer}': {_first_line(e)}; check "
                         "`model.tokenizer`/`model.base`, or run the stage that writes it first") from e
    changed = False
    if spec.add_special_tokens:
        changed = tok.add_tokens(list(spec.add_special_tokens), special_tokens=True) > 0
    template = resolve_chat_template(spec.chat_template, tok)
    if template is not None and template != tok.chat_template:
        tok.chat_template = template
        changed = True
    if tok.pad_token is None:
        tok.pad_token = _padding_token(tok)
        print(f"ftplan_runtime: the tokenizer has no pad token; batches are padded with {tok.pad_token!r} (padded positions are "
            "masked from attention and loss, so the choice does not change training; the saved tokenizer is unchanged)",
              file=sys.stderr, flush=True)
    return tok, changed


# Tokens that models ship unused for padding (Llama 3.1's is reserved for exactly this), tried before falling
# back to the end-of-sequence token as TRL does.
_PAD_CANDIDATES = ("<|finetune_right_pad_id|>", "<|pad|>", "<pad>", "[PAD]", "<|endoftext|>")


def _padding_token(tok) -> str:
    """A token already in the vocabulary to pad batches with, for tokenizers that define none."""
    vocab = tok.get_vocab()
    for candidate in _PAD_CANDIDATES:
        if candidate in vocab:
            return candidate
    if tok.eos_token is None:
        raise StageError("the tokenizer has neither a pad token nor an end-of-sequence token to pad with; add one "
                         "with `model.add_special_tokens` (and train embed_tokens/lm_head)")
    return tok.eos_token


def resolve_chat_template(spec: str, tok) -> str | None:
    """The chat template text for ``model.chat_template`` (None: keep the tokenizer's own).

    Resolution (built-in names, ``.jinja`` paths) is the data stage's, so training saves exactly the template the
    examples were rendered with."""
    if spec == "tokenizer":
        return None
    from .data.errors import DataError
    from .data.templates import resolve_template

    try:
        return resolve_template(spec, tok, needed=False).text
    except DataError as e:
        raise StageError(str(e)) from e


def save_tokenizer(tok, source_dir: str, dest: str | Path, *, changed: bool) -> None:
    """Save the tokenizer next to weights/adapter; byte-identical copy of its files when unchanged and local."""
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    src = Path(source_dir)
    if not changed and src.is_dir() and (src / "tokenizer_config.json").is_file():
        for name in TOKENIZER_FILES:
            if (src / name).is_file():
                shutil.copyfile(src / name, dest / name)
        return
    tok.save_pretrained(str(dest))
    # save_pretrained neither rewrites SentencePiece's tokenizer.model nor keeps `legacy` (see tiny.py)
    if (src / "tokenizer.model").is_file() and not (dest / "tokenizer.model").is_file():
        shutil.copyfile(src / "tokenizer.model", dest / "tokenizer.model")
    src_cfg, dst_cfg = src / "tokenizer_config.json", dest / "tokenizer_config.json"
    if src_cfg.is_file() and dst_cfg.is_file():
        old, new = json.loads(src_cfg.read_text()), json.loads(dst_cfg.read_text())
        if "legacy" in old and "legacy" not in new:
            new["legacy"] = old["legacy"]
            dst_cfg.write_text(json.dumps(new, indent=2, sort_keys=True) + "\n")


def load_weights(path: str, *, dtype, attention: str = "sdpa", revision: str | None = None,
                 quantize_4bit: bool = False, device_map=None, reward: bool = False, storage: str = "uint8"):
    """``AutoModelForCausalLM`` from ``path`` at ``dtype`` (NF4 + double quant with ``quantize_4bit``, the packed
    codes stored as ``storage``, a torch dtype name); with ``reward``, ``AutoModelForSequenceClassification`` with
    one label instead (the reward model's score head)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    kwargs = {"dtype": dtype, "attn_implementation": attention, "revision": revision}
    if reward:
        kwargs["num_labels"] = 1
    if quantize_4bit:
        from transformers import BitsAndBytesConfig

        from .bnb_cpu import use_exact_cpu_dequantize

        use_exact_cpu_dequantize()  # bitsandbytes' native CPU kernel misreads rows that are not whole blocks

        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=dtype, bnb_4bit_quant_storage=getattr(torch, storage),
        )
    if device_map is not None:
        kwargs["device_map"] = device_map
    try:
        if reward:
            return _quiet_head_init(AutoModelForSequenceClassification.from_pretrained, path, **kwargs)
        return AutoModelForCausalLM.from_pretrained(path, **kwargs)
    except (OSError, ValueError, ImportError) as e:
        raise StageError(f"cannot load model weights from '{path}': {_first_line(e)}") from e


def _quiet_head_init(load, path: str, **kwargs):
    """Load without transformers' report that the ``score`` head is new and ``lm_head`` unused: both are what a
    reward model built from a causal LM is."""
    from transformers.utils import logging as hf_logging

    level = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        return load(path, **kwargs)
    finally:
        hf_logging.set_verbosity(level)


def fit_embeddings(model, tok) -> None:
    """Grow the input/output embeddings when the tokenizer has more tokens than the model (never shrink)."""
    rows = model.get_input_embeddings().weight.shape[0]
    if len(tok) > rows:
        model.resize_token_embeddings(len(tok))


def merge_adapters(model, refs: list[AdapterRef]):
    """Merge each adapter of ``refs`` into ``model`` in order (``merge_and_unload``); returns the plain model."""
    from peft import PeftModel

    for ref in refs:
        require_adapter(ref)
        model = PeftModel.from_pretrained(model, ref.path).merge_and_unload()
    return model


def require_adapter(ref: AdapterRef) -> None:
    """Fail with the producing stage's name when an adapter folder is missing."""
    if not (Path(ref.path) / "adapter_config.json").is_file():
        raise StageError(f"adapter of stage '{ref.stage}' not found at '{ref.path}' (no adapter_config.json); "
                         f"run stage '{ref.stage}' first")


def train_dtype(precision: str, full_finetune: bool):
    """Dtype of the loaded weights: fp16 mixed precision keeps fp32 master weights when every weight trains."""
    import torch

    if precision == "fp16" and full_finetune:
        return torch.float32
    return torch_dtype(precision)


def load_for_training(args: RuntimeArgs, *, zero_stage: int | None = None, device_map=None,
                      is_main_process: bool = True, wait_for_everyone=lambda: None) -> LoadedModel:
    """Build the model a training stage trains (see the module docstring for the order)."""
    from transformers import set_seed

    stage, src = args.stage, args.source
    if src is None:
        raise StageError(f"stage '{stage.id}' has no model source in its args file; recompile the plan")
    adapter = stage.adapter
    cont = src.continue_adapter
    if adapter == "continue" and cont is None:
        raise StageError(f"stage '{stage.id}' continues an adapter but its args name none; recompile the plan")
    full = not (adapter == "continue" or isinstance(adapter, LoraAdapter))
    reward = stage.kind == "reward"
    if reward and src.merge:
        raise StageError(f"stage '{stage.id}' trains a reward model, which starts from full weights, but its args "
                         "name adapters to merge first; recompile the plan (`ftplan check` says FT212)")
    if reward:
        set_seed(stage.seed)  # the score head's random init is part of the run's seed
    qlora = (isinstance(adapter, LoraAdapter) and adapter.type == "qlora") or (
        adapter == "continue" and cont.type == "qlora")
    dtype = train_dtype(stage.precision, full)
    storage = quant_storage(args.promise)
    if qlora and loads_4bit_on_host(args.promise):
        device_map = {"": "cpu"}  # FSDP2 moves each wrapped layer onto this process's GPU as it shards it
    tok, changed = load_tokenizer(src, args.model)

    weights, revision = src.weights, src.revision
    model = None
    if src.merge:
        if zero_stage == 3 and not qlora:
            raise StageError(f"stage '{stage.id}' merges adapters into the base under ZeRO-3, whose sharded weights "
                             "cannot be merged into; add a merge stage and start this stage from it")
        if qlora:
            merged_dir = Path(args.output_dir) / MERGED_INPUT_DIR
            if is_main_process:
                base = load_weights(weights, dtype=torch_dtype(stage.precision), revision=revision)
                fit_embeddings(base, tok)
                base = merge_adapters(base, src.merge)
                base.save_pretrained(str(merged_dir))
                del base
            wait_for_everyone()
            weights, revision = str(merged_dir), None
        else:
            model = load_weights(weights, dtype=dtype, attention=stage.attention, revision=revision)
            fit_embeddings(model, tok)
            model = merge_adapters(model, src.merge)
    if model is None:
        model = load_weights(weights, dtype=dtype, attention=stage.attention, revision=revision,
                             quantize_4bit=qlora, device_map=device_map if qlora else None, reward=reward,
                             storage=storage)
        fit_embeddings(model, tok)
    if qlora:
        check_4bit_storage(args.promise, model, storage)
    if reward:
        model.config.pad_token_id = tok.pad_token_id  # the score is read at each row's last non-pad token
    if src.merge and qlora:
        wait_for_everyone()
        if is_main_process:
            shutil.rmtree(Path(args.output_dir) / MERGED_INPUT_DIR, ignore_errors=True)

    # A 4-bit base keeps its embeddings, norms and head at the compute dtype: PEFT's
    # `prepare_model_for_kbit_training` would upcast them to fp32, which buys frozen weights no precision and costs
    # 2 bytes per parameter plus an fp32 residual stream (twice the activations). get_peft_model / from_pretrained
    # below freeze everything but the adapter; the trainer switches on (non-reentrant) activation checkpointing.
    # ZeRO-3 gathers parameters in the dtype of the first one: keep adapters in the base dtype there
    autocast = not (zero_stage == 3 and not qlora)
    if adapter == "continue":
        from peft import PeftModel

        require_adapter(cont)
        model = PeftModel.from_pretrained(model, cont.path, is_trainable=True, autocast_adapter_dtype=autocast)
    elif isinstance(adapter, LoraAdapter):
        from peft import get_peft_model

        set_seed(stage.seed)  # the adapter's random init is part of the run's seed
        model = get_peft_model(model, lora_config(adapter, task_type="SEQ_CLS" if reward else "CAUSAL_LM"),
                               autocast_adapter_dtype=autocast)
    if not full and autocast and stage.precision == "fp16":
        upcast_trainable(model)
    if qlora and args.promise.distributed_type == "FSDP":
        upcast_trainable(model, every_half=True)
    return LoadedModel(model=model, tokenizer=tok, tokenizer_changed=changed, peft=not full, quantized=qlora)


def upcast_trainable(model, *, every_half: bool = False) -> None:
    """Keep every trainable fp16 parameter in fp32 (fp16 mixed precision: the loss scaler refuses fp16
    gradients). PEFT upcasts the adapter matrices, but not the ``modules_to_save`` copies of base modules. With
    ``every_half``, bf16 ones too (FSDP2 over a 4-bit base: one trainable dtype per sharded group)."""
    import torch

    half = (torch.float16, torch.bfloat16) if every_half else (torch.float16,)
    for p in model.parameters():
        if p.requires_grad and p.dtype in half:
            p.data = p.data.float()


def lora_config(adapter: LoraAdapter, task_type: str = "CAUSAL_LM"):
    """``peft.LoraConfig`` for a LoRA/QLoRA/DoRA adapter spec (``SEQ_CLS`` for a reward model: PEFT then trains its
    ``score`` head in full beside the adapter)."""
    from peft import LoraConfig

    targets = adapter.targets if isinstance(adapter.targets, str) else list(adapter.targets)
    return LoraConfig(
        r=adapter.r, lora_alpha=adapter.alpha, lora_dropout=adapter.dropout, target_modules=targets,
        modules_to_save=list(adapter.modules_to_save) or None, use_dora=adapter.type == "dora",
        bias="none", task_type=task_type,
    )


def load_reference(args: RuntimeArgs, tokenizer):
    """A frozen copy of a full fine-tune's starting weights, with the input's adapters merged in as the policy
    has them (``merge_input``): the DPO reference policy."""
    stage, src = args.stage, args.source
    model = load_weights(src.weights, dtype=train_dtype(stage.precision, True), attention=stage.attention,
                         revision=src.revision)
    fit_embeddings(model, tokenizer)
    model = merge_adapters(model, src.merge)
    model.requires_grad_(False)
    return model.eval()


def check_saved_weights(folder: Path) -> None:
    """Fail when a saved adapter/model holds no real tensors (ZeRO-3 placeholders: trl#4416)."""
    from safetensors import safe_open

    files = sorted(folder.glob("*.safetensors"))
    if not files:
        raise StageError(f"no .safetensors weights were written to '{folder}'")
    keys, empty = 0, []
    for f in files:
        with safe_open(str(f), framework="pt") as st:
            for key in st.keys():
                keys += 1
                if math.prod(st.get_slice(key).get_shape()) == 0:
                    empty.append(key)
    if empty or keys == 0:
        raise StageError(f"the weights saved to '{folder}' are placeholders ({len(empty)} empty tensors of "
                         f"{keys}), not trained values; with DeepSpeed ZeRO-3 set "
                         "`stage3_gather_16bit_weights_on_model_save: true` (recompile the plan)")


def _first_line(e: BaseException) -> str:
    text = str(e).strip() or type(e).__name__
    return text.splitlines()[0]
