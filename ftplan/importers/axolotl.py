"""An Axolotl training config (a dict, as its YAML parses) -> an equivalent ftplan pipeline as commented YAML.

The pipeline has a data stage (``datasets`` or ``pretraining_dataset``, ``sequence_len``, ``sample_packing``,
``val_set_size``, ``train_on_inputs``), one training stage and, when the config merges its LoRA
(``merge_lora: true``), a merge stage. The training stage's kind follows the config: ``sft``; ``cpt`` for a
``pretraining_dataset``; for ``rl``, ``dpo`` (``dpo``, ``ipo`` and ``simpo`` as its ``loss_type``), ``orpo`` or
``kto``, each starting from the base model as Axolotl does (no SFT stage before it); ``reward`` for
``reward_model: true``. Online RL (``grpo``, ``gdpo``, ``ebft``) and process reward models are refused
(``ImportRefused``): ftplan has no stage that trains them.

Every value written carries a comment naming the Axolotl key(s) it came from; every Axolotl key that could not be
carried over is listed at the end of the file with the reason (``axolotl_reasons``), and the keys given without a value are listed on one line. Axolotl configs name
no GPU: the pipeline targets ``gpu`` × ``gpus_per_node`` (the CLI's ``--gpu``, ``--gpus``). The training stage is
``axolotl_training``'s, each dataset entry ``axolotl_datasets``'. Nothing here reads files.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ..catalog import MODELS
from ..json_schema import SCHEMA_FILE
from .axolotl_common import Builder, ImportRefused, integer, number, on
from .axolotl_datasets import TEMPLATE_PREFIXES, dataset_entry
from .axolotl_reasons import reason
from .axolotl_training import tracker_env, train_stage
from .commented_yaml import render

__all__ = ["DEFAULT_GPU", "SHARDED_GPUS", "ImportRefused", "Imported", "import_axolotl"]

DEFAULT_GPU = "h100-sxm-80gb"
"""The GPU a pipeline imported without ``--gpu`` is checked against."""
SHARDED_GPUS = 8
"""GPUs per node assumed for a config that shards with DeepSpeed or FSDP when ``--gpus`` is not given."""

SHIPPED_TEMPLATES = ("chatml", "llama3")
"""Axolotl chat template names that ftplan ships under the same name."""

_RL_KINDS = {"dpo": ("dpo", "sigmoid"), "ipo": ("dpo", "ipo"), "simpo": ("dpo", "simpo"), "orpo": ("orpo", None),
             "kto": ("kto", None)}
"""Axolotl's ``rl`` -> (ftplan stage kind, DPO ``loss_type``)."""


@dataclass(frozen=True)
class Imported:
    """A converted config: the pipeline text, its training kind, and what became of every Axolotl key."""

    text: str
    """The pipeline as YAML, comments included."""
    kind: str
    """The training stage's kind (``sft``, ``cpt``, ``dpo``, ``orpo``, ``kto``, ``reward``)."""
    mapped: dict[str, str]
    """Axolotl key (``datasets[0].field_messages`` for a dataset's) -> the ftplan key it set
    (``stages[data].datasets[0].columns.prompt``)."""
    unmapped: dict[str, str]
    """Axolotl key -> why it was not carried over (a comment in ``text`` too)."""
    empty: tuple[str, ...]
    """Axolotl keys given without a value (nothing to carry over)."""


