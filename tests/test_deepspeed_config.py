"""Generated DeepSpeed JSON and accelerate YAML, checked by DeepSpeed's and accelerate's own config loaders."""

from __future__ import annotations

import importlib.util
import itertools
import json
import pathlib

import pytest
import yaml

from ftplan.render import render
from ftplan.plan.deepspeed import KNOWN_TOP_LEVEL_KEYS, unknown_top_level_keys

_spec = importlib.util.spec_from_file_location("ftplan_plan_builders", pathlib.Path(__file__).with_name("plan_builders.py"))
plan_builders = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(plan_builders)

dsc = pytest.importorskip("deepspeed.runtime.config", reason="deepspeed is not installed")
config_args = pytest.importorskip("accelerate.commands.config.config_args", reason="accelerate is not installed")


def compiled(distributed, **kw):
    """The plan of a data + sft pipeline with ``distributed`` (see ``plan_builders.training_plan``) and its files."""
    plan = plan_builders.training_plan(distributed, **kw)
    return plan, render(plan)


OFFLOADS = [{}, {"offload_optimizer": True}, {"offload_optimizer": True, "offload_params": True}]
CASES = [pytest.param(stage, offload, precision, gpus, nodes, id=f"{stage}-{'+'.join(offload) or 'gpu'}-{precision}-"
                      f"{gpus}x{nodes}")
         for (stage, offload, precision), (gpus, nodes) in zip(
             itertools.product(["zero1", "zero2", "zero3"], OFFLOADS, ["bf16", "fp16", "fp32"]),
             itertools.cycle([(1, 1), (4, 1), (8, 2)]))]


@pytest.mark.parametrize("strategy, offload, precision, gpus, nodes", CASES)
def test_deepspeed_accepts_every_generated_config(monkeypatch, strategy, offload, precision, gpus, nodes):
    plan, files = compiled({"strategy": strategy, **offload}, precision=precision, gpus=gpus, nodes=nodes,
                           optimizer="adamw_8bit" if precision == "fp16" else "adamw")
    world = gpus * nodes
    monkeypatch.setattr(dsc.dist, "get_world_size", lambda *a, **k: world)
    monkeypatch.setattr(dsc.dist, "get_rank", lambda *a, **k: 0)
    data = json.loads(files["stages/train/deepspeed.json"])
    cfg = dsc.DeepSpeedConfig(data)
    assert cfg.zero_optimization_stage == int(strategy[-1])
    assert (cfg.train_micro_batch_size_per_gpu, cfg.gradient_accumulation_steps, cfg.train_batch_size) == \
        (3, 5, 3 * 5 * world)
    assert cfg.gradient_clipping == 0.5
    assert cfg.bfloat16_config.enabled is (precision == "bf16")
    assert cfg.float16_config.enabled is (precision == "fp16")
    zero = cfg.zero_config
    assert (zero.offload_optimizer is not None) is bool(offload.get("offload_optimizer"))
    if zero.offload_optimizer is not None:
        assert zero.offload_optimizer.device == "cpu" and zero.offload_optimizer.pin_memory
        assert cfg.zero_force_ds_cpu_optimizer is False
    assert (zero.offload_param is not None) is (strategy == "zero3" and bool(offload.get("offload_params")))
    if strategy == "zero3":
        assert zero.gather_16bit_weights_on_model_save is True
        assert zero.prefetch_bucket_size == (9 * 4096 * 4096) // 10 and zero.param_persistence_threshold == 40960
        assert "stage3_prefetch_bucket_size" in data["zero_optimization"]  # one spelling: the prefixed one
        assert "prefetch_bucket_size" not in data["zero_optimization"]
    assert cfg.zero_allow_untested_optimizer is (precision == "fp16")  # the 8-bit optimizer cases
    assert unknown_top_level_keys(data) == []


def test_no_auto_anywhere_in_any_generated_file():
    for strategy, offload in itertools.product(["auto", "none", "ddp", "zero1", "zero2", "zero3", "fsdp2"],
                                               OFFLOADS):
        _, files = compiled({"strategy": strategy, **offload})
        for path, text in files.items():
            if path.endswith((".json", ".yaml")):
                assert '"auto"' not in text and ": auto\n" not in text, (strategy, path)


def test_known_top_level_keys_are_deepspeeds_own():
    root = pathlib.Path(dsc.__file__).parent.parent
    source = "\n".join(p.read_text(errors="ignore") for p in root.rglob("*.py"))
    for key in sorted(KNOWN_TOP_LEVEL_KEYS):
        assert f'"{key}"' in source or f"'{key}'" in source, key
    # DeepSpeed itself silently ignores a misspelt section; ftplan's check does not.
    assert unknown_top_level_keys({"zero_optimisation": {"stage": 3}, "fp16": {}}) == ["zero_optimisation"]


ACCELERATE_CASES = [
    ("none", {}, 1, "NO"), ("ddp", {}, 4, "MULTI_GPU"), ("zero2", {"offload_optimizer": True}, 4, "DEEPSPEED"),
    ("zero3", {}, 8, "DEEPSPEED"), ("fsdp2", {"offload_params": True}, 8, "FSDP"),
]


@pytest.mark.parametrize("strategy, offload, gpus, dtype", ACCELERATE_CASES)
def test_accelerate_loads_every_generated_yaml(tmp_path, strategy, offload, gpus, dtype):
    _, files = compiled({"strategy": strategy, **offload}, gpus=gpus, adapter={"type": "lora"})
    path = tmp_path / "accelerate.yaml"
    path.write_text(files["stages/train/accelerate.yaml"])
    cfg = config_args.load_config_from_file(str(path))
    assert cfg.distributed_type.value == dtype and cfg.num_processes == gpus and cfg.num_machines == 1
    assert cfg.compute_environment.value == "LOCAL_MACHINE" and cfg.use_cpu is False
    if dtype == "DEEPSPEED":
        assert cfg.deepspeed_config["deepspeed_config_file"] == "plan/stages/train/deepspeed.json"
        assert cfg.mixed_precision is None  # accelerate refuses it next to a DeepSpeed config file
    else:
        assert cfg.mixed_precision == "bf16"
    if dtype == "FSDP":
        assert cfg.fsdp_config["fsdp_version"] == 2 and cfg.fsdp_config["fsdp_offload_params"] is True


def test_accelerate_loads_the_cpu_yaml(tmp_path):
    _, files = compiled("auto", device="cpu", precision="fp32", gpus=1)
    path = tmp_path / "accelerate.yaml"
    path.write_text(files["stages/train/accelerate.yaml"])
    cfg = config_args.load_config_from_file(str(path))
    assert cfg.use_cpu is True and cfg.distributed_type.value == "NO" and cfg.mixed_precision == "no"


def test_fsdp2_keys_are_accelerate_launch_options():
    launch = pytest.importorskip("accelerate.commands.launch")
    options = {a.dest for a in launch.launch_command_parser()._actions}
    _, files = compiled({"strategy": "fsdp2", "offload_optimizer": True}, gpus=8)
    fsdp = yaml.safe_load(files["stages/train/accelerate.yaml"])["fsdp_config"]
    assert set(fsdp) <= options  # accelerate copies fsdp_config.<key> onto the launch option of that name
    assert fsdp["fsdp_auto_wrap_policy"] == "TRANSFORMER_BASED_WRAP"
    assert fsdp["fsdp_state_dict_type"] in ("FULL_STATE_DICT", "SHARDED_STATE_DICT")
