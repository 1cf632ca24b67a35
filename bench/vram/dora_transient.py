"""Measure the transient peak of one PEFT DoRA linear layer's forward on the CPU, beside the estimator's figure.

PEFT's DoRA layer recomputes its weight norm in every forward (through an identity matrix and full-size weight
copies); that peak comes and goes inside one module call, so it is not among the tensors autograd saves
(``saved_probe.py``). Here every tensor an ATen op returns is tracked by its storage until it is freed
(``live_tensors.py``), under bf16
autocast with fp32 adapters (the runtime's loop), for one bf16 ``nn.Linear`` of the given shape and a few tokens.

    python bench/vram/dora_transient.py 8192 3072 3072 8192 3072 1024 4096 4096   # d_in d_out pairs
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[1]))
sys.path.insert(0, str(HERE))


def measured_peak(d_in: int, d_out: int, tokens: int = 16, rank: int = 16) -> int:
    """Largest sum of live tensor storages created during one DoRA forward (parameters and the input excluded)."""
    import torch
    from peft import LoraConfig, get_peft_model

    from live_tensors import LiveTensors, addresses

    torch.manual_seed(0)
    base = torch.nn.Sequential(torch.nn.Linear(d_in, d_out, bias=False)).to(torch.bfloat16)
    model = get_peft_model(base, LoraConfig(r=rank, lora_alpha=rank, target_modules=["0"], use_dora=True))
    for p in model.parameters():
        if p.requires_grad:
            p.data = p.data.float()  # PEFT's autocast_adapter_dtype, as the runtime loads adapters
    model.train()
    x = torch.randn(tokens, d_in, dtype=torch.bfloat16)
    tracker = LiveTensors(addresses(x, *model.parameters()))
    with torch.autocast("cpu", dtype=torch.bfloat16), tracker:
        model(x)
    return tracker.peak


def estimated_peak(d_in: int, d_out: int) -> int:
    """The estimator's transient for one module of this shape (adapters fp32, bf16 autocast)."""
    from ftplan.estimate.activations import dora_weight_norm_peak

    return dora_weight_norm_peak(d_in, d_out, adapter_bytes=4, autocast=True)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("dims", nargs="+", type=int, help="d_in d_out pairs")
    a = ap.parse_args()
    if len(a.dims) % 2:
        ap.error("give d_in d_out pairs")
    for d_in, d_out in zip(a.dims[0::2], a.dims[1::2]):
        got, want = measured_peak(d_in, d_out), estimated_peak(d_in, d_out)
        print(f"{d_in} -> {d_out}: measured {got / 2**20:,.1f} MiB, estimated {want / 2**20:,.1f} MiB "
              f"({100 * (want - got) / got:+.2f} %)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