def import_axolotl(config: Mapping[str, Any], *, gpu: str = DEFAULT_GPU, gpus_per_node: int | None = None,
                   name: str | None = None, source: str | None = None, schema: str | None = None) -> Imported:
    """The ftplan pipeline equivalent to an Axolotl ``config`` on ``gpus_per_node`` × ``gpu`` (default: 1 GPU, or
    ``SHARDED_GPUS`` when the config shards with DeepSpeed or FSDP); ``source`` names the config file in the header,
    ``schema`` is the ``yaml-language-server`` schema reference (default: the installed schema file)."""
    if not isinstance(config, Mapping):
        raise ImportRefused("the Axolotl config is not a mapping of keys to values",
                            "pass the YAML file you give `axolotl train`")
    b = Builder(config)
    base = config.get("base_model")
    if not isinstance(base, str) or not base:
        raise ImportRefused("the Axolotl config has no `base_model`", "set `base_model` to the hub id or folder of "
                            "the model it fine-tunes")
    kind, loss = _kind(b)
    model = _model(b, base)
    data = _data_stage(b, kind)
    train = train_stage(b, kind, loss, base)
    stages: list[dict[str, Any]] = [data, train]
    merge = _merge_stage(b, train)
    if merge is not None:
        stages.append(merge)
    sharded = "distributed" in train
    hardware: dict[str, Any] = {"gpu": gpu, "gpus_per_node": gpus_per_node or (SHARDED_GPUS if sharded else 1)}
    if gpus_per_node is None:
        b.comments[("hardware", "gpus_per_node")] = (
            f"the config shards with {'DeepSpeed' if b.given('deepspeed') else 'FSDP'} over several GPUs, which "
            f"Axolotl does not count: {SHARDED_GPUS} assumed (`ftplan import --gpus`)" if sharded else
            "one GPU assumed (`ftplan import --gpus`)")
    env = tracker_env(b, train)
    if env:
        hardware["env"] = env
    b.comments[("hardware", "gpu")] = ("Axolotl configs name no GPU: the card `ftplan check` estimates memory for "
                                       "(`ftplan import --gpu`)")
    doc: dict[str, Any] = {"name": _name(name, base, kind), "model": model, "hardware": hardware}
    if b.given("output_dir"):
        doc["output_dir"] = _output_dir(config["output_dir"])
        b.comment(("output_dir",), ("output_dir",), "each stage writes <output_dir>/<stage id>/")
        b.took(("output_dir",), "output_dir")
    doc["stages"] = stages
    _relocate_comments(b)
    empty = _leftovers(b)
    header = [f"yaml-language-server: $schema={schema or SCHEMA_FILE.as_uri()}",
              f"Imported from the Axolotl config {source or '(unnamed)'} by `ftplan import axolotl`.",
              "Each value names the Axolotl key it came from; the keys that could not be carried over are listed "
              "at the end with the reason."]
    text = render(doc, b.comments, header=header, footer=_footer(b, empty))
    return Imported(text=text, kind=kind, mapped=dict(b.mapped), unmapped=dict(b.unmapped), empty=empty)


# --- the kind and the model --------------------------------------------------------------------------------------

def _kind(b: Builder) -> tuple[str, str | None]:
    """(training stage kind, DPO loss type) from ``rl``, ``reward_model`` and ``pretraining_dataset``."""
    cfg = b.cfg
    rl = cfg.get("rl")
    if on(rl):
        low = str(rl).strip().lower()
        if low not in _RL_KINDS:
            raise ImportRefused(f"`rl: {rl}` is online reinforcement learning (generation during training), which "
                                "ftplan has no stage for",
                                "ftplan trains sft, cpt, dpo (sigmoid, ipo, hinge, robust, simpo), orpo, kto and "
                                "reward stages; import the SFT part of the config without `rl`")
        kind, loss = _RL_KINDS[low]
        b.took(("rl",), f"stages[{kind}].kind")
        return kind, loss
    if on(cfg.get("process_reward_model")):
        raise ImportRefused("`process_reward_model: true` trains a per-step (process) reward model, which ftplan has "
                            "no stage for", "`reward_model: true` (an outcome reward model) imports as a reward stage")
    if on(cfg.get("reward_model")):
        b.took(("reward_model",), "stages[reward].kind")
        for key in ("num_labels", "model_type"):
            if b.given(key):
                b.took((key,), "stages[reward].kind")
        return "reward", None
    if cfg.get("pretraining_dataset"):
        return "cpt", None
    return "sft", None


def _model(b: Builder, base: str) -> dict[str, Any]:
    model: dict[str, Any] = {"base": base}
    b.took(("base_model",), "model.base")
    shape = _same_name(base)
    if shape is not None:
        model["architecture"] = shape[0]
        b.comments[("model", "architecture")] = (f"the catalog's {shape[1]} has the same repository name: check that "
                                                 f"'{base}' is that model")
    b.comment(("model", "base"), ("base_model",), "" if shape else _architecture_note(base))
    if b.given("revision_of_model"):
        model["revision"] = str(b.cfg["revision_of_model"])
        b.took(("revision_of_model",), "model.revision")
        b.comment(("model", "revision"), ("revision_of_model",))
    tokenizer = b.cfg.get("tokenizer_config")
    if isinstance(tokenizer, str) and tokenizer and tokenizer != base:
        model["tokenizer"] = tokenizer
        b.took(("tokenizer_config",), "model.tokenizer")
        b.comment(("model", "tokenizer"), ("tokenizer_config",))
    elif tokenizer == base:
        b.took(("tokenizer_config",), "model.base")
    template = _chat_template(b)
    if template is not None:
        model["chat_template"] = template[0]
        b.comment(("model", "chat_template"), template[1], template[2])
    tokens = b.cfg.get("tokens")
    if isinstance(tokens, list) and tokens:
        model["add_special_tokens"] = [str(t) for t in tokens]
        b.took(("tokens",), "model.add_special_tokens")
        b.comment(("model", "add_special_tokens"), ("tokens",))
    return model


