"""The estimator's DoRA weight-norm transient against PEFT's DoRA layer, measured by an allocation tracker on the
CPU (``bench/vram/dora_transient.py``): a wide-input and a wide-output module, where each of the two peaks of the
weight-norm path (inside lora_B over the identity, and at the sum W + s·B·A) is the larger."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench" / "vram"))

import dora_transient  # noqa: E402


@pytest.mark.parametrize(("d_in", "d_out"), [(4096, 1024), (1024, 4096), (2048, 2048)])
def test_the_estimate_is_the_measured_transient(d_in, d_out):
    measured = dora_transient.measured_peak(d_in, d_out)
    estimated = dora_transient.estimated_peak(d_in, d_out)
    assert abs(estimated - measured) <= 0.01 * measured, (estimated, measured)
