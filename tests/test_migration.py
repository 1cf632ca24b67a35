"""Keys and values from Axolotl, TRL and transformers: the ftplan field and where it lives, not a spelling
neighbour; a whole pasted config gets one leading diagnostic; real typos keep their did-you-mean."""

from __future__ import annotations

import copy
import re

import pytest
import yaml

from ftplan.diagnostics import Severity
from ftplan.loader import load_yaml
from ftplan.migration import ALIASES, VALUE_ALIASES, alias_hint, foreign_config
from ftplan.schema_errors import validate_pipeline
from ftplan.schemas import DataStage, DpoStage, HardwareSpec, LoraAdapter, ModelSpec, Pipeline, SftStage
from ftplan.schemas.datasets import MessagesDataset
from ftplan.sourcemap import display_path

PIPELINE: dict = {
    "name": "demo",
    "model": {"base": "meta-llama/Llama-3.1-8B"},
    "hardware": {"gpu": "h100-sxm-80gb"},
    "stages": [
        {"id": "prep", "kind": "data", "max_seq_len": 2048,
         "datasets": [{"path": "data/train.jsonl", "format": "messages"}]},
        {"id": "sft", "kind": "sft", "data": "prep", "learning_rate": 2e-4, "adapter": {"type": "lora", "r": 16}},
        {"id": "dpo", "kind": "dpo", "input": "sft", "data": "prep", "learning_rate": 5e-6, "adapter": "continue"},
    ],
}
PLACES = {"top": lambda d: d, "model": lambda d: d["model"], "hardware": lambda d: d["hardware"],
          "data": lambda d: d["stages"][0], "dataset": lambda d: d["stages"][0]["datasets"][0],
          "train": lambda d: d["stages"][1], "dpo": lambda d: d["stages"][2],
          "adapter": lambda d: d["stages"][1]["adapter"]}
HOMES = {"top": (Pipeline,), "model": (ModelSpec,), "hardware": (HardwareSpec,), "data": (DataStage,),
         "dataset": (MessagesDataset,), "train": (SftStage, DpoStage), "dpo": (DpoStage,), "adapter": (LoraAdapter,)}


def diagnose(data: dict | str) -> list[tuple[str, str, str | None]]:
    """(``path: message``, code, hint) of each schema diagnostic of a pipeline (a dict or YAML text)."""
    text = data if isinstance(data, str) else yaml.safe_dump(data, sort_keys=False)
    parsed, sm = load_yaml(text, "p.yaml")
    _, diags = validate_pipeline(parsed, sm, "p.yaml")
    assert all(d.severity is Severity.ERROR for d in diags)
    out = []
    for d in diags:
        shown = display_path(d.path, parsed)
        out.append((f"{shown}: {d.message}" if shown else d.message, d.code, d.hint))
    return out


def pipeline_with(place: str, **keys) -> dict:
    """The pipeline with ``keys`` added to the mapping at ``place``."""
    d = copy.deepcopy(PIPELINE)
    PLACES[place](d).update(keys)
    return d


# --- the table ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("key", sorted(ALIASES))
def test_every_alias_names_a_real_field_at_a_real_place(key):
    alias = ALIASES[key]
    assert alias.sources, key
    if alias.field is None:
        assert not alias.convert and not alias.otherwise, key  # no ftplan value to convert to
        return
    assert alias.home in HOMES, key
    assert any(alias.field in model.model_fields for model in HOMES[alias.home]), f"{key}: {alias.field}"


@pytest.mark.parametrize("key", sorted(ALIASES))
def test_every_alias_gives_a_hint_at_the_top_level_and_in_a_training_stage(key):
    for place in ("top", "train"):
        alias = ALIASES[key]
        if alias.places is not None and place not in alias.places:
            continue
        hint = alias_hint(key, 1, "1", place, data_stage="prep")
        if hint is None:  # only an ftplan key at its own place is not foreign
            assert alias.field == key and (place, alias.home) in (("train", "train"), ("train", "dpo"), ("top", "top"))
            continue
        assert hint and "did you mean" not in hint, key
        if alias.field is None and not alias.text:
            assert hint.startswith(f"ftplan has no `{key}`") and hint.endswith("remove it"), key


