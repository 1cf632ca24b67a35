"""``gradient_checkpointing: offload`` with ``kernels: ftplan``: a patched tiny Llama with PEFT LoRA (the fused LoRA,
RMSNorm, SwiGLU and RoPE kernels, the fused linear cross-entropy) gives the same loss and LoRA gradients with its
checkpoint inputs offloaded as without, under reentrant and non-reentrant checkpointing (the Triton interpreter on
the CPU, where the offload runs its synchronous host-buffer path; compiled kernels and the CUDA path on a GPU)."""

import pytest
import torch
from peft import LoraConfig, get_peft_model
from transformers import LlamaConfig, LlamaForCausalLM

from ftplan_runtime.kernels import apply_ftplan_kernels, causal_lm_loss, revert_ftplan_kernels
from ftplan_runtime.offload import CheckpointOffload, offload_checkpoints

LAYERS, VOCAB = 2, 211


@pytest.mark.parametrize("reentrant", [False, True], ids=["non-reentrant", "reentrant"])
def test_patched_lora_model_offloads_to_the_same_gradients(reentrant):
    config = LlamaConfig(hidden_size=64, intermediate_size=96, num_hidden_layers=LAYERS, num_attention_heads=4,
                         num_key_value_heads=2, vocab_size=VOCAB, max_position_embeddings=64,
                         attn_implementation="eager")
    model = LlamaForCausalLM(config)
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": reentrant})
    torch.manual_seed(1)
    model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0, init_lora_weights=False,
                                             target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj",
                                                             "up_proj", "down_proj"]))
    model.train()
    ids = torch.randint(0, VOCAB, (2, 9))
    labels = ids.clone()
    labels[:, :3] = -100
    report = apply_ftplan_kernels(model)
    try:
        report.require("rms_norm", "swiglu", "rope", "lora")

        def step():
            model.zero_grad(set_to_none=True)
            loss = causal_lm_loss(model, ids, labels)
            loss.backward()
            return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}

        loss, grads = step()
        offload = offload_checkpoints(model, CheckpointOffload(cpu_tensors=not torch.cuda.is_available()))
        loss2, grads2 = step()
        assert offload.stats.tensors == LAYERS and offload.stats.fetched == LAYERS
        assert torch.equal(loss2, loss)
        assert grads2.keys() == grads.keys() and all("lora_" in n for n in grads)
        for name, g in grads.items():
            assert torch.equal(grads2[name], g), name
    finally:
        revert_ftplan_kernels(model)
