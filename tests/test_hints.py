"""Every error says how to fix it: each error diagnostic reachable from the examples and from a corpus of bad
pipelines (schema, stage graph, resolution, pre-launch rules, data, the loader, pasted Axolotl and TRL configs)
carries a hint, and the hint is not the message again nor the field's description restated.

Also a static check: every ``error(...)`` call in ftplan passes a hint.
"""

from __future__ import annotations

import ast
import copy
import importlib.util
import json
import shutil
from pathlib import Path
from typing import Any

import pytest
import yaml

from ftplan.api import CheckResult, check_file, check_text
from ftplan.diagnostics import Diagnostic, Severity
from ftplan.schemas import Pipeline
from ftplan.schemas.docs import field_doc
from ftplan.sourcemap import classify_type

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = sorted((ROOT / "examples").glob("*.yaml"))

_spec = importlib.util.spec_from_file_location("checks_conftest", ROOT / "tests" / "checks" / "conftest.py")
_conftest = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_conftest)
BASE: dict[str, Any] = _conftest.BASE
"""The rule tests' clean SFT -> DPO -> merge -> GGUF pipeline (``tests/checks/conftest.py``)."""
"""A clean SFT -> DPO -> merge -> GGUF pipeline; the corpus patches it."""

CHAT = {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}
PAIR = {"prompt": "2+2?", "chosen": "4", "rejected": "5"}


def build(*, model: dict | None = None, hardware: dict | None = None, stages: list | None = None,
          top: dict | None = None, **by_id: dict) -> str:
    """The base pipeline as YAML with keys replaced (None removes one); ``sft={...}`` patches the stage ``sft``."""
    d = copy.deepcopy(BASE)
    if stages is not None:
        d["stages"] = stages
    for target, patch in ((d["model"], model), (d["hardware"], hardware), (d, top)):
        for key, value in (patch or {}).items():
            target.pop(key) if value is None else target.__setitem__(key, value)
    for sid, patch in by_id.items():
        stage = next(s for s in d["stages"] if s["id"] == sid)
        for key, value in patch.items():
            stage.pop(key, None) if value is None else stage.__setitem__(key, value)
    return yaml.safe_dump(d, sort_keys=False)


AXOLOTL = """\
base_model: NousResearch/Meta-Llama-3-8B
model_type: LlamaForCausalLM
load_in_4bit: true
datasets:
  - path: mhenrichsen/alpaca_2k_test
    type: alpaca
val_set_size: 0.05
adapter: qlora
sequence_len: 4096
sample_packing: true
lora_r: 32
lora_alpha: 16
lora_target_linear: true
wandb_project:
gradient_accumulation_steps: 4
micro_batch_size: 2
num_epochs: 4
optimizer: paged_adamw_32bit
learning_rate: 0.0002
train_on_inputs: false
bf16: auto
tf32: false
flash_attention: true
deepspeed: deepspeed_configs/zero2.json
special_tokens:
  pad_token: <|end_of_text|>
"""

TRL = """\
model_name_or_path: Qwen/Qwen2.5-7B-Instruct
dataset_name: trl-lib/Capybara
learning_rate: 2.0e-5
num_train_epochs: 1
per_device_train_batch_size: 2
gradient_accumulation_steps: 8
max_seq_length: 2048
packing: true
bf16: true
eval_strategy: steps
report_to: wandb
optim: adamw_torch
push_to_hub: true
"""