def test_value_aliases_name_values_ftplan_accepts():
    from ftplan.schemas.training import DistributedStrategy, TrainingArgs

    accepted = {
        "optimizer": TrainingArgs.model_fields["optimizer"].annotation.__args__,
        "attention": TrainingArgs.model_fields["attention"].annotation.__args__,
        "distributed": DistributedStrategy.__args__,
    }
    samples = {"optimizer": ["adamw_torch", "adamw_bnb_8bit", "paged_adamw"], "attention": ["flash_attn", "sdp"],
               "distributed": ["ds/zero3.json", "fsdp", "MULTI_GPU"]}
    for field, values in samples.items():
        for value in values:
            hint = VALUE_ALIASES[field](value)
            named = re.findall(rf"`{field}: (\w+)`", hint)
            assert named and all(n in accepted[field] for n in named), (field, value, hint)


# --- the review's mistakes, one at a time ---------------------------------------------------------------------

@pytest.mark.parametrize("place, keys, expected", [
    ("train", {"deepspeed": "deepspeed_configs/zero3.json"},
     "ftplan calls it `distributed`: write `distributed: zero3`; ftplan writes the DeepSpeed JSON itself (offload: "
     "`distributed: {strategy: zero3, offload_optimizer: true}`)"),
    ("top", {"deepspeed": "zero2.json"},
     "ftplan's `distributed` is set on each training stage (`kind: sft` or `dpo`): write `distributed: zero2` "
     "there; ftplan writes the DeepSpeed JSON itself (offload: `distributed: {strategy: zero3, "
     "offload_optimizer: true}`)"),
    ("train", {"lr": 0.0001}, "ftplan calls it `learning_rate`: write `learning_rate: 0.0001`"),
    ("train", {"micro_batch_size": 4}, "ftplan calls it `micro_batch`: write `micro_batch: 4`"),
    ("train", {"per_device_train_batch_size": 4}, "ftplan calls it `micro_batch`: write `micro_batch: 4`"),
    ("train", {"gradient_accumulation_steps": 8}, "ftplan calls it `grad_accum`: write `grad_accum: 8`"),
    ("train", {"num_train_epochs": 3}, "ftplan calls it `epochs`: write `epochs: 3`"),
    ("train", {"num_epochs": 3}, "ftplan calls it `epochs`: write `epochs: 3`"),
    ("train", {"lora_r": 32},
     "ftplan's `r` is set in this stage's `adapter`: write `adapter: {type: lora, r: 32}`"),
    ("train", {"lora_alpha": 64},
     "ftplan's `alpha` is set in this stage's `adapter`: write `adapter: {type: lora, alpha: 64}`"),
    ("train", {"lora_dropout": 0.05},
     "ftplan's `dropout` is set in this stage's `adapter`: write `adapter: {type: lora, dropout: 0.05}`"),
    ("train", {"lora_target_modules": ["q_proj", "v_proj"]},
     "ftplan's `targets` is set in this stage's `adapter`: write `adapter: {type: lora, targets: [q_proj, v_proj]}`"),
    ("adapter", {"target_modules": ["q_proj"]}, "ftplan calls it `targets`: write `targets: [q_proj]`"),
    ("train", {"load_in_4bit": True},
     "ftplan's `type` is set in this stage's `adapter`: write `adapter: {type: qlora}`; QLoRA loads the base in "
     "4-bit NF4"),
    ("train", {"load_in_8bit": True},
     "ftplan has no 8-bit base: it offers QLoRA with a 4-bit base (`adapter: {type: qlora}`) or LoRA on a 16-bit "
     "base (`adapter: {type: lora}`); remove it"),
    ("train", {"sequence_len": 4096},
     "ftplan's `max_seq_len` is set on the data stage 'prep' this stage reads: write `max_seq_len: 4096` there"),
    ("train", {"max_seq_length": 4096},
     "ftplan's `max_seq_len` is set on the data stage 'prep' this stage reads: write `max_seq_len: 4096` there"),
    ("data", {"max_length": 4096}, "ftplan calls it `max_seq_len`: write `max_seq_len: 4096`"),
    ("train", {"val_set_size": 0.05},
     "ftplan's `val_fraction` is set on the data stage 'prep' this stage reads: write `val_fraction: 0.05` there"),
    ("data", {"val_set_size": 500},
     "ftplan's `val_fraction` is a fraction of the rows below 0.5: write `val_fraction: 0.05` on the data stage"),
    ("train", {"bf16": "auto"}, "ftplan calls it `precision`: write `precision: bf16`"),
    ("train", {"fp16": True}, "ftplan calls it `precision`: write `precision: fp16`"),
    ("train", {"tf32": True},
     "ftplan has no `tf32` switch: `precision` picks bf16, fp16 or fp32 compute; remove it"),
    ("train", {"fsdp": "full_shard auto_wrap"},
     "ftplan calls it `distributed`: write `distributed: fsdp2`; ftplan configures FSDP2 itself (offload: "
     "`distributed: {strategy: fsdp2, offload_params: true}`)"),
    ("train", {"flash_attention": True}, "ftplan calls it `attention`: write `attention: flash_attention_2`"),
    ("train", {"sdp_attention": True}, "ftplan calls it `attention`: write `attention: sdpa`"),
    ("train", {"lr_scheduler_type": "linear"}, "ftplan calls it `lr_scheduler`: write `lr_scheduler: linear`"),
    ("train", {"optim": "adamw_bnb_8bit"}, "ftplan calls it `optimizer`: write `optimizer: adamw_8bit`"),
    ("train", {"wandb_project": "chat"},
     "ftplan calls it `report_to`: write `report_to: [wandb]`; set it with `hardware: {env: {WANDB_PROJECT: chat}}`"),
    ("train", {"hub_model_id": "me/model"},
     "ftplan has no `hub_model_id`: it does not push to the Hugging Face Hub (upload the stage's output folder "
     "`<output_dir>/<stage id>/`); remove it"),
    ("train", {"train_on_inputs": False},
     "ftplan's `loss_on` is set on the data stage 'prep' this stage reads: write `loss_on: completion` there"),
    ("top", {"base_model": "Qwen/Qwen2.5-7B"}, "ftplan's `base` is set under `model`: write `model: {base: "
     "Qwen/Qwen2.5-7B}`"),
    ("top", {"learning_rate": 0.0002},
     "`learning_rate` is set on each training stage (`kind: sft` or `dpo`): write `learning_rate: 0.0002` there"),
    ("top", {"adapter": "lora"},
     "the adapter is chosen per training stage: write `adapter: {type: lora}` on a `kind: sft` stage (with `r`, "
     "`alpha`, `dropout`, `targets` inside it)"),
    ("top", {"chat_template": "chatml"},
     "`chat_template` is set under `model`: write `model: {chat_template: chatml}`"),
    ("dpo", {"dpo_beta": 0.2}, "ftplan calls it `beta`: write `beta: 0.2`"),
    ("train", {"beta": 0.2}, "'beta' is only valid when kind is 'dpo' or 'orpo' or 'kto'"),
    ("dataset", {"field_messages": "conversations"},
     "ftplan calls it `columns`: write `columns: {messages: conversations}`"),
    ("train", {"datasets": []},
     "datasets belong to a data stage: write `stages: [{id: data, kind: data, max_seq_len: 2048, datasets: "
     "[{path: ..., format: ...}]}, ...]` and point training stages at it with `data: data`"),
])
def test_a_foreign_key_gets_the_ftplan_field_and_where_it_lives(place, keys, expected):
    [(message, code, hint)] = diagnose(pipeline_with(place, **keys))
    assert (code, message.rsplit(": ", 1)[-1]) == ("FT003", f"unknown key '{next(iter(keys))}'")
    assert hint == expected


