"""Small pipeline builders for the rule tests: a clean SFT -> DPO -> merge -> GGUF pipeline to patch per test."""

from __future__ import annotations

import copy
from types import SimpleNamespace
from typing import Any, Callable

import pytest

from ftplan.checks import run_checks
from ftplan.context import Context, Inputs, TokenizerInfo
from ftplan.data.reading import RawRow
from ftplan.data.scan import DatasetScan, Scanner
from ftplan.diagnostics import Diagnostic
from ftplan.resolve import resolve
from ftplan.schemas import Pipeline

BASE: dict[str, Any] = {
    "name": "demo",
    "model": {"base": "meta-llama/Llama-3.1-8B-Instruct"},
    "hardware": {"gpu": "h100-sxm-80gb"},
    "stages": [
        {"id": "data", "kind": "data", "max_seq_len": 2048,
         "datasets": [{"path": "data/chat.jsonl", "format": "messages"},
                      {"path": "data/pairs.jsonl", "format": "preference"}]},
        {"id": "sft", "kind": "sft", "data": "data", "learning_rate": 2e-4, "adapter": {"type": "lora"}},
        {"id": "dpo", "kind": "dpo", "input": "sft", "data": "data", "learning_rate": 5e-6, "adapter": "continue"},
        {"id": "merge", "kind": "merge", "input": "dpo"},
        {"id": "gguf", "kind": "gguf", "input": "merge", "quant": ["q8_0"]},
    ],
}


def _patch(target: dict, patch: dict) -> None:
    for key, value in patch.items():
        if value is None:
            target.pop(key, None)
        else:
            target[key] = value


def build(*, model: dict | None = None, hardware: dict | None = None, stages: list | None = None,
          **by_id: dict) -> Pipeline:
    """The base pipeline with keys replaced (None removes a key); ``sft={...}`` patches the stage ``sft``."""
    d = copy.deepcopy(BASE)
    if stages is not None:
        d["stages"] = stages
    _patch(d["model"], model or {})
    _patch(d["hardware"], hardware or {})
    for sid, patch in by_id.items():
        stage = next(s for s in d["stages"] if s["id"] == sid)
        _patch(stage, patch)
    return Pipeline.model_validate(d)


def resolve_ctx(pipeline: Pipeline, inputs: Inputs | None = None) -> tuple[Context, list[Diagnostic]]:
    """Resolve a pipeline with an input snapshot (empty by default)."""
    return resolve(pipeline, inputs or Inputs(), pipeline_path="pipeline.yaml", pipeline_sha256="0" * 64)


def diagnose(pipeline: Pipeline | None = None, inputs: Inputs | None = None, **patch) -> list[Diagnostic]:
    """Resolve and run every rule; return all diagnostics."""
    ctx, diags = resolve_ctx(pipeline if pipeline is not None else build(**patch), inputs)
    return diags + run_checks(ctx)


def scan(spec, rows: list, *, complete: bool = True) -> DatasetScan:
    """What reading ``rows`` (as JSON Lines lines 1, 2, ...) of dataset ``spec`` finds, as ``read_inputs`` would;
    ``complete=False``: they are the first rows of a bigger file. The dataset's ``max_rows`` caps what is read."""
    capped = spec.max_rows is not None and len(rows) >= spec.max_rows
    scanner = Scanner(spec, spec.path)
    for n, row in enumerate(rows[: spec.max_rows] if capped else rows, start=1):
        scanner.row(RawRow(n, n, "line", row))
    return scanner.result(complete=capped or complete)


def heads(pipeline: Pipeline | None = None, partial: tuple[str, ...] = (), **files: list) -> dict:
    """Dataset scans keyed like ``Inputs.datasets``: ``heads(data_0=[rows])`` judges the rows as dataset 0 of
    the stage with id ``data`` (of ``pipeline``, by default the base pipeline), read whole unless named in
    ``partial`` (the first rows of a bigger file) -> {(stage index, 0): DatasetScan}."""
    pipeline = pipeline if pipeline is not None else build()
    out = {}
    for name, rows in files.items():
        sid, j = name.rsplit("_", 1)
        i, stage = next((i, s) for i, s in enumerate(pipeline.stages) if s.id == sid)
        out[(i, int(j))] = scan(stage.datasets[int(j)], rows, complete=name not in partial)
    return out


def with_codes(diags: list[Diagnostic], code: str) -> list[Diagnostic]:
    """The diagnostics of one code."""
    return [d for d in diags if d.code == code]


CHAT_ROW = {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}
PAIR_ROW = {"prompt": "2+2?", "chosen": "4", "rejected": "5"}
LLAMA_TOKENS = frozenset({"<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>",
                          "<|eot_id|>", "hello", "world"})


def llama_tokenizer(**kw) -> TokenizerInfo:
    """A local tokenizer snapshot shaped like Llama 3's."""
    values = dict(vocab_size=128256, has_chat_template=True, eos_token="<|eot_id|>", tokens=LLAMA_TOKENS)
    values.update(kw)
    return TokenizerInfo(**values)


@pytest.fixture
def check() -> Callable[..., list[Diagnostic]]:
    """``check(pipeline=None, inputs=None, **patch)``: every diagnostic of a (patched) pipeline."""
    return diagnose


@pytest.fixture
def tools() -> SimpleNamespace:
    """The builders and sample rows as one namespace."""
    return SimpleNamespace(build=build, resolve_ctx=resolve_ctx, heads=heads, scan=scan, codes=with_codes,
                           CHAT_ROW=CHAT_ROW, PAIR_ROW=PAIR_ROW, llama_tokenizer=llama_tokenizer, Inputs=Inputs,
                           DatasetScan=DatasetScan, TokenizerInfo=TokenizerInfo, BASE=BASE)
