"""Preflight: every promised property that the machine does not have is a PreflightError naming promised vs
actual and the fix (no silent fallback)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from ftplan.schemas.runtime_args import Promise

torch = pytest.importorskip("torch")

CPU = {"device": "cpu", "world_size": 1, "num_machines": 1, "distributed_type": "NO", "precision": "fp32",
       "attention": "sdpa", "kernels": "none"}
no_gpu = pytest.mark.skipif(torch.cuda.is_available(), reason="checks what happens without a GPU")


def _promise(**over) -> Promise:
    return Promise.model_validate(dict(CPU, **over))


def _err():
    from ftplan_runtime.preflight import PreflightError

    return PreflightError


@no_gpu
def test_cuda_promised_without_a_gpu():
    from ftplan_runtime.preflight import check_device

    with pytest.raises(_err(), match=r"promised device = cuda, but this process has no usable CUDA device"):
        check_device(_promise(device="cuda", precision="bf16"))


def test_fp16_on_cpu_is_refused():
    from ftplan_runtime.preflight import check_device

    with pytest.raises(_err(), match="fp16 mixed precision needs a CUDA GPU"):
        check_device(_promise(precision="fp16"))
    check_device(_promise(precision="bf16"))  # CPU bf16 autocast exists
    check_device(_promise())


@pytest.mark.parametrize("attention, device, needle", [
    ("flash_attention_2", "cpu", "needs a CUDA GPU"),
    ("flash_attention_3", "cuda", "no importable `flash_attn_interface` package"),
    ("flash_attn", "cpu", "no such backend"),
])
def test_attention_backend_must_be_available(attention, device, needle):
    from ftplan_runtime.preflight import check_attention_available

    if attention == "flash_attention_3" and __import__("importlib").util.find_spec("flash_attn_interface"):
        pytest.skip("flash-attention 3 is installed here")
    with pytest.raises(_err(), match=needle):
        check_attention_available(_promise(attention=attention, device=device))
    check_attention_available(_promise())


def test_flash_attention_2_package_is_required_on_gpu():
    """Before loading: FA2 promised on a GPU plan needs `flash_attn` importable (no hub-kernel fallback)."""
    import importlib.util

    from ftplan_runtime.preflight import check_attention_available

    if importlib.util.find_spec("flash_attn") is not None:
        pytest.skip("flash-attn is installed here")
    with pytest.raises(_err(), match="no importable `flash_attn` package"):
        check_attention_available(_promise(attention="flash_attention_2", device="cuda"))


@pytest.fixture(scope="module")
def cpu_config(tmp_path_factory):
    """A real TRL config on this CPU machine (world size 1, no distributed launcher)."""
    from trl import SFTConfig

    return SFTConfig(output_dir=str(tmp_path_factory.mktemp("cfg")), use_cpu=True, bf16=False, report_to="none")


@pytest.mark.parametrize("over, needle", [
    ({"world_size": 8}, r"promised world size = 8, but this process has 1 process"),
    ({"num_machines": 2}, r"promised number of machines = 2, but this process has 1 machine"),
    ({"distributed_type": "DEEPSPEED", "zero_stage": 3}, r"promised distributed type = DEEPSPEED, .* has NO"),
    ({"zero_stage": 3}, r"promised DeepSpeed ZeRO stage = 3, but this process has None"),
])
def test_distributed_promise_is_checked_against_accelerate_state(cpu_config, over, needle):
    from ftplan_runtime.preflight import check_distributed

    with pytest.raises(_err(), match=needle):
        check_distributed(_promise(**over), cpu_config)
    check_distributed(_promise(), cpu_config)


@pytest.fixture
def tiny(tiny_base) -> Path:
    return tiny_base


def test_attention_after_loading_must_match(tiny):
    """A model that ends up on another attention implementation than promised is refused."""
    from ftplan_runtime.model_loading import load_weights
    from ftplan_runtime.preflight import check_attention_loaded

    model = load_weights(str(tiny), dtype=torch.float32, attention="eager")
    with pytest.raises(_err(), match="promised attention = sdpa, but this process has a model running `eager`"):
        check_attention_loaded(_promise(attention="sdpa"), model)
    check_attention_loaded(_promise(attention="eager"), model)


def test_kernels_must_patch_every_expected_op(tiny):
    """`kernels: ftplan` on an architecture without a kernel mapping fails; on Llama every op is patched."""
    from transformers import GPT2Config, GPT2LMHeadModel

    from ftplan_runtime.model_loading import load_weights
    from ftplan_runtime.preflight import apply_promised_kernels

    gpt2 = GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=16, n_head=2, vocab_size=32, n_positions=16))
    with pytest.raises(_err(), match="promised kernels = ftplan, but this process has kernels not applied"):
        apply_promised_kernels(_promise(kernels="ftplan"), gpt2)
    llama = load_weights(str(tiny), dtype=torch.float32)
    report = apply_promised_kernels(_promise(kernels="ftplan"), llama)
    assert report.counts() == {"rms_norm": 5, "swiglu": 2, "rope": 2, "lora": 0}  # no LoRA layers: full weights
    assert apply_promised_kernels(_promise(), llama) is None
    from ftplan_runtime.kernels import revert_ftplan_kernels

    revert_ftplan_kernels(llama)


@no_gpu
def test_cpu_kernels_need_the_triton_interpreter_from_the_start(monkeypatch):
    """Triton imported in compiled mode on a CPU run: refused (the entry point sets TRITON_INTERPRET first)."""
    import triton  # noqa: F401 - the situation under test: triton already imported

    from ftplan_runtime.preflight import prepare_kernel_import

    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    assert "triton" in sys.modules
    with pytest.raises(_err(), match="TRITON_INTERPRET=1"):
        prepare_kernel_import(_promise(kernels="ftplan"))
    prepare_kernel_import(_promise())  # kernels: none needs nothing


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_gpu_memory_and_bf16_promises_on_a_real_gpu():
    """On a GPU: the visible memory must reach 95 % of the promised amount; bf16 must be supported."""
    from ftplan_runtime.preflight import check_device

    total_mib = torch.cuda.get_device_properties(0).total_memory // 2**20
    ok = _promise(device="cuda", precision="fp16", gpu_name="this", gpu_memory_mib=int(total_mib))
    check_device(ok)
    too_big = _promise(device="cuda", precision="fp16", gpu_name="h200-141gb", gpu_memory_mib=int(total_mib * 1.2))
    with pytest.raises(_err(), match=r"promised GPU memory \(h200-141gb\)"):
        check_device(too_big)
    if torch.cuda.is_bf16_supported():
        check_device(_promise(device="cuda", precision="bf16"))
    else:
        with pytest.raises(_err(), match="does not support bf16"):
            check_device(_promise(device="cuda", precision="bf16"))


def test_stage_and_promise_must_agree():
    """A hand-edited args file whose stage and promise disagree is refused (recompile)."""
    from ftplan.schemas.stages import SftStage

    from ftplan_runtime.preflight import StageError, check_consistent

    stage = SftStage.model_validate({"id": "sft", "kind": "sft", "data": "prep", "learning_rate": 1e-4,
                                     "precision": "fp32", "adapter": {"type": "lora"}})
    check_consistent(stage, _promise())
    with pytest.raises(StageError, match="`precision: fp32` for the stage but promises bf16"):
        check_consistent(stage, _promise(precision="bf16"))
    with pytest.raises(StageError, match="attention"):
        check_consistent(stage, _promise(attention="eager"))


def test_fused_loss_is_refused_under_zero3():
    """`kernels: ftplan` (fused cross-entropy on lm_head's full weight) cannot run with ZeRO-3's sharded head."""
    from ftplan_runtime.preflight import check_fused_loss

    with pytest.raises(_err(), match="use `kernels: none` with zero3"):
        check_fused_loss(_promise(kernels="ftplan"), 3)
    check_fused_loss(_promise(kernels="ftplan"), 2)
    check_fused_loss(_promise(), 3)


def test_fused_loss_is_refused_under_fsdp2():
    """The fused loss calls the decoder directly, so FSDP2's root unshard never runs: refused before step 1."""
    from ftplan_runtime.preflight import check_fused_loss

    with pytest.raises(_err(), match="use `kernels: none` with fsdp2"):
        check_fused_loss(_promise(kernels="ftplan", distributed_type="FSDP", world_size=2), None)
    check_fused_loss(_promise(distributed_type="FSDP", world_size=2), None)
