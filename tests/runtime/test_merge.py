"""Merge stage: adapter chains merged in order into full-precision weights, verified on a probe batch."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

from ftplan.schemas.runtime_args import RuntimeArgs  # noqa: E402


def _load(path, dtype=torch.float32):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(str(path), dtype=dtype).eval()


def _make_adapter(model, dest: Path, seed: int, targets, seeded_lora) -> Path:
    """Attach a LoRA with random non-zero updates (drawn from `seed`) to `model`'s weights and save it (the model is
    left unchanged)."""
    from peft import LoraConfig, get_peft_model

    peft_model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=targets))
    seeded_lora(peft_model, seed, b_scale=0.1)
    peft_model.save_pretrained(str(dest))
    peft_model.unload()
    return dest


@pytest.fixture(scope="module")
def chain(tmp_path_factory, tiny_base, seeded_lora):
    """Two adapters trained 'in sequence': A on the base, B on base+A merged (as a DPO merge_input would)."""
    from peft import PeftModel

    base = tiny_base
    root = tmp_path_factory.mktemp("merge")
    a = _make_adapter(_load(base), root / "a", seed=1, targets="all-linear", seeded_lora=seeded_lora)
    merged_a = PeftModel.from_pretrained(_load(base), str(a)).merge_and_unload()
    b = _make_adapter(merged_a, root / "b", seed=2, targets=["q_proj", "v_proj"], seeded_lora=seeded_lora)
    return {"root": root, "base": base, "a": a, "b": b}


def _args(chain, out: str, *, dtype="fp32", verify=True, types=("lora", "lora")) -> RuntimeArgs:
    refs = [{"stage": "sft", "path": str(chain["a"]), "type": types[0]},
            {"stage": "dpo", "path": str(chain["b"]), "type": types[1]}]
    base = str(chain["base"])
    return RuntimeArgs.model_validate({
        "pipeline": "t", "stage": {"id": "merge", "kind": "merge", "input": "dpo", "dtype": dtype, "verify": verify},
        "model": {"base": base}, "source": {"weights": base, "tokenizer": base, "merge": refs},
        "output_dir": str(chain["root"] / out),
        "promise": {"device": "cpu", "world_size": 1, "num_machines": 1, "distributed_type": "NO",
                    "precision": dtype, "attention": "sdpa", "kernels": "none"}})


def _expected_logits(chain, ids):
    """Reference: the chain applied by hand with PEFT (A merged, B as a live adapter)."""
    from peft import PeftModel

    model = PeftModel.from_pretrained(_load(chain["base"]), str(chain["a"])).merge_and_unload()
    model = PeftModel.from_pretrained(model, str(chain["b"])).eval()
    with torch.no_grad():
        return model(input_ids=ids).logits


def test_chain_merged_in_order_and_verified(chain):
    """fp32 merge of A then B: the saved model's logits equal the adapter chain's; metrics report the check."""
    from ftplan_runtime.merge import run_merge

    args = _args(chain, "out-fp32")
    metrics = run_merge(args, "0" * 64)
    model_dir = Path(args.output_dir) / "model"
    merged = _load(model_dir)
    ids = torch.tensor([[1, 5, 17, 42, 99, 7, 3]])
    with torch.no_grad():
        got = merged(input_ids=ids).logits
    torch.testing.assert_close(got, _expected_logits(chain, ids), atol=1e-4, rtol=1e-4)
    with torch.no_grad():
        plain = _load(chain["base"])(input_ids=ids).logits
    assert (got - plain).abs().max() > 1e-2, "the merge must change the model"
    saved = json.loads((Path(args.output_dir) / "metrics.json").read_text())
    assert [r["stage"] for r in saved["adapters_merged"]] == ["sft", "dpo"]
    assert saved["verified"] and 0 <= saved["merge_max_rel_diff"] <= saved["merge_tolerance"]
    assert saved["merge_max_abs_diff"] == pytest.approx(metrics["merge_max_abs_diff"], rel=1e-6)
    for name in ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "chat_template.jinja"):
        assert (model_dir / name).read_bytes() == (chain["base"] / name).read_bytes()
    assert not list(model_dir.glob("adapter_*")), "a plain HF model folder, no PEFT files"


def test_qlora_adapters_merge_into_full_precision_weights(chain):
    """A QLoRA adapter is merged into a 16-bit base (bf16 here), never into 4-bit weights."""
    from safetensors import safe_open

    from ftplan_runtime.merge import run_merge

    args = _args(chain, "out-bf16", dtype="bf16", types=("qlora", "qlora"))
    run_merge(args, "0" * 64)
    model_dir = Path(args.output_dir) / "model"
    cfg = json.loads((model_dir / "config.json").read_text())
    assert "quantization_config" not in cfg
    with safe_open(str(model_dir / "model.safetensors"), framework="pt") as st:
        dtypes = {st.get_slice(k).get_dtype() for k in st.keys()}
    assert dtypes == {"BF16"}
    saved = json.loads((Path(args.output_dir) / "metrics.json").read_text())
    assert saved["verified"] and saved["merge_max_rel_diff"] <= saved["merge_tolerance"] == 0.04


def test_verification_failure_is_a_stage_error(chain):
    """With a zero tolerance the (tiny, nonzero) fp32 difference is reported as a failure, naming the stage."""
    from ftplan_runtime.merge import merge_chain, probe_batch
    from ftplan_runtime.preflight import StageError
    from transformers import AutoTokenizer

    args = _args(chain, "unused")
    tok = AutoTokenizer.from_pretrained(str(chain["base"]))
    with pytest.raises(StageError, match="stage 'sft'.*tolerance"):
        merge_chain(_load(chain["base"], torch.bfloat16), args.source.merge, verify=True, probe=probe_batch(tok),
                    tolerance=0.0)


def test_missing_adapter_names_its_stage(chain, tmp_path):
    """An adapter folder that is not there: the error says which stage must run first."""
    from ftplan_runtime.merge import run_merge
    from ftplan_runtime.preflight import StageError

    args = _args(chain, "out-missing")
    broken = args.source.model_copy(update={"merge": [args.source.merge[0].model_copy(
        update={"path": str(tmp_path / "nope")})]})
    with pytest.raises(StageError, match="run stage 'sft' first"):
        run_merge(args.model_copy(update={"source": broken}), "0" * 64)
