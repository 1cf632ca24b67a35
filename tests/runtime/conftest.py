"""Fixtures shared by the runtime tests."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def tiny_base(tmp_path_factory) -> Path:
    """The tiny random-init Llama with its SentencePiece tokenizer, built once per test session (read-only:
    tests that change it copy it first)."""
    from ftplan_runtime.tiny import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("tiny-base") / "model")
