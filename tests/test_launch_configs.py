"""Compiled launch files, read the way accelerate 1.15's own launcher reads them.

Every accelerate.yaml kind the planner emits, and every example's, goes through ``accelerate launch``'s argument
handling (``launch_command_parser`` + ``_validate_launch_command`` + the launcher's environment preparation), and the
plugins accelerate builds in the training processes are constructed from that environment: the FSDP plugin
(wrap policy applied to small models of every catalog family), the DeepSpeed plugin, and the Trainer's DeepSpeed
config filled from the runtime's own ``TrainingArguments``. Multi-node plans are checked through the exact
``accelerate launch`` line of their sbatch script. The slow tests really launch on this CPU machine (one process
with DeepSpeed, two with DDP, two launchers rendezvousing as two nodes on localhost) and compare
``AcceleratorState`` with the plan's promise.
"""

from __future__ import annotations

import importlib.util
import json
import os
import pathlib
import re
import shlex
import socket
import subprocess
import sys

import pytest
import yaml

from ftplan.catalog import get_model
from ftplan.render import render
from ftplan.plan.accelerate import DECODER_LAYER_CLASSES

_spec = importlib.util.spec_from_file_location("ftplan_plan_builders", pathlib.Path(__file__).with_name("plan_builders.py"))
plan_builders = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(plan_builders)

launch = pytest.importorskip("accelerate.commands.launch", reason="accelerate is not installed")
from accelerate.utils import launch as launch_utils  # noqa: E402

STAGE = "stages/train"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def compile_to(root: pathlib.Path, distributed: dict, **kw):
    """Compile a data + sft pipeline (``plan_builders.training_plan``, 512-token rows) into ``root/plan`` (``root``
    is the project folder); returns the plan."""
    plan = plan_builders.training_plan(distributed, name="lc", **{"seq": 512, **kw})
    for rel, text in render(plan).items():
        path = root / "plan" / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return plan


def launcher_view(root: pathlib.Path, monkeypatch, extra: tuple[str, ...] = (), stage_dir: str = f"plan/{STAGE}"):
    """What ``accelerate launch --config_file <stage_dir>/accelerate.yaml [extra] -m ftplan_runtime ...``
    decides, run from the project root: (the launcher's kind, its resolved arguments, the environment it gives
    the training processes, the command it would run instead of torchrun, if any)."""
    monkeypatch.chdir(root)
    argv = ["--config_file", f"{stage_dir}/accelerate.yaml", *extra, "-m", "ftplan_runtime",
            f"{stage_dir}/args.json"]
    args, defaults, mp_from_config = launch._validate_launch_command(launch.launch_command_parser().parse_args(argv))
    cmd = None
    if args.use_deepspeed and not args.cpu:  # the branches of accelerate.commands.launch.launch_command
        fields = list(defaults.deepspeed_config) + (["mixed_precision"] if mp_from_config else [])
        args.deepspeed_fields_from_accelerate_config = ",".join(fields)
        cmd, env = launch_utils.prepare_deepspeed_cmd_env(args)
        kind = "deepspeed"
    elif (args.use_fsdp or args.multi_gpu) and not args.cpu:
        env, kind = launch_utils.prepare_multi_gpu_env(args), "torchrun"
    else:
        cmd, env = launch_utils.prepare_simple_launcher_cmd_env(args)
        kind = "simple"
    return kind, args, env, cmd


def use_env(monkeypatch, env: dict[str, str]) -> None:
    """Give this process the environment accelerate gives a training process."""
    for key, value in env.items():
        if key.startswith(("ACCELERATE_", "FSDP_")):
            monkeypatch.setenv(key, value)


KINDS = [
    pytest.param({"strategy": "none"}, 1, "cuda", "bf16", id="NO-gpu"),
    pytest.param({"strategy": "auto"}, 1, "cpu", "fp32", id="NO-cpu"),
    pytest.param({"strategy": "ddp"}, 4, "cuda", "fp16", id="MULTI_GPU"),
    *[pytest.param({"strategy": s, **off}, 4, "cuda", prec, id=f"{s}-{'+'.join(off) or 'gpu'}-{prec}")
      for s, prec in (("zero1", "bf16"), ("zero2", "fp16"), ("zero3", "bf16"))
      for off in ({}, {"offload_optimizer": True}, {"offload_optimizer": True, "offload_params": True})
      if not (off.get("offload_params") and s != "zero3") and not (off and s == "zero1")],
    *[pytest.param({"strategy": "fsdp2", **off}, 4, "cuda", prec, id=f"fsdp2-{'+'.join(off) or 'gpu'}-{prec}")
      for off, prec in (({}, "bf16"), ({"offload_params": True}, "fp32"), ({"offload_optimizer": True}, "bf16"))],
]


