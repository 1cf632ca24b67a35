"""End to end through ``run.sh``: a compiled tiny pipeline whose preference stages start from the base model (no SFT
stage before them) runs on the CPU: data -> DPO with a new LoRA and a precomputed reference (the base model's
log-probs) -> merge, and a SimPO stage (no reference at all) beside it, each from the base model."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
PIPELINE = """\
name: dpo-from-base
model:
  base: model
hardware:
  device: cpu
output_dir: out
stages:
  - id: data
    kind: data
    datasets:
      - {path: data/prefs.jsonl, format: preference}
    max_seq_len: 128
  - id: dpo
    kind: dpo
    data: data
    adapter: {type: lora, r: 4}
    reference: precomputed
    precision: fp32
    learning_rate: 1.0e-3
    max_steps: 2
    micro_batch: 2
    logging_steps: 1
  - id: simpo
    kind: dpo
    data: data
    adapter: {type: lora, r: 4}
    loss_type: simpo
    beta: 2.0
    simpo_gamma: 1.0
    sft_weight: 0.5
    precision: fp32
    learning_rate: 1.0e-3
    max_steps: 2
    micro_batch: 2
    logging_steps: 1
  - id: merge
    kind: merge
    input: dpo
    dtype: fp32
"""


@pytest.mark.slow
def test_dpo_and_simpo_from_the_base_model_compile_and_run(tmp_path, tiny_base):
    root = tmp_path / "project"
    shutil.copytree(tiny_base, root / "model")
    (root / "data").mkdir()
    rows = (REPO / "examples/data/support-prefs.jsonl").read_text().splitlines()[:16]
    (root / "data/prefs.jsonl").write_text("\n".join(rows) + "\n")
    (root / "p.yaml").write_text(PIPELINE)
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
           "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    env.pop("TRITON_INTERPRET", None)
    c = subprocess.run([sys.executable, "-m", "ftplan", "compile", "p.yaml", "-o", "plan"], cwd=root, env=env,
                       capture_output=True, text=True, timeout=120)
    assert c.returncode == 0, c.stdout + c.stderr

    for sid in ("dpo", "simpo"):
        args = json.loads((root / "plan/stages" / sid / "args.json").read_text())
        assert args["source"]["weights"] == "model" and args["source"]["merge"] == []
        assert args["source"]["continue_adapter"] is None
        assert [u["stage"] for u in args["upstream"]] == ["data"]  # the base model, no training stage before it
    plan = json.loads((root / "plan/plan.json").read_text())
    assert "simpo" in json.dumps(plan["stages"])

    r = subprocess.run(["bash", "plan/run.sh"], cwd=root, env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-4000:]
    for sid in ("dpo", "simpo"):
        assert (root / "out" / sid / "adapter/adapter_model.safetensors").is_file()
        metrics = json.loads((root / "out" / sid / "metrics.json").read_text())
        assert metrics["steps"] == 2 and metrics["tokens_trained"] > 0
    assert (root / "out/merge/model").is_dir()
