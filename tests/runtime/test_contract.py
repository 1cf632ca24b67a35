"""The compiler and the runtime agree on every fact they share (``ftplan/schemas/runtime_args.py``).

Each test reads one fact from both sides: the output subfolders a stage writes and the next stage reads, the
model families the GGUF exporter and the fused kernels handle, and the refusals ``check`` mirrors from the
runtime's preflight: a configuration ``check`` accepts starts, and one the preflight stops is refused by
``check`` first, with the rule that mirrors it.
"""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import pytest

from ftplan.api import check_text
from ftplan.catalog import MODELS
from ftplan.plan.args import promise
from ftplan.schemas.runtime_args import ADAPTER_SUBDIR, GGUF_FAMILIES, KERNEL_FAMILIES, MODEL_SUBDIR, RuntimeArgs

torch = pytest.importorskip("torch")

GOLDEN = Path(__file__).resolve().parents[1] / "golden"


def test_gguf_families_are_the_exporters():
    from ftplan_runtime import gguf_export

    assert set(GGUF_FAMILIES) == set(gguf_export._ARCH) == set(gguf_export.SUPPORTED_ARCHITECTURES)


def test_kernel_families_get_every_promised_op():
    """A family ``check`` accepts for ``kernels: ftplan`` is one the runtime patches whole (norms, SwiGLU,
    RoPE); a catalog family the runtime patches whole is one ``check`` accepts."""
    from ftplan_runtime.kernels.patch import ARCHITECTURES
    from ftplan_runtime.preflight import _ALL_KERNEL_OPS, _EXPECTED_KERNEL_OPS

    whole = {f for f, spec in ARCHITECTURES.items()
             if spec.swiglu_mlp and _EXPECTED_KERNEL_OPS.get(f, _ALL_KERNEL_OPS) == _ALL_KERNEL_OPS}
    assert set(KERNEL_FAMILIES) <= whole
    catalog = {m.family for m in MODELS.values()}
    assert whole & catalog <= set(KERNEL_FAMILIES)


def test_output_subfolders_are_where_the_runtime_writes():
    """Every adapter or weights path a compiled stage reads is ``<output_dir>/<id>/<subfolder>`` of the stage
    that wrote it, and that is the folder the runtime saves into (``train_common.result_dir``)."""
    from ftplan_runtime import train_common

    assert (train_common.ADAPTER_DIR, train_common.MODEL_DIR) == (ADAPTER_SUBDIR, MODEL_SUBDIR)
    seen = 0
    for args_file in sorted(GOLDEN.glob("*/plan/stages/*/args.json")):
        args = RuntimeArgs.model_validate(json.loads(args_file.read_text()))
        src = args.source
        if src is None:
            continue
        refs = [*src.merge, *([src.continue_adapter] if src.continue_adapter else [])]
        for ref in refs:
            producer = RuntimeArgs.model_validate(json.loads((args_file.parents[1] / ref.stage / "args.json")
                                                             .read_text()))
            assert ref.path == f"{producer.output_dir}/{ADAPTER_SUBDIR}", args_file
            assert str(train_common.result_dir(producer)) == ref.path, args_file
            seen += 1
        if src.weights.endswith(f"/{MODEL_SUBDIR}"):
            producer_id = Path(src.weights).parent.name
            producer = RuntimeArgs.model_validate(json.loads((args_file.parents[1] / producer_id / "args.json")
                                                             .read_text()))
            assert str(train_common.result_dir(producer)) == src.weights, args_file
            seen += 1
    assert seen >= 5


def _pipeline(*, device: str = "gpu", precision: str = "bf16", strategy: str = "auto", kernels: str = "none",
              attention: str = "sdpa", gpus: int = 2) -> str:
    hardware = "hardware: {device: cpu}" if device == "cpu" else f"hardware: {{gpu: h100-sxm-80gb, gpus_per_node: {gpus}}}"
    return f"""
name: contract
output_dir: out
model: {{base: meta-llama/Llama-3.2-1B, architecture: llama-3.2-1b, revision: main}}
{hardware}
stages:
  - id: data
    kind: data
    max_seq_len: 512
    datasets: [{{path: hf://example/chat, format: sharegpt}}]
  - id: sft
    kind: sft
    data: data
    adapter: {{type: lora, r: 8}}
    learning_rate: 1.0e-4
    micro_batch: 1
    precision: {precision}
    attention: {attention}
    kernels: {kernels}
    distributed: {strategy}
"""


