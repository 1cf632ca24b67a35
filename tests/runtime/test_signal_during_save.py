"""A preemption signal that arrives after the last step, during the final save, does not kill the stage: the
save finishes and the stage completes (exit 0, marker written)."""

from __future__ import annotations

import os
import random
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
datasets = pytest.importorskip("datasets")

from ftplan.schemas.runtime_args import COMPLETE_MARKER, RuntimeArgs  # noqa: E402

# Runs the real entry point, with the final save wrapped so that the process signals itself first (as Slurm's
# SIGTERM would at that moment).
DRIVER = textwrap.dedent("""
    import os, signal, sys
    from ftplan_runtime import train_common
    real = train_common.save_result
    def save_after_a_signal(*a, **k):
        os.kill(os.getpid(), signal.SIGTERM)
        return real(*a, **k)
    train_common.save_result = save_after_a_signal
    from ftplan_runtime.__main__ import main
    sys.exit(main(sys.argv[1:]))
""")


def test_sigterm_during_the_final_save_completes_the_stage(tmp_path_factory, tiny_base):
    from transformers import AutoTokenizer

    base = tiny_base
    root = tmp_path_factory.mktemp("sigsave")
    tok = AutoTokenizer.from_pretrained(str(base))
    rng = random.Random(0)
    rows = {"input_ids": [], "completion_mask": []}
    for _ in range(8):
        ids = tok(f"<|im_start|>user\\n{rng.randint(1, 9)}<|im_end|>\\n")["input_ids"]
        rows["input_ids"].append(ids)
        rows["completion_mask"].append([1] * len(ids))
    datasets.Dataset.from_dict(rows).save_to_disk(str(root / "data" / "sft" / "train"))
    args = RuntimeArgs.model_validate({
        "pipeline": "t", "model": {"base": str(base)}, "source": {"weights": str(base), "tokenizer": str(base)},
        "data_dir": "data", "output_dir": "out",
        "promise": {"device": "cpu", "world_size": 1, "num_machines": 1, "distributed_type": "NO",
                    "precision": "fp32", "attention": "sdpa", "kernels": "none"},
        "stage": {"id": "sft", "kind": "sft", "data": "prep", "learning_rate": 1e-3, "precision": "fp32",
                  "max_steps": 2, "micro_batch": 2, "report_to": [], "gradient_checkpointing": False,
                  "adapter": {"type": "lora", "r": 4, "alpha": 8}}})
    (root / "args.json").write_text(args.model_dump_json())
    env = dict(os.environ, OMP_NUM_THREADS="1")
    env.pop("TRITON_INTERPRET", None)
    proc = subprocess.run([sys.executable, "-c", DRIVER, "args.json"], cwd=root, env=env, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = root / "out"
    assert (out / "adapter" / "adapter_model.safetensors").is_file()
    assert (out / COMPLETE_MARKER).is_file() and (out / "metrics.json").is_file()