CORPUS: dict[str, str] = {
    # --- the schema ---------------------------------------------------------------------------------------
    "typo at the top": build(top={"nme": "x"}),
    "typo in a stage": build(sft={"learning_rat": 1e-4}),
    "unknown key, no neighbour": build(hardware={"colour": "red"}),
    "key of another kind": build(sft={"beta": 0.1}),
    "key at the wrong level": build(hardware={"partition": "gpu"}),
    "negative learning rate": build(sft={"learning_rate": -1e-4}),
    "beta 0": build(dpo={"beta": 0}),
    "rank 0": build(sft={"adapter": {"type": "lora", "r": 0}}),
    "short max_seq_len": build(data={"max_seq_len": 8}),
    "empty path": build(data={"datasets": [{"path": "", "format": "messages"}]}),
    "empty target": build(sft={"adapter": {"type": "lora", "targets": ["q_proj", ""]}}),
    "bad enum": build(sft={"precision": "bf61", "optimizer": "adamw8bit"}),
    "enum without neighbour": build(sft={"lr_scheduler": "zigzag"}),
    "bad kind": build(merge={"kind": "train"}),
    "kind is a list": build(merge={"kind": ["merge"]}),
    "missing kind": build(merge={"kind": None}),
    "bad format": build(data={"datasets": [{"path": "data/chat.jsonl", "format": "chat"}]}),
    "missing format": build(data={"datasets": [{"path": "data/chat.jsonl"}]}),
    "tool calls through chatml": build(model={"chat_template": "chatml"},
                                       data={"datasets": [{"path": "data/tools.jsonl", "format": "sharegpt"}]}),
    "bad adapter type": build(sft={"adapter": {"type": "LoRA"}}),
    "adapter as text": build(sft={"adapter": "lora"}),
    "bad name": build(top={"name": "my pipeline!"}),
    "bad stage id": build(sft={"id": "SFT-1"}, dpo={"input": "SFT-1"}),
    "unsafe sbatch value": build(hardware={"slurm": {"partition": "gpu;rm"}}),
    "unknown sbatch option": build(hardware={"slurm": {"extra": {"mail_type": "END"}}}),
    "bad env name": build(hardware={"env": {"1BAD": "x"}}),
    "missing learning rate": build(dpo={"learning_rate": None}),
    "missing top-level keys": "name: demo\nstages: []\n",
    "number as text": build().replace("learning_rate: 0.0002", "learning_rate: '2e-4'", 1),
    "word as number": build(sft={"learning_rate": "abc"}),
    "fraction as integer": build(sft={"micro_batch": 2.5}),
    "bool as integer": build(sft={"adapter": {"type": "lora", "r": True}}),
    "yes as bool": build(data={"packing": "yes"}),
    "number as text field": build(hardware={"slurm": {"partition": 42}}),
    "mapping as list": build(data={"datasets": {"path": "x"}}),
    "text as mapping": build(top={"model": "meta-llama/Llama-3.1-8B-Instruct"}),
    "empty mapping": "name: demo\nmodel:\nbase: x\nhardware: {gpu: h100}\nstages: [{id: d, kind: data}]\n",
    "text as list": build(gguf={"quant": "q8_0"}),
    "stage as text": build(stages=[*BASE["stages"], "sft"]),
    "union, wrong branch": build(sft={"distributed": ["zero3"]}),
    "union, bad name": build(sft={"distributed": "zero4"}),
    "union, bad mapping": build(sft={"distributed": {"strategy": "zero-3", "offload": True}}),
    "continue misspelt": build(dpo={"adapter": "contine"}),
    "targets as text": build(sft={"adapter": {"type": "lora", "targets": "q_proj"}}),
    "empty stages": build(stages=[]),
    # --- foreign keys and values --------------------------------------------------------------------------
    "axolotl config": AXOLOTL,
    "trl config": TRL,
    "axolotl keys in a stage": build(sft={"lora_r": 16, "micro_batch_size": 4, "sequence_len": 4096,
                                          "deepspeed": "zero3.json", "bf16": "auto", "lr": 1e-4}),
    "axolotl dataset": build(data={"datasets": [{"path": "data/chat.jsonl", "type": "chat_template",
                                                 "field_messages": "conversations"}]}),
    "foreign values": build(sft={"optimizer": "adamw_torch", "precision": "auto",
                                 "distributed": "ds_config/zero3.json", "report_to": "none"}),
    "foreign format": build(data={"datasets": [{"path": "data/chat.jsonl", "format": "chat_template"}]}),
    # --- the stage graph ----------------------------------------------------------------------------------
    "duplicated id": build(dpo={"id": "sft"}, merge={"input": "sft"}),
    "unknown reference": build(merge={"input": "dpoo"}),
    "later reference": build(sft={"input": "merge"}),
    "dpo from a data stage": build(dpo={"input": "data"}),
    "data from a model stage": build(sft={"data": "sft"}),
    "no preference data": build(data={"datasets": [{"path": "data/chat.jsonl", "format": "messages"}]}),
    "undeclared hand-off": build(dpo={"adapter": {"type": "lora"}}),
    "continue without adapter": build(sft={"adapter": {"type": "full"}}),
    "merge_input without adapter": build(sft={"adapter": {"type": "full"}},
                                         dpo={"adapter": {"type": "lora"}, "merge_input": True}),
    "merge of a full fine-tune": build(sft={"adapter": {"type": "full"}}, dpo={"adapter": {"type": "full"}}),
    "gguf of an adapter": build(gguf={"input": "dpo"}),
    "full from an adapter": build(dpo={"adapter": {"type": "full"}}),
    "reward model used as a causal LM": build(stages=[
        *BASE["stages"][:2],
        {"id": "rm", "kind": "reward", "input": "sft", "data": "data", "learning_rate": 1e-5,
         "adapter": {"type": "lora", "modules_to_save": ["lm_head"]}},
        {"id": "merge", "kind": "merge", "input": "rm"}]),
    "cpt on conversations": build(stages=[
        {"id": "data", "kind": "data", "max_seq_len": 2048,
         "datasets": [{"path": "data/chat.jsonl", "format": "messages"}, {"path": "data/text.jsonl", "format": "text"}]},
        {"id": "cpt", "kind": "cpt", "data": "data", "learning_rate": 2e-5, "adapter": {"type": "full"}}]),
    "kto with one example per micro-batch": build(stages=[
        {"id": "data", "kind": "data", "max_seq_len": 2048, "datasets": [{"path": "data/kto.jsonl", "format": "kto"}]},
        {"id": "kto", "kind": "kto", "data": "data", "learning_rate": 5e-6, "adapter": {"type": "lora"}}]),
    # --- resolution ---------------------------------------------------------------------------------------
    "unknown gpu": build(hardware={"gpu": "A100"}),
    "unknown model": build(model={"base": "acme/secret-model"}),
    "unknown architecture": build(model={"base": "acme/x", "architecture": "llama-3.1-8"}),
    "cpu with a gpu": build(hardware={"device": "cpu"}),
    "cuda without a gpu": build(hardware={"gpu": None}),
    "cpu processes on a gpu plan": build(hardware={"cpu_processes": 2}),
    # --- pre-launch rules ---------------------------------------------------------------------------------
    "old gpu": build(hardware={"gpu": "t4"}, sft={"attention": "flash_attention_3", "kernels": "ftplan"}),
    "eight gpus": build(hardware={"gpus_per_node": 8}, sft={"distributed": "none", "optimizer": "adamw_8bit"},
                        dpo={"distributed": "fsdp2", "optimizer": "paged_adamw_8bit"}),
    "two nodes": build(hardware={"gpus_per_node": 16, "nodes": 2},
                       sft={"adapter": {"type": "qlora"}, "distributed": "zero3"}),
    "bad slurm time": build(hardware={"slurm": {"time": "12h"}}),
    "slurm memory below the estimate": build(hardware={"slurm": {"partition": "gpu", "mem": "8G"}}),
    "slurm memory below the offloaded checkpoints": build(hardware={"slurm": {"partition": "gpu", "mem": "2G"}},
                                                          sft={"gradient_checkpointing": "offload", "micro_batch": 8}),
    "slurm memory twice": build(hardware={"slurm": {"mem": "64G", "mem_per_gpu": "8G"}},
                                data={"slurm": {"mem_per_gpu": "8G"}}),
    "bad slurm memory size": build(hardware={"slurm": {"mem": "64GB"}}),
    "bad gres type": build(hardware={"slurm": {"gpu_request": "gres", "gpu_type": "h100:sxm"}}),
    "container image with a space": build(hardware={"slurm": {}, "container": {"runtime": "pyxis",
                                                                               "image": "my image"}}),
    "cpu rules": build(hardware={"device": "cpu", "gpu": None}, data={"packing": True},
                       sft={"distributed": {"strategy": "zero2", "offload_params": True}, "kernels": "ftplan",
                            "precision": "fp16"}, merge={"dtype": "fp16"}),
    "model rules": build(model={"add_special_tokens": ["<x>"], "chat_template": "chatm"},
                         data={"max_seq_len": 300000},
                         sft={"adapter": {"type": "lora", "targets": ["qproj"], "modules_to_save": ["lm_hed"]},
                              "warmup_ratio": 0.1, "warmup_steps": 5, "epochs": 1, "max_steps": 10,
                              "eval_steps": 20, "save_steps": 30, "load_best_model_at_end": True}),
    "runtime refusals": build(hardware={"gpus_per_node": 8},
                              sft={"kernels": "ftplan", "distributed": "zero3",
                                   "adapter": {"type": "lora", "targets": ["q_proj", "lm_head"]}},
                              dpo={"label_smoothing": 0.1, "distributed": "zero3"}),
    "simpo with a reference": build(dpo={"loss_type": "simpo", "beta": 2.0, "reference": "precomputed"}),
    "simpo margin on ipo": build(dpo={"loss_type": "ipo", "simpo_gamma": 1.0}),
    "too big": build(data={"max_seq_len": 131072}, sft={"micro_batch": 8}),
    "qlora and fsdp2 for dpo": build(hardware={"gpus_per_node": 8},
                                     sft={"adapter": {"type": "qlora"}, "distributed": "fsdp2"},
                                     dpo={"distributed": "fsdp2"}),
    "merge_input under zero3": build(hardware={"gpus_per_node": 8},
                                     dpo={"adapter": {"type": "lora"}, "merge_input": True, "distributed": "zero3"}),
    "kernels on gemma": build(model={"base": "google/gemma-2-9b", "architecture": "gemma-2-9b"},
                              sft={"kernels": "ftplan"}, stages=[s for s in BASE["stages"] if s["kind"] != "gguf"]),
    "kernels with dora and dropout": build(sft={"kernels": "ftplan", "adapter": {"type": "dora", "dropout": 0.05}}),
    "past the context": build(model={"base": "mistralai/Mistral-7B-v0.3", "architecture": "mistral-7b-v0.3"},
                              data={"max_seq_len": 65536}),
    # --- data ---------------------------------------------------------------------------------------------
    "no file, no hub id": build(data={"datasets": [{"path": "data/my chats", "format": "messages"},
                                                   {"path": "data/pairs.jsonl", "format": "preference"}]}),
    "missing data file": build(data={"datasets": [{"path": "data/nope.jsonl", "format": "messages"},
                                                  {"path": "data/pairs.jsonl", "format": "preference"}]}),
    "bad rows": build(data={"datasets": [{"path": "data/bad.jsonl", "format": "messages"},
                                         {"path": "data/bad-pairs.jsonl", "format": "preference"},
                                         {"path": "data/empty.jsonl", "format": "alpaca"},
                                         {"path": "data/bad-kto.jsonl", "format": "kto"},
                                         {"path": "org/some-dataset", "format": "messages"}]}),
    # --- the loader ---------------------------------------------------------------------------------------
    "yaml syntax": "name: demo\nmodel: {base: x\nstages: [\n",
    "tabs": "name: demo\nmodel:\n\tbase: x\n",
    "empty file": "",
    "a list": "- name: demo\n",
    "duplicate key": "name: a\nname: b\n",
    "a tag": "name: demo\nmodel: !foo {}\n",
    "an alias bomb": "a: &a [x, x, x, x, x, x, x, x, x]\nb: &b [*a, *a, *a, *a, *a, *a, *a, *a, *a]\n"
                     "c: &c [*b, *b, *b, *b, *b, *b, *b, *b, *b]\nd: &d [*c, *c, *c, *c, *c, *c, *c, *c, *c]\n"
                     "e: &e [*d, *d, *d, *d, *d, *d, *d, *d, *d]\nf: [*e, *e, *e, *e, *e, *e, *e, *e, *e]\n",
}
"""Bad pipelines, each a whole file; together they reach every error code of the checker."""

