"""The runtime on the oldest transformers/peft that pyproject accepts (constraints-oldest.txt).

scripts/setup.sh installs those releases into ``<venv>/oldest``; this test puts that folder first on PYTHONPATH
and runs a compiled SFT -> DPO plan (activation checkpointing on, the DPO stage continuing the adapter) through its
run.sh on the CPU. Renamed or removed arguments between releases (transformers 5.17 has only
``gradient_checkpointing``, later releases prefer ``activation_checkpointing``) fail here rather than on a GPU
cluster at step 0.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
OVERLAY = Path(sys.prefix) / "oldest"


def _pins() -> dict[str, str]:
    pins = {}
    for line in (ROOT / "constraints-oldest.txt").read_text().splitlines():
        if line and not line.startswith("#"):
            name, version = line.split("==")
            pins[name] = version
    return pins


@pytest.mark.slow
def test_sft_then_dpo_runs_on_the_oldest_supported_releases(tmp_path, tiny_base):
    if not OVERLAY.is_dir():
        pytest.skip(f"no {OVERLAY}: run scripts/setup.sh (make test does) to install constraints-oldest.txt")
    pins = _pins()
    for name in ("support-chat.jsonl", "support-prefs.jsonl"):
        shutil.copy(ROOT / "examples/data" / name, tmp_path / name)
    (tmp_path / "p.yaml").write_text(f"""\
name: oldest
model: {{base: {tiny_base}, architecture: ftplan-tiny}}
hardware: {{device: cpu}}
stages:
  - {{id: data, kind: data, max_seq_len: 128, datasets: [{{path: support-chat.jsonl, format: sharegpt}},
                                                      {{path: support-prefs.jsonl, format: preference}}]}}
  - {{id: sft, kind: sft, data: data, adapter: {{type: lora, r: 8, alpha: 16}}, precision: fp32,
     gradient_checkpointing: true, learning_rate: 1.0e-3, max_steps: 3, micro_batch: 4, logging_steps: 1,
     report_to: []}}
  - {{id: dpo, kind: dpo, input: sft, data: data, adapter: continue, precision: fp32, gradient_checkpointing: true,
     learning_rate: 1.0e-4, max_steps: 2, micro_batch: 2, logging_steps: 1, report_to: []}}
""")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(OVERLAY), os.environ.get("PYTHONPATH", "")]),
           "HF_HUB_OFFLINE": "1"}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}"
    compiled = subprocess.run([sys.executable, "-m", "ftplan", "compile", "p.yaml", "-o", "plan"], cwd=tmp_path,
                              env=env, capture_output=True, text=True, timeout=120)
    assert compiled.returncode == 0, compiled.stdout + compiled.stderr
    ran = subprocess.run(["bash", "plan/run.sh"], cwd=tmp_path, env=env, capture_output=True, text=True,
                         timeout=600)
    assert ran.returncode == 0, ran.stdout[-3000:] + ran.stderr[-3000:]
    for stage in ("sft", "dpo"):
        metrics = json.loads((tmp_path / "outputs" / stage / "metrics.json").read_text())
        versions = metrics["versions"]
        assert (versions["transformers"], versions["peft"]) == (pins["transformers"], pins["peft"]), versions
        assert metrics["steps"] == {"sft": 3, "dpo": 2}[stage]
