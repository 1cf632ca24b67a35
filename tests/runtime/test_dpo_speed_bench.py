"""bench/dpo_speed.py (the GPU benchmark of DPO with `kernels: ftplan` against plain TRL) in its CPU smoke mode: every
arm runs one step in its own process at tiny shapes, and reports what a GPU run would (timings aside)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_every_arm_of_the_dpo_benchmark_runs_on_the_cpu(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    env.pop("TRITON_INTERPRET", None)  # the benchmark sets it for its CPU arms
    proc = subprocess.run([sys.executable, "bench/dpo_speed.py", "smoke", "--work", str(tmp_path)], cwd=REPO,
                          env=env, capture_output=True, text=True, timeout=900)
    rows = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    arms = {r["arm"]: r for r in rows if "arm" in r}
    assert set(arms) == {"trl", "ftplan", "ftplan-trl-head", "ftplan-none"}
    for row in arms.values():
        assert row["tok_per_s"] > 0 and row["tokens_per_step"] == 48 and row["steps"] == 1
        assert row["loss_last"] == pytest.approx(0.6931, abs=1e-3)  # policy = reference at the first step: ln 2
    assert arms["ftplan"]["kernels"]["logprobs"] == 1 and arms["ftplan"]["fused_logprob_heads"] == 1
    assert "logprobs" not in arms["ftplan-trl-head"]["kernels"] and arms["ftplan-trl-head"]["kernels"]["lora"] > 0
    assert arms["ftplan-none"]["kernels"] is None and arms["trl"]["fused_logprob_heads"] == 0
    [summary] = [r for r in rows if "summary" in r]
    assert set(summary["ratios"]) == set(arms) and summary["ratios"]["trl"]["tok_per_s"] == 1.0
