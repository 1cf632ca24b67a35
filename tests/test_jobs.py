"""Job shapes (ftplan/jobs.py): what each stage's Slurm job asks for, decided once in the plan, and what the views
print of it (the sbatch header, plan.md's table, plan.json)."""

from __future__ import annotations

import copy
import json

import pytest

from ftplan.catalog import get_gpu, get_model
from ftplan.context import Context, Inputs
from ftplan.estimate import estimate
from ftplan.jobs import (CPU_STAGE_CPUS, GIB, RUNTIME_PROCESS_BYTES, format_time, mem_bytes, time_seconds)
from ftplan.lineage import trace
from ftplan.plan import build_plan
from ftplan.render import render
from ftplan.schemas import Pipeline

BASE = {
    "name": "bot", "model": {"base": "meta-llama/Llama-3.1-8B-Instruct"},
    "hardware": {"gpu": "h100", "gpus_per_node": 1, "slurm": {"partition": "gpu", "cpu_partition": "cpu"}},
    "stages": [
        {"id": "data", "kind": "data", "max_seq_len": 2048, "datasets": [{"path": "a.jsonl", "format": "messages"}]},
        {"id": "sft", "kind": "sft", "data": "data", "adapter": {"type": "lora"}, "learning_rate": 1e-4,
         "max_steps": 1000},
        {"id": "merge", "kind": "merge", "input": "sft"},
        {"id": "gguf", "kind": "gguf", "input": "merge", "quant": ["q8_0"]},
    ],
}


def plan_of(hardware: dict | None = None, slurm: dict | None = None, **stages: dict):
    """The plan of BASE with ``hardware`` and ``hardware.slurm`` keys replaced and stages patched by id, with the
    estimator's figures (as ``compile`` builds it)."""
    data = copy.deepcopy(BASE)
    data["hardware"].update(hardware or {})
    if slurm is not None:
        data["hardware"]["slurm"] = {**data["hardware"].get("slurm", {}), **slurm}
    for stage in data["stages"]:
        stage.update(stages.get(stage["id"], {}))
    pipeline = Pipeline.model_validate(data)
    links, diags = trace(pipeline)
    assert not diags
    ctx = Context(pipeline, "bot.yaml", "0" * 64, Inputs(), get_gpu("h100"), get_model(pipeline.model.base),
                  "catalog", links)
    estimates, _ = estimate(ctx, suggest=False)
    return build_plan(ctx, estimates, [], plan_dir_from_root="plan", ftplan_version="0.1.0")


def jobs(plan) -> dict:
    return {s.id: s.job for s in plan.stages}


def test_one_gpu_shares_its_node_and_cpu_stages_ask_for_cpus_and_memory_on_the_cpu_partition():
    j = jobs(plan_of())
    sft = j["sft"]
    assert (sft.partition, sft.gpus_per_node, sft.gpu_option, sft.exclusive) == ("gpu", 1, ("gpus-per-node", "1"),
                                                                                  False)
    assert sft.cpus_per_task == 8 and sft.exclusive_reason == "1 of 8 GPUs of a node"
    # one process: the runtime plus the 16-bit 8B weights it loads through host memory, with 25 % headroom
    assert sft.mem == "22G" and "15.0 GiB weights" in sft.mem_reason
    for name in ("data", "merge", "gguf"):
        job = j[name]
        assert (job.partition, job.gpus_per_node, job.gpu_option, job.exclusive) == ("cpu", 0, None, False), name
        assert job.cpus_per_task == CPU_STAGE_CPUS and job.time == "04:00:00", name
    assert j["data"].mem == "3G"  # the runtime alone: 2 GiB + 25 %
    merge = plan_of().stages[2]
    need = merge.resources.host_bytes + RUNTIME_PROCESS_BYTES
    assert j["merge"].mem_need_bytes == need and mem_bytes(j["merge"].mem) >= need * 1.25


