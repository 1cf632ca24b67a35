"""Parity: the runtime's SFT stage trains like plain TRL `SFTTrainer` with the same data, seed and settings."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
datasets = pytest.importorskip("datasets")

from ftplan.schemas.runtime_args import RuntimeArgs  # noqa: E402

STEPS, BATCH, LR, SEED, RANK, ALPHA = 30, 4, 5e-3, 11, 8, 16


def _plain_trl_losses(base: Path, data: Path, out: Path) -> list[float]:
    """The reference arm: TRL's SFTTrainer used directly, as its documentation shows."""
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer, set_seed
    from trl import SFTConfig, SFTTrainer

    set_seed(SEED)
    model = AutoModelForCausalLM.from_pretrained(str(base), dtype=torch.float32, attn_implementation="sdpa")
    tok = AutoTokenizer.from_pretrained(str(base))
    config = SFTConfig(
        output_dir=str(out), learning_rate=LR, lr_scheduler_type="cosine", warmup_steps=0, max_steps=STEPS,
        per_device_train_batch_size=BATCH, gradient_accumulation_steps=1, gradient_checkpointing=False,
        optim="adamw_torch", weight_decay=0.0, max_grad_norm=1.0, use_cpu=True, bf16=False, logging_steps=1,
        seed=SEED, data_seed=SEED, report_to="none", save_strategy="no", max_length=None,
        completion_only_loss=True,
    )
    peft = LoraConfig(r=RANK, lora_alpha=ALPHA, lora_dropout=0.0, target_modules="all-linear", task_type="CAUSAL_LM")
    trainer = SFTTrainer(model=model, args=config, train_dataset=datasets.load_from_disk(str(data)),
                         processing_class=tok, peft_config=peft)
    trainer.train()
    return [e["loss"] for e in trainer.state.log_history if "loss" in e]


@pytest.mark.slow
def test_runtime_sft_loss_matches_plain_trl(tmp_path_factory, tiny_base, sft_rows):
    """30 steps, logged every step: each runtime loss within 1 % of plain TRL's."""
    from transformers import AutoTokenizer

    from ftplan_runtime.sft import run_sft

    base = tiny_base
    root = tmp_path_factory.mktemp("parity")
    tok = AutoTokenizer.from_pretrained(str(base))
    data = root / "data" / "sft" / "train"
    datasets.Dataset.from_dict(sft_rows(tok, STEPS * BATCH, seed=3, top=20)).save_to_disk(str(data))

    stage = {"id": "sft", "kind": "sft", "data": "prep", "learning_rate": LR, "precision": "fp32",
             "max_steps": STEPS, "micro_batch": BATCH, "logging_steps": 1, "save_steps": STEPS, "seed": SEED,
             "report_to": [], "gradient_checkpointing": False, "lr_scheduler": "cosine", "warmup_steps": 0,
             "adapter": {"type": "lora", "r": RANK, "alpha": ALPHA, "dropout": 0.0, "targets": "all-linear"}}
    args = RuntimeArgs.model_validate({
        "pipeline": "t", "stage": stage, "model": {"base": str(base)},
        "source": {"weights": str(base), "tokenizer": str(base)}, "data_dir": str(root / "data"),
        "output_dir": str(root / "runtime"),
        "promise": {"device": "cpu", "world_size": 1, "num_machines": 1, "distributed_type": "NO",
                    "precision": "fp32", "attention": "sdpa", "kernels": "none"}})
    run_sft(args, "0" * 64)
    state = json.loads((root / "runtime" / "checkpoints" / f"checkpoint-{STEPS}" / "trainer_state.json").read_text())
    ours = [e["loss"] for e in state["log_history"] if "loss" in e]

    theirs = _plain_trl_losses(base, data, root / "plain")
    assert len(ours) == len(theirs) == STEPS
    assert theirs[-1] < theirs[0] * 0.9, "the reference run must actually learn for the comparison to mean much"
    for step, (a, b) in enumerate(zip(ours, theirs), start=1):
        assert a == pytest.approx(b, rel=0.01), f"step {step}: runtime {a} vs TRL {b}"
