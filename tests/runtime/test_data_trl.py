"""Data stage output read by its real consumers: TRL 1.16's SFTTrainer preparation and collators, with the
tiny Llama and its SentencePiece tokenizer from ``ftplan_runtime.tiny``.

Importing trl takes several seconds, so these live apart from the other data-stage tests.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import pytest
import torch
from datasets import load_from_disk

from ftplan_runtime.data import run_data_stage
from ftplan_runtime.tiny import build_tiny_model

_spec = importlib.util.spec_from_file_location("data_fixtures", Path(__file__).with_name("test_data_fixtures.py"))
fx = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(fx)


def t(*pairs):
    return [{"role": r, "content": c} for r, c in pairs]


CHAT = [{"messages": t(("user", f"What is {i} + 3?"), ("assistant", f"The answer is {i + 3}."),
                       ("user", "Thanks"), ("assistant", "Bye."))[: 2 + 2 * (i % 2)]} for i in range(6)]
PREF = [{"prompt": "What is 3 + 3?", "chosen": "The answer is 6.", "rejected": "Seven."},
        {"prompt": t(("system", "Be polite."), ("user", "Hello")), "chosen": "Hello!", "rejected": "Go away."}]
KTO = [{"prompt": "Hello", "completion": "Hello, how can I help you today?", "label": True},
       {"prompt": "Hello", "completion": "Go away.", "label": False}]


@pytest.fixture(scope="module")
def out(tmp_path_factory):
    """A packed data stage output with sft, preference and kto groups; returns (folder, model folder, tokenizer)."""
    from transformers import AutoTokenizer

    root = tmp_path_factory.mktemp("proj")
    model = build_tiny_model(root / "model")
    tok = AutoTokenizer.from_pretrained(str(model))
    for name, rows in (("chat", CHAT), ("pref", PREF), ("kto", KTO)):
        fx.write_jsonl(root / "data" / f"{name}.jsonl", rows)
    old = Path.cwd()
    try:
        os.chdir(root)
        run_data_stage(fx.make_args([{"path": "data/chat.jsonl", "format": "messages"},
                                     {"path": "data/pref.jsonl", "format": "preference"},
                                     {"path": "data/kto.jsonl", "format": "kto"}],
                                    max_seq_len=80, packing=True, model={"base": "model"}), "s")
    finally:
        os.chdir(old)
    return root / "out" / "data", model, tok


def test_sft_trainer_builds_labels_and_padding_free_batches(out, tmp_path):
    from transformers import AutoModelForCausalLM
    from trl import SFTConfig, SFTTrainer

    folder, model, tok = out
    packed = load_from_disk(str(folder / "sft" / "train"))
    # how the trainers consume pre-packed rows: no re-packing, padding-free, labels from completion_mask
    args = SFTConfig(output_dir=str(tmp_path), packing=False, padding_free=True, max_length=None,
                     completion_only_loss=True, use_cpu=True, bf16=False, report_to=[])
    trainer = SFTTrainer(model=AutoModelForCausalLM.from_pretrained(str(model)), args=args, train_dataset=packed,
                         processing_class=tok)
    prepared = trainer.train_dataset
    assert prepared.column_names == ["input_ids", "seq_lengths", "labels"]
    for row, prep in zip(packed, prepared):
        assert prep["labels"] == [i if m else -100 for i, m in zip(row["input_ids"], row["completion_mask"])]

    batch = trainer.data_collator([prepared[i] for i in range(len(prepared))])
    seq_lengths = [n for row in packed for n in row["seq_lengths"]]
    starts = torch.tensor([0] + seq_lengths[:-1]).cumsum(0)
    assert (batch["position_ids"][0] == 0).nonzero().flatten().tolist() == starts.tolist()
    assert batch["cu_seq_lens_q"].tolist() == starts.tolist() + [sum(seq_lengths)]
    labels = batch["labels"][0].tolist()
    spans = fx.trained_spans(tok, batch["input_ids"][0].tolist(), [int(x != -100) for x in labels])
    expected = [f"The answer is {i + 3}.<|im_end|>" for i in range(6)] + ["Bye.<|im_end|>"] * 3
    assert sorted(spans) == sorted(expected)


def test_preference_collator_accepts_a_batch(out):
    from trl.trainer.dpo_trainer import DataCollatorForPreference

    folder, _, tok = out
    pairs = load_from_disk(str(folder / "preference" / "train"))
    batch = DataCollatorForPreference(pad_token_id=tok.pad_token_id)([pairs[0], pairs[1]])
    assert batch["input_ids"].shape[0] == 4
    first = pairs[0]
    n = len(first["prompt_ids"]) + len(first["chosen_ids"])
    assert batch["input_ids"][0, :n].tolist() == first["prompt_ids"] + first["chosen_ids"]
    trained = batch["input_ids"][2][batch["completion_mask"][2].bool()].tolist()
    assert tok.decode(trained) == "Seven.<|im_end|>\n"


def test_kto_collator_accepts_a_batch(out):
    from trl.trainer.kto_trainer import DataCollatorForUnpairedPreference

    folder, _, tok = out
    rows = load_from_disk(str(folder / "kto" / "train"))
    batch = DataCollatorForUnpairedPreference(pad_token_id=tok.pad_token_id)([rows[0], rows[1]])
    assert batch["label"].tolist() == [True, False]
    trained = batch["input_ids"][1][batch["completion_mask"][1].bool()].tolist()
    assert tok.decode(trained) == "Go away.<|im_end|>\n"
