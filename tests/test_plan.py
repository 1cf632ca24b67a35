"""build_plan: strategy resolution, world size, lineage -> model sources, batch arithmetic, resources."""

from __future__ import annotations

import pytest

from ftplan.catalog import get_gpu, get_model
from ftplan.context import Context, Inputs, LocalFile
from ftplan.diagnostics import error, warning
from ftplan.estimate.types import StageEstimate
from ftplan.lineage import trace
from ftplan.plan import PLAN_FORMAT, build_plan, root_from
from ftplan.schemas import Pipeline
from ftplan.versions import PINNED_VERSIONS

GIB = 2**30


def ctx_for(data: dict, *, files=()) -> Context:
    """A Context built the way the resolver does, from a pipeline dict (catalog GPU and model shape)."""
    p = Pipeline.model_validate(data)
    links, diags = trace(p)
    assert not diags, diags
    shape = get_model(p.model.architecture or p.model.base)
    gpu = get_gpu(p.hardware.gpu) if p.hardware.gpu else None
    return Context(p, "pipes/bot.yaml", "a" * 64, Inputs(files=tuple(files)), gpu, shape,
                   f"catalog:{shape.key}" if shape else "", links)


def pipeline(*stages, gpus=1, nodes=1, device="cuda", **extra) -> dict:
    hw = {"device": device, "gpus_per_node": gpus, "nodes": nodes}
    if device == "cuda":
        hw["gpu"] = "h100"
    if nodes > 1:
        hw["slurm"] = {}
    data = {"name": "bot", "model": {"base": "meta-llama/Llama-3.1-8B-Instruct", "revision": "abc123"},
            "hardware": hw, "stages": [DATA, *stages]}
    data.update(extra)
    return data


DATA = {"id": "data", "kind": "data", "max_seq_len": 2048,
        "datasets": [{"path": "d/sft.jsonl", "format": "messages"}, {"path": "d/pref.jsonl", "format": "preference"}]}


def sft(**kw) -> dict:
    return {"id": "sft", "kind": "sft", "data": "data", "adapter": {"type": "lora", "r": 16, "alpha": 32},
            "learning_rate": 2e-4, **kw}


def plan_of(data: dict, estimates=None, diagnostics=(), plan_dir="plans/bot"):
    return build_plan(ctx_for(data), estimates or {}, diagnostics, plan_dir_from_root=plan_dir, ftplan_version="9.9")


def stage(plan, sid):
    return next(s for s in plan.stages if s.id == sid)


# --- strategy and world size -----------------------------------------------------------------------------------

def test_auto_is_none_on_one_gpu():
    s = stage(plan_of(pipeline(sft())), "sft")
    assert s.strategy == "none" and s.deepspeed is None
    assert s.accelerate["distributed_type"] == "NO" and s.accelerate["num_processes"] == 1
    assert s.accelerate["mixed_precision"] == "bf16" and s.accelerate["use_cpu"] is False
    assert s.args.stage.distributed.strategy == "none"
    assert s.args.promise.distributed_type == "NO" and s.args.promise.world_size == 1


def test_auto_is_ddp_on_several_gpus_and_nodes():
    s = stage(plan_of(pipeline(sft(), gpus=8, nodes=2)), "sft")
    assert s.strategy == "ddp"
    acc = s.accelerate
    assert (acc["distributed_type"], acc["num_processes"], acc["num_machines"], acc["machine_rank"]) == \
        ("MULTI_GPU", 16, 2, 0)
    assert acc["rdzv_backend"] == "static" and acc["same_network"] is True and acc["main_process_port"] == 29500
    assert s.resources.nodes == 2 and s.resources.gpus_per_node == 8
    assert s.args.promise.world_size == 16 and s.args.promise.num_machines == 2


def test_cpu_device_runs_one_process_on_cpu():
    s = stage(plan_of(pipeline(sft(precision="fp32"), device="cpu", gpus=4)), "sft")
    assert s.accelerate["use_cpu"] is True and s.accelerate["num_processes"] == 1
    assert s.accelerate["mixed_precision"] == "no"
    assert s.resources.device == "cpu" and s.resources.gpus_per_node == 0
    assert s.args.promise.device == "cpu" and s.args.promise.gpu_name is None