def test_whole_nodes_for_several_nodes_or_every_gpu_of_a_node_and_then_all_their_memory_and_cpus():
    for hw, reason in (({"gpus_per_node": 8}, "all 8 GPUs of a node"), ({"gpus_per_node": 4, "nodes": 2}, "2 nodes")):
        sft = jobs(plan_of(hw))["sft"]
        assert sft.exclusive and sft.exclusive_reason == reason
        assert sft.mem == "0" and sft.mem_bytes is None and sft.cpus_per_task is None
        assert ("exclusive", None) in sft.directives and ("mem", "0") in sft.directives
    sft = jobs(plan_of({"gpus_per_node": 4}, {"node_gpus": 4}))["sft"]
    assert sft.exclusive and sft.exclusive_reason == "all 4 GPUs of a node"
    assert not jobs(plan_of({"gpus_per_node": 8}, sft={"slurm": {"exclusive": False}}))["sft"].exclusive
    everything = jobs(plan_of(slurm={"exclusive": True}))
    assert all(job.exclusive for job in everything.values())


def test_typed_gpu_requests():
    assert jobs(plan_of(slurm={"gpu_type": "h100"}))["sft"].gpu_option == ("gpus-per-node", "h100:1")
    sft = jobs(plan_of({"gpus_per_node": 8}, {"gpu_request": "gres", "gpu_type": "h100"}))["sft"]
    assert sft.gpu_option == ("gres", "gpu:h100:8") and sft.gpu_type == "h100"
    assert jobs(plan_of(slurm={"gpu_request": "gres"}))["sft"].gpu_option == ("gres", "gpu:1")
    assert jobs(plan_of(slurm={"gpu_request": "gres", "gpu_type": "h100"}))["data"].gpu_option is None


def test_each_value_from_the_stage_then_the_pipeline_then_derived():
    j = jobs(plan_of(slurm={"account": "ml", "qos": "normal", "time": "2:00:00", "constraint": "ib"},
                     sft={"slurm": {"partition": "gpu-long", "time": "3-00:00:00", "cpus_per_task": 32,
                                    "mem": "100G", "account": "ml-big", "extra": {"mail-type": "END"}}},
                     gguf={"slurm": {"partition": "bigmem", "constraint": "avx512", "requeue": False}}))
    sft, data, gguf = j["sft"], j["data"], j["gguf"]
    assert (sft.partition, sft.time, sft.cpus_per_task, sft.mem, sft.account, sft.qos, sft.constraint) == (
        "gpu-long", "3-00:00:00", 32, "100G", "ml-big", "normal", "ib")
    assert sft.mem_set_in == "stage" and sft.time_set_in == "stage" and sft.extra == (("mail-type", "END"),)
    assert (data.partition, data.time, data.account, data.constraint) == ("cpu", "2:00:00", "ml", None)
    assert data.time_set_in == "hardware" and data.mem_set_in is None
    assert (gguf.partition, gguf.constraint, gguf.requeue) == ("bigmem", "avx512", False)
    assert ("requeue", None) not in gguf.directives and ("requeue", None) in sft.directives


def test_memory_per_gpu():
    sft = jobs(plan_of({"gpus_per_node": 2}, {"mem_per_gpu": "40G"}))["sft"]
    assert (sft.mem, sft.mem_per_gpu, sft.mem_bytes) == (None, "40G", 80 * GIB)
    assert ("mem-per-gpu", "40G") in sft.directives and not any(k == "mem" for k, _ in sft.directives)
    data = jobs(plan_of({"gpus_per_node": 2}, {"mem_per_gpu": "40G"}))["data"]
    assert data.mem == "3G" and data.mem_per_gpu is None  # CPU stages keep --mem
    derived = jobs(plan_of({"gpus_per_node": 2}, {"mem_request": "mem-per-gpu"}))["sft"]
    # 2 processes × (2 GiB + 15 GiB) = 34 GiB, + 25 % = 42.5 GiB, over 2 GPUs: 22 GiB each
    assert (derived.mem, derived.mem_per_gpu, derived.mem_set_in) == (None, "22G", None)


