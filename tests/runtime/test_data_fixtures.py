"""Helpers shared by the data-stage tests (no tests here): a tiny byte-level BPE tokenizer with a ChatML
template, data-file writers and a RuntimeArgs builder.

Other test files load this module by path, since the tests folder is not a package.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ftplan_runtime.data import CHATML

CORPUS = """\
What is 3 + 3? The answer is 6.
Name three fruits: apple, banana and orange.
You are a helpful assistant. Be brief and polite.
Hello, how can I help you today? Go away.
The quick brown fox jumps over the lazy dog.
Write a short poem about the sea. The sea is wide and blue.
How do I reset my password? Open Settings and choose Reset password.
Summarize the text in two sentences. Thanks, anything else?
user assistant system tool
""".splitlines()


def build_tokenizer(folder: Path | None = None, template: str | None = CHATML) -> Any:
    """A byte-level BPE tokenizer (eos ``<|im_end|>``) with ``template`` as its chat template; saved into
    ``folder`` when given."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tk = Tokenizer(models.BPE())
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tk.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=400, show_progress=False,
                                  special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<pad>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tk.train_from_iterator(CORPUS, trainer=trainer)
    tok = PreTrainedTokenizerFast(tokenizer_object=tk, eos_token="<|im_end|>", pad_token="<pad>",
                                  unk_token="<|endoftext|>", additional_special_tokens=["<|im_start|>"],
                                  clean_up_tokenization_spaces=False)
    tok.chat_template = template
    if folder is not None:
        tok.save_pretrained(str(folder))
    return tok


def write_jsonl(path: Path, rows: list[Any]) -> Path:
    """Write rows (dicts, or raw strings written as they are) as a JSONL file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = [r if isinstance(r, str) else json.dumps(r) for r in rows]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def make_args(datasets: list[dict[str, Any]], *, output_dir: str = "out/data", model: dict[str, Any] | None = None,
              pipeline: str = "p", **stage: Any) -> Any:
    """RuntimeArgs of a data stage over ``datasets`` with a local tokenizer folder ``tok``."""
    from ftplan.schemas.runtime_args import RuntimeArgs

    return RuntimeArgs.model_validate({
        "pipeline": pipeline, "output_dir": output_dir, "model": model or {"base": "tok"},
        "stage": {"id": "data", "kind": "data", "max_seq_len": 128, "datasets": datasets, **stage},
        "promise": {"device": "cpu", "world_size": 1, "num_machines": 1, "distributed_type": "NO",
                    "precision": "fp32", "attention": "sdpa", "kernels": "none"},
    })


def trained_spans(tok: Any, ids: list[int], mask: list[int]) -> list[str]:
    """The decoded runs of consecutive trained tokens."""
    spans: list[list[int]] = []
    prev = 0
    for i, m in zip(ids, mask):
        if m:
            if not prev:
                spans.append([])
            spans[-1].append(i)
        prev = m
    return [tok.decode(s) for s in spans]