def _architecture_note(base: str) -> str:
    """Whether ftplan's catalog knows the model's shape (else ``model.architecture`` is needed for the estimate)."""
    if any(base in m.hub_ids for m in MODELS.values()):
        return ""
    return ("not in ftplan's catalog: set `architecture` to the `ftplan models` key of its shape, or point `base` "
            "at a local folder with config.json")


def _same_name(base: str) -> tuple[str, str] | None:
    """(catalog key, hub id) of an uncatalogued ``base`` whose repository name is a catalogued hub id's (a mirror
    such as ``NousResearch/Llama-3.2-1B``), else None."""
    if any(base in m.hub_ids for m in MODELS.values()):
        return None
    repo = base.rstrip("/").rsplit("/", 1)[-1].lower()
    for key, m in MODELS.items():
        for hub_id in m.hub_ids:
            if hub_id.rsplit("/", 1)[-1].lower() == repo:
                return key, hub_id
    return None


def _chat_template(b: Builder) -> tuple[str, tuple[str, ...], str] | None:
    """(``model.chat_template``, Axolotl keys, note) from ``chat_template`` or a dataset type's template prefix."""
    value = b.cfg.get("chat_template")
    if isinstance(value, str) and value:
        low = value.strip()
        if low == "tokenizer_default":
            b.took(("chat_template",), "model.chat_template")
            return "tokenizer", ("chat_template",), "the tokenizer's own template"
        if low in SHIPPED_TEMPLATES:
            b.took(("chat_template",), "model.chat_template")
            return low, ("chat_template",), ""
        if low == "jinja":
            return None  # chat_template_jinja: unmapped (alias: save it as a .jinja file)
        b.took(("chat_template",), "model.chat_template")
        return "tokenizer", ("chat_template",), (f"Axolotl's built-in `{low}`; ftplan ships chatml and llama3, so the "
                                                 "model's own tokenizer template is used (the same one where the "
                                                 "model ships it; else save the template as a .jinja file)")
    for i, raw in enumerate(_dataset_list(b.cfg)):
        prefix = str(raw.get("type") or "").partition(".")[0]
        if prefix in TEMPLATE_PREFIXES and "." in str(raw.get("type")):
            return prefix, (f"datasets[{i}].type",), "the template Axolotl formats this dataset type with"
    return None


def _dataset_list(cfg: Mapping[str, Any]) -> list[dict[str, Any]]:
    raw = cfg.get("datasets") or cfg.get("pretraining_dataset") or []
    if isinstance(raw, dict):
        raw = [raw]
    return [d for d in raw if isinstance(d, dict)] if isinstance(raw, list) else []


def _name(name: str | None, base: str, kind: str) -> str:
    """The pipeline name: ``name``, else ``<model>-<kind>`` with the characters a name cannot hold replaced."""
    if name:
        return name
    stem = re.sub(r"[^A-Za-z0-9._-]+", "-", base.rstrip("/").rsplit("/", 1)[-1]).strip("-._") or "axolotl"
    return f"{stem[:50]}-{kind}"


def _output_dir(value: Any) -> str:
    """Axolotl's ``output_dir`` without a leading ``./`` (ftplan's paths are relative to the pipeline file)."""
    text = str(value)
    return text[2:] if text.startswith("./") and len(text) > 2 else text


# --- the data stage ----------------------------------------------------------------------------------------------

