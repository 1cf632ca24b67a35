"""Schema errors: every pydantic error becomes one located, actionable diagnostic (exact text and line:col)."""

from __future__ import annotations

from pathlib import Path

import pytest

from ftplan.diagnostics import Severity
from ftplan.loader import load_yaml
from ftplan.schema_errors import CODES, validate_pipeline
from ftplan.schemas import Pipeline
from ftplan.sourcemap import display_path
from ftplan.suggest import close_matches, did_you_mean

# Line numbers matter: every assertion below names a line:col of this text (after one edit).
BASE = """\
name: demo
model:
  base: meta-llama/Llama-3.1-8B
hardware:
  gpu: h100-sxm-80gb
  slurm:
    partition: gpu
stages:
  - id: prep
    kind: data
    max_seq_len: 2048
    datasets:
      - {path: data/train.jsonl, format: alpaca, columns: {instruction: q}}
  - id: sft
    kind: sft
    data: prep
    learning_rate: 2.0e-4
    distributed: zero3
    adapter: {type: lora, r: 16}
  - id: dpo
    kind: dpo
    input: sft
    data: prep
    learning_rate: 5.0e-6
    adapter: continue
"""


def edit(*pairs: str, text: str = BASE) -> str:
    """``BASE`` with each ``old`` replaced by ``new`` (each ``old`` must occur exactly once)."""
    for old, new in zip(pairs[::2], pairs[1::2]):
        assert text.count(old) == 1, old
        text = text.replace(old, new)
    return text


def run(text: str) -> list[tuple[str, str, str, str | None]]:
    """(``line:col``, ``code``, ``path: message``, hint) for each diagnostic of ``text``."""
    data, sm = load_yaml(text, "pipeline.yaml")
    pipeline, diags = validate_pipeline(data, sm, "pipeline.yaml")
    assert (pipeline is None) == bool(diags)
    out = []
    for d in diags:
        assert d.severity is Severity.ERROR and d.span is not None and d.span.file == "pipeline.yaml"
        shown = display_path(d.path, data)
        assert not shown or not d.message.startswith(shown), "message repeats the path"
        out.append((f"{d.span.line}:{d.span.col}", d.code, f"{shown}: {d.message}" if shown else d.message,
                    d.hint))
    return out


def test_valid_pipelines_have_no_diagnostics(sft_yaml, full_yaml):
    for text in (BASE, sft_yaml, full_yaml):
        data, sm = load_yaml(text, "p.yaml")
        pipeline, diags = validate_pipeline(data, sm, "p.yaml")
        assert diags == [] and isinstance(pipeline, Pipeline)


def test_examples_validate():
    root = Path(__file__).resolve().parents[1] / "examples"
    files = sorted(root.glob("*.yaml"))
    for path in files:
        data, sm = load_yaml(path.read_text(encoding="utf-8"), path.name)
        assert validate_pipeline(data, sm, path.name)[1] == [], path.name


# --- FT003 unknown keys, at every level -------------------------------------------------------------------

@pytest.mark.parametrize("old, new, expected", [
    ("name: demo", "nme: demo", ("1:1", "FT003", "unknown key 'nme'", "did you mean 'name'?")),
    ("  base: meta", "  bse: meta",
     ("3:3", "FT003", "model: unknown key 'bse'", "did you mean 'base'?")),
    ("  gpu: h100", "  gpus: h100",
     ("5:3", "FT003", "hardware: unknown key 'gpus'", "did you mean 'gpu'?")),
    ("    partition: gpu", "    partiton: gpu",
     ("7:5", "FT003", "hardware.slurm: unknown key 'partiton'", "did you mean 'partition' or 'cpu_partition'?")),
    ("    learning_rate: 2.0e-4", "    learning_rat: 2.0e-4",
     ("17:5", "FT003", "stages[sft]: unknown key 'learning_rat'", "did you mean 'learning_rate'?")),
    ("r: 16}", "alhpa: 16}",
     ("19:27", "FT003", "stages[sft].adapter: unknown key 'alhpa'", "did you mean 'alpha'?")),
    ("format: alpaca,", "fromat: alpaca,",
     ("13:34", "FT003", "stages[prep].datasets[0]: unknown key 'fromat'", "did you mean 'format'?")),
    ("{instruction: q}", "{instrucion: q}",
     ("13:60", "FT003", "stages[prep].datasets[0].columns: unknown key 'instrucion'",
      "did you mean 'instruction'?")),
    ("    max_seq_len: 2048", "    max-seq-len: 2048",
     ("11:5", "FT003", "stages[prep]: unknown key 'max-seq-len'", "did you mean 'max_seq_len'?")),
])
def test_unknown_key_at_every_level(old, new, expected):
    assert run(edit(old, new)) == [expected]


