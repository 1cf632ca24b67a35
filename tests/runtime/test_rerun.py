"""End to end through ``run.sh``: a compiled tiny data -> SFT plan on the CPU runs, the data file is edited, and
the next ``run.sh`` reruns the data stage and SFT from the new rows (not the old checkpoints); a third run finds
both complete."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
PIPELINE = """\
name: rerun
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
    max_seq_len: 128
    val_fraction: 0
  - id: sft
    kind: sft
    data: data
    adapter: {type: lora, r: 4}
    precision: fp32
    learning_rate: 1.0e-3
    max_steps: 2
    micro_batch: 2
    save_steps: 1
    logging_steps: 1
"""


def _run(root: Path, env: dict) -> subprocess.CompletedProcess:
    r = subprocess.run(["bash", "plan/run.sh"], cwd=root, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-4000:]
    return r


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.slow
def test_run_sh_reruns_the_data_stage_and_sft_after_the_data_file_changed(tmp_path, tiny_base):
    root = tmp_path / "project"
    shutil.copytree(tiny_base, root / "model")
    rows = (REPO / "examples/data/support-chat.jsonl").read_text().splitlines()[:12]
    (root / "data").mkdir()
    data = root / "data/chat.jsonl"
    data.write_text("\n".join(rows) + "\n")
    (root / "p.yaml").write_text(PIPELINE)
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
           "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    env.pop("TRITON_INTERPRET", None)
    c = subprocess.run([sys.executable, "-m", "ftplan", "compile", "p.yaml", "-o", "plan"], cwd=root, env=env,
                       capture_output=True, text=True, timeout=120)
    assert c.returncode == 0, c.stdout + c.stderr

    first = _run(root, env)
    assert "ftplan: stage data: it has not run yet" in first.stdout
    assert "ftplan: stage sft: it has not run yet" in first.stdout
    adapter = root / "out/sft/adapter/adapter_model.safetensors"
    old_adapter = _sha(adapter)
    assert (root / "out/sft/checkpoints/checkpoint-2").is_dir()  # a finished run's checkpoints stay

    # half the rows deleted and an answer changed
    kept = rows[:6]
    kept[0] = kept[0].replace('"gpt", "value": "', '"gpt", "value": "Certainly. ', 1)
    assert kept[0] != rows[0]
    data.write_text("\n".join(kept) + "\n")
    second = _run(root, env)
    assert "ftplan: stage data: data/chat.jsonl changed since it last ran" in second.stdout
    assert "ftplan: stage sft: out/data/manifest.json changed since it last ran" in second.stdout
    assert "is complete; skipping" not in second.stdout
    assert "were trained from other inputs; training starts over" in second.stderr
    manifest = json.loads((root / "out/data/manifest.json").read_text())
    assert [(d["sha256"], d["rows_in"]) for d in manifest["datasets"]] == [(_sha(data), 6)]
    sft_stamp = json.loads((root / "out/sft/_COMPLETE").read_text())
    assert sft_stamp["inputs"]["out/data/manifest.json"]["sha256"] == _sha(root / "out/data/manifest.json")
    metrics = json.loads((root / "out/sft/metrics.json").read_text())
    assert metrics["resumed_from_step"] == 0 and metrics["steps"] == 2  # trained again, not resumed
    assert _sha(adapter) != old_adapter

    third = _run(root, env)
    assert third.stdout.splitlines() == ["ftplan: stage data is complete; skipping",
                                         "ftplan: stage sft is complete; skipping",
                                         "ftplan: every stage of rerun is complete"]