def test_zero3_stage_gets_deepspeed_file_and_no_mixed_precision_in_yaml():
    s = stage(plan_of(pipeline(sft(distributed="zero3", micro_batch=2, grad_accum=4), gpus=4)), "sft")
    acc, ds = s.accelerate, s.deepspeed
    assert acc["distributed_type"] == "DEEPSPEED" and "mixed_precision" not in acc
    assert acc["deepspeed_config"] == {"deepspeed_config_file": "plans/bot/stages/sft/deepspeed.json",
                                       "deepspeed_multinode_launcher": "standard", "zero3_init_flag": True}
    assert ds["train_batch_size"] == 2 * 4 * 4 and ds["train_micro_batch_size_per_gpu"] == 2
    assert ds["gradient_accumulation_steps"] == 4 and ds["zero_optimization"]["stage"] == 3
    h = 4096  # Llama 3.1 8B hidden size
    z = ds["zero_optimization"]
    assert z["reduce_bucket_size"] == h * h and z["stage3_prefetch_bucket_size"] == (9 * h * h) // 10
    assert z["stage3_param_persistence_threshold"] == 10 * h
    assert s.args.promise.zero_stage == 3 and s.args.promise.distributed_type == "DEEPSPEED"


def test_qlora_under_zero3_does_not_init_on_meta():
    s = stage(plan_of(pipeline(sft(distributed="zero3", adapter={"type": "qlora"}), gpus=2)), "sft")
    assert s.accelerate["deepspeed_config"]["zero3_init_flag"] is False


def test_fsdp2_config_wraps_decoder_layers():
    spec = {"strategy": "fsdp2", "offload_params": True}
    s = stage(plan_of(pipeline(sft(distributed=spec), gpus=8)), "sft")
    f = s.accelerate["fsdp_config"]
    assert s.accelerate["distributed_type"] == "FSDP" and f["fsdp_version"] == 2
    assert f["fsdp_transformer_layer_cls_to_wrap"] == "LlamaDecoderLayer"
    assert f["fsdp_offload_params"] is True and f["fsdp_activation_checkpointing"] is False
    assert f["fsdp_state_dict_type"] == "FULL_STATE_DICT" and f["fsdp_reshard_after_forward"] is True


def test_defaults_are_filled_in_runtime_args():
    s = stage(plan_of(pipeline(sft())), "sft")
    st = s.args.stage
    assert st.epochs == 1.0 and st.warmup_steps == 0 and st.micro_batch == 1
    dumped = s.args.model_dump(mode="json")["stage"]
    assert dumped["distributed"] == {"strategy": "none", "offload_optimizer": False, "offload_params": False}
    explicit = stage(plan_of(pipeline(sft(max_steps=50, warmup_ratio=0.1))), "sft").args.stage
    assert explicit.epochs is None and explicit.warmup_steps is None and explicit.warmup_ratio == 0.1


# --- lineage -> ModelSource ------------------------------------------------------------------------------------

def test_sft_from_base_reads_the_hub_model_at_its_revision():
    src = stage(plan_of(pipeline(sft())), "sft").args.source
    assert (src.weights, src.revision, src.merge, src.continue_adapter) == \
        ("meta-llama/Llama-3.1-8B-Instruct", "abc123", [], None)
    assert src.tokenizer == "meta-llama/Llama-3.1-8B-Instruct"


def test_dpo_continue_keeps_training_the_sft_adapter():
    dpo = {"id": "dpo", "kind": "dpo", "input": "sft", "data": "data", "adapter": "continue", "learning_rate": 5e-6}
    p = plan_of(pipeline(sft(), dpo))
    src = stage(p, "dpo").args.source
    assert src.continue_adapter.model_dump() == {"stage": "sft", "path": "outputs/sft/adapter", "type": "lora"}
    assert src.merge == [] and src.weights == "meta-llama/Llama-3.1-8B-Instruct"
    assert stage(p, "dpo").method == "DPO β0.1 sigmoid, continues sft"