LOADER_ERRORS = {
    "a merge of its own mapping": "a: &a\n  <<: *a\n",
    "a control character": "name: demo\x07\n",
}
"""Loader errors that once had no hint."""


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> Path:
    """A folder with the corpus's data files (good, bad and empty) and a copy of the examples."""
    root = tmp_path_factory.mktemp("hints")
    (root / "data").mkdir()
    (root / "data" / "chat.jsonl").write_text(json.dumps(CHAT) + "\n", encoding="utf-8")
    (root / "data" / "pairs.jsonl").write_text(json.dumps(PAIR) + "\n", encoding="utf-8")
    bad = [{"messages": [{"role": "human", "content": "hi"}, {"role": "gpt", "content": "yo"}]}, {"text": "x"},
           {"messages": ["hi"]},
           {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": ""}]},
           {"messages": [{"role": "user", "content": [{"type": "image", "url": "x.png"}]},
                         {"role": "assistant", "content": "a cat"}], "extra": 1}]
    (root / "data" / "bad.jsonl").write_text("".join(json.dumps(r) + "\n" for r in bad) + "{oops\n",
                                             encoding="utf-8")
    pairs = [{"prompt": "p", "chosen": "", "rejected": "r"}, {"prompt": "p", "chosen": "a", "rejected": ["b"]}]
    (root / "data" / "bad-pairs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in pairs), encoding="utf-8")
    kto = [{"prompt": "p", "completion": "c", "label": "yes"},
           {"messages": [{"role": "assistant", "content": "hello"}, {"role": "user", "content": "hi"}], "label": True}]
    (root / "data" / "bad-kto.jsonl").write_text("".join(json.dumps(r) + "\n" for r in kto), encoding="utf-8")
    (root / "data" / "kto.jsonl").write_text(json.dumps({**CHAT, "label": True}) + "\n", encoding="utf-8")
    (root / "data" / "text.jsonl").write_text(json.dumps({"text": "Raw text."}) + "\n", encoding="utf-8")
    (root / "data" / "empty.jsonl").write_text("", encoding="utf-8")
    tools = {"conversations": [{"from": "human", "value": "weather?"},
                               {"from": "function_call", "value": '{"name": "weather", "arguments": {}}'},
                               {"from": "observation", "value": "sunny"}, {"from": "gpt", "value": "Sunny."}]}
    (root / "data" / "tools.jsonl").write_text(json.dumps(tools) + "\n", encoding="utf-8")
    shutil.copytree(ROOT / "examples", root / "examples", ignore=shutil.ignore_patterns(".*"))
    return root


def _models(tp: Any = Pipeline, seen: set | None = None) -> set:
    """Every model class of the pipeline schema."""
    seen = set() if seen is None else seen
    kind, info = classify_type(tp)
    if kind == "model" and info not in seen:
        seen.add(info)
        for f in info.model_fields.values():
            _models(f.annotation, seen)
    elif kind in ("tagged", "union", "list", "dict"):
        members = info[1].values() if kind == "tagged" else info if kind in ("union", "dict") else (info,)
        for member in members:
            _models(member, seen)
    return seen


def _descriptions() -> set[str]:
    """``name: what it is for`` (a field's first documented sentence) for every field of the schema, and the
    description alone: a hint equal to one of them only restates the field."""
    out = set()
    for model in _models():
        for name in model.model_fields:
            doc = " ".join((field_doc(model, name) or "").split()).replace("``", "'")
            depth, first = 0, doc
            for i, ch in enumerate(doc):
                depth += (ch == "(") - (ch == ")")
                if ch == "." and depth == 0 and (i + 1 == len(doc) or doc[i + 1] == " "):
                    first = doc[:i]
                    break
            if first:
                out |= {f"{name}: {first}".lower(), first.lower()}
    return out


def unhelpful(result: CheckResult, descriptions: set[str]) -> list[str]:
    """The errors of a result whose hint is missing, repeats the message or only restates the field."""
    bad = []
    for d in result.diagnostics:
        if d.severity is not Severity.ERROR:
            continue
        hint = (d.hint or "").strip()
        if not hint or hint.lower() in d.message.lower() or hint.lower() in descriptions:
            bad.append(f"{d.code} {d.span}: {d.message} | hint: {d.hint!r}")
    return bad


def _errors(result: CheckResult) -> list[Diagnostic]:
    return [d for d in result.diagnostics if d.severity is Severity.ERROR]


@pytest.mark.parametrize("name", sorted(CORPUS))
def test_every_error_of_a_bad_pipeline_says_how_to_fix_it(name, project):
    result = check_text(CORPUS[name], "pipeline.yaml", project)
    assert _errors(result), f"{name}: the corpus entry is meant to fail"
    assert unhelpful(result, _descriptions()) == []


@pytest.mark.parametrize("example", EXAMPLES, ids=lambda p: p.stem)
def test_every_error_of_an_example_says_how_to_fix_it(example, project):
    assert unhelpful(check_file(project / "examples" / example.name), _descriptions()) == []


@pytest.mark.parametrize("name", ["missing.yaml", "data"])
def test_an_unreadable_pipeline_file_says_how_to_fix_it(name, project):
    result = check_file(project / name)
    assert [d.code for d in result.diagnostics] == ["FT000"]
    assert unhelpful(result, set()) == []


@pytest.mark.parametrize("name", sorted(LOADER_ERRORS))
def test_loader_errors_have_a_hint(name, project):
    result = check_text(LOADER_ERRORS[name], "pipeline.yaml", project)
    assert _errors(result) and unhelpful(result, set()) == []


def test_the_corpus_reaches_every_error_code(project):
    """The corpus is only as good as what it covers: every code that is an error somewhere must show up."""
    from ftplan.codes import all_codes

    seen = {d.code for text in CORPUS.values() for d in _errors(check_text(text, "pipeline.yaml", project))}
    seen |= {d.code for p in EXAMPLES for d in _errors(check_file(project / "examples" / p.name))}
    seen |= {"FT000"}  # test_an_unreadable_pipeline_file_says_how_to_fix_it
    # never errors, or not reachable from a pipeline file alone (a local model folder, tokenizer or template)
    not_errors = {"FT013", "FT102", "FT304", "FT305", "FT311", "FT314", "FT317", "FT331", "FT332", "FT333", "FT335",
                  "FT336", "FT337", "FT338", "FT340", "FT405", "FT410", "FT411", "FT414", "FT416", "FT506", "FT508",
                  "FT511", "FT512",
                  "FT514", "FT517", "FT603", "FT604", "FT607", "FT608", "FT609", "FT610", "FT612", "FT613", "FT614", "FT615",
                  "FT622", "FT623", "FT624",
                  "FT326"}  # a warning: kernels: ftplan on ORPO/SimPO (tests/checks/test_runtime_limits.py)
    local_files = {"FT011", "FT406", "FT407", "FT408", "FT409", "FT412", "FT413"}
    missing = sorted(set(all_codes()) - seen - not_errors - local_files)
    assert missing == [], f"no corpus entry reaches {missing}"


def _error_calls_without_hint(path: Path) -> list[int]:
    """Lines of ``error(...)`` calls in a module that pass no hint (or ``None``)."""
    lines = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Call) and getattr(node.func, "id", getattr(node.func, "attr", None)) == "error":
            given = {k.arg: k.value for k in node.keywords}
            hint = given.get("hint", node.args[3] if len(node.args) > 3 else None)
            if hint is None or isinstance(hint, ast.Constant) and hint.value is None:
                lines.append(node.lineno)
    return lines


def test_every_error_call_passes_a_hint():
    found = {str(p.relative_to(ROOT)): _error_calls_without_hint(p) for p in sorted((ROOT / "ftplan").rglob("*.py"))}
    assert {k: v for k, v in found.items() if v} == {}
