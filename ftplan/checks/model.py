"""Rules between the pipeline and the model architecture: LoRA targets, modules trained in full, new tokens,
context length, GGUF export support, local model paths that do not exist, and a hub model without a pinned
revision."""

from __future__ import annotations

import re

from ftplan.catalog import GGUF_FAMILIES, gguf_supported, target_module_names, unknown_targets
from ftplan.catalog.models import ModelShape
from ftplan.context import Context
from ftplan.diagnostics import Diagnostic, error, warning
from ftplan.schemas import DataStage, GgufStage, LoraAdapter
from ftplan.suggest import did_you_mean

from ._common import data_stages, declared_adapter, train_stages

CODES = {
    "FT401": "a LoRA target matches no module of the architecture",
    "FT402": "a module in modules_to_save does not exist in the architecture",
    "FT403": "new special tokens but the adapter does not train the embeddings",
    "FT404": "max_seq_len exceeds the model's context and it declares no RoPE scaling",
    "FT405": "max_seq_len exceeds the model's declared context (RoPE scaling is declared)",
    "FT412": "the GGUF exporter does not support this model family",
    "FT413": "a local model or tokenizer path does not exist",
    "FT414": "the local model folder does not exist yet; checks use model.architecture",
    "FT416": "a hub model without a pinned revision (no `model.revision`, or a branch or tag name)",
}

COMMIT_SHA = re.compile(r"^[0-9a-f]{40}$")
"""A full hub commit id: the one kind of ``model.revision`` that cannot move."""

_OUTER = ("embed_tokens", "lm_head")


def non_linear_modules(shape: ModelShape) -> tuple[str, ...]:
    """Module names besides the decoder linears that ``modules_to_save`` may name (norms, blocks, embeddings)."""
    names = ["embed_tokens", "lm_head", "norm", "input_layernorm", "post_attention_layernorm", "self_attn",
             "rotary_emb"]
    names.append("block_sparse_moe" if shape.num_experts else "mlp")
    if shape.family in ("gemma2", "gemma3"):
        names += ["pre_feedforward_layernorm", "post_feedforward_layernorm"]
    if shape.family in ("qwen3", "gemma3"):
        names += ["q_norm", "k_norm"]
    return tuple(names)


def check(ctx: Context) -> list[Diagnostic]:
    """Architecture rules (skipped when the architecture is unknown, which resolve already reported)."""
    diags = _missing_paths(ctx) + _revision(ctx)
    shape = ctx.shape
    if shape is None:
        return diags
    for i, stage, _ in train_stages(ctx):
        adapter = declared_adapter(stage)
        if adapter is not None:
            diags += _targets(shape, i, adapter)
            diags += _new_tokens(ctx, i, adapter)
    for i, data in data_stages(ctx):
        diags += _context(shape, i, data)
    for i, any_stage in enumerate(ctx.pipeline.stages):
        if isinstance(any_stage, GgufStage) and not gguf_supported(shape):
            diags.append(error("FT412", ("stages", i, "kind"), f"GGUF export supports the "
                               f"{', '.join(sorted(GGUF_FAMILIES))} families; this model is {shape.family}",
                               hint="remove the gguf stage (the merge stage's safetensors are the result)"))
    return diags


def _missing_paths(ctx: Context) -> list[Diagnostic]:
    """Missing local model/tokenizer folders. A missing base with ``model.architecture`` set is only a warning:
    the folder may be produced before the run (e.g. built or copied on the cluster), and the checks use the
    catalog shape meanwhile."""
    diags = []
    arch = ctx.pipeline.model.architecture
    for path, rel in ctx.inputs.missing:
        if not path or path[0] != "model" or path == ("model", "chat_template"):
            continue
        if path == ("model", "base") and arch is not None and ctx.shape is not None:
            diags.append(warning("FT414", path, f"local model folder '{rel}' does not exist yet; the checks and "
                                 f"the estimate use the catalog shape '{arch}'",
                                 hint="make sure the folder exists before the first training stage runs"))
            continue
        what = "tokenizer folder" if path[-1] == "tokenizer" else "model folder"
        diags.append(error("FT413", path, f"local {what} '{rel}' does not exist",
                           hint="check the path (relative to the pipeline file), or use a hub id"))
    return diags


