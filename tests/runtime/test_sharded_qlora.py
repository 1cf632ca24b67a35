"""Sharded QLoRA (the FSDP-QLoRA recipe) on the CPU: a 4-bit base whose packed codes are stored in the compute dtype
(the contract's ``quant_storage``), partitioned over two gloo processes by FSDP2 and by DeepSpeed ZeRO-3, trains to
the loss and LoRA weights of one unsharded process.

What runs here, on the pinned stack (torch 2.13, transformers 5.24, peft 0.21, accelerate 1.15, DeepSpeed 0.19.8,
bitsandbytes 0.50.2):

* bitsandbytes' CPU backend quantizes and multiplies NF4 with the same packed layout as its CUDA kernels, for any
  storage dtype: the codes stored as bf16 or fp32 are byte for byte the ``uint8`` ones, and compute the same logits and
  adapter gradients;
* the runtime's ``load_for_training`` gives a compiled sharded plan's stage that storage (checked by the preflight),
  loads the base in host memory under FSDP2 and makes every trainable parameter fp32 there;
* ``torch.distributed.fsdp.fully_shard`` shards on a CPU device mesh: accelerate's own ``fsdp2_prepare_model`` (what
  ``Accelerator.prepare`` runs under FSDP2), with the FSDP plugin accelerate builds from the compiled accelerate.yaml's
  launch environment, splits every 4-bit weight in two; with ``uint8`` codes accelerate leaves them whole on each
  process instead (``ignored_params``), which is why the runtime stores them in the compute dtype;
* DeepSpeed ZeRO-3 over gloo with the compiled deepspeed.json partitions every 4-bit weight the same way (a
  ``Params4bit`` keeps its quantization state while ZeRO-3 swaps its data for the partition and back);
* both train 3 steps (non-reentrant gradient checkpointing, AdamW, clipping) on half of a fixed batch each: fp32
  plans give the one-process loss and LoRA weights within 1e-5; a bf16 FSDP2 plan, whose mixed-precision policy
  computes the adapters in bf16, matches FSDP2 on one process within bf16's resolution (the loss within 0.02, the
  LoRA weights within 3 % together: 1.2 % measured); each process holds exactly the bytes of 4-bit codes the
  estimate counts per GPU.

What does not run here: accelerate does not apply FSDP2 or DeepSpeed to a group of CPU processes (it reports it as
MULTI_CPU: FT306), so the Trainer's own ``accelerate launch`` path, bitsandbytes' CUDA kernels, NCCL, CPU offload of
the shards and every memory figure are measured on GPUs only. One CPU-only wrinkle: in eval mode bitsandbytes' CPU
backend repacks a 4-bit weight in place for its AVX-512 kernel on a no-grad forward, which FSDP2's next all-gather
would undo; the worker trains in train mode, as the Trainer does.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

torch = pytest.importorskip("torch")
pytest.importorskip("bitsandbytes")

from ftplan.api import check_file, plan_files  # noqa: E402
from ftplan.schemas.runtime_args import RuntimeArgs, quant_storage  # noqa: E402

_spec = importlib.util.spec_from_file_location("ftplan_multiprocess_plans", Path(__file__).with_name(
    "multiprocess_plans.py"))
plans = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(plans)

WORKER = Path(__file__).with_name("sharded_qlora_worker.py")
STEPS, BATCH, SEQ = 3, 4, 24


@pytest.fixture(scope="module")
def project(tmp_path_factory, tiny_base) -> Path:
    return plans.make_project(tmp_path_factory.mktemp("sharded-qlora"), tiny_base)


def compile_stage(root: Path, strategy: str, precision: str, *, gpus: int = 2, stage: str | None = None) -> Path:
    """Compile a data -> QLoRA SFT pipeline for ``gpus`` H100s sharded with ``strategy`` at ``precision`` into
    ``root/plan-<stage>``; the stage's folder in the plan."""
    stage = (stage or f"{strategy}_{precision}_{gpus}").replace("-", "_")
    path = plans.pipeline(root, f"{stage}.yaml", stage=stage,
                          hardware={"device": "cuda", "gpu": "h100-sxm-80gb", "gpus_per_node": gpus},
                          adapter={"type": "qlora", "r": 8, "alpha": 16, "dropout": 0.0}, distributed=strategy,
                          precision=precision, gradient_checkpointing=True, max_steps=STEPS, micro_batch=BATCH // gpus)
    result = check_file(path)
    assert result.ok, [d.message for d in result.diagnostics if d.severity.value == "error"]
    for rel, text in plan_files(result, f"plan-{stage}").items():
        (root / f"plan-{stage}" / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / f"plan-{stage}" / rel).write_text(text)
    return root / f"plan-{stage}" / "stages" / stage


def launch_env(root: Path, stage_dir: Path) -> dict[str, str]:
    """The ``ACCELERATE_*``/``FSDP_*`` environment ``accelerate launch --config_file <stage>/accelerate.yaml`` gives
    the training processes (accelerate's own argument handling, as the compiled run.sh invokes it)."""
    from accelerate.commands import launch
    from accelerate.utils import launch as launch_utils

    cwd = os.getcwd()
    os.chdir(root)
    try:
        argv = ["--config_file", str(stage_dir.relative_to(root) / "accelerate.yaml"), "-m", "ftplan_runtime",
                str(stage_dir.relative_to(root) / "args.json")]
        args, _, _ = launch._validate_launch_command(launch.launch_command_parser().parse_args(argv))
        env = launch_utils.prepare_multi_gpu_env(args)
    finally:
        os.chdir(cwd)
    return {k: v for k, v in env.items() if k.startswith(("ACCELERATE_", "FSDP_"))}


def run(root: Path, stage_dir: Path, strategy: str, world: int, tag: str, **extra) -> dict:
    """Run the worker on ``world`` processes from ``root``; what rank 0 wrote."""
    out, store = root / f"{tag}.pt", root / f"{tag}.store"
    store.unlink(missing_ok=True)
    env = {**plans.script_env(DS_ACCELERATOR="cpu"), "PYTHONPATH": os.pathsep.join(sys.path)}
    vocab = json.loads((root / "model" / "config.json").read_text())["vocab_size"]
    procs = []
    for rank in range(world):
        spec = {"args": str(stage_dir / "args.json"), "strategy": strategy, "rank": rank, "world": world,
                "store": str(store), "out": str(out), "steps": STEPS, "batch": BATCH, "seq": SEQ, "vocab": vocab,
                "deepspeed": str(stage_dir / "deepspeed.json"), **extra}
        spec_file = root / f"{tag}-{rank}.json"
        spec_file.write_text(json.dumps(spec))
        procs.append(subprocess.Popen([sys.executable, str(WORKER), str(spec_file)], cwd=root, env=env,
                                      stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
    try:
        logs = [p.communicate(timeout=600)[0] for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    for p, log in zip(procs, logs):
        assert p.returncode == 0, log[-6000:]
    return torch.load(out)


def assert_same_training(got: dict, want: dict, tol: float, *, weights_rel: float | None = None) -> None:
    """The same loss at every step (within ``tol``) and the same trained LoRA weights: every element within ``tol``,
    or with ``weights_rel`` all of them together within that relative (Frobenius) error: in bf16, AdamW's first
    steps move a weight by about the learning rate whatever its gradient's size, so a gradient rounded to the other
    side of zero moves single elements a step apart."""
    assert len(got["losses"]) == STEPS and got["losses"] == pytest.approx(want["losses"], abs=tol)
    assert got["lora"] and set(got["lora"]) == set(want["lora"])
    if weights_rel is None:
        worst = max((got["lora"][k] - want["lora"][k]).abs().max().item() for k in want["lora"])
        assert worst <= tol, worst
    else:
        diff = sum(((got["lora"][k] - want["lora"][k]) ** 2).sum() for k in want["lora"])
        rel = (diff / sum((w ** 2).sum() for w in want["lora"].values())).sqrt().item()
        assert rel <= weights_rel, rel
    trained = [k for k in want["lora"] if "lora_B" in k]
    assert trained and all(want["lora"][k].abs().max() > 0 for k in trained)  # the adapters moved


def codes_term(root: Path, stage_dir: Path) -> int:
    """The estimate's per-GPU bytes of the 4-bit codes (``base weights (NF4)``) for the compiled stage."""
    stage = stage_dir.name
    estimate = check_file(root / f"{stage}.yaml").estimates[stage]
    return next(t.bytes for t in estimate.terms if t.name == "base weights (NF4)")


# --- storage ------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_codes_stored_in_the_compute_dtype_are_the_uint8_codes(tiny_base, seeded_lora, precision):
    """The same model loaded with the codes stored as bitsandbytes' ``uint8`` and as the compute dtype: byte-identical
    codes, the same logits, the same adapter gradients."""
    from peft import get_peft_model

    from ftplan.schemas.adapters import LoraAdapter
    from ftplan_runtime.model_loading import load_weights, lora_config, torch_dtype

    dtype = torch_dtype(precision)
    storage = {"fp32": "float32", "bf16": "bfloat16"}[precision]
    ids = torch.randint(6, 200, (2, 16), generator=torch.Generator().manual_seed(3))
    runs = {}
    for name in ("uint8", storage):
        model = load_weights(str(tiny_base), dtype=dtype, quantize_4bit=True, device_map={"": "cpu"}, storage=name)
        model = get_peft_model(model, lora_config(LoraAdapter(type="qlora", r=4, alpha=8)))
        seeded_lora(model, seed=1, b_scale=0.05)
        model.train()
        codes = {n: p for n, p in model.named_parameters() if type(p).__name__ == "Params4bit"}
        assert codes and {str(p.dtype) for p in codes.values()} == {f"torch.{name}"}
        out = model(input_ids=ids, labels=ids)
        out.loss.backward()
        runs[name] = (codes, out.logits.detach(), {n: p.grad for n, p in model.named_parameters() if p.requires_grad})
    (codes8, logits8, grads8), (codes, logits, grads) = runs["uint8"], runs[storage]
    for n, p in codes.items():
        assert p.shape[0] * p.element_size() == codes8[n].numel()  # the same bytes, fewer and wider elements
        assert torch.equal(p.detach().contiguous().view(torch.uint8).flatten(), codes8[n].detach().flatten())
    assert torch.equal(logits, logits8)
    assert grads and all(torch.equal(grads[n], grads8[n]) for n in grads8)


@pytest.mark.parametrize("strategy, precision", [("fsdp2", "bf16"), ("fsdp2", "fp32"), ("zero3", "bf16"),
                                                 ("zero2", "bf16")])
def test_the_runtime_loads_a_plan_with_its_storage(project, strategy, precision):
    """``load_for_training`` on a compiled plan's args: the 4-bit codes in the contract's storage (the compute dtype
    when the plan shards, else uint8); under FSDP2 loaded on the host with every trainable parameter fp32."""
    from ftplan_runtime.model_loading import load_for_training

    stage_dir = compile_stage(project, strategy, precision, stage=f"load-{strategy}-{precision}")
    args = RuntimeArgs.model_validate_json((stage_dir / "args.json").read_text())
    storage = quant_storage(args.promise)
    assert storage == ({"bf16": "bfloat16", "fp32": "float32"}[precision] if strategy != "zero2" else "uint8")
    cwd = os.getcwd()
    os.chdir(project)
    try:
        model = load_for_training(args, zero_stage=3 if strategy == "zero3" else None, device_map={"": "cpu"}).model
    finally:
        os.chdir(cwd)
    codes = [p for p in model.parameters() if type(p).__name__ == "Params4bit"]
    assert codes and {str(p.dtype) for p in codes} == {f"torch.{storage}"} and {p.device.type for p in codes} == {"cpu"}
    trainable = {p.dtype for p in model.parameters() if p.requires_grad}
    assert trainable == {torch.float32}


def test_the_preflight_refuses_codes_in_another_dtype(tiny_base):
    from ftplan.schemas.runtime_args import Promise
    from ftplan_runtime.model_loading import load_weights
    from ftplan_runtime.preflight import PreflightError, check_4bit_storage

    promise = Promise(device="cuda", world_size=2, num_machines=1, distributed_type="FSDP", precision="bf16",
                      attention="sdpa", kernels="none")
    model = load_weights(str(tiny_base), dtype=torch.bfloat16, quantize_4bit=True, device_map={"": "cpu"})
    with pytest.raises(PreflightError, match="4-bit storage dtype = bfloat16.*uint8.*compute dtype"):
        check_4bit_storage(promise, model, quant_storage(promise))
    check_4bit_storage(promise, model, "uint8")
    with pytest.raises(PreflightError, match="without 4-bit weights"):
        check_4bit_storage(promise, load_weights(str(tiny_base), dtype=torch.bfloat16), "bfloat16")


# --- two processes ------------------------------------------------------------------------------------------------

@pytest.mark.slow
def test_fsdp2_shards_the_4bit_base_and_trains_as_one_process(project):
    """fp32 plan: FSDP2 over two processes against one unsharded process on the whole batch."""
    stage_dir = compile_stage(project, "fsdp2", "fp32")
    env = launch_env(project, stage_dir)
    assert env["ACCELERATE_USE_FSDP"] == "true" and env["FSDP_VERSION"] == "2"
    sharded = run(project, stage_dir, "fsdp2", 2, "fsdp2-fp32", env=env)
    alone = run(project, stage_dir, "none", 1, "fsdp2-fp32-alone")
    assert_same_training(sharded, alone, 1e-5)
    four_bit = sharded["four_bit"]
    assert len(four_bit) == 14  # 2 layers × (q, k, v, o, gate, up, down)
    assert all(dtype == "float32" and held * 2 == whole for dtype, held, whole in four_bit.values()), four_bit


@pytest.mark.slow
def test_fsdp2_bf16_codes_shard_and_uint8_codes_stay_whole(project):
    """bf16 plan: the codes stored as bf16 are split over the two processes and train as FSDP2 does on one process
    (the same mixed-precision policy); a copy with bitsandbytes' uint8 codes keeps every 4-bit weight whole on each."""
    stage_dir = compile_stage(project, "fsdp2", "bf16")
    env = launch_env(project, stage_dir)
    assert env["ACCELERATE_MIXED_PRECISION"] == "bf16"
    sharded = run(project, stage_dir, "fsdp2", 2, "fsdp2-bf16", env=env, contrast_uint8=True)
    alone = run(project, stage_dir, "fsdp2", 1, "fsdp2-bf16-alone", env=env)
    assert_same_training(sharded, alone, 2e-2, weights_rel=0.03)
    assert all(dtype == "bfloat16" and held * 2 == whole for dtype, held, whole in sharded["four_bit"].values())
    assert codes_term(project, stage_dir) == sum(held * 2 for _, held, _ in sharded["four_bit"].values())
    contrast = sharded["contrast"]
    assert contrast and all(dtype == "uint8" and held == whole for dtype, held, whole in contrast.values()), contrast


@pytest.mark.slow
def test_zero3_partitions_the_4bit_base_and_trains_as_one_process(project):
    """fp32 plan: DeepSpeed ZeRO-3 with the compiled deepspeed.json over two processes against one unsharded
    process; each process keeps half of every 4-bit weight as its partition."""
    pytest.importorskip("deepspeed")
    stage_dir = compile_stage(project, "zero3", "fp32")
    config = json.loads((stage_dir / "deepspeed.json").read_text())
    assert config["zero_optimization"]["stage"] == 3 and config["train_batch_size"] == BATCH
    sharded = run(project, stage_dir, "zero3", 2, "zero3-fp32")
    alone = run(project, stage_dir, "none", 1, "zero3-fp32-alone")
    assert_same_training(sharded, alone, 1e-5)
    four_bit = sharded["four_bit"]
    assert len(four_bit) == 14
    assert all(dtype == "float32" and held * 2 == whole for dtype, held, whole in four_bit.values()), four_bit
    assert codes_term(project, stage_dir) == sum(held * 4 for _, held, _ in four_bit.values())


def test_the_tiny_pipeline_compiles_for_every_sharded_strategy(project):
    """The plans these tests run are the ones ``ftplan compile`` writes: sharded QLoRA checks clean."""
    for strategy in ("fsdp2", "zero3"):
        stage_dir = compile_stage(project, strategy, "bf16", stage=f"compile-{strategy}")
        doc = yaml.safe_load((stage_dir / "accelerate.yaml").read_text())
        assert doc["distributed_type"] == ("FSDP" if strategy == "fsdp2" else "DEEPSPEED")
