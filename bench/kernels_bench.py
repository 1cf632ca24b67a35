"""Forward+backward time and peak memory of each ftplan kernel against the PyTorch / HF eager path.

Shapes default to Llama-3.1-8B (H 4096, I 14336, 32 q / 8 kv heads of 128, V 128256) in bf16, at 4096 and
8192 tokens. One JSON object per (op, impl, tokens) goes to stdout (and to --out if given):

    {"op": "rms_norm", "impl": "ftplan", "tokens": 8192, "ms_median": ..., "ms_p10": ..., "ms_p90": ...,
     "peak_mib": ..., "gpu": "NVIDIA H100 80GB HBM3", ...}

peak_mib is the allocator peak during one forward+backward above what was allocated before it (inputs,
weights), i.e. the op's own activations, saved tensors, temporaries and gradients.

    $ python bench/kernels_bench.py                                   # everything, 4096 and 8192 tokens
    $ python bench/kernels_bench.py --ops flce --tokens 16384 --trainable-head --out bench/results/flce.jsonl
    $ python bench/kernels_bench.py --dry-run                         # list the configurations (any machine)

Ops: rms_norm (dW included: full fine-tune norms), swiglu, rope (q and k), cross_entropy (logits given),
flce (lm_head + loss; frozen head unless --trainable-head).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from dataclasses import dataclass

OPS = ("rms_norm", "swiglu", "rope", "cross_entropy", "flce")
IMPLS = ("torch", "ftplan")


@dataclass(frozen=True)
class Shape:
    hidden: int
    intermediate: int
    vocab: int
    q_heads: int
    kv_heads: int
    head_dim: int


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--ops", nargs="+", choices=OPS, default=list(OPS))
    p.add_argument("--impls", nargs="+", choices=IMPLS, default=list(IMPLS))
    p.add_argument("--tokens", nargs="+", type=int, default=[4096, 8192], help="batch x sequence tokens")
    p.add_argument("--hidden", type=int, default=4096)
    p.add_argument("--intermediate", type=int, default=14336)
    p.add_argument("--vocab", type=int, default=128256)
    p.add_argument("--q-heads", type=int, default=32)
    p.add_argument("--kv-heads", type=int, default=8)
    p.add_argument("--head-dim", type=int, default=128)
    p.add_argument("--dtype", choices=("bf16", "fp16", "fp32"), default="bf16")
    p.add_argument("--trainable-head", action="store_true", help="flce: lm_head requires grad (dW computed)")
    p.add_argument("--ignore-frac", type=float, default=0.25, help="fraction of labels set to -100")
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--iters", type=int, default=20)
    p.add_argument("--out", help="also append the JSON lines to this file")
    p.add_argument("--dry-run", action="store_true", help="print the configurations and exit")
    return p.parse_args(argv)


# ---------------------------------------------------------------------------------------------------------------
# reference (HF eager) implementations


def torch_rms_norm(x, w, eps=1e-5):  # LlamaRMSNorm.forward
    import torch

    h = x.to(torch.float32)
    h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + eps)
    return w * h.to(x.dtype)


def torch_rope(q, k, cos, sin):  # modeling_llama.apply_rotary_pos_emb with rotate_half
    import torch

    def rotate_half(x):
        x1, x2 = x[..., : x.shape[-1] // 2], x[..., x.shape[-1] // 2 :]
        return torch.cat((-x2, x1), dim=-1)

    cos, sin = cos.unsqueeze(1), sin.unsqueeze(1)
    return q * cos + rotate_half(q) * sin, k * cos + rotate_half(k) * sin


def torch_flce(h, w, labels):  # lm_head, then ForCausalLMLoss (fp32 upcast)
    import torch.nn.functional as F

    return F.cross_entropy((h @ w.t()).float(), labels, ignore_index=-100)


# ---------------------------------------------------------------------------------------------------------------
# cases: build inputs once, return a closure running one forward+backward


def build_case(op: str, impl: str, tokens: int, shape: Shape, dtype, args):
    import torch
    import torch.nn.functional as F

    import ftplan_runtime.kernels as K

    dev = "cuda"
    g = torch.Generator(device=dev).manual_seed(0)

    def randn(*size, requires_grad=False, scale=1.0):
        t = torch.randn(*size, device=dev, dtype=torch.float32, generator=g).mul_(scale).to(dtype)
        return t.requires_grad_(requires_grad)

    if op == "rms_norm":
        x = randn(tokens, shape.hidden, requires_grad=True)
        w = randn(shape.hidden, requires_grad=True, scale=0.1).detach().add_(1).requires_grad_()
        dy = randn(tokens, shape.hidden)
        fn = (lambda: K.rms_norm(x, w, 1e-5)) if impl == "ftplan" else (lambda: torch_rms_norm(x, w))
        return _fwd_bwd(fn, dy, [x, w])

    if op == "swiglu":
        a = randn(tokens, shape.intermediate, requires_grad=True)
        b = randn(tokens, shape.intermediate, requires_grad=True)
        dy = randn(tokens, shape.intermediate)
        fn = (lambda: K.swiglu(a, b)) if impl == "ftplan" else (lambda: F.silu(a) * b)
        return _fwd_bwd(fn, dy, [a, b])

    if op == "rope":
        seq = tokens  # batch 1: one long sequence
        d = shape.head_dim
        # q/k as HF makes them: projection output viewed (1, S, H, D) and transposed to (1, H, S, D)
        q = randn(1, seq, shape.q_heads, d).transpose(1, 2).requires_grad_()
        k = randn(1, seq, shape.kv_heads, d).transpose(1, 2).requires_grad_()
        inv_freq = 1.0 / (500000.0 ** (torch.arange(0, d, 2, device=dev, dtype=torch.float32) / d))
        freqs = torch.arange(seq, device=dev, dtype=torch.float32)[None, :, None] * inv_freq
        emb = torch.cat((freqs, freqs), dim=-1)
        cos, sin = emb.cos().to(dtype), emb.sin().to(dtype)
        dq, dk = randn(*q.shape), randn(*k.shape)
        if impl == "ftplan":
            fn = lambda: K.apply_rotary_pos_emb(q, k, cos, sin)  # noqa: E731
        else:
            fn = lambda: torch_rope(q, k, cos, sin)  # noqa: E731
        return _fwd_bwd(fn, (dq, dk), [q, k])

    labels = torch.randint(0, shape.vocab, (tokens,), device=dev, generator=g)
    labels[torch.rand(tokens, device=dev, generator=g) < args.ignore_frac] = -100

    if op == "cross_entropy":
        logits = randn(tokens, shape.vocab, requires_grad=True)
        if impl == "ftplan":
            # the kernel overwrites its input with the gradient: feed it a fresh non-leaf each step
            # (that copy is timed, like the .float() copy of the torch path)
            fn = lambda: K.cross_entropy(logits * 1.0, labels)  # noqa: E731
        else:
            fn = lambda: F.cross_entropy(logits.float(), labels, ignore_index=-100)  # noqa: E731
        return _fwd_bwd(fn, None, [logits])

    if op == "flce":
        h = randn(tokens, shape.hidden, requires_grad=True)
        w = randn(shape.vocab, shape.hidden, scale=0.02).requires_grad_(args.trainable_head)
        if impl == "ftplan":
            fn = lambda: K.fused_linear_cross_entropy(h, w, labels)  # noqa: E731
        else:
            fn = lambda: torch_flce(h, w, labels)  # noqa: E731
        return _fwd_bwd(fn, None, [h, w])

    raise ValueError(op)


def _fwd_bwd(fn, grad, leaves):
    import torch

    def step():
        for t in leaves:
            t.grad = None
        out = fn()
        if isinstance(out, tuple):
            torch.autograd.backward(out, grad)
        else:
            out.backward(grad)

    step.leaves = leaves
    return step


def measure(step, warmup: int, iters: int) -> dict:
    import torch

    for _ in range(warmup):
        step()
    torch.cuda.synchronize()

    times = []
    for _ in range(iters):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        step()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end))

    for t in step.leaves:  # gradients of the last timed step would otherwise count in the baseline
        t.grad = None
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    step()
    torch.cuda.synchronize()
    peak = torch.cuda.max_memory_allocated() - base

    deciles = statistics.quantiles(times, n=10) if len(times) >= 2 else [times[0]] * 9
    return {
        "ms_median": round(statistics.median(times), 4),
        "ms_p10": round(deciles[0], 4),
        "ms_p90": round(deciles[-1], 4),
        "peak_mib": round(peak / 2**20, 1),
    }


def configurations(args):
    for tokens in args.tokens:
        for op in args.ops:
            for impl in args.impls:
                yield op, impl, tokens


def main(argv=None) -> int:
    args = parse_args(argv)
    shape = Shape(args.hidden, args.intermediate, args.vocab, args.q_heads, args.kv_heads, args.head_dim)
    if args.dry_run:
        for op, impl, tokens in configurations(args):
            print(json.dumps({"op": op, "impl": impl, "tokens": tokens, "dtype": args.dtype, **shape.__dict__}))
        return 0

    import torch

    if not torch.cuda.is_available():
        print("kernels_bench: needs a CUDA GPU (use --dry-run to list configurations)", file=sys.stderr)
        return 2
    import triton

    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[args.dtype]
    meta = {
        "gpu": torch.cuda.get_device_name(),
        "torch": torch.__version__,
        "triton": triton.__version__,
        "dtype": args.dtype,
        **shape.__dict__,
    }
    sink = open(args.out, "a") if args.out else None
    try:
        for op, impl, tokens in configurations(args):
            record = {"op": op, "impl": impl, "tokens": tokens}
            step = None
            if op == "flce":
                record["trainable_head"] = args.trainable_head
            try:
                step = build_case(op, impl, tokens, shape, dtype, args)
                record.update(measure(step, args.warmup, args.iters))
            except torch.cuda.OutOfMemoryError:
                record["error"] = "out of memory"
            del step
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
