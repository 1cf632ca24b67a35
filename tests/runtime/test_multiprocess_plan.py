"""Multi-process plans on the CPU, compile side, and the launch preflight: ``hardware.cpu_processes`` (data
parallelism over gloo, on one or several nodes), what ``check`` refuses there (FT300, FT306, FT310, FT312), the
rendezvous timeout of a multi-node launch (``hardware.rendezvous_timeout_s``) and ``check_launch``, which compares
the process group the launchers formed with the plan's promise before anything loads."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from ftplan.api import check_text, plan_files
from ftplan.schemas.runtime_args import Promise

BASE = {
    "name": "mp", "model": {"base": "meta-llama/Llama-3.2-1B", "architecture": "llama-3.2-1b"}, "output_dir": "out",
    "hardware": {"device": "cpu"},
    "stages": [{"id": "data", "kind": "data", "max_seq_len": 64, "val_fraction": 0.0,
                "datasets": [{"path": "chat.jsonl", "format": "sharegpt"}]},
               {"id": "sft", "kind": "sft", "data": "data", "precision": "fp32", "learning_rate": 1e-3,
                "micro_batch": 2, "grad_accum": 3, "max_steps": 2, "adapter": {"type": "lora", "r": 8}}],
}


def check(tmp_path: Path, hardware: dict | None = None, **sft):
    """``check`` of BASE with ``hardware`` replacing its hardware and ``sft`` merged into the SFT stage."""
    (tmp_path / "chat.jsonl").write_text(json.dumps({"conversations": [
        {"from": "human", "value": "hi"}, {"from": "gpt", "value": "hello"}]}) + "\n")
    doc = json.loads(json.dumps(BASE))
    doc["hardware"] = hardware if hardware is not None else doc["hardware"]
    doc["stages"][1].update(sft)
    return check_text(yaml.safe_dump(doc, sort_keys=False), "p.yaml", tmp_path)


def codes(result, code: str):
    return [d for d in result.diagnostics if d.code == code]


def errors(result) -> list[str]:
    return [f"{d.code} {d.message}" for d in result.diagnostics if d.severity.name == "ERROR"]


def test_cpu_processes_per_node_over_nodes_make_the_world_size(tmp_path):
    result = check(tmp_path, {"device": "cpu", "cpu_processes": 2, "nodes": 2, "slurm": {"partition": "cpu"}})
    assert result.ok, errors(result)
    files = plan_files(result, "plan")
    acc = yaml.safe_load(files["stages/sft/accelerate.yaml"])
    assert (acc["distributed_type"], acc["num_processes"], acc["num_machines"], acc["use_cpu"]) == (
        "MULTI_GPU", 4, 2, True)
    promise = json.loads(files["stages/sft/args.json"])["promise"]
    assert (promise["device"], promise["world_size"], promise["num_machines"]) == ("cpu", 4, 2)
    assert "effective batch 2 micro × 3 accum × 4 processes = 24 sequences" in files["slurm/sft.sbatch"]
    assert "4 process(es) on the CPU: 2 node(s) × 2 process(es) over gloo, strategy ddp" in files["slurm/sft.sbatch"]
    assert "One launcher per node starts its\n# 2 process(es)" in files["slurm/sft.sbatch"]
    # the data stage stays one process on one node
    assert json.loads(files["stages/data/args.json"])["promise"]["world_size"] == 1


def test_one_cpu_process_is_the_default(tmp_path):
    files = plan_files(check(tmp_path), "plan")
    acc = yaml.safe_load(files["stages/sft/accelerate.yaml"])
    assert (acc["distributed_type"], acc["num_processes"]) == ("NO", 1)


def test_ft300_cpu_processes_is_for_the_cpu(tmp_path):
    result = check(tmp_path, {"gpu": "h100-sxm-80gb", "cpu_processes": 2})
    [d] = codes(result, "FT300")
    assert d.severity.name == "ERROR" and d.path == ("hardware", "cpu_processes")
    assert "gpus_per_node" in d.hint
    assert not codes(check(tmp_path, {"gpu": "h100-sxm-80gb"}), "FT300")


@pytest.mark.parametrize("strategy", ["zero2", "zero3", "fsdp2"])
def test_ft306_zero_and_fsdp2_still_need_gpus_with_several_cpu_processes(tmp_path, strategy):
    """accelerate 1.15 starts a CPU process group as MULTI_CPU (DDP) whatever the config asks for, so DeepSpeed
    and FSDP2 would silently not apply: refused at check time (and by the runtime's preflight)."""
    result = check(tmp_path, {"device": "cpu", "cpu_processes": 2}, distributed=strategy)
    [d] = codes(result, "FT306")
    assert "gloo" in d.message and "distributed: auto" in d.hint


def test_ft310_distributed_none_with_several_cpu_processes(tmp_path):
    [d] = codes(check(tmp_path, {"device": "cpu", "cpu_processes": 2}, distributed="none"), "FT310")
    assert "only 1 of 2 CPU processes would train" in d.message


def test_ft312_several_cpu_nodes_need_slurm(tmp_path):
    [d] = codes(check(tmp_path, {"device": "cpu", "nodes": 2}), "FT312")
    assert d.path == ("hardware", "nodes")


def test_a_multi_node_launch_carries_the_rendezvous_timeout(tmp_path):
    hw = {"device": "cpu", "nodes": 2, "rendezvous_timeout_s": 45, "slurm": {"partition": "cpu"}}
    files = plan_files(check(tmp_path, hw), "plan")
    assert files["slurm/sft.sbatch"].count("--main_process_port 29500 --rdzv_conf timeout=45 -m ftplan_runtime") == 1
    one_node = plan_files(check(tmp_path, {**hw, "nodes": 1}), "plan")
    assert "--rdzv_conf" not in one_node["slurm/sft.sbatch"]


# ---------------------------------------------------------------------------------------------- check_launch


def promise(world: int, machines: int) -> Promise:
    return Promise(device="cpu", world_size=world, num_machines=machines, distributed_type="MULTI_GPU",
                   precision="fp32", attention="sdpa", kernels="none")


def torchrun_env(world: int, local: int, machines: int, machine: int) -> dict[str, str]:
    """What torchrun's agent tells each worker."""
    return {"WORLD_SIZE": str(world), "LOCAL_WORLD_SIZE": str(local), "GROUP_WORLD_SIZE": str(machines),
            "GROUP_RANK": str(machine), "RANK": "0", "LOCAL_RANK": "0"}


def test_check_launch_accepts_the_promised_group_and_a_process_no_launcher_started():
    from ftplan_runtime.preflight import check_launch

    check_launch(promise(4, 2), torchrun_env(4, 2, 2, 1))
    check_launch(promise(1, 1), {})  # python -m ftplan_runtime: check_distributed compares later


def test_check_launch_names_both_sizes_of_a_mismatched_launch():
    """Machine rank 0 launched for 2 nodes × 1 process, machine rank 1 with a config for 2 × 2: torchrun's agents
    form one group of 3, and each side says what it expected and what the other side started."""
    from ftplan_runtime.preflight import PreflightError, check_launch

    with pytest.raises(PreflightError) as e:
        check_launch(promise(2, 2), torchrun_env(3, 1, 2, 0))
    assert str(e.value).startswith("preflight: the plan promised world size = 2 (2 machine(s) × 1 process(es)), "
                                   "but this process has a launch of 3 process(es) on 2 machine(s): machine rank 0 "
                                   "started 1 and the other 1 machine(s) 2; fix: start every machine's launcher "
                                   "with this stage's compiled accelerate.yaml")
    with pytest.raises(PreflightError, match=r"world size = 4 \(2 machine\(s\) × 2 process\(es\)\).* machine rank 1 "
                                             r"started 2 and the other 1 machine\(s\) 1"):
        check_launch(promise(4, 2), torchrun_env(3, 2, 2, 1))
    with pytest.raises(PreflightError, match=r"a launch of 2 process\(es\) on 1 machine\(s\): machine rank 0 "
                                             r"started 2;"):
        check_launch(promise(2, 2), torchrun_env(2, 2, 1, 0))  # right total, wrong shape