def test_deepspeed_is_no_typo_of_seed():
    [(_, _, hint)] = diagnose(pipeline_with("train", deepspeed="ds_config.json"))
    assert "seed" not in hint and "`distributed: zero2` or `distributed: zero3`" in hint
    assert "ftplan writes the DeepSpeed JSON itself" in hint


def test_a_dataset_type_is_its_format_in_one_run():
    """Axolotl's dataset ``type`` is ftplan's ``format``: no "missing 'format'", no "adapter indentation" note,
    and the other foreign keys of the entry are reported in the same run."""
    d = copy.deepcopy(PIPELINE)
    d["stages"][0]["datasets"] = [{"path": "data/train.jsonl", "type": "chat_template",
                                   "field_messages": "conversations"}]
    assert diagnose(d) == [
        ("stages[prep].datasets[0]: unknown key 'type'", "FT003", "ftplan calls it `format`: write `format: messages`"),
        ("stages[prep].datasets[0]: unknown key 'field_messages'", "FT003",
         "ftplan calls it `columns`: write `columns: {messages: conversations}`"),
    ]
    d["stages"][0]["datasets"] = [{"path": "data/train.jsonl", "type": "alpaca"}]
    assert diagnose(d) == [("stages[prep].datasets[0]: unknown key 'type'", "FT003",
                            "ftplan calls it `format`: write `format: alpaca`")]


