"""The estimator's recomputed layer against what one checkpointed Llama-3.2-1B layer really holds while the backward
runs through it (PEFT LoRA on a bf16 base, fp32 adapters, bf16 autocast), counted by an allocation tracker on the
CPU (``bench/vram/layer_backward_probe.py``): the peak is the recompute's ``down_proj`` LoRA forward, where the
SwiGLU product, its fp32 and 16-bit casts, the base output and the backward's first gradients are alive at once."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench" / "vram"))

import layer_backward_probe  # noqa: E402


def test_the_recomputed_layer_holds_what_the_estimate_counts():
    live = layer_backward_probe.measured("llama-3.2-1b", 96)
    estimated = layer_backward_probe.estimated("llama-3.2-1b", 96)
    assert abs(estimated - live.peak) <= 0.01 * live.peak, (estimated, live.peak)
    assert ("_to_copy", (1, 96, 8192), "float32") in live.at_peak  # PEFT's fp32 cast of down_proj's input
