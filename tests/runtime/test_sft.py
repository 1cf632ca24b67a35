"""SFT stage on the tiny model (CPU, fp32): outputs, token accounting, packing, full fine-tune, kernels, tokens."""

from __future__ import annotations

import json
import os
import random
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
datasets = pytest.importorskip("datasets")

from ftplan.schemas.runtime_args import RuntimeArgs  # noqa: E402

# ---------------------------------------------------------------------------------------------- fixtures


def _chat_ids(tok, messages, **kw) -> list[int]:
    ids = tok.apply_chat_template(messages, tokenize=True, return_dict=False, **kw)
    return list(ids["input_ids"] if hasattr(ids, "keys") else ids)


def _sft_rows(tok, n: int, seed: int) -> dict[str, list]:
    rng = random.Random(seed)
    rows = {"input_ids": [], "completion_mask": []}
    for _ in range(n):
        a, b = rng.randint(1, 9), rng.randint(1, 9)
        user = [{"role": "user", "content": f"What is {a} + {b}?"}]
        prompt = _chat_ids(tok, user, add_generation_prompt=True)
        full = _chat_ids(tok, user + [{"role": "assistant", "content": f"The answer is {a + b}."}])
        rows["input_ids"].append(full)
        rows["completion_mask"].append([0] * len(prompt) + [1] * (len(full) - len(prompt)))
    return rows


def _pack(rows: dict[str, list], per_row: int) -> dict[str, list]:
    out = {"input_ids": [], "completion_mask": [], "seq_lengths": []}
    for i in range(0, len(rows["input_ids"]), per_row):
        ids, masks = rows["input_ids"][i:i + per_row], rows["completion_mask"][i:i + per_row]
        out["input_ids"].append(sum(ids, []))
        out["completion_mask"].append(sum(masks, []))
        out["seq_lengths"].append([len(x) for x in ids])
    return out


@pytest.fixture(scope="module")
def project(tmp_path_factory, tiny_base):
    """Tiny base plus pre-tokenized SFT data (40 train, 8 validation) in the data stage's layout."""
    from transformers import AutoTokenizer

    base = tiny_base
    root = tmp_path_factory.mktemp("sft")
    tok = AutoTokenizer.from_pretrained(str(base))
    train, val = _sft_rows(tok, 40, seed=0), _sft_rows(tok, 8, seed=1)
    datasets.Dataset.from_dict(train).save_to_disk(str(root / "data" / "sft" / "train"))
    datasets.Dataset.from_dict(val).save_to_disk(str(root / "data" / "sft" / "validation"))
    datasets.Dataset.from_dict(_pack(train, 4)).save_to_disk(str(root / "packed" / "sft" / "train"))
    return {"root": root, "base": base, "tok": tok, "train": train}


def _args(project, out: str, *, data="data", model=None, kernels="none", **stage) -> RuntimeArgs:
    base = str(project["base"])
    fields = {"id": "sft", "kind": "sft", "data": "prep", "learning_rate": 1e-2, "precision": "fp32",
              "max_steps": 10, "micro_batch": 4, "logging_steps": 1, "report_to": [], "kernels": kernels,
              "gradient_checkpointing": False, "adapter": {"type": "lora", "r": 8, "alpha": 16}}
    fields.update(stage)
    return RuntimeArgs.model_validate({
        "pipeline": "t", "stage": fields, "model": model or {"base": base},
        "source": {"weights": base, "tokenizer": base}, "data_dir": str(project["root"] / data),
        "output_dir": str(project["root"] / out),
        "promise": {"device": "cpu", "world_size": 1, "num_machines": 1, "distributed_type": "NO",
                    "precision": "fp32", "attention": "sdpa", "kernels": kernels}})


def _run(args):
    from ftplan_runtime.sft import run_sft

    return run_sft(args, "0" * 64)


# ---------------------------------------------------------------------------------------------- tests