def test_unknown_key_without_close_match_lists_the_allowed_keys():
    assert run(edit("  base: meta-llama/Llama-3.1-8B", "  base: meta-llama/Llama-3.1-8B\n  colour: red")) == [
        ("4:3", "FT003", "model: unknown key 'colour'",
         "allowed keys: add_special_tokens, architecture, base, chat_template, revision, tokenizer")]


def test_unknown_key_of_a_block_with_many_keys_points_at_the_allowed_keys():
    """hardware has more keys than a hint lists: the hint says to check the spelling and a note lists them."""
    assert run(edit("  gpu: h100-sxm-80gb", "  gpu: h100-sxm-80gb\n  colour: red")) == [
        ("6:3", "FT003", "hardware: unknown key 'colour'", "check the spelling against the allowed keys")]


def test_unknown_key_of_another_stage_kind_says_where_it_belongs():
    assert run(edit("    distributed: zero3", "    beta: 0.1")) == [
        ("18:5", "FT003", "stages[sft]: unknown key 'beta'",
         "'beta' is only valid when kind is 'dpo' or 'orpo' or 'kto'")]


def test_key_at_the_wrong_level_says_where_it_belongs():
    assert run(edit("  gpu: h100-sxm-80gb", "  gpu: h100-sxm-80gb\n  partition: gpu",
                    "    learning_rate: 5.0e-6", "    learning_rate: 5.0e-6\n    path: x")) == [
        ("6:3", "FT003", "hardware: unknown key 'partition'",
         "'partition' is a key of hardware.slurm and of stages[].slurm (check the indentation)"),
        ("26:5", "FT003", "stages[dpo]: unknown key 'path'",
         "'path' is a key of stages[].datasets[] (check the indentation)"),
    ]
    assert run(edit("name: demo", "name: demo\nnodes: 2")) == [
        ("2:1", "FT003", "unknown key 'nodes'", "'nodes' is a key of hardware (check the indentation)")]


def test_long_allowed_key_lists_go_to_the_notes():
    data, sm = load_yaml(edit("    learning_rate: 5.0e-6", "    learning_rate: 5.0e-6\n    colour: red"), "p.yaml")
    (d,) = validate_pipeline(data, sm, "p.yaml")[1]
    assert (d.message, d.hint) == ("unknown key 'colour'", "check the spelling against the allowed keys")
    assert d.notes[0].startswith("allowed keys: adapter, attention, beta, data, distributed, epochs,")


def test_misspelt_required_key_is_one_error_not_two():
    """``bse`` is unknown and ``base`` is missing: the typo explains both."""
    assert run(edit("  base: meta", "  bse: meta")) == [
        ("3:3", "FT003", "model: unknown key 'bse'", "did you mean 'base'?")]


# --- FT004 invalid values ---------------------------------------------------------------------------------

def test_negative_learning_rate_points_at_the_value_and_shows_it_as_written():
    assert run(edit("learning_rate: 2.0e-4", "learning_rate: -0.0001")) == [
        ("17:20", "FT004", "stages[sft].learning_rate: must be > 0 (got -0.0001)",
         "write a value > 0 and at most 1, e.g. `learning_rate: 2e-4`; learning_rate: peak learning rate")]
    assert run(edit("learning_rate: 2.0e-4", "learning_rate: -1e-4"))[0][2] == \
        "stages[sft].learning_rate: must be > 0 (got -1e-4)"


@pytest.mark.parametrize("old, new, expected", [
    ("r: 16}", "r: 0}", ("19:30", "FT004", "stages[sft].adapter.r: must be at least 1 (got 0)",
                         "write a value at least 1 and at most 4096, e.g. `r: 16` (the default); "
                         "r: rank of the update matrices")),
    ("    max_seq_len: 2048", "    max_seq_len: 8",
     ("11:18", "FT004", "stages[prep].max_seq_len: must be at least 16 (got 8)",
      "write a value at least 16 and at most 1048576, e.g. `max_seq_len: 2048`; "
      "max_seq_len: longest tokenized example (prompt + completion; packed sequence length when packing)")),
    ("learning_rate: 5.0e-6", "learning_rate: 2",
     ("24:20", "FT004", "stages[dpo].learning_rate: must be at most 1 (got 2)",
      "write a value > 0 and at most 1, e.g. `learning_rate: 5e-6`; learning_rate: peak learning rate")),
    ("path: data/train.jsonl", "path: ''",
     ("13:16", "FT004", "stages[prep].datasets[0].path: must not be empty",
      "write a non-empty value; path: local '.jsonl', '.json', '.parquet' or '.csv' file or 'datasets' folder "
      "(relative to the pipeline file), or a hub dataset id")),
    ("    learning_rate: 5.0e-6", "    learning_rate: 5.0e-6\n    beta: 0",
     ("25:11", "FT004", "stages[dpo].beta: must be > 0 (got 0)",
      "write a value > 0 and at most 10, e.g. `beta: 0.1` (the default); "
      "beta: strength of the KL penalty toward the reference policy")),
])
def test_range_violations(old, new, expected):
    assert run(edit(old, new)) == [expected]


