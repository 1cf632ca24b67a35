"""Compiled tiny pipelines for the multi-process tests (``test_multiprocess*.py``): a project folder with the tiny
model and a small chat file, pipelines written from a few settings, ``ftplan compile`` and the environment the
compiled scripts run in (this Python's ``accelerate`` and ``python`` first on PATH, one thread per process).

Every pipeline of one project shares its name and output folder, so the data stage that one plan ran is complete
for the next, which goes straight to training (its own training stage id keeps the outputs apart)."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import yaml

ROWS = 48
"""Training rows of the chat file: enough for a few steps at an effective batch of 4 (no validation split)."""


def make_project(root: Path, tiny_base: Path) -> Path:
    """``root`` with ``model/`` (a copy of the tiny model) and ``data/chat.jsonl`` (``ROWS`` short conversations)."""
    root.mkdir(parents=True, exist_ok=True)
    shutil.copytree(tiny_base, root / "model")
    (root / "data").mkdir()
    with open(root / "data" / "chat.jsonl", "w") as f:
        for i in range(ROWS):
            a, b = i % 9 + 1, (i * 7) % 9 + 1
            turns = [{"from": "human", "value": f"What is {a} + {b}?"},
                     {"from": "gpt", "value": f"The answer is {a + b}."}]
            f.write(json.dumps({"conversations": turns}) + "\n")
    return root


def pipeline(root: Path, file: str, *, stage: str, hardware: dict, **train) -> Path:
    """Write ``root/file``: the data stage and one SFT stage ``stage`` (LoRA without dropout, fp32, a few steps,
    the loss logged at every step) on ``hardware`` (``device: cpu`` plus these keys), ``train`` overriding the
    SFT stage's settings."""
    sft = {"id": stage, "kind": "sft", "data": "data", "precision": "fp32", "learning_rate": 1.0e-2,
           "adapter": {"type": "lora", "r": 8, "alpha": 16, "dropout": 0.0}, "max_steps": 3, "micro_batch": 2,
           "grad_accum": 1, "logging_steps": 1, "report_to": [], "gradient_checkpointing": False, **train}
    doc = {"name": "mp", "model": {"base": "model", "architecture": "ftplan-tiny"}, "output_dir": "out",
           "hardware": {"device": "cpu", **hardware},
           "stages": [{"id": "data", "kind": "data", "max_seq_len": 64, "val_fraction": 0.0,
                       "datasets": [{"path": "data/chat.jsonl", "format": "sharegpt"}]}, sft]}
    path = root / file
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


def script_env(**extra: str) -> dict[str, str]:
    """The environment of a compiled script: this Python's tools first on PATH, no hub, one thread per process."""
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
           "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", **extra}
    for name in ("TRITON_INTERPRET", "WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(name, None)
    return env


def compile_plan(root: Path, pipeline_file: Path, plan: str) -> Path:
    """``ftplan compile PIPELINE -o PLAN`` from ``root``; the plan folder."""
    r = subprocess.run([sys.executable, "-m", "ftplan", "compile", pipeline_file.name, "-o", plan], cwd=root,
                       env=script_env(), capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    return root / plan


def run_plan(root: Path, plan: Path, timeout: float = 600) -> subprocess.CompletedProcess:
    """``bash PLAN/run.sh`` from ``root``; fails the test with the output's tail when it does not exit 0."""
    r = subprocess.run(["bash", str(plan / "run.sh")], cwd=root, env=script_env(), capture_output=True, text=True,
                       timeout=timeout)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-6000:]
    return r


def metrics(root: Path, stage: str) -> dict:
    """The stage's ``metrics.json``."""
    return json.loads((root / "out" / stage / "metrics.json").read_text())


def free_port() -> int:
    """A TCP port nothing listens on now (for a rendezvous)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
