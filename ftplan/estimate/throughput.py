"""Rough step time from FLOPs per token (kernel-anchors.md section 3) and an assumed utilisation.

    F_tok = 6 N_mm (full) or 4 N_mm + 6 N_lora (adapters)      N_mm: weights multiplied per token, lm_head included
          + 6 L s d                                            causal attention, fwd + bwd (d = heads × head_dim)
          + 2 N_mm + 2 L s d                                   recomputation, with gradient checkpointing
          + 2 N_mm + 2 L s d                                   DPO reference forward (``reference: live``)
          + (2 N_mm + 2 L s d) × (1 + 2 with a live reference)  KTO: the KL forward, then the reference over the
                                                                  batch and the KL batch
    N_mm drops the vocabulary projection for a reward model (a one-value score head instead of lm_head).

    step_time = tokens per GPU per step × F_tok / (peak bf16 FLOP/s × utilisation) + QLoRA dequantisation

The utilisation (0.368 of the datasheet peak counting recomputation under autocast, 0.30 for the plain fp32-adapter
loop of baselines.md) is calibrated on HF+PEFT LoRA bf16 on H200, and the ``kernels: ftplan`` gain (1.18x) on the
same point. QLoRA adds the HBM traffic of dequantising every NF4 weight once per pass (forward, recomputation,
backward), at an efficiency calibrated on QLoRA vs LoRA with ``kernels: ftplan``; a base upcast to fp32 by
``prepare_model_for_kbit_training`` (not the runtime's way) costs a calibrated factor on top. QLoRA without
autocast (fp32 lm_head and attention; baselines.md's 2,834 tok/s) is not modelled. There is no fixed per-step cost
(kernel launches, the optimizer step), so long micro-steps read slow (s8192 QLoRA: 14 %). A planning figure, not a
benchmark: expect +-30 % off the calibration points (other GPUs, sequence lengths, DPO, sharded runs).
"""

from __future__ import annotations

from ..catalog.architecture import matmul_params
from ..catalog.gpus import GpuSpec
from .constants import (DEQUANT_BANDWIDTH_EFFICIENCY, DEQUANT_BYTES_PER_PARAM, FTPLAN_KERNELS_SPEEDUP,
                        HF_UTILISATION, KBIT_UPCAST_TIME_FACTOR)
from .resolved import Resolved


def no_grad_forwards(r: Resolved) -> int:
    """Extra forward passes without gradients per micro-step: the live reference (DPO: 1; KTO: over the batch and
    the KL batch, 2) and KTO's KL forward of the policy (1)."""
    ref = 0 if r.reference == "none" else (2 if r.kl_batch else 1)
    return ref + (1 if r.kl_batch else 0)


def flops_per_token(r: Resolved, trainable: int) -> float:
    """Training FLOPs per token, recomputation and the no-grad forwards (reference, KTO's KL batch) included."""
    s = r.shape
    n_mm = matmul_params(s) - (s.vocab_size * s.hidden_size - s.hidden_size if r.reward else 0)
    attn = 2 * s.num_layers * r.seq * s.num_heads * s.head_dim  # causal forward
    f = (6 * n_mm if r.full else 4 * n_mm + 6 * trainable) + 3 * attn
    if r.gc:
        f += 2 * n_mm + attn
    f += no_grad_forwards(r) * (2 * n_mm + attn)
    return float(f)


def step_time(r: Resolved, gpu: GpuSpec | None, trainable: int) -> float | None:
    """Seconds per optimizer step on one GPU of the job (all GPUs run in parallel), or None without a GPU."""
    if gpu is None:
        return None
    tokens = r.tokens * r.grad_accum
    util = HF_UTILISATION["autocast" if r.loop.autocast else "plain"]
    util *= FTPLAN_KERNELS_SPEEDUP if r.kernels == "ftplan" else 1.0
    t = tokens * flops_per_token(r, trainable) / (gpu.peak_bf16_tflops * 1e12 * util)
    if r.quantized:
        from ..catalog.architecture import param_counts

        pc = param_counts(r.shape)
        passes = (3 if r.gc else 2) + no_grad_forwards(r)
        traffic = r.shape.num_layers * pc.per_layer_linear * DEQUANT_BYTES_PER_PARAM * passes
        t += r.grad_accum * traffic / (gpu.memory_bandwidth_gbs * 1e9 * DEQUANT_BANDWIDTH_EFFICIENCY)
        if r.upcast_base:
            t *= KBIT_UPCAST_TIME_FACTOR
    return round(t, 3)