def _data_stage(b: Builder, kind: str) -> dict[str, Any]:
    cfg = b.cfg
    stage: dict[str, Any] = {"id": "data", "kind": "data"}
    key = "pretraining_dataset" if kind == "cpt" else "datasets"
    raws = _dataset_list(cfg)
    if not raws:
        raise ImportRefused(f"the Axolotl config has no `{key}`", "add the datasets to the config, or write the "
                            "pipeline's data stage by hand")
    entries = []
    for i, raw in enumerate(raws):
        entry = dataset_entry(raw, kind)
        where = ("stages", 0, "datasets", i)
        for k, target in entry.mapped.items():
            b.mapped[f"{key}[{i}].{k}"] = f"stages[data].datasets[{i}].{target}"
        for k, why in entry.unmapped.items():
            b.unmapped[f"{key}[{i}].{k}"] = why
        b.comments[where] = f"from {key}[{i}] (type {raw.get('type') or 'default'})" + (
            f"; {entry.caveat}" if entry.caveat else "")
        entries.append(entry.spec)
    b.used.add(key)
    b.mapped.setdefault(key, "stages[data].datasets")
    stage["datasets"] = entries
    seq = integer(cfg.get("sequence_len"))
    stage["max_seq_len"] = seq if seq is not None else 2048
    if seq is not None:
        b.took(("sequence_len",), "stages[data].max_seq_len")
        b.comment(("stages", 0, "max_seq_len"), ("sequence_len",))
    else:
        b.comments[("stages", 0, "max_seq_len")] = "Axolotl's default sequence_len"
    if b.given("sample_packing"):
        stage["packing"] = on(cfg["sample_packing"])
        b.took(("sample_packing",), "stages[data].packing")
        b.comment(("stages", 0, "packing"), ("sample_packing",))
    if kind == "cpt":
        stage["loss_on"] = "all"
        b.comments[("stages", 0, "loss_on")] = "raw text trains on every token"
        if on(cfg.get("train_on_inputs")):
            b.took(("train_on_inputs",), "stages[data].loss_on")
    elif b.given("train_on_inputs"):
        stage["loss_on"] = "all" if on(cfg["train_on_inputs"]) else "completion"
        b.took(("train_on_inputs",), "stages[data].loss_on")
        b.comment(("stages", 0, "loss_on"), ("train_on_inputs",))
    if b.given("val_set_size"):
        size = number(cfg["val_set_size"])
        if size is not None and 0 <= size < 0.5:
            stage["val_fraction"] = size
            b.took(("val_set_size",), "stages[data].val_fraction")
            b.comment(("stages", 0, "val_fraction"), ("val_set_size",))
    if b.given("seed"):
        stage["seed"] = integer(cfg["seed"])
        b.comment(("stages", 0, "seed"), ("seed",), "shuffle and split")
    return stage


# --- the merge stage, comments, leftovers ------------------------------------------------------------------------

def _merge_stage(b: Builder, train: dict[str, Any]) -> dict[str, Any] | None:
    if not on(b.cfg.get("merge_lora")):
        if b.given("merge_lora"):
            b.took(("merge_lora",), "stages")
        return None
    if train["adapter"].get("type") == "full":
        b.skip("merge_lora", "the stage trains every weight: there is no adapter to merge")
        return None
    dtype = {"bf16": "bf16", "fp16": "fp16"}.get(train.get("precision", "bf16"), "fp32")
    b.took(("merge_lora",), "stages[merge]")
    b.comments[("stages", 2, "kind")] = "from merge_lora: folds the adapter into full weights"
    return {"id": "merge", "kind": "merge", "input": train["id"], "dtype": dtype}


def _relocate_comments(b: Builder) -> None:
    """Training-stage comments were collected under a placeholder path: move them to ``stages[1]``."""
    for path in [p for p in b.comments if p[:1] == ("__train__",)]:
        b.comments[("stages", 1) + path[1:]] = b.comments.pop(path)


def _leftovers(b: Builder) -> tuple[str, ...]:
    """Every top-level key neither mapped nor explained becomes unmapped with its reason; keys without a value are
    returned (nothing to carry over)."""
    empty = []
    for key, value in b.cfg.items():
        if key in b.used or key in b.mapped:
            continue
        if value is None or value == "" or value == [] or value == {}:
            empty.append(str(key))
            continue
        b.unmapped[str(key)] = reason(str(key), value)
    return tuple(empty)


def _footer(b: Builder, empty: tuple[str, ...]) -> list[str]:
    lines = []
    if b.unmapped:
        lines.append("Axolotl keys not carried over:")
        for key, why in b.unmapped.items():
            lines.append(f"  {key}: {why}")
    if empty:
        lines.append("Axolotl keys given without a value (nothing to carry over): " + ", ".join(empty))
    return lines