def test_bad_enum_value_with_did_you_mean():
    added = "    adapter: continue\n    precision: bf61\n    optimizer: adamw8bit"
    assert run(edit("    adapter: continue", added)) == [
        ("26:16", "FT004", "stages[dpo].precision: must be one of 'bf16', 'fp16', 'fp32' (got 'bf61')",
         "did you mean 'bf16'?"),
        ("27:16", "FT004", "stages[dpo].optimizer: must be one of 'adamw', 'adamw_8bit', 'paged_adamw_8bit' "
         "(got 'adamw8bit')", "did you mean 'adamw_8bit'?"),
    ]


@pytest.mark.parametrize("old, new, expected", [
    ("kind: sft", "kind: sfft",
     ("15:11", "FT004", "stages[sft].kind: unknown stage kind 'sfft'", "did you mean 'sft'?")),
    ("kind: sft", "kind: train",
     ("15:11", "FT004", "stages[sft].kind: unknown stage kind 'train'",
      "use one of 'data', 'sft', 'cpt', 'dpo', 'orpo', 'kto', 'reward', 'merge', 'gguf'")),
    ("format: alpaca", "format: alpacca",
     ("13:42", "FT004", "stages[prep].datasets[0].format: unknown dataset format 'alpacca'",
      "did you mean 'alpaca'?")),
    ("{type: lora, r: 16}", "{type: LoRA, r: 16}",
     ("19:21", "FT004", "stages[sft].adapter.type: unknown adapter type 'LoRA'", "did you mean 'lora'?")),
])
def test_bad_discriminator(old, new, expected):
    assert run(edit(old, new)) == [expected]


def test_discriminator_that_is_not_text():
    assert run(edit("kind: sft", "kind: [sft]")) == [
        ("15:11", "FT006", "stages[sft].kind: must be one of 'data', 'sft', 'cpt', 'dpo', 'orpo', 'kto', 'reward', 'merge', 'gguf' (got a list)",
         "write one of them as plain text, e.g. `kind: data`")]


def test_shown_values_are_escaped_and_shortened():
    assert run(edit("name: demo", 'name: "demo\\u202e\\n"', "r: 16}", "r: " + "9" * 60 + "}")) == [
        ("1:7", "FT004", "name: must be a pipeline name (got 'demo\\u202e\\n')",
         "use letters, digits, '.', '_' and '-' (at most 64)"),
        ("19:30", "FT004", "stages[sft].adapter.r: must be at most 4096 (got " + "9" * 37 + "...)",
         "write a value at least 1 and at most 4096, e.g. `r: 16` (the default); r: rank of the update matrices"),
    ]


def test_pattern_errors_say_what_the_pattern_means():
    assert run(edit("  - id: sft", "  - id: SFT-1", "    input: sft", "    input: SFT-1")) == [
        ("14:9", "FT004", "stages[SFT-1].id: must be a stage identifier (got 'SFT-1')",
         "use lowercase letters, digits and underscores, starting with a letter (at most 32)"),
        ("22:12", "FT004", "stages[dpo].input: must be a stage identifier (got 'SFT-1')",
         "use lowercase letters, digits and underscores, starting with a letter (at most 32)"),
    ]
    assert run(edit("    partition: gpu", "    partition: gpu;rm")) == [
        ("7:16", "FT004", "hardware.slurm.partition: must be a value safe inside an '#SBATCH' directive "
         "(got 'gpu;rm')", "it must contain no whitespace, quotes, '$', backticks or ';'")]


def test_dict_key_errors_point_at_the_key():
    assert run(edit("    partition: gpu", "    partition: gpu\n    extra: {mail_type: END}\n  env: {1BAD: x}")) == [
        ("8:13", "FT003", "hardware.slurm.extra: unknown key 'mail_type'", "did you mean 'mail-type'?"),
        ("9:9", "FT004", "hardware.env: key '1BAD' must be an environment variable name",
         "use letters, digits and '_', not starting with a digit"),
    ]


# --- FT005 missing keys -----------------------------------------------------------------------------------

