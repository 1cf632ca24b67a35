"""The DPO reference policy of a full fine-tune is the policy's starting point, merged input adapters included."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

from ftplan.schemas.runtime_args import RuntimeArgs  # noqa: E402


def test_full_dpo_reference_includes_the_merged_input_adapter(tmp_path_factory, tiny_base):
    """`adapter: {type: full}` + `merge_input: true`: the policy starts from base + the SFT adapter, so the
    frozen reference must too (not the bare base)."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from ftplan_runtime.model_loading import load_for_training, load_reference
    base = tiny_base
    root = tmp_path_factory.mktemp("ref")
    torch.manual_seed(0)
    sft = get_peft_model(AutoModelForCausalLM.from_pretrained(str(base), dtype=torch.float32),
                         LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", init_lora_weights=False))
    sft.save_pretrained(str(root / "sft" / "adapter"))
    args = RuntimeArgs.model_validate({
        "pipeline": "t", "model": {"base": str(base)}, "data_dir": "data", "output_dir": str(root / "dpo"),
        "source": {"weights": str(base), "tokenizer": str(base),
                   "merge": [{"stage": "sft", "path": str(root / "sft" / "adapter"), "type": "lora"}]},
        "promise": {"device": "cpu", "world_size": 1, "num_machines": 1, "distributed_type": "NO",
                    "precision": "fp32", "attention": "sdpa", "kernels": "none"},
        "stage": {"id": "dpo", "kind": "dpo", "input": "sft", "data": "prep", "learning_rate": 1e-6,
                  "precision": "fp32", "max_steps": 1, "report_to": [], "merge_input": True,
                  "adapter": {"type": "full"}}})
    tok = AutoTokenizer.from_pretrained(str(base))
    ids = torch.tensor([tok("The quick brown fox")["input_ids"]])
    with torch.no_grad():
        policy = load_for_training(args).model.eval()(input_ids=ids).logits
        ref = load_reference(args, tok)(input_ids=ids).logits
        bare = AutoModelForCausalLM.from_pretrained(str(base), dtype=torch.float32).eval()(input_ids=ids).logits
    assert not torch.allclose(policy, bare, atol=1e-4), "the adapter should change the logits"
    torch.testing.assert_close(ref, policy, atol=1e-5, rtol=1e-5)
