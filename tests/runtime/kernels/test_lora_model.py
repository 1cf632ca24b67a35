"""The lora op on tiny HF models of every covered family: a patched PEFT model's loss and every LoRA gradient
equal the unpatched model's, for LoRA and QLoRA (bitsandbytes NF4, which quantises on the CPU), with gradient
checkpointing, with the adapter disabled (DPO's reference), and the refusals of what the fused functions cannot run."""

import copy

import pytest
import torch
from peft import LoraConfig, get_peft_model
from transformers import (BitsAndBytesConfig, LlamaConfig, LlamaForCausalLM, MistralConfig, MistralForCausalLM,
                          Qwen2Config, Qwen2ForCausalLM, Qwen3Config, Qwen3ForCausalLM)

from ftplan_runtime.kernels import KernelPatchError, apply_ftplan_kernels, causal_lm_loss, revert_ftplan_kernels

VOCAB, LAYERS = 211, 2
DIMS = dict(hidden_size=64, intermediate_size=96, num_hidden_layers=LAYERS, num_attention_heads=4,
            num_key_value_heads=2, vocab_size=VOCAB, max_position_embeddings=64, attn_implementation="eager")
FAMILIES = {
    "llama": (LlamaForCausalLM, LlamaConfig, {}),
    "mistral": (MistralForCausalLM, MistralConfig, {}),
    "qwen2": (Qwen2ForCausalLM, Qwen2Config, {}),  # q/k/v carry a bias
    "qwen3": (Qwen3ForCausalLM, Qwen3Config, {"head_dim": 16}),  # q/k norms after the projections
}
ALL_LINEAR = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


@pytest.fixture
def patched():
    """Collects patched models and reverts them (incl. the process-wide RoPE rebinding) after the test."""
    models = []
    yield models
    for model in models:
        revert_ftplan_kernels(model)


def tiny(family: str, dtype=torch.float32):
    cls, config, extra = FAMILIES[family]
    model = cls(config(**DIMS, **extra))
    for name, p in model.named_parameters():  # non-zero biases, so a dropped bias would show
        if name.endswith("bias"):
            torch.nn.init.normal_(p, std=0.1)
    return model.to(dtype)


def lora(model, targets=ALL_LINEAR, **kwargs):
    # init_lora_weights=False: B is random too, so every adapter changes the output and has non-zero grads
    config = dict(r=4, lora_alpha=8, target_modules=targets, lora_dropout=0.0, init_lora_weights=False)
    torch.manual_seed(1)
    return get_peft_model(model, LoraConfig(**{**config, **kwargs}))


def batch(seq=9):
    input_ids = torch.randint(0, VOCAB, (2, seq))
    labels = input_ids.clone()
    labels[0, :3] = -100
    attention_mask = torch.ones_like(input_ids)
    attention_mask[1, :2] = 0
    labels[1, :2] = -100
    return input_ids, labels, attention_mask


def loss_and_grads(model, data, fused_loss=False, autocast=None):
    input_ids, labels, attention_mask = data
    model.zero_grad(set_to_none=True)
    with torch.autocast(input_ids.device.type, dtype=autocast, enabled=autocast is not None):
        if fused_loss:
            loss = causal_lm_loss(model, input_ids, labels, attention_mask)
        else:
            loss = model(input_ids=input_ids, attention_mask=attention_mask, labels=labels).loss
    loss.backward()
    return loss.detach().float(), {n: p.grad.float().clone() for n, p in model.named_parameters() if p.requires_grad}


def assert_same(result, reference, atol=2e-5, rtol=1e-4):
    (loss, grads), (ref_loss, ref_grads) = result, reference
    torch.testing.assert_close(loss, ref_loss, atol=atol, rtol=rtol)
    assert grads.keys() == ref_grads.keys() and all("lora_" in n for n in grads)
    for name in grads:
        torch.testing.assert_close(grads[name], ref_grads[name], atol=atol, rtol=rtol, msg=name)


def fused_layers(model):
    """Names of modules running a fused LoRA forward."""
    return sorted(n for n, m in model.named_modules() if getattr(m, "_ftplan_kernel", "").startswith(("lora",
                                                                                                        "swiglu+")))


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_lora_loss_and_grads_match_unpatched(patched, family):
    model = lora(tiny(family))
    data = batch()
    reference = loss_and_grads(model, data)
    patched.append(model)
    report = apply_ftplan_kernels(model)
    assert report.lora == len(ALL_LINEAR) * LAYERS and report.lora_unfused == 0
    assert report.require("rms_norm", "swiglu", "rope", "lora") is report
    layer = "base_model.model.model.layers.0"
    assert f"{layer}.self_attn" in fused_layers(model) and f"{layer}.mlp" in fused_layers(model)
    assert_same(loss_and_grads(model, data, fused_loss=True), reference)
    assert_same(loss_and_grads(model, data), reference)  # HF's loss over the patched modules


