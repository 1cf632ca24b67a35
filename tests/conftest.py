"""Shared fixtures: pipeline YAML snippets and a helper that writes a pipeline file into ``tmp_path``."""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import pytest


def sft_pipeline_yaml() -> str:
    """A small valid pipeline (hub model, one local JSONL dataset, data -> sft); line numbers are stable."""
    return """\
name: demo
model:
  base: meta-llama/Llama-3.1-8B
hardware:
  gpu: h100-sxm-80gb
stages:
  - id: prep
    kind: data
    max_seq_len: 2048
    datasets:
      - {path: data/train.jsonl, format: alpaca}
  - id: sft
    kind: sft
    data: prep
    learning_rate: 2.0e-4
    adapter: {type: lora, r: 16}
"""


def full_pipeline_yaml() -> str:
    """A valid pipeline with every stage kind (data -> sft -> dpo -> merge -> gguf) and a Slurm block."""
    return """\
name: support-bot
model:
  base: meta-llama/Llama-3.1-8B-Instruct
  chat_template: tokenizer
hardware:
  gpu: h100-sxm-80gb
  gpus_per_node: 8
  nodes: 2
  env: {NCCL_DEBUG: WARN}
  slurm:
    partition: gpu
    time: "12:00:00"
    extra: {mail-type: END}
stages:
  - id: data
    kind: data
    max_seq_len: 4096
    packing: true
    datasets:
      - {path: data/chat.jsonl, format: sharegpt}
      - {path: data/prefs.jsonl, format: preference, columns: {prompt: question}}
  - id: sft
    kind: sft
    data: data
    learning_rate: 2.0e-4
    distributed: zero3
    adapter: {type: lora, r: 16, alpha: 32, targets: [q_proj, v_proj]}
  - id: dpo
    kind: dpo
    input: sft
    data: data
    learning_rate: 5.0e-6
    distributed: {strategy: zero2, offload_optimizer: true}
    adapter: continue
  - id: merge
    kind: merge
    input: dpo
  - id: gguf
    kind: gguf
    input: merge
    quant: [q8_0, q4_k_m]
"""


@pytest.fixture
def sft_yaml() -> str:
    """``sft_pipeline_yaml()``."""
    return sft_pipeline_yaml()


@pytest.fixture
def full_yaml() -> str:
    """``full_pipeline_yaml()``."""
    return full_pipeline_yaml()


@pytest.fixture
def write_pipeline(tmp_path: Path) -> Callable[..., Path]:
    """``write_pipeline(text, name="pipeline.yaml")`` writes a pipeline file into ``tmp_path``; returns its path."""

    def write(text: str, name: str = "pipeline.yaml") -> Path:
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
        return path

    return write


def pytest_addoption(parser):
    """``--update-golden`` rewrites tests/golden/ from the current compiler output (review the diff)."""
    parser.addoption("--update-golden", action="store_true", default=False,
                     help="rewrite the golden compiled plans instead of comparing against them")


@pytest.fixture(scope="session")
def slurm_cluster(tmp_path_factory):
    """The test Slurm cluster of tests/slurm_cluster.sh (partitions cpu and gpu, 8 fake h100 GPUs, cgroup memory
    enforcement where this machine allows it), started once for the session and stopped after; or the one
    ``SLURM_CONF`` names when that script started it. Skips when Slurm is missing or it cannot be started."""
    import os
    import shutil
    import subprocess
    from types import SimpleNamespace

    missing = [t for t in ("sbatch", "slurmctld", "slurmd", "munged", "scontrol") if not shutil.which(t)
               and not Path("/usr/sbin", t).exists()]
    if missing:
        pytest.skip(f"Slurm is not installed (missing {', '.join(missing)}); "
                    "apt-get install slurm-wlm munge to run these tests")
    script = Path(__file__).resolve().parent / "slurm_cluster.sh"
    conf = os.environ.get("SLURM_CONF")
    started = None
    if not (conf and (Path(conf).parent / "memory_enforcement").is_file()
            and subprocess.run(["sinfo", "-h"], capture_output=True, env={**os.environ}).returncode == 0):
        if os.geteuid() != 0:
            pytest.skip("starting a test Slurm cluster needs root (munged, slurmd, fake GPU devices)")
        started = tmp_path_factory.mktemp("slurm")
        r = subprocess.run(["bash", str(script), str(started), "up"], capture_output=True, text=True, timeout=120)
        assert r.returncode == 0, r.stderr
        conf = str(started / "slurm.conf")
    state = Path(conf).parent
    enforcement = (state / "memory_enforcement").read_text().strip()
    try:
        yield SimpleNamespace(conf=conf, state=state, enforcement=enforcement,
                              env={**os.environ, "SLURM_CONF": conf},
                              # the second node is never started: jobs that must run stay off it
                              run_options=["--exclude=ftplan-n2"])
    finally:
        if started is not None:
            subprocess.run(["bash", str(script), str(started), "down"], capture_output=True, timeout=60)
