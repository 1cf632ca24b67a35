"""DPO stage: the reference policy is the input stage's model (never the bare base), in every hand-off mode."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
datasets = pytest.importorskip("datasets")

from ftplan.schemas.runtime_args import RuntimeArgs  # noqa: E402

# ---------------------------------------------------------------------------------------------- fixtures


def _prompt_ids(tok, a: int, b: int) -> list[int]:
    ids = tok.apply_chat_template([{"role": "user", "content": f"What is {a} + {b}?"}],
                                  add_generation_prompt=True, tokenize=True, return_dict=False)
    return list(ids["input_ids"] if hasattr(ids, "keys") else ids)


def _write_pairs(tok, folder: Path, n: int, seed: int) -> None:
    rng = random.Random(seed)
    rows = {"prompt_ids": [], "chosen_ids": [], "rejected_ids": []}
    for _ in range(n):
        a, b = rng.randint(1, 9), rng.randint(1, 9)
        rows["prompt_ids"].append(_prompt_ids(tok, a, b))
        rows["chosen_ids"].append(tok(f"The answer is {a + b}.<|im_end|>", add_special_tokens=False)["input_ids"])
        rows["rejected_ids"].append(tok(f"It is {a * b + 1}.<|im_end|>", add_special_tokens=False)["input_ids"])
    datasets.Dataset.from_dict(rows).save_to_disk(str(folder))


def _make_adapter(base: Path, dest: Path, seed: int, seeded_lora) -> Path:
    """A LoRA adapter with random (non-zero) updates: the 'SFT result' differs clearly from the base."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(base), dtype=torch.float32)
    model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules="all-linear"))
    seeded_lora(model, seed, b_scale=0.3)
    model.save_pretrained(str(dest))
    return dest


@pytest.fixture(scope="module")
def project(tmp_path_factory, tiny_base, seeded_lora):
    """Tiny base, a non-trivial 'SFT' adapter, and tokenized preference pairs."""
    from transformers import AutoTokenizer

    base = tiny_base
    root = tmp_path_factory.mktemp("dpo")
    tok = AutoTokenizer.from_pretrained(str(base))
    _write_pairs(tok, root / "data" / "preference" / "train", 16, seed=1)
    _make_adapter(base, root / "sft" / "adapter", seed=0, seeded_lora=seeded_lora)
    return {"root": root, "base": base, "tok": tok, "adapter": root / "sft" / "adapter"}


def _dpo_args(project, out: str, *, adapter, reference="live", merge_input=False, max_steps=3) -> RuntimeArgs:
    root, base = project["root"], str(project["base"])
    sft_ref = {"stage": "sft", "path": str(project["adapter"]), "type": "lora"}
    if adapter == "continue":
        source = {"weights": base, "tokenizer": base, "continue_adapter": sft_ref}
    elif merge_input:
        source = {"weights": base, "tokenizer": base, "merge": [sft_ref]}
    else:
        source = {"weights": base, "tokenizer": base}
    stage = {"id": "dpo", "kind": "dpo", "input": "sft", "data": "prep", "learning_rate": 5e-3, "precision": "fp32",
             "max_steps": max_steps, "micro_batch": 4, "logging_steps": 1, "report_to": [], "adapter": adapter,
             "merge_input": merge_input, "reference": reference, "gradient_checkpointing": False, "beta": 0.1}
    return RuntimeArgs.model_validate({
        "pipeline": "t", "stage": stage, "model": {"base": base}, "source": source,
        "data_dir": str(root / "data"), "output_dir": str(root / out),
        "promise": {"device": "cpu", "world_size": 1, "num_machines": 1, "distributed_type": "NO",
                    "precision": "fp32", "attention": "sdpa", "kernels": "none"}})


def _independent_logps(model, rows) -> torch.Tensor:
    """Sum of completion-token log-probs for chosen then rejected, computed with a plain forward."""
    out = []
    for key in ("chosen_ids", "rejected_ids"):
        for row in rows:
            ids = torch.tensor([row["prompt_ids"] + row[key]])
            with torch.no_grad():
                logp = model(input_ids=ids).logits[0, :-1].float().log_softmax(-1)
            tok_lp = logp.gather(-1, ids[0, 1:, None])[:, 0]
            out.append(tok_lp[len(row["prompt_ids"]) - 1:].sum())
    return torch.stack(out)


def _sft_model(project, *, merged: bool):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(str(project["base"]), dtype=torch.float32)
    model = PeftModel.from_pretrained(base, str(project["adapter"]))
    return (model.merge_and_unload() if merged else model).eval()


def _trainer_ref_logps(trainer, rows, model=None) -> torch.Tensor:
    batch = trainer.data_collator([dict(r) for r in rows])
    chosen, rejected = trainer.compute_ref_log_probs(model if model is not None else trainer.model, batch)
    return torch.cat([chosen, rejected]).detach().float()


def _policy_logps(trainer, rows) -> torch.Tensor:
    batch = trainer.data_collator([dict(r) for r in rows])
    labels = batch["input_ids"].masked_fill(batch["completion_mask"] == 0, -100)
    trainer.model.eval()
    with torch.no_grad():
        out = trainer.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], labels=labels,
                            fused_lm_head=True, use_cache=False)
    return out.log_probs.sum(dim=1).float()


def _rows(project, n=4):
    ds = datasets.load_from_disk(str(project["root"] / "data" / "preference" / "train"))
    return [ds[i] for i in range(n)]


def _prepare(args):
    from ftplan_runtime.dpo import dpo_spec
    from ftplan_runtime.train_common import prepare_training

    return prepare_training(args, "0" * 64, dpo_spec(args))


# ---------------------------------------------------------------------------------------------- tests