@pytest.mark.parametrize("distributed, gpus, device, precision", KINDS)
def test_accelerate_launcher_reads_every_kind_as_planned(tmp_path, monkeypatch, distributed, gpus, device,
                                                         precision):
    plan = compile_to(tmp_path, distributed, gpus=gpus, device=device, precision=precision)
    promise = plan.stages[1].args.promise
    kind, args, env, cmd = launcher_view(tmp_path, monkeypatch)
    dtype = promise.distributed_type
    assert args.num_processes == promise.world_size and args.num_machines == 1
    assert (args.use_deepspeed, args.use_fsdp, args.multi_gpu) == (dtype == "DEEPSPEED", dtype == "FSDP",
                                                                   dtype == "MULTI_GPU")
    assert kind == {"NO": "simple", "MULTI_GPU": "torchrun", "FSDP": "torchrun", "DEEPSPEED": "deepspeed"}[dtype]
    if kind != "simple":
        assert cmd is None and args.nproc_per_node == str(promise.world_size)  # torchrun, not pdsh
    assert (env.get("ACCELERATE_USE_CPU") == "True") == (device == "cpu")
    mixed = {"bf16": "bf16", "fp16": "fp16", "fp32": "no"}[precision]
    if dtype == "DEEPSPEED":
        # the precision lives in the JSON; the YAML must not set it (accelerate refuses both)
        assert env["ACCELERATE_MIXED_PRECISION"] == "no"
        assert "mixed_precision" not in env["ACCELERATE_CONFIG_DS_FIELDS"]
        assert (tmp_path / env["ACCELERATE_DEEPSPEED_CONFIG_FILE"]).is_file()
    else:
        assert env["ACCELERATE_MIXED_PRECISION"] == mixed


DS_CASES = [pytest.param(s, off, prec, opt, gpus, nodes, id=f"{s}-{'+'.join(off) or 'gpu'}-{prec}-{opt}-{gpus}x{nodes}")
            for s, off, prec, opt, gpus, nodes in (
                ("zero1", {}, "bf16", "adamw", 4, 1),
                ("zero2", {}, "fp16", "adamw_8bit", 8, 2),
                ("zero2", {"offload_optimizer": True}, "bf16", "adamw", 1, 1),
                ("zero3", {}, "bf16", "adamw", 8, 2),
                ("zero3", {"offload_optimizer": True, "offload_params": True}, "fp32", "adamw", 2, 1),
                ("zero3", {"offload_optimizer": True}, "fp16", "adamw", 4, 1))]


@pytest.mark.parametrize("strategy, offload, precision, optimizer, gpus, nodes", DS_CASES)
def test_deepspeed_plugin_and_trainer_agree_with_the_json(tmp_path, monkeypatch, strategy, offload, precision,
                                                         optimizer, gpus, nodes):
    """The DeepSpeed plugin accelerate builds from the launch environment, and the Trainer's own filling of the
    JSON from the runtime's TrainingArguments (same batch numbers), leave no mismatch: on a cluster a mismatch
    stops the run at start-up (``trainer_config_finalize``)."""
    transformers = pytest.importorskip("transformers")
    from ftplan_runtime.train_common import config_kwargs

    plan = compile_to(tmp_path, {"strategy": strategy, **offload}, gpus=gpus, nodes=nodes, precision=precision,
                      optimizer=optimizer)
    stage = plan.stages[1]
    extra = ("--num_machines", str(nodes), "--machine_rank", "0", "--main_process_ip", "127.0.0.1") if nodes > 1 else ()
    _, _, env, _ = launcher_view(tmp_path, monkeypatch, extra)
    use_env(monkeypatch, env)
    kwargs = config_kwargs(stage.args, has_eval=False)
    kwargs["output_dir"] = str(tmp_path / "out")
    kwargs["use_cpu"] = True  # this machine has no GPU; the device does not enter the DeepSpeed values
    world = gpus * nodes
    monkeypatch.setattr(transformers.TrainingArguments, "world_size", property(lambda self: world))
    targs = transformers.TrainingArguments(**kwargs)
    plugin = targs.deepspeed_plugin
    assert plugin is not None and plugin.zero_stage == stage.args.promise.zero_stage
    assert plugin.zero3_init_flag == (strategy == "zero3")
    # transformers.integrations.deepspeed.propagate_args_to_deepspeed, as the Trainer runs it
    filled = plan_builders.hf_trainer_fills(plugin.hf_ds_config.config, targs)
    assert filled["train_batch_size"] == stage.batch.effective_batch
    assert filled["bf16"]["enabled"] == (precision == "bf16")
    assert filled["fp16"]["enabled"] == (precision == "fp16")


