"""Fixtures shared by the runtime tests."""

from __future__ import annotations

import random
from pathlib import Path

import pytest


@pytest.fixture(scope="session", autouse=True)
def exact_cpu_4bit_dequantize():
    """bitsandbytes' CPU dequantisation as the runtime loads it (``ftplan_runtime.bnb_cpu``): the tests that call
    bitsandbytes directly on tiny shapes see what a 4-bit model loaded by the runtime sees, on any CPU."""
    try:
        import bitsandbytes  # noqa: F401
    except ImportError:
        return
    from ftplan_runtime.bnb_cpu import use_exact_cpu_dequantize

    use_exact_cpu_dequantize()


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


def seed_lora_weights(peft_model, seed: int, b_scale: float) -> None:
    """Give every LoRA factor values drawn from ``seed`` alone: lora_A from PEFT's own range (uniform within
    +-1/sqrt(fan_in)), lora_B ``b_scale`` x normal, so the adapter is a non-zero update. PEFT draws lora_A from the
    global RNG, which would make such adapters depend on which tests ran before."""
    import torch

    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in peft_model.named_parameters():
            if "lora_A" in name:
                p.copy_((2 * torch.rand(p.shape, generator=gen) - 1) / p.shape[1] ** 0.5)
            elif "lora_B" in name:
                p.copy_(b_scale * torch.randn(p.shape, generator=gen))


@pytest.fixture(scope="session")
def seeded_lora():
    """``seed_lora_weights``, for tests that build adapters with known, order-independent weights."""
    return seed_lora_weights
