"""Training dtypes of a loaded adapter model: fp16 mixed precision trains nothing in fp16."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

from ftplan.schemas.runtime_args import RuntimeArgs  # noqa: E402


@pytest.mark.parametrize("precision, trained_dtypes", [("fp16", {torch.float32}),
                                                       ("bf16", {torch.float32, torch.bfloat16})])
def test_modules_to_save_train_in_fp32_under_fp16(tmp_path_factory, tiny_base, precision, trained_dtypes):
    """GradScaler raises "Attempting to unscale FP16 gradients" at the first optimizer step when a trainable
    parameter is fp16; PEFT upcasts the LoRA matrices but leaves the modules_to_save copy (lm_head) in fp16."""
    from ftplan_runtime.model_loading import load_for_training
    base = tiny_base
    args = RuntimeArgs.model_validate({
        "pipeline": "t", "model": {"base": str(base)}, "source": {"weights": str(base), "tokenizer": str(base)},
        "data_dir": "data", "output_dir": str(tmp_path_factory.mktemp("out")),
        "promise": {"device": "cuda", "world_size": 1, "num_machines": 1, "distributed_type": "NO",
                    "precision": precision, "attention": "sdpa", "kernels": "none"},
        "stage": {"id": "sft", "kind": "sft", "data": "prep", "learning_rate": 1e-4, "precision": precision,
                  "max_steps": 1, "report_to": [],
                  "adapter": {"type": "lora", "r": 4, "alpha": 8, "modules_to_save": ["lm_head"]}}})
    loaded = load_for_training(args)
    trained = {n: p.dtype for n, p in loaded.model.named_parameters() if p.requires_grad}
    assert any("modules_to_save" in n for n in trained)
    assert set(trained.values()) <= trained_dtypes, trained
    frozen = {p.dtype for p in loaded.model.parameters() if not p.requires_grad}
    assert frozen == {torch.float16 if precision == "fp16" else torch.bfloat16}  # the base stays 16-bit