def _tiny_config(family: str):
    from transformers import AutoConfig

    sizes = dict(hidden_size=16, intermediate_size=32, num_hidden_layers=2, num_attention_heads=2,
                 num_key_value_heads=1, head_dim=8, vocab_size=64, pad_token_id=0,
                 bos_token_id=1, eos_token_id=2)
    if family == "gemma3":
        return AutoConfig.for_model("gemma3_text", **sizes)
    if family == "mixtral":
        sizes.update(num_local_experts=2, num_experts_per_tok=1)
    return AutoConfig.for_model(family, **sizes)


@pytest.mark.parametrize("offload", [{}, {"offload_params": True}, {"offload_optimizer": True}],
                         ids=["gpu", "offload_params", "offload_optimizer"])
def test_fsdp2_plugin_from_the_launch_environment(tmp_path, monkeypatch, offload):
    from accelerate.utils import FullyShardedDataParallelPlugin
    from torch.distributed.fsdp import CPUOffloadPolicy, StateDictType

    compile_to(tmp_path, {"strategy": "fsdp2", **offload})
    _, _, env, _ = launcher_view(tmp_path, monkeypatch)
    use_env(monkeypatch, env)
    plugin = FullyShardedDataParallelPlugin()
    assert plugin.fsdp_version == 2
    assert plugin.transformer_cls_names_to_wrap == ["LlamaDecoderLayer"]
    assert plugin.state_dict_type == StateDictType.FULL_STATE_DICT
    assert isinstance(plugin.cpu_offload, CPUOffloadPolicy) == bool(offload)
    assert plugin.reshard_after_forward is True
    assert plugin.activation_checkpointing is False  # the trainer's gradient_checkpointing recomputes instead
    assert plugin.cpu_ram_efficient_loading is True


FAMILY_MODELS = {"gemma2": "gemma-2-2b", "gemma3": "gemma-3-1b", "llama": "llama-3.2-1b", "mistral": "mistral-7b-v0.3",
                 "mixtral": "mixtral-8x7b", "phi3": "phi-3.5-mini", "qwen2": "qwen2.5-0.5b", "qwen3": "qwen3-8b"}
"""A catalog model of every family the FSDP2 config names a decoder layer class for."""


def test_every_layer_class_family_has_a_catalog_model():
    assert set(FAMILY_MODELS) == set(DECODER_LAYER_CLASSES)
    assert {f: get_model(m).family for f, m in FAMILY_MODELS.items()} == {f: f for f in FAMILY_MODELS}


@pytest.mark.parametrize("family", sorted(FAMILY_MODELS))
def test_fsdp2_wraps_each_decoder_layer_of_every_family(tmp_path, monkeypatch, family):
    """The layer class the compiled YAML names for a model of this family exists in its transformers model
    (accelerate's FSDP2 wrap policy raises for a class it cannot find) and selects exactly the decoder layers."""
    transformers = pytest.importorskip("transformers")
    from accelerate.utils import FullyShardedDataParallelPlugin
    from accelerate.utils.fsdp_utils import fsdp2_prepare_auto_wrap_policy

    compile_to(tmp_path, {"strategy": "fsdp2"}, model=FAMILY_MODELS[family])
    _, _, env, _ = launcher_view(tmp_path, monkeypatch)
    use_env(monkeypatch, env)
    model = transformers.AutoModelForCausalLM.from_config(_tiny_config(family))
    policy = fsdp2_prepare_auto_wrap_policy(FullyShardedDataParallelPlugin(), model)
    wrapped = [m for m in model.modules() if policy(m)]
    assert len(wrapped) == 2 and {type(m).__name__ for m in wrapped} == {DECODER_LAYER_CLASSES[family]}