def _verdict(text: str, tmp_path: Path, stage_id: str = "sft"):
    """(the codes of the stage's errors, the promise its args file would carry)."""
    result = check_text(text, "contract.yaml", tmp_path)
    assert result.ctx is not None, [d.message for d in result.diagnostics]
    facts = result.ctx.facts(stage_id)
    index, stage = next((i, s) for i, s in enumerate(result.ctx.pipeline.stages) if s.id == stage_id)
    gpu = result.ctx.gpu if facts.device == "cuda" else None
    codes = {d.code for d in result.diagnostics if d.severity.value == "error" and d.path[:2] == ("stages", index)}
    return codes, promise(stage, facts, gpu)


def _refused(fn, *args) -> bool:
    from ftplan_runtime.preflight import PreflightError

    try:
        fn(*args)
    except PreflightError:
        return True
    return False


@pytest.mark.parametrize("strategy,kernels", itertools.product(["ddp", "zero2", "zero3", "fsdp2"], ["none", "ftplan"]))
def test_fused_loss_refusals_agree(strategy, kernels, tmp_path):
    from ftplan_runtime.preflight import check_fused_loss

    codes, p = _verdict(_pipeline(strategy=strategy, kernels=kernels), tmp_path)
    assert ("FT320" in codes) == _refused(check_fused_loss, p, p.zero_stage), (strategy, kernels, codes)


PREFERENCE_KINDS = {"dpo": "kind: dpo", "simpo": "kind: dpo\n    loss_type: simpo", "kto": "kind: kto",
                    "orpo": "kind: orpo"}


def _preference_pipeline(kind: str, strategy: str, kernels: str) -> str:
    """A preference stage of ``kind`` from the base model with a new LoRA, on two H100s."""
    return f"""
name: contract
output_dir: out
model: {{base: meta-llama/Llama-3.2-1B, architecture: llama-3.2-1b, revision: main}}
hardware: {{gpu: h100-sxm-80gb, gpus_per_node: 2}}
stages:
  - id: data
    kind: data
    max_seq_len: 512
    datasets: [{{path: hf://example/prefs, format: preference}}, {{path: hf://example/kto, format: kto}}]
  - id: pref
    {PREFERENCE_KINDS[kind]}
    data: data
    adapter: {{type: lora, r: 8}}
    learning_rate: 1.0e-6
    micro_batch: 1
    kernels: {kernels}
    distributed: {strategy}
"""


@pytest.mark.parametrize("kind,strategy,kernels", list(itertools.product(
    PREFERENCE_KINDS, ["ddp", "zero2", "zero3", "fsdp2"], ["none", "ftplan"])))
def test_fused_head_refusals_agree_for_preference_stages(kind, strategy, kernels, tmp_path):
    """DPO (but SimPO) and KTO run the fused log-prob head, whose trainers call ``check_fused_loss``; ``check``
    refuses exactly those with FT320. SimPO and ORPO take TRL's full logits: their fused LoRA layers under a sharded
    strategy are FT309's, and the runtime's apply_promised_kernels refuses them (test_lora_model)."""
    from ftplan.schemas.runtime_args import fused_head

    from ftplan_runtime.preflight import check_fused_loss

    codes, p = _verdict(_preference_pipeline(kind, strategy, kernels), tmp_path, "pref")
    stage = check_text(_preference_pipeline(kind, strategy, kernels), "c.yaml", tmp_path).ctx.pipeline.stages[1]
    assert (fused_head(stage) == "logprobs") == (kind in ("dpo", "kto"))
    runtime_refuses = fused_head(stage) is not None and _refused(check_fused_loss, p, p.zero_stage)
    assert ("FT320" in codes) == runtime_refuses, (kind, strategy, kernels, codes)
    sharded_lora = kernels == "ftplan" and strategy in ("zero3", "fsdp2")
    assert ("FT309" in codes) == (sharded_lora and not runtime_refuses), (kind, strategy, kernels, codes)