def test_missing_required_key_points_at_the_parent_mapping():
    assert run(edit("    learning_rate: 5.0e-6\n", "")) == [
        ("20:5", "FT005", "stages[dpo]: missing required key 'learning_rate'",
         "add 'learning_rate:' (peak learning rate)")]
    assert run(edit("model:\n  base: meta-llama/Llama-3.1-8B\n", "model:\n  revision: main\n")) == [
        ("2:1", "FT005", "model: missing required key 'base'",
         "add 'base:' (hub id ('meta-llama/Llama-3.1-8B-Instruct') or local folder with 'config.json' "
         "(relative to the pipeline file))")]


def test_missing_top_level_keys():
    text = "name: demo\nstages: []\n"
    assert run(text) == [
        ("1:1", "FT005", "missing required key 'hardware'", "add 'hardware:' (the target GPUs the pipeline is "
         "checked against and launched on)"),
        ("1:1", "FT005", "missing required key 'model'", "add 'model:' (the base model, tokenizer and chat template)"),
        ("2:9", "FT004", "stages: must have at least 1 item (got 0)",
         "add at least 1 item, e.g. `stages: [{id: data, kind: data, ...}]`; "
         "stages: stages, run in this order; each may consume the results of earlier ones"),
    ]


def test_missing_stage_kind():
    assert run(edit("    kind: dpo\n", "")) == [
        ("20:5", "FT005", "stages[dpo]: missing required key 'kind'",
         "add 'kind:' with one of 'data', 'sft', 'cpt', 'dpo', 'orpo', 'kto', 'reward', 'merge', 'gguf'")]


# --- FT006 wrong types ------------------------------------------------------------------------------------

@pytest.mark.parametrize("old, new, expected", [
    ("learning_rate: 2.0e-4", "learning_rate: abc",
     ("17:20", "FT006", "stages[sft].learning_rate: must be a number (got 'abc')",
      "write a number, e.g. `learning_rate: 2e-4`")),
    ("learning_rate: 2.0e-4", "learning_rate: '2e-4'",
     ("17:20", "FT006", "stages[sft].learning_rate: must be a number (got '2e-4')", "remove the quotes: 2e-4")),
    ("r: 16}", "r: 16.5}", ("19:30", "FT006", "stages[sft].adapter.r: must be an integer (got 16.5)",
                           "write a whole number, e.g. `r: 16`")),
    ("r: 16}", "r: true}", ("19:30", "FT006", "stages[sft].adapter.r: must be an integer (got true)",
                           "write a whole number, e.g. `r: 16`")),
    ("    max_seq_len: 2048", "    max_seq_len: 2048\n    packing: yes",
     ("12:14", "FT006", "stages[prep].packing: must be true or false (got 'yes')",
      "write `true` or `false` (`yes` is text in YAML 1.2, which ftplan reads)")),
    ("    partition: gpu", "    partition: 42",
     ("7:16", "FT006", "hardware.slurm.partition: must be a string (got 42)", 'quote it: "42"')),
    ("    adapter: {type: lora, r: 16}", "    adapter: lora",
     ("19:14", "FT006", "stages[sft].adapter: must be a mapping (got 'lora')", "write {type: lora}")),
    ("model:\n  base: meta-llama/Llama-3.1-8B\n", "model:\nbase: x\n",
     ("2:7", "FT006", "model: must be a mapping (got an empty value)",
      "indent the keys that belong to it under it")),
    ("    datasets:\n      - {path: data/train.jsonl, format: alpaca, columns: {instruction: q}}",
     "    datasets: {path: x}",
     ("12:15", "FT006", "stages[prep].datasets: must be a list (got a mapping)",
      "write a list: one `- item` line per item, indented under the key, or `[a, b]`")),
])
def test_wrong_types(old, new, expected):
    result = run(edit(old, new))
    assert expected in result and len(result) == (2 if "base: x" in new else 1)


def test_list_expected_for_a_single_value():
    text = edit("    adapter: continue", "    adapter: continue\n  - {id: g, kind: gguf, input: dpo, quant: q8_0}")
    assert run(text) == [("26:44", "FT006", "stages[g].quant: must be a list (got 'q8_0')",
                          "write [q8_0] for a single item")]


def test_stage_that_is_not_a_mapping():
    assert run(edit("    adapter: continue", "    adapter: continue\n  - sft")) == [
        ("26:5", "FT006", "stages[3]: must be a mapping (got 'sft')", "write {kind: sft}")]


# --- unions: one error for the branch that matches what was written ---------------------------------------

