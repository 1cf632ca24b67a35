"""End to end through ``run.sh``: a compiled tiny data -> SFT -> DPO plan with ``kernels: ftplan`` in both training
stages runs on the CPU (the entry point puts Triton in interpreter mode, fp32) and on a CUDA GPU (compiled kernels,
bf16), and the DPO stage's metrics.json shows the fused log-prob head ran beside the layer kernels."""

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
name: sft-dpo-kernels
model:
  base: model
hardware:
  device: cpu
output_dir: out
stages:
  - id: data
    kind: data
    datasets:
      - {path: data/chat.jsonl, format: sharegpt}
      - {path: data/prefs.jsonl, format: preference}
    max_seq_len: 96
  - id: sft
    kind: sft
    data: data
    adapter: {type: lora, r: 4, alpha: 8, targets: all-linear, modules_to_save: [lm_head]}
    kernels: ftplan
    precision: fp32
    learning_rate: 1.0e-3
    max_steps: 2
    micro_batch: 2
    logging_steps: 1
  - id: dpo
    kind: dpo
    input: sft
    data: data
    adapter: continue
    kernels: ftplan
    precision: fp32
    learning_rate: 1.0e-3
    max_steps: 2
    micro_batch: 1
    logging_steps: 1
"""


GPU_HARDWARE = "hardware:\n  gpu: h100-sxm-80gb\n"
"""The GPU variant's target: an H100 (the preflight accepts an H200 too: the same architecture, more memory)."""


def _on_gpu(text: str) -> str:
    """The CPU pipeline retargeted at one GPU in bf16."""
    assert "hardware:\n  device: cpu\n" in text and text.count("precision: fp32") == 2  # both stages retargeted
    return text.replace("hardware:\n  device: cpu\n", GPU_HARDWARE).replace("precision: fp32", "precision: bf16")


@pytest.mark.slow
@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.gpu)])
def test_sft_then_dpo_with_kernels_compile_and_run(tmp_path, tiny_base, device):
    if device == "cuda":
        torch = pytest.importorskip("torch")
        if not torch.cuda.is_available() or not torch.cuda.is_bf16_supported():
            pytest.skip("needs a CUDA GPU with bf16")
    root = tmp_path / "project"
    shutil.copytree(tiny_base, root / "model")
    (root / "data").mkdir()
    for name, source in (("chat", "support-chat"), ("prefs", "support-prefs")):
        rows = (REPO / "examples/data" / f"{source}.jsonl").read_text().splitlines()[:4]
        (root / "data" / f"{name}.jsonl").write_text("\n".join(rows) + "\n")
    (root / "p.yaml").write_text(PIPELINE if device == "cpu" else _on_gpu(PIPELINE))
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
           "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    env.pop("TRITON_INTERPRET", None)  # the entry point sets it for a CPU plan with kernels
    c = subprocess.run([sys.executable, "-m", "ftplan", "compile", "p.yaml", "-o", "plan"], cwd=root, env=env,
                       capture_output=True, text=True, timeout=120)
    assert c.returncode == 0, c.stdout + c.stderr
    for sid in ("sft", "dpo"):
        args = json.loads((root / "plan/stages" / sid / "args.json").read_text())
        assert args["promise"]["kernels"] == "ftplan" and args["stage"]["kernels"] == "ftplan"

    r = subprocess.run(["bash", "plan/run.sh"], cwd=root, env=env, capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-4000:]
    sft = json.loads((root / "out/sft/metrics.json").read_text())
    dpo = json.loads((root / "out/dpo/metrics.json").read_text())
    assert "logprobs" not in sft["kernels"]  # SFT's loss is the fused cross-entropy
    # the policy's head (the continued adapter, its 'ref' copy as the reference) runs the fused log-prob op
    assert dpo["kernels"]["logprobs"] == 1 and dpo["kernels"]["lora"] == sft["kernels"]["lora"] > 0
    assert dpo["kernels"]["rms_norm"] > 0 and dpo["kernels"]["rope"] > 0
    assert dpo["steps"] == 2 and dpo["tokens_trained"] > 0 and dpo["loss_first"] is not None
    assert (root / "out/dpo/adapter/adapter_model.safetensors").is_file()
