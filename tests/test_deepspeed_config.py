"""Generated DeepSpeed JSON and accelerate YAML, checked by DeepSpeed's and accelerate's own config loaders: the
planner's every kind (ZeRO-1/2/3 with each offload, precision and world size; sharded QLoRA under ZeRO-3 and FSDP2),
and every DeepSpeed JSON and accelerate.yaml of every example's golden plan (DeepSpeed's config class at the stage's
world size and the HF Trainer's filling of the JSON from the runtime's own TrainingArguments; accelerate's config
loader)."""

from __future__ import annotations

import importlib.util
import itertools
import json
import pathlib
import shutil

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


# ---- every example plan, and sharded QLoRA ----

ROOT = pathlib.Path(__file__).resolve().parent.parent
GOLDEN = pathlib.Path(__file__).resolve().parent / "golden"
GOLDEN_DS = sorted(p.relative_to(GOLDEN).as_posix() for p in GOLDEN.glob("*/plan/stages/*/deepspeed.json"))
GOLDEN_YAML = sorted(p.relative_to(GOLDEN).as_posix() for p in GOLDEN.glob("*/plan/stages/*/accelerate.yaml"))


@pytest.fixture(scope="module")
def example_plans(tmp_path_factory) -> dict[str, dict[str, str]]:
    """Every example compiled as the goldens are (``tests/test_golden.py``): example name -> the plan's files."""
    from ftplan.api import check_file, plan_files

    root = tmp_path_factory.mktemp("examples")
    shutil.copytree(ROOT / "examples", root / "examples", ignore=shutil.ignore_patterns(".*"))
    plans = {}
    for path in sorted((root / "examples").glob("*.yaml")):
        result = check_file(path)
        if result.ok:
            plans[path.stem] = plan_files(result, f"../plans/{path.stem}")
    return plans


def _golden_stage(rel: str, plans: dict[str, dict[str, str]]) -> tuple[str, dict]:
    """(the compiled file's text, the stage's args.json) of ``<example>/plan/stages/<id>/<file>``; the text is the
    golden file's, byte for byte."""
    example, _, rest = rel.split("/", 2)
    text = plans[example][rest]
    assert text == (GOLDEN / rel).read_text(), f"{rel} differs from a fresh compile (tests/test_golden.py)"
    return text, json.loads(plans[example][rest.rsplit("/", 1)[0] + "/args.json"])


def test_the_goldens_hold_every_emitted_launch_file(example_plans):
    """The parametrized tests below run over the golden files: every DeepSpeed JSON and accelerate.yaml an example
    compiles to is among them."""
    emitted = {f"{name}/plan/{rel}" for name, files in example_plans.items() for rel in files
               if rel.endswith(("/deepspeed.json", "/accelerate.yaml"))}
    assert emitted == set(GOLDEN_DS) | set(GOLDEN_YAML)


@pytest.mark.parametrize("rel", GOLDEN_DS)
def test_deepspeed_accepts_every_example_json(rel, example_plans, monkeypatch, tmp_path):
    """DeepSpeed's own config class at the stage's world size, then the HF Trainer's filling of the same JSON from
    the runtime's TrainingArguments for that stage: no mismatch, no ``auto`` left (a mismatch stops a cluster run at
    start-up)."""
    transformers = pytest.importorskip("transformers")
    from ftplan_runtime.train_common import config_kwargs

    text, args = _golden_stage(rel, example_plans)
    data = json.loads(text)
    promise, stage = args["promise"], args["stage"]
    world = promise["world_size"]
    monkeypatch.setattr(dsc.dist, "get_world_size", lambda *a, **k: world)
    monkeypatch.setattr(dsc.dist, "get_rank", lambda *a, **k: 0)
    cfg = dsc.DeepSpeedConfig(data)
    assert cfg.zero_optimization_stage == promise["zero_stage"]
    assert (cfg.train_micro_batch_size_per_gpu, cfg.gradient_accumulation_steps, cfg.train_batch_size) == (
        stage["micro_batch"], stage["grad_accum"], stage["micro_batch"] * stage["grad_accum"] * world)
    assert cfg.bfloat16_config.enabled is (stage["precision"] == "bf16")
    assert cfg.float16_config.enabled is (stage["precision"] == "fp16")
    assert cfg.gradient_clipping == stage["max_grad_norm"]
    assert unknown_top_level_keys(data) == []

    from ftplan.schemas.runtime_args import RuntimeArgs

    runtime_args = RuntimeArgs.model_validate(args)
    (tmp_path / "ds.json").write_text(text)
    kwargs = config_kwargs(runtime_args, has_eval=False)
    kwargs.update(output_dir=str(tmp_path / "out"), use_cpu=True, deepspeed=str(tmp_path / "ds.json"),
                  report_to="none")
    monkeypatch.setattr(transformers.TrainingArguments, "world_size", property(lambda self: world))
    targs = transformers.TrainingArguments(**kwargs)
    plan_builders.hf_trainer_fills(json.loads(text), targs)


