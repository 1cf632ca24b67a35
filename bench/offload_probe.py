"""Activation checkpoints on the GPU against offloaded to host memory (``gradient_checkpointing: offload``): one
training step of a random-init Llama (LoRA r16 on all 7 projections, bf16 autocast, non-reentrant checkpointing,
outputs dropped before backward, fused AdamW), timed and measured both ways in one process on one card.

    python3 bench/offload_probe.py --shape llama-3.1-8b --seq 8192 --batch 1

Prints one JSON line per arm: tokens/s (median step), peak allocated / reserved, the checkpoint bytes the
estimator counts (layers × tokens × hidden × 2 B), what the offload moved and the pinned host memory it holds.
The model is built on the GPU from its config (no download); speed and memory do not depend on the weights.
"""
from __future__ import annotations

import argparse
import json

import torch

from step_shapes import time_steps

SHAPES = {  # hidden, intermediate, layers, heads, kv heads, vocab
    "llama-3.2-1b": (2048, 8192, 16, 32, 8, 128256),
    "llama-3.1-8b": (4096, 14336, 32, 32, 8, 128256),
}


def build(shape: str):
    from peft import LoraConfig, get_peft_model
    from transformers import LlamaConfig, LlamaForCausalLM

    h, i, layers, heads, kv, vocab = SHAPES[shape]
    config = LlamaConfig(hidden_size=h, intermediate_size=i, num_hidden_layers=layers, num_attention_heads=heads,
                         num_key_value_heads=kv, vocab_size=vocab, max_position_embeddings=131072,
                         attn_implementation="sdpa", use_cache=False)
    torch.manual_seed(0)
    torch.set_default_dtype(torch.bfloat16)
    with torch.device("cuda"):
        model = LlamaForCausalLM(config)
    torch.set_default_dtype(torch.float32)
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.train()
    lora = LoraConfig(r=16, lora_alpha=16, lora_dropout=0.0, bias="none", task_type="CAUSAL_LM",
                      target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"])
    return get_peft_model(model, lora), config


def arm(model, config, a, offload) -> dict:
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4, fused=True)
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()

    def step(ids):
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    times = time_steps(step, lambda: torch.randint(0, config.vocab_size, (a.batch, a.seq), device="cuda"),
                       a.warmup, a.steps)
    tokens = a.batch * a.seq
    median = times[len(times) // 2]
    out = {"shape": a.shape, "seq": a.seq, "batch": a.batch, "checkpointing": "offload" if offload else "on",
           "tok_per_s": round(tokens / median, 1), "step_ms_median": round(1e3 * median, 1),
           "step_ms_min": round(1e3 * times[0], 1), "step_ms_max": round(1e3 * times[-1], 1),
           "peak_alloc_gib": round(torch.cuda.max_memory_allocated() / 2**30, 3),
           "peak_reserved_gib": round(torch.cuda.max_memory_reserved() / 2**30, 3),
           "checkpoints_gib": round(config.num_hidden_layers * tokens * config.hidden_size * 2 / 2**30, 3),
           "gpu": torch.cuda.get_device_name(), "torch": torch.__version__}
    if offload is not None:
        out["offload"] = offload.report()
    del opt
    return out


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--shape", default="llama-3.2-1b", choices=sorted(SHAPES))
    p.add_argument("--seq", type=int, default=8192)
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--warmup", type=int, default=2)
    a = p.parse_args()
    from ftplan_runtime.offload import CheckpointOffload, offload_checkpoints

    model, config = build(a.shape)
    print(json.dumps(arm(model, config, a, None)), flush=True)
    offload = offload_checkpoints(model, CheckpointOffload())
    print(json.dumps(arm(model, config, a, offload)), flush=True)
    offload.close()


if __name__ == "__main__":
    main()