def test_union_keeps_only_the_literal_branch_for_text():
    assert run(edit("distributed: zero3", "distributed: zero4")) == [
        ("18:18", "FT004", "stages[sft].distributed: must be one of 'auto', 'none', 'ddp', 'zero1', 'zero2', "
         "'zero3', 'fsdp2' (got 'zero4')", "did you mean 'zero1' or 'zero2'?")]


def test_union_keeps_only_the_mapping_branch_for_a_mapping():
    assert run(edit("distributed: zero3", "distributed: {strategy: zero-3, offload: true}")) == [
        ("18:29", "FT004", "stages[sft].distributed.strategy: must be one of 'auto', 'none', 'ddp', 'zero1', "
         "'zero2', 'zero3', 'fsdp2' (got 'zero-3')", "did you mean 'zero3'?"),
        ("18:37", "FT003", "stages[sft].distributed: unknown key 'offload'",
         "did you mean 'offload_params'?"),
    ]


def test_union_with_no_matching_branch_is_one_type_error():
    assert run(edit("distributed: zero3", "distributed: [zero3]")) == [
        ("18:18", "FT006", "stages[sft].distributed: must be one of 'auto', 'none', 'ddp', 'zero1', 'zero2', "
         "'zero3', 'fsdp2' or a mapping (got a list)", "write `distributed: auto` or `distributed: {strategy: ...}`")]


def test_dpo_adapter_union():
    assert run(edit("adapter: continue", "adapter: contine")) == [
        ("25:14", "FT004", "stages[dpo].adapter: must be 'continue' (got 'contine')", "did you mean 'continue'?")]
    assert run(edit("adapter: continue", "adapter: {type: lora, r: x}")) == [
        ("25:30", "FT006", "stages[dpo].adapter.r: must be an integer (got 'x')", "write a whole number, e.g. `r: 16`")]
    assert run(edit("adapter: continue", "adapter: {type: lorra}")) == [
        ("25:21", "FT004", "stages[dpo].adapter.type: unknown adapter type 'lorra'", "did you mean 'lora' or 'qlora'?")]


def test_lora_targets_union():
    assert run(edit("r: 16}", "r: 16, targets: q_proj}")) == [
        ("19:43", "FT004", "stages[sft].adapter.targets: must be 'all-linear' (got 'q_proj')",
         "or write a list: [q_proj]")]
    assert run(edit("r: 16}", "r: 16, targets: [q_proj, '']}")) == [
        ("19:52", "FT004", "stages[sft].adapter.targets[1]: must not be empty",
         "write a value in the empty item, or remove it")]


# --- all at once ------------------------------------------------------------------------------------------

def test_five_different_errors_are_all_reported_in_file_order():
    text = edit("name: demo", "name: demo\ncolour: red",  # FT003 at 2:1
                "  gpu: h100-sxm-80gb", "  gpu: h100-sxm-80gb\n  nodes: 0",  # FT004
                "    max_seq_len: 2048", "    max_seq_len: lots",  # FT006
                "learning_rate: 2.0e-4", "learning_rate: -1",  # FT004
                "    learning_rate: 5.0e-6\n", "")  # FT005
    result = run(text)
    assert [(pos, code) for pos, code, _, _ in result] == [
        ("2:1", "FT003"), ("7:10", "FT004"), ("13:18", "FT006"), ("19:20", "FT004"), ("22:5", "FT005")]


def test_codes_are_documented():
    assert set(CODES) == {f"FT00{i}" for i in range(10)}
    assert all(title and title == title.strip() and "\n" not in title for title in CODES.values())


def test_validate_pipeline_uses_the_given_filename():
    data, sm = load_yaml(edit("r: 16}", "r: 0}"), "a.yaml")
    _, diags = validate_pipeline(data, sm, "shown.yaml")
    assert diags[0].span.file == "shown.yaml"


# --- did you mean -----------------------------------------------------------------------------------------

def test_did_you_mean():
    assert did_you_mean("bse", ["name", "base", "model"]) == "did you mean 'base'?"
    assert did_you_mean("learningrate", ["learning_rate", "lr_scheduler"]) == "did you mean 'learning_rate'?"
    assert did_you_mean("Learning-Rate", ["learning_rate"]) == "did you mean 'learning_rate'?"
    assert did_you_mean("h100-80gb", ["h100-sxm-80gb", "h100-pcie-80gb", "a100-sxm-80gb", "l4"]) == \
        "did you mean 'h100-sxm-80gb' or 'h100-pcie-80gb'?"
    assert did_you_mean("zzz", ["base", "name"]) is None
    assert did_you_mean("base", ["base"]) is None
    assert close_matches("LORA", ["lora", "qlora", "dora"]) == ["lora"]