@pytest.mark.parametrize("rel", GOLDEN_YAML)
def test_accelerate_loads_every_example_yaml(rel, example_plans, tmp_path):
    text, args = _golden_stage(rel, example_plans)
    path = tmp_path / "accelerate.yaml"
    path.write_text(text)
    cfg = config_args.load_config_from_file(str(path))
    promise = args["promise"]
    assert cfg.distributed_type.value == promise["distributed_type"]
    assert (cfg.num_processes, cfg.num_machines) == (promise["world_size"], promise["num_machines"])
    assert cfg.use_cpu is (promise["device"] == "cpu")
    if promise["distributed_type"] == "DEEPSPEED":
        assert cfg.mixed_precision is None and cfg.deepspeed_config["deepspeed_config_file"].endswith(
            rel.split("/plan/", 1)[1].replace("accelerate.yaml", "deepspeed.json"))
    else:
        assert cfg.mixed_precision == {"bf16": "bf16", "fp16": "fp16", "fp32": "no"}[promise["precision"]]
    if promise["distributed_type"] == "FSDP":
        assert cfg.fsdp_config["fsdp_version"] == 2


QLORA_CASES = [pytest.param(s, off, prec, id=f"{s}-{'+'.join(off) or 'gpu'}-{prec}")
               for s, off, prec in (("zero3", {}, "bf16"), ("zero3", {"offload_optimizer": True}, "fp16"),
                                    ("zero3", {"offload_optimizer": True, "offload_params": True}, "bf16"))]


@pytest.mark.parametrize("strategy, offload, precision", QLORA_CASES)
def test_deepspeed_accepts_sharded_qlora_configs(monkeypatch, tmp_path, strategy, offload, precision):
    """A QLoRA stage under ZeRO-3 (a 4-bit base sharded in the compute dtype): DeepSpeed's config class accepts its
    JSON, and its accelerate.yaml builds the model without ``zero.Init`` (transformers loads a 4-bit model whole)."""
    plan, files = compiled({"strategy": strategy, **offload}, precision=precision, gpus=4,
                           adapter={"type": "qlora"})
    monkeypatch.setattr(dsc.dist, "get_world_size", lambda *a, **k: 4)
    monkeypatch.setattr(dsc.dist, "get_rank", lambda *a, **k: 0)
    data = json.loads(files["stages/train/deepspeed.json"])
    cfg = dsc.DeepSpeedConfig(data)
    assert cfg.zero_optimization_stage == 3 and cfg.train_batch_size == 3 * 5 * 4
    assert (cfg.zero_config.offload_param is not None) is bool(offload.get("offload_params"))
    path = tmp_path / "accelerate.yaml"
    path.write_text(files["stages/train/accelerate.yaml"])
    loaded = config_args.load_config_from_file(str(path))
    assert loaded.deepspeed_config["zero3_init_flag"] is False


@pytest.mark.parametrize("offload", [{}, {"offload_params": True}], ids=["gpu", "offload_params"])
def test_accelerate_loads_sharded_qlora_fsdp2_yaml(tmp_path, offload):
    _, files = compiled({"strategy": "fsdp2", **offload}, gpus=2, adapter={"type": "qlora"})
    path = tmp_path / "accelerate.yaml"
    path.write_text(files["stages/train/accelerate.yaml"])
    cfg = config_args.load_config_from_file(str(path))
    assert cfg.distributed_type.value == "FSDP" and cfg.mixed_precision == "bf16"
    assert cfg.fsdp_config["fsdp_version"] == 2 and cfg.fsdp_config["fsdp_offload_params"] is bool(offload)