def test_the_runtime_runs_the_fused_head_the_contract_names():
    """The trainers of the stages ``fused_head`` gives the log-prob head install it; the others keep TRL's logits."""
    from ftplan.schemas.runtime_args import fused_head
    from ftplan.schemas.stages import DpoStage, KtoStage, OrpoStage

    from ftplan_runtime.dpo import FtplanDPOTrainer, dpo_spec
    from ftplan_runtime.kto import FtplanKTOTrainer
    from ftplan_runtime.logprob_head import FusedLogprobTrainerMixin
    from ftplan_runtime.orpo import FtplanORPOTrainer
    from ftplan_runtime.simpo import FtplanCPOTrainer, make_simpo_trainer

    common = {"id": "p", "data": "d", "learning_rate": 1e-6, "adapter": {"type": "lora"}}
    runtime = {"dpo": FtplanDPOTrainer, "kto": FtplanKTOTrainer, "orpo": FtplanORPOTrainer,
               "simpo": FtplanCPOTrainer}
    stages = {"dpo": DpoStage.model_validate({"kind": "dpo", **common}),
              "kto": KtoStage.model_validate({"kind": "kto", **common}),
              "orpo": OrpoStage.model_validate({"kind": "orpo", **common}),
              "simpo": DpoStage.model_validate({"kind": "dpo", "loss_type": "simpo", **common})}
    for name, stage in stages.items():
        assert (fused_head(stage) == "logprobs") == issubclass(runtime[name], FusedLogprobTrainerMixin), name
    args = RuntimeArgs.model_validate({
        "pipeline": "t", "model": {"base": "m"}, "output_dir": "o", "stage": stages["simpo"].model_dump(),
        "promise": {"device": "cpu", "world_size": 1, "num_machines": 1, "distributed_type": "NO",
                    "precision": "fp32", "attention": "sdpa", "kernels": "none"}})
    assert dpo_spec(args).make_trainer is make_simpo_trainer  # SimPO runs on the CPO trainer


@pytest.mark.skipif(torch.cuda.is_available(), reason="the CPU side of the device check")
@pytest.mark.parametrize("precision", ["fp32", "bf16", "fp16"])
def test_cpu_precision_refusals_agree(precision, tmp_path):
    from ftplan_runtime.preflight import check_device

    codes, p = _verdict(_pipeline(device="cpu", precision=precision, gpus=0), tmp_path)
    assert ("FT323" in codes) == _refused(check_device, p), (precision, codes)


@pytest.mark.parametrize("attention", ["sdpa", "eager", "flash_attention_2", "flash_attention_3"])
def test_cpu_attention_refusals_agree(attention, tmp_path):
    """A backend the preflight refuses on the CPU is refused by ``check`` (FT302); ``check`` refuses FlexAttention
    on the CPU as well, whose backward fails only later, at the first step."""
    from ftplan_runtime.preflight import check_attention_available

    codes, p = _verdict(_pipeline(device="cpu", precision="fp32", attention=attention, gpus=0), tmp_path)
    assert ("FT302" in codes) == _refused(check_attention_available, p), (attention, codes)


@pytest.mark.parametrize("strategy,precision", itertools.product(["auto", "zero2", "zero3", "fsdp2"],
                                                                 ["bf16", "fp16", "fp32"]))
def test_sharded_qlora_storage_and_loading_agree(strategy, precision, tmp_path):
    """A QLoRA stage's 4-bit storage and where it loads, as the contract gives them to the runtime
    (``quant_storage``, ``loads_4bit_on_host``), are what the estimator counts: codes in the compute dtype exactly
    when it shards the 4-bit base (``Resolved.sharded_weights``), a host-memory load exactly under FSDP2
    (``states.host_load``), and the whole 4-bit model on each GPU while it loads exactly under ZeRO-3
    (``states.model_load``); and ``check`` accepts the plan (FT318 is gone; FT319 is for preference stages)."""
    from ftplan.estimate import states
    from ftplan.estimate.pipeline import stage_setup
    from ftplan.schemas.runtime_args import loads_4bit_on_host, quant_storage
    from ftplan_runtime.model_loading import torch_dtype

    text = _pipeline(strategy=strategy, precision=precision).replace("{type: lora, r: 8}", "{type: qlora, r: 8}")
    result = check_text(text, "contract.yaml", tmp_path)
    assert result.ctx is not None
    codes = {d.code for d in result.diagnostics if d.severity.value == "error"}
    assert not codes & {"FT318", "FT319"}, codes
    facts = result.ctx.facts("sft")
    p = promise(result.ctx.pipeline.stages[1], facts, result.ctx.gpu)
    r = stage_setup(result.ctx, 1)
    assert r is not None and r.quantized
    storage = quant_storage(p)
    assert (storage != "uint8") == r.sharded_weights == (strategy in ("zero3", "fsdp2"))
    if r.sharded_weights:
        assert getattr(torch, storage) == torch_dtype(precision)  # the dtype the runtime computes in
    assert loads_4bit_on_host(p) == (states.host_load(r) > 0) == (strategy == "fsdp2")
    assert bool(states.model_load(r)) == (r.sharded_weights and not loads_4bit_on_host(p))