def test_lora_sft_writes_adapter_tokenizer_metrics_and_counts_tokens_exactly(project):
    """One epoch (10 steps x 4 rows = 40 rows): every token of the data is counted once."""
    args = _args(project, "out-lora", eval_steps=5, save_steps=5, report_to=["tensorboard"])
    metrics = _run(args)
    out = Path(args.output_dir)
    adapter = out / "adapter"
    assert (adapter / "adapter_model.safetensors").is_file() and (adapter / "adapter_config.json").is_file()
    for name in ("tokenizer_config.json", "tokenizer.json", "tokenizer.model", "chat_template.jinja"):
        assert (adapter / name).read_bytes() == (project["base"] / name).read_bytes(), name
    train = project["train"]
    assert metrics["tokens_seen"] == sum(len(x) for x in train["input_ids"])
    assert metrics["tokens_trained"] == sum(sum(m[1:]) for m in train["completion_mask"])
    saved = json.loads((out / "metrics.json").read_text())
    assert list(saved) == sorted(saved)
    assert saved["steps"] == 10 and saved["stage"] == "sft" and saved["kind"] == "sft"
    assert saved["eval_loss"] is not None and saved["loss_logged_points"] == 10
    assert saved["loss_last"] < saved["loss_first"]
    assert saved["tokens_per_s"] > 0 and saved["versions"]["trl"]
    assert sorted(p.name for p in (out / "checkpoints").glob("checkpoint-*")) == ["checkpoint-10", "checkpoint-5"]
    assert list((out / "logs").rglob("events.out.tfevents.*")), "tensorboard logs go to <out>/logs"


def test_packed_data_trains_padding_free(project):
    """`seq_lengths` in the data switches on TRL's padding-free collator; every token still counts once."""
    from ftplan_runtime.sft import SFT_SPEC
    from ftplan_runtime.train_common import prepare_training

    args = _args(project, "out-packed", data="packed", max_steps=5, micro_batch=2)
    prep = prepare_training(args, "0" * 64, SFT_SPEC)
    assert prep.config.padding_free and prep.trainer.padding_free
    batch = prep.trainer.data_collator([prep.trainer.train_dataset[i] for i in range(2)])
    assert "position_ids" in batch and "attention_mask" not in batch
    prep.trainer.train()
    assert prep.trainer.tokens_seen == sum(len(x) for x in project["train"]["input_ids"])


def test_full_finetune_saves_full_weights(project):
    """`adapter: {type: full}` trains every weight and saves safetensors + tokenizer to <out>/model."""
    from transformers import AutoModelForCausalLM

    args = _args(project, "out-full", adapter={"type": "full"}, max_steps=3, learning_rate=1e-3)
    _run(args)
    model_dir = Path(args.output_dir) / "model"
    assert (model_dir / "model.safetensors").is_file() and (model_dir / "tokenizer.json").is_file()
    trained = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32)
    base = AutoModelForCausalLM.from_pretrained(str(project["base"]), dtype=torch.float32)
    w0, w1 = base.model.layers[0].mlp.up_proj.weight, trained.model.layers[0].mlp.up_proj.weight
    assert not torch.equal(w0, w1)


def test_added_special_tokens_grow_embeddings_and_are_saved(project):
    """`model.add_special_tokens`: vocabulary and embeddings grow; the adapter saves embed_tokens and lm_head."""
    from safetensors import safe_open
    from transformers import AutoTokenizer

    model = {"base": str(project["base"]), "add_special_tokens": ["<tool>", "</tool>"]}
    adapter = {"type": "lora", "r": 4, "modules_to_save": ["embed_tokens", "lm_head"]}
    args = _args(project, "out-tokens", model=model, adapter=adapter, max_steps=2)
    _run(args)
    out = Path(args.output_dir) / "adapter"
    tok = AutoTokenizer.from_pretrained(str(out))
    assert len(tok) == len(project["tok"]) + 2 and tok.convert_tokens_to_ids("<tool>") == len(project["tok"])
    with safe_open(str(out / "adapter_model.safetensors"), framework="pt") as st:
        shapes = {k: st.get_slice(k).get_shape() for k in st.keys()}
    emb = [s for k, s in shapes.items() if "embed_tokens" in k]
    assert emb and emb[0][0] == len(tok)
    text = "<|im_start|>user\nWhat is 3 + 3?<|im_end|>"
    assert tok(text)["input_ids"] == project["tok"](text)["input_ids"]
    assert (out / "tokenizer.model").read_bytes() == (project["base"] / "tokenizer.model").read_bytes()