@pytest.mark.parametrize("field, value, expected", [
    ("format", "chat_template", "Axolotl's dataset type `chat_template` is ftplan's `format: messages` (role/content "
     "turns; map other key names with `columns`): write `format: messages`"),
    ("distributed", "deepspeed_configs/zero3.json", "write `distributed: zero3`: ftplan writes the DeepSpeed JSON "
     "itself (offload: `distributed: {strategy: zero3, offload_optimizer: true}`)"),
    ("optimizer", "adamw_torch", "transformers' `adamw_torch` is ftplan's `optimizer: adamw`: write "
     "`optimizer: adamw`"),
    ("precision", "auto", "ftplan needs the precision spelled out: write `precision: bf16` (the check says when "
     "the GPU lacks bf16), `fp16` or `fp32`"),
    ("report_to", "none", "write `report_to: []` for no tracker"),
])
def test_a_foreign_value_gets_the_ftplan_value(field, value, expected):
    d = copy.deepcopy(PIPELINE)
    target = d["stages"][0]["datasets"][0] if field == "format" else d["stages"][1]
    target[field] = value
    [(_, _, hint)] = diagnose(d)
    assert hint == expected


def test_model_as_text_says_write_base():
    d = copy.deepcopy(PIPELINE)
    d["model"] = "Qwen/Qwen2.5-7B-Instruct"
    assert diagnose(d) == [("model: must be a mapping (got 'Qwen/Qwen2.5-7B-Instruct')", "FT006",
                            "write `model: {base: Qwen/Qwen2.5-7B-Instruct}`")]


@pytest.mark.parametrize("place, key, expected", [
    ("train", "learning_rat", "did you mean 'learning_rate'?"),
    ("train", "micro_batchh", "did you mean 'micro_batch'?"),
    ("train", "grad_acum", "did you mean 'grad_accum'?"),
    ("data", "max_seq_lenn", "did you mean 'max_seq_len'?"),
    ("top", "nme", "did you mean 'name'?"),
    ("hardware", "gpus_per_nod", "did you mean 'gpus_per_node'?"),
    ("top", "nodes", "'nodes' is a key of hardware (check the indentation)"),
])
def test_real_typos_keep_their_did_you_mean(place, key, expected):
    [(_, _, hint)] = diagnose(pipeline_with(place, **{key: 2}))
    assert hint == expected


@pytest.mark.parametrize("place, key, value, fix_at", [
    ("train", "lr", 1e-4, "train"), ("train", "micro_batch_size", 4, "train"),
    ("train", "gradient_accumulation_steps", 4, "train"), ("train", "num_epochs", 2, "train"),
    ("train", "lora_r", 8, "train"), ("train", "lora_alpha", 16, "train"), ("train", "lora_dropout", 0.1, "train"),
    ("train", "lora_target_modules", ["q_proj"], "train"), ("train", "load_in_4bit", True, "train"),
    ("train", "bf16", True, "train"), ("train", "fp16", True, "train"), ("train", "deepspeed", "zero3.json", "train"),
    ("train", "fsdp_config", {"x": 1}, "train"), ("train", "flash_attention", True, "train"),
    ("train", "optim", "adamw_torch", "train"), ("train", "lr_scheduler_type", "linear", "train"),
    ("train", "use_liger_kernel", True, "train"), ("dpo", "dpo_beta", 0.2, "dpo"),
    ("dpo", "precompute_ref_log_probs", True, "dpo"), ("train", "sequence_len", 1024, "data"),
    ("train", "sample_packing", True, "data"), ("train", "val_set_size", 0.1, "data"),
    ("data", "train_on_inputs", True, "data"), ("dataset", "field_messages", "convs", "dataset"),
    ("dataset", "data_files", "data/x.jsonl", "dataset"), ("adapter", "lora_r", 8, "adapter"),
    ("adapter", "target_modules", ["v_proj"], "adapter"), ("top", "base_model", "Qwen/Qwen2.5-7B", "top"),
    ("top", "chat_template", "chatml", "top"), ("model", "tokenizer_name", "meta-llama/Llama-3.1-8B", "model"),
    ("hardware", "num_processes", 4, "hardware"), ("top", "micro_batch_size", 4, "train"),
])
def test_doing_what_the_hint_says_makes_the_error_go_away(place, key, value, fix_at):
    """The snippet in the hint, written where the hint says, validates."""
    [(_, _, hint)] = diagnose(pipeline_with(place, **{key: value}))
    snippet = yaml.safe_load("{" + re.search(r"write `([^`]+)`", hint)[1] + "}")
    fixed = copy.deepcopy(PIPELINE)
    target = PLACES[fix_at](fixed)
    for k, v in snippet.items():
        target[k] = {**target[k], **v} if isinstance(v, dict) and isinstance(target.get(k), dict) else v
    assert diagnose(fixed) == [], hint


