"""The estimator's per-layer activations against what autograd really saves: one decoder layer of catalog shapes
(random init, bf16 or NF4 base, PEFT LoRA on every linear, bf16 autocast, no checkpointing), counted storage by storage on
the CPU by ``bench/vram/saved_probe.py``. Phi-3.5 is here for its fused ``qkv_proj`` (the saved v, a view of the
projection's output, keeps q and k alive too), Gemma-2 for its four norms and capped eager attention."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench" / "vram"))

import saved_probe  # noqa: E402


@pytest.mark.parametrize(("model", "attention", "adapter"), [
    ("llama-3.2-1b", "sdpa", "lora"), ("llama-3.2-1b", "sdpa", "qlora"), ("phi-3.5-mini", "sdpa", "lora"),
    ("gemma-2-2b", "eager", "lora")])
def test_one_layer_saves_what_the_estimate_counts(model, attention, adapter):
    measured, estimated = saved_probe.compare(model, seq=72, attention=attention, adapter=adapter)
    assert abs(estimated - measured) <= 0.01 * measured, (estimated, measured)