def sbatch_launch_line(plan_root: pathlib.Path, stage_name: str = "train") -> list[str]:
    """The ``accelerate launch`` arguments of a stage's sbatch script (its ``bash -c '...'`` program)."""
    text = (plan_root / "plan" / "slurm" / f"{stage_name}.sbatch").read_text()
    program = re.search(r"bash -c '([^']*exec accelerate launch[^']*)'", text).group(1)
    return shlex.split(program.split("exec ", 1)[1])


def expand(words: list[str], env: dict[str, str], positional: list[str]) -> list[str]:
    out = []
    for w in words:
        if w.startswith("$") and w[1:].isdigit():
            out.append(positional[int(w[1:]) - 1])
        elif w.startswith("$"):
            out.append(env[w[1:]])
        else:
            out.append(w)
    return out


@pytest.mark.parametrize("strategy", ["ddp", "zero3", "fsdp2"])
def test_sbatch_rendezvous_arguments_per_node(tmp_path, monkeypatch, strategy):
    """Two nodes × 8 GPUs: each node's launcher starts 8 processes (``num_processes`` in the YAML is the total,
    accelerate divides it by ``num_machines``) with its node rank, all meeting on the head node through torchrun's
    static rendezvous; DeepSpeed uses that torchrun path too (``standard``), not pdsh over ssh."""
    port = free_port()
    plan = compile_to(tmp_path, {"strategy": strategy}, gpus=8, nodes=2, port=port)
    assert plan.stages[1].accelerate["num_processes"] == 16
    words = sbatch_launch_line(tmp_path)
    assert words[:3] == ["accelerate", "launch", "--config_file"]
    config, args_json = f"plan/{STAGE}/accelerate.yaml", f"plan/{STAGE}/args.json"
    for rank in (0, 1):
        slurm = {"SLURM_NNODES": "2", "SLURM_NODEID": str(rank), "HEAD_NODE": "gpu-node-001"}
        argv = expand(words[2:], slurm, [config, args_json])
        assert argv[-3:] == ["-m", "ftplan_runtime", args_json]
        kind, args, env, cmd = launcher_view(tmp_path, monkeypatch, tuple(argv[2:-3]))
        assert cmd is None, "accelerate would start the nodes itself (pdsh/ssh) instead of one launcher per node"
        assert (args.nproc_per_node, args.nnodes, args.node_rank) == ("8", "2", rank)
        assert args.rdzv_backend == "static"
        # the YAML's same_network is not read by the 1.15 launcher: the head node is the static rendezvous endpoint
        assert args.same_network is False and args.rdzv_endpoint == f"gpu-node-001:{port}"
        if strategy == "zero3":
            assert args.deepspeed_multinode_launcher == "standard"


def plan_md_launch_line(root: pathlib.Path) -> list[str]:
    """The training stage's ``- launch:`` command in plan.md, as shell words."""
    section = (root / "plan" / "plan.md").read_text().split("### 02 train (sft)")[1]
    return shlex.split(re.search(r"- launch: `([^`]*)`", section).group(1))