def test_continue_live_reference_is_the_sft_adapter_before_and_after_training(project):
    """`adapter: continue`: TRL's frozen `ref` copy = the SFT adapter, and it does not move while training."""
    prep = _prepare(_dpo_args(project, "out-live", adapter="continue"))
    trainer = prep.trainer
    rows = _rows(project)
    want = _independent_logps(_sft_model(project, merged=False), rows)
    base_lp = _independent_logps(_base_model(project), rows)
    assert not torch.allclose(want, base_lp, atol=1e-2), "the test adapter must differ from the base"
    before = _trainer_ref_logps(trainer, rows)
    torch.testing.assert_close(before, want, atol=1e-4, rtol=1e-5)
    torch.testing.assert_close(_policy_logps(trainer, rows), want, atol=1e-4, rtol=1e-5)

    trainer.train()
    after_ref = _trainer_ref_logps(trainer, rows)
    torch.testing.assert_close(after_ref, want, atol=1e-4, rtol=1e-5)
    moved = (_policy_logps(trainer, rows) - want).abs().max()
    assert moved > 1e-3, "the policy should have moved away from the reference"
    ref_params = [p for n, p in trainer.model.named_parameters() if ".ref." in n]
    assert ref_params and not any(p.requires_grad for p in ref_params)


def _base_model(project):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(str(project["base"]), dtype=torch.float32).eval()


def test_continue_precomputed_reference_is_the_sft_adapter(project):
    """`reference: precomputed`: log-probs computed before step 0 equal the SFT model's."""
    prep = _prepare(_dpo_args(project, "out-pre", adapter="continue", reference="precomputed"))
    ds = prep.trainer.train_dataset
    assert prep.config.precompute_ref_log_probs
    rows = [ds[i] for i in range(len(ds))]
    want = _independent_logps(_sft_model(project, merged=False), rows)
    got = torch.tensor([r["ref_chosen_logps"] for r in rows] + [r["ref_rejected_logps"] for r in rows])
    torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-5)


def test_merge_input_new_adapter_reference_is_the_merged_sft_model(project):
    """`merge_input: true` + new LoRA: adapter disabled = merged SFT weights, not the original base."""
    lora = {"type": "lora", "r": 4, "alpha": 8}
    prep = _prepare(_dpo_args(project, "out-merge", adapter=lora, merge_input=True))
    trainer = prep.trainer
    assert "ref" not in trainer.model.peft_config
    rows = _rows(project)
    want = _independent_logps(_sft_model(project, merged=True), rows)
    assert not torch.allclose(want, _independent_logps(_base_model(project), rows), atol=1e-2)
    torch.testing.assert_close(_trainer_ref_logps(trainer, rows), want, atol=1e-4, rtol=1e-5)
    trainer.train()
    torch.testing.assert_close(_trainer_ref_logps(trainer, rows), want, atol=1e-4, rtol=1e-5)


def test_full_finetune_live_reference_is_a_frozen_copy(project):
    """Full fine-tune: a separate frozen model holds the starting weights while the policy trains."""
    prep = _prepare(_dpo_args(project, "out-full", adapter={"type": "full"}, max_steps=2))
    trainer = prep.trainer
    assert trainer.ref_model is not None and trainer.ref_model is not trainer.model
    assert not any(p.requires_grad for p in trainer.ref_model.parameters())
    rows = _rows(project)
    want = _independent_logps(_base_model(project), rows)
    trainer.train()
    torch.testing.assert_close(_trainer_ref_logps(trainer, rows, trainer.ref_model), want, atol=1e-4, rtol=1e-5)
    assert (_policy_logps(trainer, rows) - want).abs().max() > 1e-3


def test_dpo_stage_runs_end_to_end_and_saves_only_the_trained_adapter(project):
    """run_dpo: metrics, an adapter folder with the `default` adapter only (no `ref/` copy), tokenizer files."""
    from ftplan_runtime.dpo import run_dpo

    args = _dpo_args(project, "out-run", adapter="continue", max_steps=2)
    metrics = run_dpo(args, "1" * 64)
    out = Path(args.output_dir)
    adapter = out / "adapter"
    assert (adapter / "adapter_model.safetensors").is_file() and not (adapter / "ref").exists()
    assert (adapter / "tokenizer_config.json").read_bytes() == (project["base"] / "tokenizer_config.json").read_bytes()
    saved = json.loads((out / "metrics.json").read_text())
    assert saved["kind"] == "dpo" and saved["steps"] == 2 == metrics["steps"]
    assert saved["tokens_trained"] > 0 and saved["loss_first"] is not None


def test_merge_input_with_new_qlora_adapter_merges_at_16bit_then_quantizes(project):
    """QLoRA after `merge_input`: the SFT adapter is merged into full-precision weights, saved to a stage-local
    folder and reloaded in NF4 (never merged into 4-bit); the folder is removed; the reference (adapter off) is
    the quantized merged SFT model."""
    pytest.importorskip("bitsandbytes")
    qlora = {"type": "qlora", "r": 4, "alpha": 8}
    args = _dpo_args(project, "out-qmerge", adapter=qlora, merge_input=True, max_steps=1)
    prep = _prepare(args)
    trainer = prep.trainer
    q = trainer.model.get_base_model().model.layers[0].mlp.down_proj.base_layer
    assert type(q).__name__ == "Linear4bit"
    assert not (Path(args.output_dir) / "merged_input").exists()
    rows = _rows(project)
    ref = _trainer_ref_logps(trainer, rows)
    merged = _independent_logps(_sft_model(project, merged=True), rows)
    base = _independent_logps(_base_model(project), rows)
    assert (ref - merged).abs().mean() < 0.5 * (ref - base).abs().mean()
