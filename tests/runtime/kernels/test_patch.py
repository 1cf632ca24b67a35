"""apply_ftplan_kernels / causal_lm_loss on tiny random HF models, with and without a PEFT LoRA wrapper."""

import copy
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from peft import LoraConfig, get_peft_model
from transformers import GemmaConfig, GemmaForCausalLM, GPT2Config, GPT2LMHeadModel
from transformers import LlamaConfig, LlamaForCausalLM, Qwen3Config, Qwen3ForCausalLM

from ftplan_runtime.kernels import KernelPatchError, apply_ftplan_kernels, causal_lm_loss, revert_ftplan_kernels

VOCAB = 301
LAYERS = 2
DIMS = dict(
    hidden_size=64,
    intermediate_size=96,
    num_hidden_layers=LAYERS,
    num_attention_heads=4,
    num_key_value_heads=2,
    vocab_size=VOCAB,
    max_position_embeddings=64,
    attn_implementation="eager",
)
LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


@pytest.fixture
def patched():
    """Collects patched models and reverts them (incl. the process-wide RoPE rebinding) after the test."""
    models = []
    yield models
    for model in models:
        revert_ftplan_kernels(model)


def tiny_llama():
    return LlamaForCausalLM(LlamaConfig(**DIMS)).float()


def lora(model):
    # init_lora_weights=False: B is random too, so the LoRA path changes the output and has non-zero grads
    config = LoraConfig(r=4, lora_alpha=8, target_modules=LORA_TARGETS, lora_dropout=0.0, init_lora_weights=False)
    return get_peft_model(model, config)


def batch(seq=9):
    input_ids = torch.randint(0, VOCAB, (2, seq))
    labels = input_ids.clone()
    labels[0, :3] = -100  # prompt tokens
    attention_mask = torch.ones_like(input_ids)
    attention_mask[1, :2] = 0  # left padding
    labels[1, :2] = -100
    return input_ids, labels, attention_mask


def loss_and_grads(model, input_ids, labels, attention_mask, fused_loss):
    model.zero_grad(set_to_none=True)
    if fused_loss:
        loss = causal_lm_loss(model, input_ids, labels, attention_mask)
    else:
        loss = model(input_ids=input_ids, attention_mask=attention_mask, labels=labels).loss
    loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}
    return loss.detach(), grads


def assert_same(result, reference, atol=2e-5, rtol=1e-4):
    loss, grads = result
    ref_loss, ref_grads = reference
    torch.testing.assert_close(loss, ref_loss, atol=atol, rtol=rtol)
    assert grads.keys() == ref_grads.keys()
    for name in grads:
        torch.testing.assert_close(grads[name], ref_grads[name], atol=atol, rtol=rtol, msg=name)


def test_report_counts_idempotence_and_revert(patched):
    import transformers.models.llama.modeling_llama as modeling_llama

    original_rope = modeling_llama.apply_rotary_pos_emb
    model = tiny_llama()
    patched.append(model)
    report = apply_ftplan_kernels(model)
    # 2 norms per layer + the final norm; one MLP and one attention per layer
    assert report.counts() == {"rms_norm": 2 * LAYERS + 1, "swiglu": LAYERS, "rope": LAYERS, "lora": 0}
    assert report.rope_functions == ["transformers.models.llama.modeling_llama.apply_rotary_pos_emb"]
    assert modeling_llama.apply_rotary_pos_emb is not original_rope
    assert apply_ftplan_kernels(model).counts() == report.counts()  # re-applying is a no-op
    assert report.require("rms_norm", "swiglu", "rope") is report

    revert_ftplan_kernels(model)
    assert modeling_llama.apply_rotary_pos_emb is original_rope
    assert all("forward" not in m.__dict__ for m in model.modules())


