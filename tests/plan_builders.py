"""A data -> sft plan built straight from the schema (no files read), for tests of the generated launch configs.

Not a test module; test files load it by path (tests/ is not a package).
"""

from __future__ import annotations

from ftplan.catalog import get_gpu, get_model
from ftplan.context import Context, Inputs
from ftplan.lineage import trace
from ftplan.plan import Plan, build_plan
from ftplan.schemas import Pipeline


def training_plan(distributed, *, name: str = "ds", precision: str = "bf16", gpus: int = 4, nodes: int = 1,
                  device: str = "cuda", optimizer: str = "adamw", adapter: dict | None = None,
                  model: str = "meta-llama/Llama-3.1-8B-Instruct", seq: int = 1024, port: int = 29500) -> Plan:
    """The plan of a data stage and an SFT stage (micro_batch 3, grad_accum 5, clip 0.5) with ``distributed``
    on ``nodes`` × ``gpus`` H100s (or the CPU), resolved against the catalog's ``model`` shape."""
    hw: dict = {"device": device, "gpus_per_node": gpus, "nodes": nodes, "main_process_port": port}
    if device == "cuda":
        hw["gpu"] = "h100"
    if nodes > 1:
        hw["slurm"] = {}
    pipeline = Pipeline.model_validate({
        "name": name, "model": {"base": model}, "hardware": hw,
        "stages": [
            {"id": "data", "kind": "data", "max_seq_len": seq, "datasets": [{"path": "a.jsonl", "format": "text"}]},
            {"id": "train", "kind": "sft", "data": "data", "adapter": adapter or {"type": "full"},
             "learning_rate": 1e-5, "micro_batch": 3, "grad_accum": 5, "precision": precision,
             "optimizer": optimizer, "max_grad_norm": 0.5, "distributed": distributed},
        ]})
    links, diags = trace(pipeline)
    assert not diags
    ctx = Context(pipeline, f"{name}.yaml", "0" * 64, Inputs(), get_gpu(hw.get("gpu", "h100")), get_model(model),
                  "catalog", links)
    return build_plan(ctx, {}, [], plan_dir_from_root="plan", ftplan_version="0.1.0")


def hf_trainer_fills(config: dict, targs) -> dict:
    """``config`` (a DeepSpeed JSON) as the HF Trainer fills it from ``targs`` (its TrainingArguments) before a
    run: transformers' ``HfTrainerDeepSpeedConfig``, processed and then finalised with a tiny model. Asserts no
    mismatch between the two; finalising raises on an ``auto`` it cannot resolve. Returns the filled config."""
    import transformers
    from transformers.integrations.deepspeed import HfTrainerDeepSpeedConfig

    hf = HfTrainerDeepSpeedConfig(config)
    hf.trainer_config_process(targs)
    assert hf.mismatches == []
    model = transformers.LlamaForCausalLM(transformers.LlamaConfig(
        hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=1,
        vocab_size=64))
    hf.trainer_config_finalize(targs, model, 100)
    return hf.config