def test_dpo_merge_input_merges_the_chain_then_trains_a_new_adapter_and_merge_takes_both():
    dpo = {"id": "dpo", "kind": "dpo", "input": "sft", "data": "data", "merge_input": True,
           "adapter": {"type": "lora", "r": 8}, "learning_rate": 5e-6, "beta": 0.05, "loss_type": "ipo"}
    merge = {"id": "merged", "kind": "merge", "input": "dpo"}
    p = plan_of(pipeline(sft(), dpo, merge))
    d = stage(p, "dpo").args.source
    assert [a.path for a in d.merge] == ["outputs/sft/adapter"] and d.continue_adapter is None
    m = stage(p, "merged").args.source
    assert [(a.stage, a.path) for a in m.merge] == [("sft", "outputs/sft/adapter"), ("dpo", "outputs/dpo/adapter")]
    assert stage(p, "dpo").method == "DPO β0.05 ipo, LoRA r8 α16 on merged sft"
    assert stage(p, "merged").method == "merge sft + dpo → bf16"


def test_gguf_of_a_full_fine_tune_reads_its_model_folder():
    full = sft(adapter={"type": "full"}, learning_rate=1e-5)
    gguf = {"id": "export", "kind": "gguf", "input": "sft", "quant": ["q8_0"]}
    p = plan_of(pipeline(full, gguf, output_dir="./runs//v1/"))
    src = stage(p, "export").args.source
    assert src.weights == "runs/v1/sft/model" and src.revision is None and src.merge == []
    assert stage(p, "export").output_dir == "runs/v1/export"


def test_training_from_a_merge_stage_reads_merged_weights_and_custom_tokenizer():
    merge = {"id": "merge", "kind": "merge", "input": "sft"}
    sft2 = {**sft(), "id": "sft2", "input": "merge"}
    data = pipeline(sft(), merge, sft2)
    data["model"]["tokenizer"] = "tok/dir"
    src = stage(plan_of(data), "sft2").args.source
    assert src.weights == "outputs/merge/model" and src.tokenizer == "tok/dir" and src.merge == []


# --- batch numbers, ids and folders ----------------------------------------------------------------------------

def test_batch_math_and_tokens_per_step():
    dpo = {"id": "dpo", "kind": "dpo", "input": "sft", "data": "data", "adapter": "continue",
           "learning_rate": 5e-6, "micro_batch": 2, "grad_accum": 4}
    p = plan_of(pipeline(sft(micro_batch=4, grad_accum=8), dpo, gpus=2))
    b = stage(p, "sft").batch
    assert (b.micro_batch, b.grad_accum, b.world_size, b.effective_batch) == (4, 8, 2, 64)
    assert b.tokens_per_step == 64 * 2048
    assert stage(p, "dpo").batch.tokens_per_step == 2 * 4 * 2 * 2048 * 2  # chosen + rejected
    # resolved once, before the estimate: an estimate does not change it
    est = {"sft": StageEstimate("sft", 10 * GIB, 80 * GIB, "fits", tokens_per_step=123_456)}
    assert stage(plan_of(pipeline(sft(micro_batch=4, grad_accum=8), gpus=2), est), "sft").batch.tokens_per_step \
        == 64 * 2048


def test_stage_folders_use_ids_and_chain_dependencies():
    gguf = {"id": "gguf", "kind": "gguf", "input": "merge", "quant": ["f16"]}
    p = plan_of(pipeline(sft(), {"id": "merge", "kind": "merge", "input": "sft"}, gguf))
    assert [(s.dir, s.depends_on) for s in p.stages] == [
        ("stages/data", None), ("stages/sft", "data"), ("stages/merge", "sft"), ("stages/gguf", "merge")]
    assert [s.launcher for s in p.stages] == ["python", "accelerate", "python", "python"]
    assert [s.args.output_dir for s in p.stages] == ["outputs/data", "outputs/sft", "outputs/merge", "outputs/gguf"]
    assert stage(p, "sft").args.data_dir == "outputs/data"