@pytest.mark.parametrize("reentrant", [False, True], ids=["non-reentrant", "reentrant"])
def test_gradient_checkpointing(patched, reentrant):
    base = tiny("llama")
    base.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": reentrant})
    model = lora(base)
    model.train()
    data = batch()
    reference = loss_and_grads(model, data)
    patched.append(model)
    apply_ftplan_kernels(model)
    assert_same(loss_and_grads(model, data, fused_loss=True), reference)


def test_default_peft_targets_q_and_v(patched):
    model = lora(tiny("qwen2"), targets=["q_proj", "v_proj"])
    data = batch()
    reference = loss_and_grads(model, data)
    patched.append(model)
    report = apply_ftplan_kernels(model)
    assert report.lora == 2 * LAYERS  # q and v grouped; k runs as the plain Linear it is; the MLP has no adapter
    assert "base_model.model.model.layers.1.mlp" not in fused_layers(model)
    assert_same(loss_and_grads(model, data, fused_loss=True), reference)


def test_disabled_adapter_runs_the_base_model(patched):
    """DPO's live reference is the policy with its adapter disabled: the patched model must give the base's loss."""
    model = lora(tiny("llama"))
    data = batch()
    with torch.no_grad(), model.disable_adapter():
        want = model(input_ids=data[0], attention_mask=data[2], labels=data[1]).loss
    patched.append(model)
    apply_ftplan_kernels(model)
    with torch.no_grad(), model.disable_adapter():
        got = causal_lm_loss(model, *data)
    with torch.no_grad():
        with_adapter = causal_lm_loss(model, *data)
    torch.testing.assert_close(got, want, atol=2e-5, rtol=1e-4)
    assert abs(float(with_adapter - want)) > 1e-3  # the adapter is back on after the context


def tensor_device():
    """Where the conftest creates the tests' tensors: the GPU when there is one."""
    return 0 if torch.cuda.is_available() else "cpu"


def qlora(tmp_path, family: str, dtype):
    """A tiny model saved in `dtype` and loaded back as bitsandbytes NF4 (double quant) with a LoRA adapter."""
    folder = tmp_path / f"{family}-{dtype}"
    if not folder.exists():
        tiny(family, dtype).save_pretrained(folder)
    cls = FAMILIES[family][0]
    quant = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                               bnb_4bit_compute_dtype=dtype)
    base = cls.from_pretrained(folder, dtype=dtype, quantization_config=quant, device_map={"": tensor_device()})
    base.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model = lora(base)
    model.train()
    return model


@pytest.mark.slow
@pytest.mark.parametrize("family", ["llama", "qwen2"])
def test_qlora_fp32_matches_unpatched_under_checkpointing(patched, tmp_path, family):
    """fp32 compute: the NF4 weights dequantise exactly as bitsandbytes does, so the match is tight; gradient
    checkpointing re-runs every forward, dequantising into the shared buffer again."""
    pytest.importorskip("bitsandbytes")
    reference_model = qlora(tmp_path, family, torch.float32)
    assert type(reference_model.base_model.model.model.layers[0].mlp.up_proj.base_layer).__name__ == "Linear4bit"
    data = batch()
    reference = loss_and_grads(reference_model, data)
    model = qlora(tmp_path, family, torch.float32)
    patched.append(model)
    report = apply_ftplan_kernels(model)
    assert report.lora == len(ALL_LINEAR) * LAYERS and report.lora_unfused == 0
    assert_same(loss_and_grads(model, data, fused_loss=True), reference, atol=1e-4, rtol=1e-3)


