"""Count what one checkpointed decoder layer holds while the backward runs through it, against the estimator.

One decoder layer of a catalog shape (random init, bf16 base or, with ``--adapter qlora``, the runtime's NF4 load;
PEFT LoRA on every linear with fp32 adapters, bf16 autocast: the runtime's loop) runs its forward under
non-reentrant gradient checkpointing, then its backward from a given output gradient. Every tensor the backward
makes, the recompute's included, is tracked by its storage until it is freed (``live_tensors.py``); the largest
total is printed beside the estimator's terms for that layer (``estimate.stage.layer_terms``: the recomputed layer
and a per-call weight transient), less the output gradient, which the probe supplies and does not count.

    python bench/vram/layer_backward_probe.py llama-3.2-1b --seq 256 [--adapter qlora] [--top 20]
    TRITON_INTERPRET=1 python bench/vram/layer_backward_probe.py qwen2.5-0.5b --seq 1536 --kernels   # minutes

``--kernels`` patches the layer with the runtime's kernels (``kernels: ftplan``: fused norm, RoPE, SwiGLU and LoRA
Functions); on the CPU the Triton kernels run interpreted, whose buffers need not be the compiled kernels'.

The CPU's kernels stand in for the GPU's: where the two differ (bitsandbytes' CPU dequantisation keeps fp32
working buffers, so QLoRA's per-call weight transient is larger here), read the peak's make-up (``--top``), not
only its total.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[1]))
sys.path.insert(0, str(HERE))


def measured(key: str, seq: int, adapter: str = "lora", kernels: bool = False):
    """The tracker after one layer's checkpointed backward over ``seq`` tokens (``peak``, ``at_peak``)."""
    import torch
    import torch.utils.checkpoint as checkpoint
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from live_tensors import LiveTensors, addresses
    from models import hf_config
    from saved_probe import peft_sees_autocast

    cfg = hf_config(key)
    cfg.num_hidden_layers = 1
    cfg.vocab_size = 512
    if getattr(cfg, "layer_types", None) is not None:
        cfg.layer_types = cfg.layer_types[:1]
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(cfg, dtype=torch.bfloat16)
    if adapter == "qlora":  # the runtime's NF4 load (ftplan_runtime.model_loading)
        from ftplan_runtime.model_loading import load_weights

        with tempfile.TemporaryDirectory() as folder:
            model.save_pretrained(folder)
            model = load_weights(folder, dtype=torch.bfloat16, quantize_4bit=True, device_map={"": "cpu"})
    model = get_peft_model(model, LoraConfig(r=16, lora_alpha=16, target_modules="all-linear"))
    for p in model.parameters():
        if p.requires_grad:
            p.data = p.data.float()
    model.train()
    if kernels:
        from ftplan_runtime.kernels import apply_ftplan_kernels

        apply_ftplan_kernels(model)
    decoder = model.get_base_model().model
    layer = decoder.layers[0]
    x = torch.randn(1, seq, cfg.hidden_size, dtype=torch.bfloat16, requires_grad=True)
    positions = torch.arange(seq)[None]

    def run(h):
        out = layer(h, attention_mask=None, position_ids=positions, position_embeddings=rope)
        return out[0] if isinstance(out, tuple) else out

    with peft_sees_autocast("cpu"):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            rope = decoder.rotary_emb(x, positions)
            out = checkpoint.checkpoint(run, x, use_reentrant=False)
        grad = torch.randn_like(out)
        ignore = addresses(x, grad, out, *rope, *model.parameters(), *model.buffers())
        ignore |= {m.weight.untyped_storage().data_ptr() for m in model.modules()
                   if isinstance(getattr(m, "weight", None), torch.Tensor)}
        with LiveTensors(ignore) as live:
            out.backward(grad)
    return live


def estimated(key: str, seq: int, adapter: str = "lora", kernels: bool = False) -> int:
    """The estimator's recomputed-layer bytes for this setup, less the output gradient (supplied, not counted)."""
    from ftplan.catalog import get_model
    from ftplan.estimate import activations
    from ftplan.estimate.stage import layer_terms, resolve
    from ftplan.schemas import SftStage

    stage = SftStage.model_validate({"id": "s", "kind": "sft", "data": "d", "learning_rate": 1e-4,
                                     "adapter": {"type": adapter, "r": 16, "alpha": 16, "targets": "all-linear"},
                                     "micro_batch": 1, "gradient_checkpointing": True,
                                     "kernels": "ftplan" if kernels else "none"})
    r = resolve(get_model(key), stage, seq_len=seq)
    held = sum(t.bytes for t in layer_terms(r, activations.compute(r)))
    return held - r.stream_bytes * r.shape.hidden_size * seq


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model")
    ap.add_argument("--seq", type=int, default=256)
    ap.add_argument("--adapter", default="lora", choices=["lora", "qlora"])
    ap.add_argument("--kernels", action="store_true", help="the runtime's kernels (kernels: ftplan)")
    ap.add_argument("--top", type=int, default=0, help="print the largest groups of tensors live at the peak")
    a = ap.parse_args()
    live = measured(a.model, a.seq, a.adapter, a.kernels)
    est = estimated(a.model, a.seq, a.adapter, a.kernels)
    print(f"{a.model} {a.adapter}{' kernels' if a.kernels else ''} seq {a.seq}: measured {live.peak / 2**20:.1f} MiB, estimated {est / 2**20:.1f} MiB "
          f"({100 * (est - live.peak) / live.peak:+.1f} %)")
    for (op, shape, dtype), size in live.at_peak.most_common(a.top):
        print(f"  {size / 2**20:8.2f} MiB  {op} {shape} {dtype}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