@pytest.mark.slow
def test_ftplan_kernels_match_plain_loss(project):
    """`kernels: ftplan` (fused RMSNorm/SwiGLU/RoPE + fused linear cross-entropy) gives the same losses.

    The fused arm runs as `python -m ftplan_runtime` (Triton must be put in interpreter mode before it is first
    imported, which the entry point does on CPU)."""
    import subprocess
    import sys

    plain = _run(_args(project, "out-k0", max_steps=3))
    args = _args(project, "out-k1", max_steps=3, kernels="ftplan")
    path = project["root"] / "k1.json"
    path.write_text(args.model_dump_json())
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    proc = subprocess.run([sys.executable, "-m", "ftplan_runtime", str(path)], capture_output=True, text=True,
                          env=env, cwd=project["root"], timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    fused = json.loads((Path(args.output_dir) / "metrics.json").read_text())
    assert fused["kernels"] == {"rms_norm": 5, "swiglu": 2, "rope": 2, "lora": 14}  # 7 LoRA projections × 2 layers
    assert fused["loss_first"] == pytest.approx(plain["loss_first"], rel=1e-4)
    assert fused["loss_last"] == pytest.approx(plain["loss_last"], rel=1e-3)


def test_unavailable_tracker_is_an_error_not_a_silent_drop(project):
    """`report_to: [wandb]` without wandb installed fails before any loading."""
    import importlib.util

    from ftplan_runtime.preflight import StageError

    if importlib.util.find_spec("wandb") is not None:
        pytest.skip("wandb is installed here")
    with pytest.raises(StageError, match="wandb"):
        _run(_args(project, "out-wandb", report_to=["wandb"]))


def test_training_arguments_mapping(project):
    """Optimizer names, precision flags and schedule fields follow the stage (and the device)."""
    from ftplan_runtime.train_common import config_kwargs

    kw = config_kwargs(_args(project, "o", optimizer="adamw", warmup_ratio=0.1, epochs=2.0, max_steps=None),
                       has_eval=False)
    assert kw["optim"] == "adamw_torch" and kw["use_cpu"] and not kw["bf16"] and not kw["fp16"]
    assert kw["warmup_steps"] == 0.1 and kw["num_train_epochs"] == 2.0 and kw["max_steps"] == -1
    assert kw["eval_strategy"] == "no" and kw["save_strategy"] == "no"
    assert kw["output_dir"].endswith("o/checkpoints")
    cuda = _args(project, "o", optimizer="paged_adamw_8bit").model_copy(
        update={"promise": _args(project, "o").promise.model_copy(update={"device": "cuda"})})
    assert config_kwargs(cuda, has_eval=True)["optim"] == "paged_adamw_8bit"
    fused = _args(project, "o").model_copy(
        update={"promise": _args(project, "o").promise.model_copy(update={"device": "cuda"})})
    assert config_kwargs(fused, has_eval=True)["optim"] == "adamw_torch_fused"


def test_placeholder_weights_are_rejected(tmp_path):
    """A ZeRO-3 style save with empty tensors (trl#4416) is caught."""
    from safetensors.torch import save_file

    from ftplan_runtime.preflight import StageError
    from ftplan_runtime.model_loading import check_saved_weights

    save_file({"base_model.model.layers.0.q_proj.lora_A.weight": torch.zeros(0)},
              str(tmp_path / "adapter_model.safetensors"))
    with pytest.raises(StageError, match="stage3_gather_16bit_weights_on_model_save"):
        check_saved_weights(tmp_path)
    save_file({"w": torch.ones(2, 2)}, str(tmp_path / "adapter_model.safetensors"))
    check_saved_weights(tmp_path)


def test_qlora_trains_on_a_4bit_nf4_base(project):
    """`type: qlora`: NF4 + double quantization base (bitsandbytes; runs on CPU too), trainable LoRA on top."""
    pytest.importorskip("bitsandbytes")
    from ftplan_runtime.sft import SFT_SPEC
    from ftplan_runtime.train_common import prepare_training

    args = _args(project, "out-qlora", adapter={"type": "qlora", "r": 4}, max_steps=2)
    prep = prepare_training(args, "0" * 64, SFT_SPEC)
    base = prep.trainer.model.get_base_model()
    q = base.model.layers[0].self_attn.q_proj.base_layer
    assert type(q).__name__ == "Linear4bit" and q.weight.quant_type == "nf4"
    assert base.config.quantization_config.bnb_4bit_use_double_quant
    prep.trainer.train()
    assert prep.loaded.quantized


def test_a_qlora_base_keeps_its_16_bit_parts_16_bit_and_frozen(project):
    """The runtime freezes a 4-bit base without PEFT's fp32 upcast: the embeddings, norms and head stay at the
    compute dtype (the estimator's QLoRA terms assume it), and only the LoRA weights train, in fp32."""
    pytest.importorskip("bitsandbytes")
    import torch

    from ftplan_runtime.model_loading import load_for_training

    args = _args(project, "out-qlora-bf16", adapter={"type": "qlora", "r": 4}, precision="bf16",
                 gradient_checkpointing=True)
    model = load_for_training(args).model
    trainable = {n: p.dtype for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n for n in trainable) and set(trainable.values()) == {torch.float32}
    wide = {n: p.dtype for n, p in model.named_parameters()
            if not p.requires_grad and type(p).__name__ != "Params4bit"}
    assert any("embed_tokens" in n for n in wide) and any("lm_head" in n for n in wide)
    assert any("norm" in n for n in wide)
    assert set(wide.values()) == {torch.bfloat16}, {n: d for n, d in wide.items() if d != torch.bfloat16}


@pytest.mark.slow
def test_zero3_lora_saves_real_adapter_weights(project):
    """`accelerate launch` with DeepSpeed ZeRO-3 (one CPU process): the preflight sees DEEPSPEED/ZeRO-3, and the
    saved adapter holds the gathered trained tensors, not empty ZeRO-3 placeholders (trl#4416)."""
    pytest.importorskip("deepspeed")
    import subprocess
    import sys

    from safetensors.torch import load_file

    root = project["root"]
    (root / "z3.json").write_text(json.dumps({
        "train_batch_size": "auto", "train_micro_batch_size_per_gpu": "auto", "gradient_accumulation_steps": "auto",
        "gradient_clipping": "auto", "bf16": {"enabled": False},
        "zero_optimization": {"stage": 3, "stage3_gather_16bit_weights_on_model_save": True}}))
    (root / "z3.yaml").write_text(
        "compute_environment: LOCAL_MACHINE\ndistributed_type: DEEPSPEED\n"
        f"deepspeed_config: {{deepspeed_config_file: {root / 'z3.json'}, zero3_init_flag: true}}\n"
        "machine_rank: 0\nnum_machines: 1\nnum_processes: 1\nrdzv_backend: static\nsame_network: true\n"
        "use_cpu: false\n")
    args = _args(project, "out-z3", max_steps=2)
    args = args.model_copy(update={"promise": args.promise.model_copy(
        update={"distributed_type": "DEEPSPEED", "zero_stage": 3})})
    (root / "z3-args.json").write_text(args.model_dump_json())
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env.update(DS_ACCELERATOR="cpu", OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(root / "z3.yaml"),
                           "-m", "ftplan_runtime", str(root / "z3-args.json")], cwd=root, env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    metrics = json.loads((root / "out-z3" / "metrics.json").read_text())
    assert metrics["zero_stage"] == 3 and metrics["steps"] == 2
    tensors = load_file(str(root / "out-z3" / "adapter" / "adapter_model.safetensors"))
    assert tensors and all(t.numel() > 0 for t in tensors.values())
    assert any(t.abs().max() > 0 for k, t in tensors.items() if "lora_B" in k), "lora_B was trained"