def test_full_finetune_matches_unpatched(patched):
    # every parameter trainable: exercises RMSNorm dW and the lm_head dW of the fused loss
    model = tiny_llama()
    data = batch()
    reference = loss_and_grads(model, *data, fused_loss=False)
    patched.append(model)
    apply_ftplan_kernels(model)
    assert_same(loss_and_grads(model, *data, fused_loss=False), reference)  # patched modules, HF loss
    assert_same(loss_and_grads(model, *data, fused_loss=True), reference)  # patched modules, fused loss


@pytest.mark.parametrize("order", ["patch_then_peft", "peft_then_patch"])
def test_lora_grads_match_unpatched(patched, order):
    model = tiny_llama()
    base_copy = copy.deepcopy(model)
    data = batch()
    peft_model = lora(model)
    reference = loss_and_grads(peft_model, *data, fused_loss=False)
    assert reference[1] and all("lora_" in name for name in reference[1])

    if order == "patch_then_peft":
        patched.append(base_copy)
        report = apply_ftplan_kernels(base_copy)
        lora_weights = {k: v for k, v in peft_model.state_dict().items() if "lora_" in k}
        peft_model = lora(base_copy)
        result = peft_model.load_state_dict(lora_weights, strict=False)
        assert not result.unexpected_keys and not [k for k in result.missing_keys if "lora_" in k]
    else:
        patched.append(peft_model)
        report = apply_ftplan_kernels(peft_model)
    # the lora op fuses the 7 projections of each layer when it runs after get_peft_model; patched before, the
    # MLP's forward calls PEFT's LoRA layers as modules
    lora_layers = 0 if order == "patch_then_peft" else len(LORA_TARGETS) * LAYERS
    assert report.counts() == {"rms_norm": 2 * LAYERS + 1, "swiglu": LAYERS, "rope": LAYERS, "lora": lora_layers}
    # the MLP Linear layers stay PEFT LoRA layers, called from the patched forward
    mlp = peft_model.get_base_model().model.layers[0].mlp
    assert hasattr(mlp.gate_proj, "lora_A") and "forward" in mlp.__dict__
    assert_same(loss_and_grads(peft_model, *data, fused_loss=True), reference)


def test_num_items_in_batch_matches_hf():
    model = tiny_llama()  # unpatched modules: the fused loss works on its own
    input_ids, labels, attention_mask = batch()
    with torch.no_grad():
        for n_items in (None, 37, torch.tensor(37)):
            want = model(input_ids=input_ids, attention_mask=attention_mask, labels=labels, num_items_in_batch=n_items)
            got = causal_lm_loss(model, input_ids, labels, attention_mask, num_items_in_batch=n_items)
            torch.testing.assert_close(got, want.loss, atol=1e-5, rtol=1e-5)
        # pre-shifted labels (packed batches) give the same loss
        shifted = torch.nn.functional.pad(labels, (0, 1), value=-100)[:, 1:]
        got = causal_lm_loss(model, input_ids, None, attention_mask, shift_labels=shifted)
        want = model(input_ids=input_ids, attention_mask=attention_mask, labels=labels).loss
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


def test_qwen3_counts_qk_norms_and_matches(patched):
    model = Qwen3ForCausalLM(Qwen3Config(**DIMS, head_dim=16)).float()
    input_ids, labels, attention_mask = batch(seq=6)
    with torch.no_grad():
        want = model(input_ids=input_ids, attention_mask=attention_mask, labels=labels).loss
        patched.append(model)
        report = apply_ftplan_kernels(model)
        got = causal_lm_loss(model, input_ids, labels, attention_mask)
    # input/post-attention norms + q_norm/k_norm per layer, plus the final norm
    assert report.counts() == {"rms_norm": 4 * LAYERS + 1, "swiglu": LAYERS, "rope": LAYERS, "lora": 0}
    torch.testing.assert_close(got, want, atol=2e-5, rtol=1e-4)


