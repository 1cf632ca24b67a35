"""Forward+backward time and peak memory of ftplan's fused LoRA blocks against PEFT's LoRA layers, on bf16 and
bitsandbytes NF4 (double-quant) bases, and the NF4 dequantisation against bitsandbytes' own.

Every arm of a run shares one process and one card, so their ratios compare numbers measured together. Shapes
default to Llama-3.1-8B (H 4096, I 14336, 32 q / 8 kv heads of 128), LoRA r 16, alpha 16, dropout 0, adapters in
fp32 and compute under bf16 autocast (as the runtime trains), at 4096 and 8192 tokens. One JSON object per
(block, base, arm, tokens) goes to stdout (and to --out if given):

    {"block": "mlp", "base": "nf4", "arm": "ftplan", "tokens": 4096, "ms_median": ..., "ms_p10": ..., "ms_p90": ...,
     "peak_mib": ..., "gpu": "NVIDIA H100 80GB HBM3", "torch": ..., "triton": ..., "peft": ..., "bitsandbytes": ...}

Blocks and arms:
  qkv      q, k, v of one attention block       peft: three PEFT LoRA layers    ftplan: LoRAProjectionsFunction
  o        the output projection                 peft                            ftplan
  mlp      gate, up, down with SiLU              peft (F.silu(gate) * up, HF's MLP); peft-swiglu (PEFT layers around
                                                 ftplan's fused SwiGLU: `kernels: ftplan` before the lora op);
                                                 ftplan: LoRAMLPFunction
  dequant  one NF4 weight (gate's I×H, o's H×H)  bnb: bitsandbytes.functional.dequantize_4bit (a fresh tensor)
                                                 ftplan: nf4.dequantize_nf4_shared (the reused buffer); forward only,
                                                 with "gb_per_s" (packed bytes + absmax read, weight written)
peak_mib is the allocator peak during one step above what was allocated before it (inputs, weights, adapters):
the step's activations, saved tensors, temporaries and gradients.

    $ python bench/lora_speed.py                                  # every block, base and arm; 4096 and 8192 tokens
    $ python bench/lora_speed.py --blocks mlp --bases nf4 --tokens 16384 --out bench/results/lora-ops.jsonl
    $ python bench/lora_speed.py --dry-run                        # list the configurations (any machine)
    $ TRITON_INTERPRET=1 python bench/lora_speed.py --device cpu --hidden 96 --intermediate 176 --q-heads 4 \\
          --kv-heads 2 --head-dim 24 --tokens 37 --warmup 0 --iters 1  # a smoke run of every path, no timings

The model-level arms (HF+PEFT, Unsloth and ftplan with and without this op, one training step of an 8B model)
are `bench/gpu/speed.sh` (the README's table) and `bench/gpu/arms.sh` (diagnostic arms).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time

BLOCKS = ("qkv", "o", "mlp", "dequant")
BASES = ("bf16", "nf4")
ARMS = {"qkv": ("peft", "ftplan"), "o": ("peft", "ftplan"), "mlp": ("peft", "peft-swiglu", "ftplan"),
        "dequant": ("bnb", "ftplan")}


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--blocks", nargs="+", choices=BLOCKS, default=list(BLOCKS))
    p.add_argument("--bases", nargs="+", choices=BASES, default=list(BASES))
    p.add_argument("--arms", nargs="+", help="only these arms (default: every arm of each block)")
    p.add_argument("--tokens", nargs="+", type=int, default=[4096, 8192], help="batch x sequence tokens")
    p.add_argument("--hidden", type=int, default=4096)
    p.add_argument("--intermediate", type=int, default=14336)
    p.add_argument("--q-heads", type=int, default=32)
    p.add_argument("--kv-heads", type=int, default=8)
    p.add_argument("--head-dim", type=int, default=128)
    p.add_argument("--rank", type=int, default=16)
    p.add_argument("--alpha", type=float, default=16)
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--iters", type=int, default=20)
    p.add_argument("--device", choices=("cuda", "cpu"), default="cuda",
                   help="cpu: a smoke run under TRITON_INTERPRET=1 (no memory figures; timings mean nothing)")
    p.add_argument("--out", help="also append the JSON lines to this file")
    p.add_argument("--dry-run", action="store_true", help="print the configurations and exit")
    return p.parse_args(argv)


def configurations(args):
    """(block, base, arm, tokens) in run order; dequant runs once per base and arm (tokens 0)."""
    for block in args.blocks:
        for base in args.bases:
            if block == "dequant" and base != "nf4":
                continue
            for arm in ARMS[block]:
                if args.arms and arm not in args.arms:
                    continue
                for tokens in ([0] if block == "dequant" else args.tokens):
                    yield block, base, arm, tokens


# ---------------------------------------------------------------------------------------------------------------
# modules


def frozen_linear(in_features: int, out_features: int, base: str, device: str):
    """A frozen nn.Linear (bf16) or bitsandbytes Linear4bit (NF4, double quant, bf16 compute) with random weights."""
    import torch

    weight = torch.randn(out_features, in_features, dtype=torch.bfloat16) * 0.02
    if base == "bf16":
        linear = torch.nn.Linear(in_features, out_features, bias=False, dtype=torch.bfloat16, device=device)
        linear.weight.data.copy_(weight.to(device))
        return linear.requires_grad_(False)
    import bitsandbytes as bnb

    linear = bnb.nn.Linear4bit(in_features, out_features, bias=False, compute_dtype=torch.bfloat16,
                               compress_statistics=True, quant_type="nf4")
    linear.weight = bnb.nn.Params4bit(weight, requires_grad=False, compress_statistics=True, quant_type="nf4")
    return linear.to(device)


def lora_block(names_shapes, base: str, args):
    """A module holding frozen projections `name -> (in, out)` with PEFT LoRA layers injected on every one."""
    import torch
    from peft import LoraConfig, inject_adapter_in_model

    block = torch.nn.Module()
    for name, (fan_in, fan_out) in names_shapes.items():
        setattr(block, name, frozen_linear(fan_in, fan_out, base, args.device))
    config = LoraConfig(r=args.rank, lora_alpha=args.alpha, lora_dropout=0.0, target_modules=list(names_shapes),
                        init_lora_weights=False)
    block = inject_adapter_in_model(config, block)
    for name, p in block.named_parameters():  # fp32 adapters, as PEFT's autocast_adapter_dtype keeps them
        if "lora_" in name:
            p.data = p.data.float()
            p.requires_grad_(True)
    return block.to(args.device)


def build_case(block: str, base: str, arm: str, tokens: int, args):
    """A step() running one forward+backward (forward only for dequant), with .leaves to clear and .bytes moved."""
    import torch
    import torch.nn.functional as F

    from ftplan_runtime.kernels.lora import lora_mlp, lora_projections
    from ftplan_runtime.kernels.swiglu import swiglu

    H, I = args.hidden, args.intermediate
    q_out, kv_out = args.q_heads * args.head_dim, args.kv_heads * args.head_dim

    if block == "dequant":
        import bitsandbytes.functional as bnbf

        from ftplan_runtime.kernels.nf4 import dequantize_nf4_shared, nf4_weight

        weights = [frozen_linear(H, I, "nf4", args.device).weight, frozen_linear(q_out, H, "nf4", args.device).weight]

        def step():
            for w in weights:
                if arm == "bnb":
                    bnbf.dequantize_4bit(w.data, w.quant_state)
                else:
                    dequantize_nf4_shared(nf4_weight(w.data, w.quant_state))

        step.leaves = []
        step.bytes = sum(w.data.numel() + w.quant_state.absmax.numel() + 2 * w.quant_state.shape.numel()
                         for w in weights)
        return step

    def leaf(*size):
        return (torch.randn(*size, device=args.device, dtype=torch.bfloat16)).requires_grad_()

    if block == "qkv":
        m = lora_block({"q_proj": (H, q_out), "k_proj": (H, kv_out), "v_proj": (H, kv_out)}, base, args)
        x = leaf(tokens, H)
        fn = ((lambda: (m.q_proj(x), m.k_proj(x), m.v_proj(x))) if arm == "peft" else
              (lambda: lora_projections(x, [m.q_proj, m.k_proj, m.v_proj])))
    elif block == "o":
        m = lora_block({"o_proj": (q_out, H)}, base, args)
        x = leaf(tokens, q_out)
        fn = (lambda: m.o_proj(x)) if arm == "peft" else (lambda: lora_projections(x, [m.o_proj])[0])
    else:
        m = lora_block({"gate_proj": (H, I), "up_proj": (H, I), "down_proj": (I, H)}, base, args)
        x = leaf(tokens, H)
        fn = {"peft": lambda: m.down_proj(F.silu(m.gate_proj(x)) * m.up_proj(x)),
              "peft-swiglu": lambda: m.down_proj(swiglu(m.gate_proj(x), m.up_proj(x))),
              "ftplan": lambda: lora_mlp(x, m.gate_proj, m.up_proj, m.down_proj)}[arm]
    leaves = [x] + [p for p in m.parameters() if p.requires_grad]

    def step():
        for t in leaves:
            t.grad = None
        with torch.autocast(args.device, dtype=torch.bfloat16):
            out = fn()
        outs = out if isinstance(out, tuple) else (out,)
        torch.autograd.backward(outs, [torch.ones_like(o) for o in outs])

    step.leaves = leaves
    step.bytes = None
    return step


# ---------------------------------------------------------------------------------------------------------------
# timing


def measure(step, args) -> dict:
    """Median / p10 / p90 milliseconds of `step` after warm-up, and its peak memory above the baseline (CUDA)."""
    import torch

    cuda = args.device == "cuda"
    for _ in range(args.warmup):
        step()
    times = []
    for _ in range(args.iters):
        if cuda:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            torch.cuda.synchronize()
            start.record()
            step()
            end.record()
            torch.cuda.synchronize()
            times.append(start.elapsed_time(end))
        else:
            t0 = time.perf_counter()
            step()
            times.append((time.perf_counter() - t0) * 1e3)
    record = {"ms_median": round(statistics.median(times), 4)}
    if len(times) >= 2:
        deciles = statistics.quantiles(times, n=10)
        record.update(ms_p10=round(deciles[0], 4), ms_p90=round(deciles[-1], 4))
    if step.bytes:
        record["gb_per_s"] = round(step.bytes / (record["ms_median"] * 1e-3) / 1e9, 1)
    if cuda:
        for t in step.leaves:
            t.grad = None
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        step()
        torch.cuda.synchronize()
        record["peak_mib"] = round((torch.cuda.max_memory_allocated() - base) / 2**20, 1)
    return record


def main(argv=None) -> int:
    args = parse_args(argv)
    shape = {"hidden": args.hidden, "intermediate": args.intermediate, "q_heads": args.q_heads,
             "kv_heads": args.kv_heads, "head_dim": args.head_dim, "rank": args.rank, "alpha": args.alpha}
    if args.dry_run:
        for block, base, arm, tokens in configurations(args):
            print(json.dumps({"block": block, "base": base, "arm": arm, "tokens": tokens, **shape}))
        return 0

    import torch

    if args.device == "cuda" and not torch.cuda.is_available():
        print("lora_speed: needs a CUDA GPU (--dry-run lists the configurations; --device cpu runs a smoke test "
              "under TRITON_INTERPRET=1)", file=sys.stderr)
        return 2
    import bitsandbytes
    import peft
    import triton

    meta = {"gpu": torch.cuda.get_device_name() if args.device == "cuda" else "cpu", "torch": torch.__version__,
            "triton": triton.__version__, "peft": peft.__version__, "bitsandbytes": bitsandbytes.__version__,
            **shape}
    sink = open(args.out, "a") if args.out else None
    try:
        for block, base, arm, tokens in configurations(args):
            record = {"block": block, "base": base, "arm": arm, "tokens": tokens}
            step = None
            torch.manual_seed(0)
            try:
                step = build_case(block, base, arm, tokens, args)
                record.update(measure(step, args))
            except torch.cuda.OutOfMemoryError:
                record["error"] = "out of memory"
            del step
            if args.device == "cuda":
                torch.cuda.empty_cache()
            line = json.dumps({**record, **meta})
            print(line, flush=True)
            if sink:
                sink.write(line + "\n")
    finally:
        if sink:
            sink.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
