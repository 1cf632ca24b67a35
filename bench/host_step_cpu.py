"""The host's share of a LoRA training step, on a CPU stand-in: a 32-layer Llama with tiny dimensions, where the
kernels' arithmetic is negligible and a step's time is the Python and dispatch work of issuing it. It compares
host-side changes to the fused LoRA path without a GPU; it says nothing about GPU time.

LoRA r 8 on all seven projections, gradient checkpointing, bf16 autocast, fused AdamW, 16 tokens. `--arm peft` runs
PEFT's layers, `--arm ftplan` the runtime's fused LoRA Functions (their SwiGLU kernels swapped for eager PyTorch, as
the Triton interpreter would dominate the time; the RMSNorm and RoPE kernels stay off for the same reason). To
compare two versions of the runtime, run it once per version with that version's `runtime/` first on the path:

    mkdir -p /tmp/other && ln -sfn /path/to/other/checkout/runtime /tmp/other/ftplan_runtime
    TRITON_INTERPRET=1 python bench/host_step_cpu.py --arm ftplan
    TRITON_INTERPRET=1 PYTHONPATH=/tmp/other python bench/host_step_cpu.py --arm ftplan

Prints the median and lower-quartile step time over `--steps` timed steps (after 3 warm-up steps).
"""

from __future__ import annotations

import argparse
import time


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--arm", choices=["peft", "ftplan"], default="ftplan")
    ap.add_argument("--layers", type=int, default=32)
    ap.add_argument("--steps", type=int, default=41)
    a = ap.parse_args()

    import torch
    import torch.nn.functional as F
    from peft import LoraConfig, get_peft_model
    from transformers import LlamaConfig, LlamaForCausalLM

    from ftplan_runtime.kernels import apply_ftplan_kernels
    from ftplan_runtime.kernels import lora as lora_op

    def swiglu_forward(e, g):
        return F.silu(e) * g

    def swiglu_backward_in_place(dh, e, g):
        e32, g32, dh32 = e.float(), g.float(), dh.float()
        sig = torch.sigmoid(e32)
        silu = e32 * sig
        h, dg, de = silu * g32, dh32 * silu, dh32 * g32 * sig * (1 + e32 * (1 - sig))
        dh.copy_(h)
        e.copy_(de)
        g.copy_(dg)

    lora_op.swiglu_forward = swiglu_forward
    lora_op.swiglu_backward_in_place = swiglu_backward_in_place

    torch.manual_seed(0)
    config = LlamaConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=a.layers, num_attention_heads=4,
                         num_key_value_heads=2, vocab_size=256)
    model = LlamaForCausalLM(config).to(torch.bfloat16)
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.config.use_cache = False
    targets = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    model = get_peft_model(model, LoraConfig(r=8, lora_alpha=16, lora_dropout=0.0, target_modules=targets))
    model.train()
    if a.arm == "ftplan":
        apply_ftplan_kernels(model, rms_norm=False, swiglu=True, rope=False, lora=True)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4, fused=True)
    ids = torch.randint(0, config.vocab_size, (1, 16))

    def step():
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    for _ in range(3):
        step()
    times = []
    for _ in range(a.steps):
        t0 = time.perf_counter()
        step()
        times.append(time.perf_counter() - t0)
    times.sort()
    print(f"{a.arm}: {a.layers} layers, median step {times[len(times) // 2] * 1e3:.1f} ms, "
          f"lower quartile {times[len(times) // 4] * 1e3:.1f} ms over {a.steps} steps")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