@pytest.mark.slow
def test_qlora_bf16_autocast_as_accurate_as_unpatched(patched, tmp_path):
    """The runtime's QLoRA setting: bf16 base parts and compute under autocast, fp32 adapters. Two bf16 paths
    differ by their rounding (a few percent on a layer's gradient); both are measured against the same NF4
    model in fp32 (the bf16 checkpoint upcasts exactly and quantises to the same codes)."""
    pytest.importorskip("bitsandbytes")
    data = batch()
    unpatched = loss_and_grads(qlora(tmp_path, "llama", torch.bfloat16), data, autocast=torch.bfloat16)
    model = qlora(tmp_path, "llama", torch.bfloat16)
    patched.append(model)
    apply_ftplan_kernels(model)
    fused = loss_and_grads(model, data, fused_loss=True, autocast=torch.bfloat16)
    assert all(g.dtype == torch.float32 for g in fused[1].values())

    fp32 = get_peft_model_from(tmp_path / "llama-torch.bfloat16", compute=torch.float32)
    truth = loss_and_grads(fp32, data)

    def total_error(result):
        got = torch.cat([g.reshape(-1) for g in result[1].values()])
        want = torch.cat([g.reshape(-1) for g in truth[1].values()])
        return float((got - want).norm() / want.norm())

    loss_error = {name: abs(float(result[0] - truth[0])) for name, result in (("fused", fused),
                                                                                ("unpatched", unpatched))}
    grad_error = {"fused": total_error(fused), "unpatched": total_error(unpatched)}
    summary = f"loss |error| {loss_error}, gradient error {grad_error}, fp32 loss {float(truth[0]):.5f}"
    assert loss_error["fused"] <= max(1e-3 * float(truth[0]), 1.5 * loss_error["unpatched"]), summary
    assert grad_error["fused"] <= 1.5 * grad_error["unpatched"], summary


def get_peft_model_from(folder, compute):
    """The saved tiny Llama loaded as NF4 with `compute` dtype everywhere, with the same LoRA adapter."""
    quant = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                               bnb_4bit_compute_dtype=compute)
    model = lora(LlamaForCausalLM.from_pretrained(folder, dtype=compute, quantization_config=quant,
                                                  device_map={"": tensor_device()}))
    model.train()
    return model


def test_unsupported_adapters_are_refused_not_run_unfused(patched):
    for kwargs, why in (({"lora_dropout": 0.1}, "dropout 0.1"), ({"use_dora": True}, "DoRA"),
                        ({"lora_bias": True}, "LoRA bias")):
        model = lora(tiny("llama"), **kwargs)
        patched.append(model)
        with pytest.raises(KernelPatchError, match="lora") as raised:
            apply_ftplan_kernels(model)
        assert why in str(raised.value)
        report = apply_ftplan_kernels(model, strict=False)
        assert report.lora == 0 and report.lora_unfused == len(ALL_LINEAR) * LAYERS
        assert apply_ftplan_kernels(model, lora=False).counts()["lora"] == 0  # switched off: PEFT's layers
    model = lora(tiny("llama"))
    patched.append(model)
    model.base_model.model.model.layers[1].mlp.up_proj.lora_B["default"].weight.ds_id = 7  # as ZeRO-3 marks them
    with pytest.raises(KernelPatchError, match="sharded"):
        apply_ftplan_kernels(model)


def test_lora_layers_elsewhere_are_noted(patched):
    model = lora(tiny("llama"), targets=["q_proj", "v_proj", "lm_head"])
    patched.append(model)
    report = apply_ftplan_kernels(model)
    assert report.lora == 2 * LAYERS
    assert any("outside the attention and MLP projections" in n and "lm_head" in n for n in report.notes)


def test_preflight_requires_the_lora_op_on_a_lora_model(patched):
    from ftplan.schemas.runtime_args import Promise

    from ftplan_runtime.preflight import PreflightError, apply_promised_kernels

    promise = Promise(device="cpu", world_size=1, num_machines=1, distributed_type="NO", precision="fp32",
                      attention="eager", kernels="ftplan")
    model = lora(tiny("llama"))
    patched.append(model)
    assert apply_promised_kernels(promise, model).counts()["lora"] == len(ALL_LINEAR) * LAYERS
    dropout = lora(tiny("llama"), lora_dropout=0.05)
    patched.append(dropout)
    with pytest.raises(PreflightError, match=r"promised kernels = ftplan.*dropout 0.05.*`dropout: 0`"):
        apply_promised_kernels(promise, dropout)
    for sharded in ({"distributed_type": "DEEPSPEED", "zero_stage": 3}, {"distributed_type": "FSDP"}):
        with pytest.raises(PreflightError, match="sharded"):  # check says FT309 (FT320 for SFT)
            apply_promised_kernels(promise.model_copy(update=sharded), lora(tiny("llama")))
    full = tiny("llama")
    patched.append(full)
    assert apply_promised_kernels(promise, copy.deepcopy(full)).counts()["lora"] == 0  # full weights: no lora op
