"""Fixtures shared by the runtime tests."""

from __future__ import annotations

import random
from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def tiny_base(tmp_path_factory) -> Path:
    """The tiny random-init Llama with its SentencePiece tokenizer, built once per test session (read-only:
    tests that change it copy it first)."""
    from ftplan_runtime.tiny import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("tiny-base") / "model")


def arithmetic_rows(tok, n: int, seed: int, top: int = 9) -> dict[str, list]:
    """``n`` pre-tokenized ChatML rows "What is a + b?" → "The answer is a+b." in the data stage's SFT columns
    (``input_ids``, ``completion_mask``: only the answer is trained); operands in 1..top."""
    rng = random.Random(seed)
    rows: dict[str, list] = {"input_ids": [], "completion_mask": []}
    for _ in range(n):
        a, b = rng.randint(1, top), rng.randint(1, top)
        prompt = tok(f"<|im_start|>user\nWhat is {a} + {b}?<|im_end|>\n<|im_start|>assistant\n")["input_ids"]
        answer = tok(f"The answer is {a + b}.<|im_end|>", add_special_tokens=False)["input_ids"]
        rows["input_ids"].append(prompt + answer)
        rows["completion_mask"].append([0] * len(prompt) + [1] * len(answer))
    return rows


@pytest.fixture(scope="session")
def sft_rows():
    """``arithmetic_rows``, for tests that write a small SFT dataset in the data stage's format."""
    return arithmetic_rows