@pytest.mark.parametrize("nodes", [1, 2])
@pytest.mark.parametrize("strategy", ["ddp", "zero3", "fsdp2"])
def test_plan_md_launch_line_rendezvouses_at_the_head_node(tmp_path, monkeypatch, strategy, nodes):
    """The command plan.md shows works as shown on every node: on several nodes it carries the rendezvous
    arguments the sbatch script passes (the YAML alone makes accelerate rendezvous at ``None:<port>``)."""
    port = free_port()
    compile_to(tmp_path, {"strategy": strategy}, gpus=8, nodes=nodes, port=port)
    words = plan_md_launch_line(tmp_path)
    assert words[:2] == ["accelerate", "launch"] and words[-3:-1] == ["-m", "ftplan_runtime"]
    sbatch = sbatch_launch_line(tmp_path) if nodes > 1 else None
    for rank in range(nodes):
        slurm = {"SLURM_NNODES": str(nodes), "SLURM_NODEID": str(rank), "HEAD_NODE": "gpu-node-001"}
        argv = expand(words[2:-3], slurm, [])
        _, args, _, cmd = launcher_view(tmp_path, monkeypatch, tuple(argv[2:]))
        assert cmd is None and args.nproc_per_node == "8"
        if nodes > 1:
            assert (args.nnodes, args.node_rank) == ("2", rank)
            assert args.rdzv_endpoint == f"gpu-node-001:{port}"
            # the same arguments as the sbatch script's launch line
            expected = expand(sbatch[2:-3], slurm, [f"plan/{STAGE}/accelerate.yaml"])
            assert argv == expected



# ---- every example plan, as launched ----

GOLDEN = pathlib.Path(__file__).resolve().parent / "golden"
EXAMPLE_STAGES = sorted(p.relative_to(GOLDEN).as_posix().rsplit("/", 1)[0]
                        for p in GOLDEN.glob("*/plan/stages/*/accelerate.yaml"))
"""``<example>/plan/stages/<id>`` of every training stage of every golden plan."""


@pytest.fixture(scope="module")
def example_tree(tmp_path_factory) -> pathlib.Path:
    """The examples folder (the project root) with every example compiled beside it into ``../plans/<example>``,
    the layout the goldens are compiled for."""
    import shutil

    from ftplan.api import check_file, plan_files

    root = tmp_path_factory.mktemp("launch")
    shutil.copytree(pathlib.Path(__file__).resolve().parent.parent / "examples", root / "examples",
                    ignore=shutil.ignore_patterns(".*"))
    for path in sorted((root / "examples").glob("*.yaml")):
        result = check_file(path)
        if result.ok:
            for rel, text in plan_files(result, f"../plans/{path.stem}").items():
                (root / "plans" / path.stem / rel).parent.mkdir(parents=True, exist_ok=True)
                (root / "plans" / path.stem / rel).write_text(text)
    return root


@pytest.mark.parametrize("golden", EXAMPLE_STAGES)
def test_every_example_stage_launches_as_planned(golden, example_tree, tmp_path, monkeypatch):
    """Each training stage of each example, launched from the project root as run.sh (one node) or its sbatch script
    (node 0 of several) launches it: accelerate's launcher reads the promised world and kind, and the plugin the
    training processes build from its environment is the planned one (FSDP2: version, wrapped layer class, offload,
    rank-0 loading; DeepSpeed: the ZeRO stage and zero.Init, as the runtime's TrainingArguments build it)."""
    transformers = pytest.importorskip("transformers")
    from ftplan.schemas.runtime_args import RuntimeArgs

    example, _, stage_rel = golden.split("/", 2)
    stage_dir = f"../plans/{example}/{stage_rel.removeprefix('plan/')}"
    root = example_tree / "examples"
    args = RuntimeArgs.model_validate_json((root / stage_dir / "args.json").read_text())
    promise, stage = args.promise, args.stage
    yaml_doc = yaml.safe_load((root / stage_dir / "accelerate.yaml").read_text())
    extra: tuple[str, ...] = ()
    if promise.num_machines > 1:  # the sbatch script's own arguments, as node 0 passes them
        sbatch = (example_tree / "plans" / example / "slurm" / f"{stage.id}.sbatch").read_text()
        words = shlex.split(re.search(r"exec accelerate launch([^']*)'", sbatch).group(1))
        env = {"SLURM_NNODES": str(promise.num_machines), "SLURM_NODEID": "0", "HEAD_NODE": "127.0.0.1"}
        extra = tuple(expand(words[2:-3], env, [f"{stage_dir}/accelerate.yaml"]))
    kind, launched, env, cmd = launcher_view(root, monkeypatch, extra, stage_dir=stage_dir)
    dtype = promise.distributed_type
    assert (int(launched.num_processes), int(launched.num_machines)) == (promise.world_size, promise.num_machines)
    assert (launched.use_deepspeed, launched.use_fsdp, launched.multi_gpu) == (
        dtype == "DEEPSPEED", dtype == "FSDP", dtype == "MULTI_GPU")
    if kind != "simple":
        assert cmd is None and int(launched.nproc_per_node) == promise.world_size // promise.num_machines
    use_env(monkeypatch, env)
    if dtype == "FSDP":
        from accelerate.utils import FullyShardedDataParallelPlugin

        plugin = FullyShardedDataParallelPlugin()
        spec = stage.distributed_spec()
        assert plugin.fsdp_version == 2 and plugin.cpu_ram_efficient_loading is True
        assert plugin.transformer_cls_names_to_wrap == [yaml_doc["fsdp_config"]["fsdp_transformer_layer_cls_to_wrap"]]
        assert (plugin.cpu_offload is not None and type(plugin.cpu_offload).__name__ == "CPUOffloadPolicy") == (
            spec.offload_params or spec.offload_optimizer)
        assert env["ACCELERATE_MIXED_PRECISION"] == {"bf16": "bf16", "fp16": "fp16", "fp32": "no"}[stage.precision]
    elif dtype == "DEEPSPEED":
        from ftplan_runtime.train_common import config_kwargs

        monkeypatch.chdir(root)
        kwargs = config_kwargs(args, has_eval=False)
        kwargs.update(output_dir=str(tmp_path / "out"), use_cpu=True, report_to="none")
        monkeypatch.setattr(transformers.TrainingArguments, "world_size",
                            property(lambda self: promise.world_size))
        plugin = transformers.TrainingArguments(**kwargs).deepspeed_plugin
        assert plugin is not None and plugin.zero_stage == promise.zero_stage
        assert plugin.zero3_init_flag == yaml_doc["deepspeed_config"]["zero3_init_flag"]
        assert env["ACCELERATE_MIXED_PRECISION"] == "no"  # the precision lives in the JSON
    else:
        assert env["ACCELERATE_MIXED_PRECISION"] == {"bf16": "bf16", "fp16": "fp16", "fp32": "no"}[stage.precision]