def _revision(ctx: Context) -> list[Diagnostic]:
    """FT416: a hub model whose revision can move. Without ``model.revision`` every run downloads whatever the
    hub's main branch holds then; a branch or tag name can be moved. A local folder has nothing to pin (its files
    are hashed into the plan's inputs instead)."""
    model = ctx.pipeline.model
    if ctx.inputs.base_is_local:
        return []
    hint = ("set `model.revision` to the 40-character commit id of the weights you mean (the model page's "
            "\"Files and versions\" tab, \"History\"), so every run and rerun loads the same files")
    if model.revision is None:
        return [warning("FT416", ("model", "base"), f"'{model.base}' is a hub model without `model.revision`: "
                        "each run downloads whatever its main branch holds on that day, so a rerun may train other "
                        "weights than the ones this plan was checked against", hint=hint)]
    if not COMMIT_SHA.match(model.revision):
        return [warning("FT416", ("model", "revision"), f"`revision: {model.revision}` is not a commit id (40 "
                        f"lowercase hex characters) but a branch or tag name, which can move: a rerun may load other "
                        f"weights of '{model.base}'",
                        hint=hint)]
    return []


def _targets(shape: ModelShape, i: int, adapter: LoraAdapter) -> list[Diagnostic]:
    diags = []
    linears = target_module_names(shape)
    if adapter.targets != "all-linear":
        for name in unknown_targets(shape, adapter.targets):
            j = adapter.targets.index(name)
            diags.append(error("FT401", ("stages", i, "adapter", "targets", j), f"LoRA target '{name}' matches no "
                               f"module of this {shape.family} model",
                               hint=did_you_mean(name, linears + _OUTER) or
                               f"its linear modules are {', '.join(linears)} (or use `targets: all-linear`)"))
    others = non_linear_modules(shape)
    known = set(linears) | set(others)
    for j, name in enumerate(adapter.modules_to_save):
        if not unknown_targets(shape, [name]) or name.split(".")[-1] in others:
            continue
        diags.append(error("FT402", ("stages", i, "adapter", "modules_to_save", j), f"modules_to_save names "
                           f"'{name}', which this {shape.family} model does not have",
                           hint=did_you_mean(name, sorted(known)) or
                           "use module names such as embed_tokens, lm_head, norm"))
    return diags


def _new_tokens(ctx: Context, i: int, adapter: LoraAdapter) -> list[Diagnostic]:
    added = list(ctx.pipeline.model.add_special_tokens)
    tok = ctx.inputs.tokenizer
    if tok is not None and tok.tokens:
        added = [t for t in added if t not in tok.tokens]  # tokens already in the vocabulary resize nothing
    if not added:
        return []
    missing = [m for m in _OUTER if m not in adapter.modules_to_save]
    if not missing:
        return []
    want = sorted(set(adapter.modules_to_save) | set(_OUTER), key=lambda m: (m not in _OUTER, m))
    shown = ", ".join(added[:3]) + (", ..." if len(added) > 3 else "")
    return [error("FT403", ("stages", i, "adapter", "modules_to_save"), f"`model.add_special_tokens` adds "
                  f"{len(added)} token{'s' if len(added) > 1 else ''} ({shown}), but this adapter does not train "
                  f"{' and '.join(missing)}: the new rows stay random and are not saved",
                  hint=f"set `modules_to_save: [{', '.join(want)}]`")]


def _context(shape: ModelShape, i: int, stage: DataStage) -> list[Diagnostic]:
    limit = shape.max_position_embeddings
    if stage.max_seq_len <= limit:
        return []
    path = ("stages", i, "max_seq_len")
    if not shape.rope_scaling:
        return [error("FT404", path, f"`max_seq_len: {stage.max_seq_len}` exceeds the model's "
                      f"max_position_embeddings ({limit}) and its config declares no RoPE scaling",
                      hint=f"set `max_seq_len` to {limit} or less")]
    return [warning("FT405", path, f"`max_seq_len: {stage.max_seq_len}` exceeds the model's declared context "
                    f"({limit}, RoPE scaling included); quality past it is untested",
                    hint=f"set `max_seq_len` to {limit} or less unless you extend the context on purpose")]