def test_loaded_weights_follow_the_strategy():
    ddp = jobs(plan_of({"gpus_per_node": 4}, sft={"distributed": "ddp"}))["sft"]
    zero3 = jobs(plan_of({"gpus_per_node": 4}, sft={"distributed": "zero3"}))["sft"]
    fsdp2 = jobs(plan_of({"gpus_per_node": 4}, sft={"distributed": "fsdp2"}))["sft"]
    assert "4 × 15.0 GiB weights" in ddp.mem_reason and ddp.mem == "85G"  # 67.8 GiB + 25 %
    assert "15.0 GiB weights (this node's ZeRO-3 shares)" in zero3.mem_reason
    assert "15.0 GiB weights (loaded by the first process)" in fsdp2.mem_reason
    # on 2 nodes ZeRO-3 holds half of the weights on each node (jobs on whole nodes ask for all of it, though)
    two = plan_of({"gpus_per_node": 4, "nodes": 2}, sft={"distributed": "zero3"}).stages[1]
    assert "7.5 GiB weights (this node's ZeRO-3 shares)" in two.job.mem_reason


def test_time_from_the_estimated_run_time():
    plan = plan_of()
    sft = plan.stages[1]
    step = sft.estimate.step_time_s
    assert sft.resources.steps == 1000 and sft.resources.run_time_s == pytest.approx(1000 * step)
    expected = -(-(1000 * step * 1.5 + 1800) // 3600) * 3600
    assert sft.job.time_s == expected and sft.job.time == format_time(expected)
    assert "estimated run time" in sft.job.time_reason
    cpu = plan_of({"device": "cpu", "gpu": None}).stages[1]
    assert cpu.job.time == "1-00:00:00" and "without a run-time estimate" in cpu.job.time_reason


@pytest.mark.parametrize("text,seconds", [("30", 1800), ("1:30", 90), ("12:00:00", 43200), ("2-0", 172800),
                                          ("1-12:30", 131400), ("1-00:00:01", 86401), ("0", None), ("1d", None)])
def test_time_seconds(text, seconds):
    assert time_seconds(text) == seconds


@pytest.mark.parametrize("text,size", [("64G", 64 * GIB), ("1024", GIB), ("512M", 512 << 20), ("2T", 2 << 40),
                                       ("100k", 100 << 10), ("0", None)])
def test_mem_bytes(text, size):
    assert mem_bytes(text) == size


def test_format_time():
    assert format_time(3600) == "01:00:00" and format_time(86400 + 61) == "1-00:01:01"


def test_every_view_prints_the_plan_s_job():
    plan = plan_of({"gpus_per_node": 8}, {"gpu_request": "gres", "gpu_type": "h100"})
    files = render(plan)
    stages = {s["id"]: s for s in json.loads(files["plan.json"])["stages"]}
    md = files["plan.md"]
    for s in plan.stages:
        sbatch = [line for line in files[f"slurm/{s.name}.sbatch"].splitlines() if line.startswith("#SBATCH")]
        assert sbatch == [f"#SBATCH --{k}" + (f"={v}" if v is not None else "") for k, v in s.job.directives]
        assert stages[s.id]["slurm"]["sbatch"] == [line[len("#SBATCH "):] for line in sbatch]
        assert stages[s.id]["slurm"]["mem"] == s.job.mem and stages[s.id]["slurm"]["time"] == s.job.time
    assert "| 02 | sft | gpu | 1 node × 8 h100 GPUs | all CPUs of each node | all of each node's |" in md
    assert "| 01 | data | cpu | no GPU | 8 CPUs per node | 3.0 GiB per node | 04:00:00 | no | — | — |" in md
    submit = files["slurm/submit.sh"]
    assert "mkdir -p logs/bot  # the jobs' --output and --error folders" in submit


def test_no_job_without_slurm():
    data = copy.deepcopy(BASE)
    del data["hardware"]["slurm"]
    pipeline = Pipeline.model_validate(data)
    links, _ = trace(pipeline)
    ctx = Context(pipeline, "bot.yaml", "0" * 64, Inputs(), get_gpu("h100"), get_model(pipeline.model.base),
                  "catalog", links)
    plan = build_plan(ctx, {}, [], plan_dir_from_root="plan", ftplan_version="0.1.0")
    assert all(s.job is None for s in plan.stages)
    assert "## Slurm jobs" not in render(plan)["plan.md"]