# ---- real launches on this CPU machine ----

STATE_SCRIPT = """\
import json, os, pathlib, sys
from accelerate import Accelerator
acc = Accelerator(cpu=os.environ.get("LC_FORCE_CPU") == "1")
s = acc.state
state = {"rank": s.process_index, "distributed_type": s.distributed_type.value, "num_processes": s.num_processes,
         "mixed_precision": str(s.mixed_precision),
         "zero_stage": s.deepspeed_plugin.zero_stage if s.deepspeed_plugin else None,
         "local_world": os.environ.get("LOCAL_WORLD_SIZE"), "args": sys.argv[1:]}
pathlib.Path(os.environ["LC_OUT"], f"state-{s.process_index}.json").write_text(json.dumps(state))
"""


def run_launch(root: pathlib.Path, argv: list[str], env: dict[str, str] | None = None) -> subprocess.Popen:
    (root / "states").mkdir(exist_ok=True)
    full_env = {**os.environ, "DS_ACCELERATOR": "cpu", "OMP_NUM_THREADS": "1", "LC_OUT": str(root / "states"),
                **(env or {})}
    return subprocess.Popen([sys.executable, "-m", "accelerate.commands.launch", *argv], cwd=root, env=full_env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def states(root: pathlib.Path, *procs: subprocess.Popen, timeout: int = 240) -> list[dict]:
    """Wait for launches from the project folder ``root``; the states their ranks reported, by rank."""
    try:
        outs = [proc.communicate(timeout=timeout)[0] for proc in procs]
    finally:
        for proc in procs:  # a launcher left waiting for a rendezvous that never completes
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    for proc, out in zip(procs, outs):
        assert proc.returncode == 0, out[-3000:]
    return [json.loads(p.read_text()) for p in sorted((root / "states").glob("state-*.json"))]


def stub_runtime(root: pathlib.Path) -> None:
    """A stand-in ``ftplan_runtime`` in the project folder (accelerate puts the working folder on PYTHONPATH)
    that reports the state accelerate set up instead of training."""
    (root / "ftplan_runtime").mkdir()
    (root / "ftplan_runtime" / "__init__.py").write_text("")
    (root / "ftplan_runtime" / "__main__.py").write_text(STATE_SCRIPT)


def promised(plan) -> dict:
    p = plan.stages[1].args.promise
    return {"distributed_type": p.distributed_type, "num_processes": p.world_size}


@pytest.mark.slow
def test_cpu_plan_launches_as_promised(tmp_path):
    plan = compile_to(tmp_path, {"strategy": "auto"}, device="cpu", precision="fp32", port=free_port())
    stub_runtime(tmp_path)
    (s,) = states(tmp_path, run_launch(tmp_path, ["--config_file", f"plan/{STAGE}/accelerate.yaml", "-m",
                                                  "ftplan_runtime", f"plan/{STAGE}/args.json"]))
    assert {k: s[k] for k in ("distributed_type", "num_processes")} == promised(plan) == {
        "distributed_type": "NO", "num_processes": 1}
    assert s["mixed_precision"] == "no" and s["args"] == [f"plan/{STAGE}/args.json"]


@pytest.mark.slow
def test_deepspeed_plan_launches_as_promised(tmp_path):
    """One process (DeepSpeed on the CPU runs one rank only); the first run JIT-builds DeepSpeed's CPU
    communication op (cached in ~/.cache/torch_extensions)."""
    pytest.importorskip("deepspeed")
    plan = compile_to(tmp_path, {"strategy": "zero3", "offload_optimizer": True}, gpus=1, port=free_port())
    stub_runtime(tmp_path)
    (s,) = states(tmp_path, run_launch(tmp_path, ["--config_file", f"plan/{STAGE}/accelerate.yaml", "-m",
                                                  "ftplan_runtime", f"plan/{STAGE}/args.json"]), timeout=300)
    assert {k: s[k] for k in ("distributed_type", "num_processes")} == promised(plan) == {
        "distributed_type": "DEEPSPEED", "num_processes": 1}
    assert s["zero_stage"] == 3 and s["mixed_precision"] == "bf16"  # from the JSON's bf16 block


@pytest.mark.slow
def test_two_node_sbatch_line_rendezvous_on_localhost(tmp_path):
    """The sbatch script's own launch line, run twice on this machine as node 0 and node 1 of a 2 × 1 DDP plan:
    both launchers meet at the head node and form one world of 2 ranks. (No GPU here: the stand-in runtime asks
    accelerate for the CPU, which reports the DDP world as MULTI_CPU.)"""
    plan = compile_to(tmp_path, {"strategy": "ddp"}, gpus=1, nodes=2, port=free_port())
    stub_runtime(tmp_path)
    words = sbatch_launch_line(tmp_path)
    procs = []
    for rank in (0, 1):
        slurm = {"SLURM_NNODES": "2", "SLURM_NODEID": str(rank), "HEAD_NODE": "127.0.0.1"}
        argv = expand(words[2:], slurm, [f"plan/{STAGE}/accelerate.yaml", f"plan/{STAGE}/args.json"])
        procs.append(run_launch(tmp_path, argv, {"LC_FORCE_CPU": "1"}))
    got = states(tmp_path, *procs)
    assert [s["rank"] for s in got] == [0, 1]
    assert all(s["num_processes"] == 2 == promised(plan)["num_processes"] for s in got)
    assert all(s["distributed_type"] == "MULTI_CPU" and s["local_world"] == "1" for s in got)


@pytest.mark.slow
def test_ddp_plan_launches_two_processes(tmp_path):
    """A 2-GPU DDP plan's YAML starts two ranks through torchrun. (No GPU here: the stand-in runtime asks
    accelerate for the CPU, which reports the DDP world as MULTI_CPU.)"""
    plan = compile_to(tmp_path, {"strategy": "ddp"}, gpus=2, port=free_port())
    stub_runtime(tmp_path)
    got = states(tmp_path, run_launch(tmp_path, ["--config_file", f"plan/{STAGE}/accelerate.yaml", "-m",
                                                 "ftplan_runtime", f"plan/{STAGE}/args.json"], {"LC_FORCE_CPU": "1"}))
    assert promised(plan) == {"distributed_type": "MULTI_GPU", "num_processes": 2}
    assert [s["rank"] for s in got] == [0, 1]
    assert all(s["num_processes"] == 2 and s["distributed_type"] == "MULTI_CPU" and s["local_world"] == "2"
               and s["mixed_precision"] == "bf16" for s in got)