def test_resources_cpu_stages_and_merge_placement():
    merge = {"id": "merge", "kind": "merge", "input": "sft"}
    gguf = {"id": "gguf", "kind": "gguf", "input": "merge", "quant": ["q8_0"]}
    data = pipeline(sft(), merge, gguf, gpus=4)
    host = {"merge": StageEstimate("merge", 0, None, "n/a", host_bytes=40 * GIB)}
    p = plan_of(data, host)
    assert stage(p, "data").resources.device == "cpu" and stage(p, "gguf").resources.gpus_per_node == 0
    m = stage(p, "merge")  # placed before the estimate, on the CPU: its estimate is a host-memory figure
    assert (m.resources.device, m.resources.nodes, m.resources.gpus_per_node) == ("cpu", 1, 0)
    assert m.resources.host_bytes == 40 * GIB
    assert m.args.promise.device == "cpu" and m.args.promise.world_size == 1 and m.args.promise.gpu_name is None
    assert m.facts.device == "cpu" and stage(plan_of(data), "merge").resources.device == "cpu"


def test_promise_records_the_target_gpu_and_estimate():
    est = {"sft": StageEstimate("sft", int(14.2 * GIB), 80 * GIB, "fits")}
    a = stage(plan_of(pipeline(sft(attention="flash_attention_2", kernels="ftplan")), est), "sft").args
    assert a.promise.gpu_name == "h100-sxm-80gb" and a.promise.gpu_memory_mib == 81559
    assert a.promise.attention == "flash_attention_2" and a.promise.kernels == "ftplan"
    assert a.estimate_peak_gib == 14.2


def test_plan_provenance_and_root():
    files = [LocalFile("d/sft.jsonl", "b" * 64, 10), LocalFile("a.jinja", "c" * 64, 5)]
    p = build_plan(ctx_for(pipeline(sft()), files=files), {}, [warning("FT900", ("stages", 1), "w")],
                   plan_dir_from_root="plans/bot/", ftplan_version="9.9")
    assert p.format_version == PLAN_FORMAT == 1
    assert p.provenance.pipeline_file == "bot.yaml" and p.provenance.pipeline_sha256 == "a" * 64
    assert [f.path for f in p.provenance.inputs] == ["a.jinja", "d/sft.jsonl"]
    assert dict(p.provenance.versions) == PINNED_VERSIONS and p.provenance.ftplan_version == "9.9"
    assert p.plan_dir == "plans/bot" and p.root_from_plan_dir == "../.."
    assert p.target.params and p.target.gpu_arch == "sm90" and len(p.diagnostics) == 1


def test_root_from_plan_dir():
    assert root_from("plans/x") == "../.." and root_from("out") == ".." and root_from(".") == "."
    assert root_from("./a/b/../c") == "../.."
    assert root_from("../plans/x", "/work/examples") == "../../examples"
    assert root_from("../../out", "/home/u/proj/sub") == "../proj/sub"
    assert root_from("..", "/home/u/proj") == "proj"
    with pytest.raises(ValueError, match="outside the project"):
        root_from("../elsewhere")
    with pytest.raises(ValueError, match="outside the project"):
        root_from("../../../x", "/a/b")
    with pytest.raises(ValueError, match="relative to the project"):
        root_from("/abs/plan")


def test_plan_outside_the_project_finds_its_way_back():
    p = build_plan(ctx_for(pipeline(sft())), {}, [], plan_dir_from_root="../out", ftplan_version="1",
                   root_from_plan_dir="../proj")
    assert p.root_from_plan_dir == "../proj"
    ctx = ctx_for(pipeline(sft()))
    ctx = Context(ctx.pipeline, "/srv/work/examples/bot.yaml", ctx.pipeline_sha256, ctx.inputs, ctx.gpu, ctx.shape,
                  ctx.shape_source, ctx.links)
    p = build_plan(ctx, {}, [], plan_dir_from_root="../plans/bot", ftplan_version="1")
    assert p.root_from_plan_dir == "../../examples" and p.plan_dir == "../plans/bot"
    assert stage(p, "sft").accelerate is not None
    assert p.path("stages", "sft", "args.json") == "../plans/bot/stages/sft/args.json"


def test_build_plan_refuses_error_diagnostics():
    with pytest.raises(ValueError, match="without errors"):
        plan_of(pipeline(sft()), diagnostics=[error("FT101", ("stages", 1), "too big")])