# --- a whole config pasted as a pipeline ----------------------------------------------------------------------

AXOLOTL = """\
base_model: NousResearch/Meta-Llama-3-8B
load_in_4bit: true
datasets:
  - path: mhenrichsen/alpaca_2k_test
    type: alpaca
adapter: qlora
sequence_len: 4096
lora_r: 32
micro_batch_size: 2
num_epochs: 4
learning_rate: 0.0002
deepspeed: deepspeed_configs/zero2.json
"""


def test_an_axolotl_config_gets_one_leading_line_and_per_key_hints():
    result = diagnose(AXOLOTL)
    message, code, hint = result[0]
    assert code == "FT009"
    assert message == ("this looks like an Axolotl config (base_model, load_in_4bit, sequence_len, …), not an ftplan "
                       "pipeline")
    assert "examples/" in hint and "`stages`" in hint
    keys = [m.split("'")[1] for m, c, _ in result[1:]]
    assert keys == ["base_model", "load_in_4bit", "datasets", "adapter", "sequence_len", "lora_r", "micro_batch_size",
                    "num_epochs", "learning_rate", "deepspeed"]
    assert [c for _, c, _ in result[1:]] == ["FT003"] * len(keys)
    hints = {m.split("'")[1]: h for m, _, h in result[1:]}
    assert hints["base_model"] == ("ftplan's `base` is set under `model`: write `model: {base: "
                                   "NousResearch/Meta-Llama-3-8B}`")
    assert hints["deepspeed"].startswith("ftplan's `distributed` is set on each training stage")
    assert "missing required key" not in " ".join(m for m, _, _ in result)  # folded into the leading line


def test_the_leading_line_lists_what_is_missing():
    parsed, sm = load_yaml(AXOLOTL, "a.yaml")
    _, diags = validate_pipeline(parsed, sm, "a.yaml")
    assert diags[0].code == "FT009" and diags[0].notes == ("missing: name, hardware, stages",)
    assert (diags[0].span.line, diags[0].span.col) == (diags[1].span.line, diags[1].span.col) == (1, 1)


def test_a_trl_config_is_named_as_such():
    trl = ("model_name_or_path: Qwen/Qwen2.5-7B\nper_device_train_batch_size: 2\nnum_train_epochs: 1\n"
           "gradient_accumulation_steps: 8\nmax_seq_length: 2048\n")
    assert diagnose(trl)[0][0].startswith("this looks like a TRL/transformers training config (model_name_or_path, "
                                          "per_device_train_batch_size, num_train_epochs, …)")


@pytest.mark.parametrize("extra", [
    {"lr": 1e-4},
    {"micro_batch_size": 2, "num_epochs": 1},
    {"learning_rate": 1e-4, "seed": 3, "epochs": 2, "max_steps": 10},  # ftplan's own keys, misplaced
])
def test_a_pipeline_with_a_few_foreign_keys_is_no_foreign_config(extra):
    d = copy.deepcopy(PIPELINE)
    d.update(extra)
    assert foreign_config(d) is None
    assert all(code != "FT009" for _, code, _ in diagnose(d))


def test_foreign_keys_in_a_pipeline_with_stages_are_no_foreign_config():
    d = copy.deepcopy(PIPELINE)
    d.update(base_model="x", micro_batch_size=2, num_epochs=1, lora_r=8, sequence_len=2048)
    assert foreign_config(d) is None


def test_the_examples_are_no_foreign_configs():
    from pathlib import Path

    for path in sorted((Path(__file__).resolve().parent.parent / "examples").glob("*.yaml")):
        assert foreign_config(yaml.safe_load(path.read_text(encoding="utf-8"))) is None, path.name