def test_gemma_norm_offset_and_no_silent_swiglu(patched):
    model = GemmaForCausalLM(GemmaConfig(**DIMS, head_dim=16)).float()
    with pytest.raises(KernelPatchError, match="swiglu"):
        apply_ftplan_kernels(model)  # GeGLU MLP: the fused SwiGLU cannot be applied
    patched.append(model)
    report = apply_ftplan_kernels(model, swiglu=False)
    assert report.counts() == {"rms_norm": 2 * LAYERS + 1, "swiglu": 0, "rope": LAYERS, "lora": 0}
    norm = model.model.norm
    torch.nn.init.normal_(norm.weight, std=0.1)
    x = torch.randn(3, 64)
    ref = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + norm.eps) * (1.0 + norm.weight)
    torch.testing.assert_close(norm(x), ref, atol=1e-5, rtol=1e-5)


def test_unsupported_architecture_raises():
    model = GPT2LMHeadModel(GPT2Config(n_embd=32, n_layer=1, n_head=2, vocab_size=50, n_positions=16))
    with pytest.raises(KernelPatchError, match="gpt2"):
        apply_ftplan_kernels(model)


def test_report_require_names_missing_ops():
    from ftplan_runtime.kernels import KernelReport

    report = KernelReport(model_type="llama", rms_norm=3, notes=["LlamaMLP: activation GELU is not SiLU"])
    with pytest.raises(KernelPatchError, match=r"\['swiglu', 'rope'\].*GELU"):
        report.require("rms_norm", "swiglu", "rope")
    with pytest.raises(ValueError, match="unknown"):
        report.require("flash_attention")


def test_lora_on_lm_head_is_refused():
    model = get_peft_model(tiny_llama(), LoraConfig(r=2, target_modules=["lm_head"], init_lora_weights=False))
    input_ids, labels, attention_mask = batch(seq=4)
    with pytest.raises(NotImplementedError, match="lm_head"):
        causal_lm_loss(model, input_ids, labels, attention_mask)


# --------------------------------------------------------------------------- test environment (conftest.py)


def test_kernels_run_interpreted_without_cuda():
    if torch.cuda.is_available():
        pytest.skip("compiled kernels on a GPU")
    # the package re-exports functions named like their modules; fetch the modules themselves
    utils = sys.modules["ftplan_runtime.kernels._utils"]
    rms_norm_module = sys.modules["ftplan_runtime.kernels.rms_norm"]
    assert utils.interpreter_active()
    assert type(rms_norm_module._rms_norm_forward_kernel).__name__ == "InterpretedFunction"


def test_conftest_recovers_triton_and_kernels_imported_before_it(tmp_path):
    """triton (std-lib helpers) and the kernel modules imported before conftest still run interpreted."""
    if torch.cuda.is_available():
        pytest.skip("compiled kernels on a GPU")
    conftest = Path(__file__).with_name("conftest.py")
    script = tmp_path / "stale_import.py"
    script.write_text(
        textwrap.dedent(
            f"""
            import os, runpy
            os.environ.pop("TRITON_INTERPRET", None)
            import torch, triton  # as `from transformers import LlamaForCausalLM` does via torch._dynamo
            import ftplan_runtime.kernels as kernels
            x, w = torch.randn(3, 5), torch.ones(5)
            try:
                kernels.rms_norm(x, w)
                print("compiled kernel ran without a GPU?")
            except Exception:
                print("compiled kernel failed as expected")
            runpy.run_path({str(conftest)!r})
            from ftplan_runtime.kernels import cross_entropy, rms_norm, swiglu
            F = torch.nn.functional
            labels = torch.tensor([1, 2, -100])
            errors = [
                rms_norm(x, w) - x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6),  # tl.sum
                swiglu(x, x) - F.silu(x) * x,  # tl.sigmoid
                cross_entropy(x.clone(), labels) - F.cross_entropy(x, labels),  # tl.max
            ]
            print("max error", max(float(e.abs().max()) for e in errors))
            """
        )
    )
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    out = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, env=env, timeout=300)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.strip().splitlines()
    assert lines[0] == "compiled kernel failed as expected"
    assert lines[-1].startswith("max error") and float(lines[-1].split()[-1]) < 1e-5
