"""A run with ``load_best_model_at_end`` killed after its last checkpoint: the rerun publishes the best
checkpoint's weights (what ``Trainer.train`` loads at the end), not the last checkpoint's."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
datasets = pytest.importorskip("datasets")

from ftplan.schemas.runtime_args import RuntimeArgs  # noqa: E402


def _adapter(folder: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(str(folder / "adapter_model.safetensors"))


def test_finished_run_with_load_best_publishes_the_best_checkpoint(tmp_path_factory, tiny_base, sft_rows):
    from transformers import AutoTokenizer

    from ftplan_runtime.sft import run_sft
    base = tiny_base
    root = tmp_path_factory.mktemp("best")
    tok = AutoTokenizer.from_pretrained(str(base))
    datasets.Dataset.from_dict(sft_rows(tok, 16, 0)).save_to_disk(str(root / "data" / "sft" / "train"))
    datasets.Dataset.from_dict(sft_rows(tok, 4, 1)).save_to_disk(str(root / "data" / "sft" / "validation"))
    args = RuntimeArgs.model_validate({
        "pipeline": "t", "model": {"base": str(base)}, "source": {"weights": str(base), "tokenizer": str(base)},
        "data_dir": str(root / "data"), "output_dir": str(root / "out"),
        "promise": {"device": "cpu", "world_size": 1, "num_machines": 1, "distributed_type": "NO",
                    "precision": "fp32", "attention": "sdpa", "kernels": "none"},
        "stage": {"id": "sft", "kind": "sft", "data": "prep", "learning_rate": 1e-2, "precision": "fp32",
                  "max_steps": 4, "micro_batch": 2, "logging_steps": 1, "save_steps": 2, "eval_steps": 2,
                  "save_total_limit": 2, "load_best_model_at_end": True, "report_to": [],
                  "gradient_checkpointing": False, "adapter": {"type": "lora", "r": 4, "alpha": 8}}})
    run_sft(args, "d" * 64)
    out = Path(args.output_dir)
    ckpts = out / "checkpoints"
    last = ckpts / "checkpoint-4"
    # Make step 2 the best one (as if its eval loss had been the lowest), then lose the final save.
    state = json.loads((last / "trainer_state.json").read_text())
    state["best_global_step"], state["best_model_checkpoint"] = 2, str(ckpts / "checkpoint-2")
    (last / "trainer_state.json").write_text(json.dumps(state))
    assert (ckpts / "checkpoint-2" / "adapter_model.safetensors").is_file()
    shutil.rmtree(out / "adapter")
    again = run_sft(args, "d" * 64)
    assert again["resumed_from_step"] == 4
    got, best, final = _adapter(out / "adapter"), _adapter(ckpts / "checkpoint-2"), _adapter(last)
    assert not all(torch.equal(best[k], final[k]) for k in best), "steps 2 and 4 should differ"
    assert got.keys() == best.keys() and all(torch.equal(got[k], best[k]) for k in best)
