"""Every constant of the estimator, with where it comes from.

"Measured" values were read on one H200 (torch 2.11.0+cu130, transformers 5.17.0, peft 0.21.0, bitsandbytes
0.50.2), with the loop of the baseline script behind ``baselines.md`` (``BASELINE_LOOP``) on a 4-layer Llama-3.1-8B-shaped model and the
full 32-layer points of ``baselines.md``. "Derived" values come from reading the library code; "assumed" ones are
neither and say so.
"""

from __future__ import annotations

from ..units import GIB as GIB
from ..units import MIB as MIB

# --- Verdicts ---------------------------------------------------------------------------------------------------
# A stage's verdict compares its estimated peak per GPU with the card's memory (the catalog's ``memory_mib``, what
# the driver reports as the total; the CUDA context is a term of the estimate, not subtracted from the card):
#   fits   peak <  TIGHT_FRACTION × card
#   tight  TIGHT_FRACTION × card <= peak < OOM_FRACTION × card   (FT102, a warning)
#   oom    peak >= OOM_FRACTION × card                             (FT101, an error)
# ``stage.verdict_thresholds`` turns them into byte counts; "would fit" suggestions must reach ``fits``.

MEASURED_UNDERESTIMATE = 0.035
"""The most the estimate has read below a measured peak, as a fraction of the measurement: -3.45 % (device used,
QLoRA s8192 b1 ``kernels: ftplan``, the runtime-like rows of ``tests/test_estimate_baselines.py``). Over every
committed point the error spans -3.5 % to +3.4 % on device-used memory and -2.1 % to +1.1 % on allocated tensors
(the compiled QLoRA SFT + DPO run reads 0 to +6 % high, on the safe side). All points are one H200, Llama-3.1-8B
shapes, one GPU. ``test_estimate_baselines`` recomputes this figure from its tables and fails when a new point reads
lower: raise it then, and keep ``1 - TIGHT_FRACTION`` at least as large. Off these points: the compiled plans of
``bench/vram`` (``measured.py``) read down to -6.3 %, inside the band; the speed
benchmark's probe runs (QLoRA 8B, H100) read -2.3 to +1.1 % with checkpoints on the GPU and, with
``gradient_checkpointing: offload``, -3.3 to +5.9 % once ``OFFLOAD_CACHED_INPUTS`` is counted (-19 % at 32,768
tokens without it)."""

OOM_FRACTION = 1.0
"""A peak at or above this fraction of the card is ``oom``. At 1.0: a peak that reaches the card's memory cannot
run, so it is never ``fits`` or ``tight``, whatever the error of the estimate. Lower it only with measurements that
show the usable memory below the driver's total."""

TIGHT_FRACTION = 0.90
"""A peak at or above this fraction of the card (and below ``OOM_FRACTION``) is ``tight``: the real peak may reach
the card. The band below the card must cover what the estimate can read low: a peak p whose real value is up to
``MEASURED_UNDERESTIMATE`` (u) higher reaches the card when p >= (1 - u) × card, so 1 - TIGHT_FRACTION >= u. At 10 %
the band is about three times the measured 3.5 %: the measured points are one card type and one GPU, and the terms
off them (NCCL and ZeRO buffers, DPO, MoE shapes, other cards) are derived or assumed, not measured. Narrow it
towards ``MEASURED_UNDERESTIMATE`` as measurements cover those setups."""

# --- Fixed, per GPU ---------------------------------------------------------------------------------------------

CUDA_CONTEXT_MIB: dict[str, int] = {
    "hopper": 527,     # measured: device used minus torch's peak reserved was 767 MiB (0.749 GiB) in every one of 10 runs
                       # of the runtime (8 on an H100 80GB, 2 on an H200; torch 2.11/cu130), less the 240 MiB of libraries
    "blackwell": 650,  # assumed: Hopper's figure plus a margin (larger kernel images), not measured
    "ada": 430,        # reported 426 MiB, RTX 6000 Ada, torch 2.10/cu130, lazy loading (unsloth-zoo#1053)
    "ampere": 450,     # assumed: between the reported 287 MB (lazy) and 667 MB (eager loading), pytorch#86509
    "turing": 400,     # assumed, as Ampere less the larger kernel set
    "cdna3": 800,      # assumed: ROCm contexts are larger; not measured
}
"""CUDA context + kernel images created by the first CUDA call (lazy loading), by GPU architecture."""

CUBLAS_WORKSPACE_MIB: dict[str, int] = {"hopper": 32, "blackwell": 32}
"""cuBLAS workspace per handle: 32 MiB on Hopper and newer, 8 MiB elsewhere (pytorch#89027, #120925)."""
CUBLAS_WORKSPACE_DEFAULT_MIB = 8
CUBLAS_HANDLES = 2
"""Handles with a workspace: the forward stream's and the autograd engine's backward thread."""

CUDA_LIBRARY_KERNELS_MIB = 176
"""Kernel images of cuBLAS/cuBLASLt, bitsandbytes and Triton loaded lazily during the first step.

Calibrated: device-used minus peak reserved was 0.234 GiB (240 MiB) on all eight probe runs (LoRA, QLoRA, full,
sdpa and eager, with and without autocast) and 0.22-0.24 GiB on the three baselines.md points; 240 MiB minus the
two 32 MiB cuBLAS workspaces leaves 176 MiB."""

FRAGMENTATION_FACTORS: dict[str, float] = {
    "hf_held": 1.45,
    "hf": 0.94,
    "chunked": 1.9,
    "chunked_fp32": 3.5,
}
"""Reserved minus allocated, in units of the largest transient block, by loss path.

The caching allocator never returns segments, so blocks of mixed sizes strand free space; the pattern is set by
the biggest transient tensors. Calibrated on H200 (torch 2.11):
- ``hf_held`` (full logits, the caller keeps the output; block = the fp32 logits): 1.46x, 1.10x, 1.95x on the three
  baselines.md points and 1.38-1.51x on six CE-dominated 4-layer probe runs;
- ``hf`` (full logits, output dropped before backward, as the HF Trainer does): 0.94x (LoRA s2048 b2, full size);
- ``chunked`` (fused / chunked loss, 16-bit residual stream; block = the larger of the loss chunk and one
  (tokens × intermediate) activation): 1.96x on LoRA s2048 b2 and 1.83x on QLoRA s2048 b2 (16-bit base parts, as
  the runtime keeps them), both with ``kernels: ftplan``;
- ``chunked_fp32`` (the same with an fp32 residual stream, e.g. a QLoRA base upcast by
  ``prepare_model_for_kbit_training``): 3.5x on QLoRA s2048 b2 with ``kernels: ftplan``.
On a card that is nearly full the allocator frees cached segments and retries before it raises OOM, so part of this
term is reclaimable: it makes the verdict conservative."""

OFFLOAD_CACHED_INPUTS = 14
"""Allocator cache that offloaded checkpoints leave on the GPU, in layer inputs (tokens × hidden × stream bytes),
on top of the fragmentation term. Each outgoing and each fetched layer input is handed to the copy stream with
``record_stream``; the caching allocator cannot reuse such a block until the copy has passed it, so new inputs take
new blocks and the freed ones stay cached. Measured on an H100 (torch 2.11, the runtime's model and kernels without
the Trainer, ``bench/runtime_step_probe.py --offload``, Llama-3.1-8B QLoRA, ``bench/results/2026-12-07-h100``):
reserved − allocated less the fragmentation term was 13.8, 10.2 and 9.0 inputs at 8,192, 16,384 and 32,768 tokens
(0.86, 1.28 and 2.25 GiB) and nothing at 2,048 × 2. The largest of the three is taken, so the short context reads
high (+5.9 %) rather than the long ones low (``test_estimate_calibration`` holds those runs within 7 %); one model
and one card: estimates with offload say they are extrapolated (``accuracy.accuracy_of``)."""

NCCL_COMMUNICATOR_MIB = 1536
"""Buffers of one NCCL communicator on a multi-GPU node: ~1.6 GB reported for one communicator (nccl#864, maintainer
reply nccl#986); NCCL_BUFFSIZE 4 MiB per channel and peer. Assumed, not measured here."""

NCCL_NVLS_MIB = 2304
"""NVLink SHARP (NVLS) buffers per rank on H100/H200 with more than two GPUs: nvlsTotalSize 2.25 GiB on 8xH200
(vllm#9699). Counted unless ``NCCL_NVLS_ENABLE=0`` is set in ``hardware.env``."""

# --- Weights and optimizer ---------------------------------------------------------------------------------------

NF4_CODE_BYTES_PER_PARAM = 0.5
"""The packed 4-bit codes of an NF4 weight: the parameter tensor itself, which ZeRO-3 and FSDP2 shard."""

NF4_BYTES_PER_PARAM = NF4_CODE_BYTES_PER_PARAM + 1 / 64 + 4 / (64 * 256)
"""bitsandbytes NF4 with double quantization: 4-bit codes, an 8-bit absmax per 64-block and an fp32 absmax per
256 such blocks = 4.127 bits (QLoRA paper, section 3). The absmax constants live in the weight's ``QuantState``, not
in a parameter: no sharding strategy partitions them, every GPU holds all of them."""

ADAM_8BIT_BYTES_PER_PARAM = 2 + 2 * 4 / 256
"""bitsandbytes 8-bit Adam: two 1-byte states plus an fp32 absmax per 256-block for each (tensors under 4096
elements stay 32-bit; ignored)."""

DEEPSPEED_OVERLAP_FACTOR = 4.5
"""With ``overlap_comm`` DeepSpeed keeps about 4.5x the bucket sizes in flight (HF DeepSpeed docs: 5e8 buckets ->
9 GB)."""

ZERO3_MAX_LIVE_PARAMETERS = 1_000_000_000
"""``stage3_max_live_parameters`` as ftplan's DeepSpeed JSON writes it (DeepSpeed's default)."""

# --- Loss paths --------------------------------------------------------------------------------------------------

TRL_TOKEN_CHUNK = 4096
TRL_VOCAB_CHUNK = 32768
"""TRL 1.16 fused LM head (``trl/kernels/chunked_logprob.py``): (4096 tokens × 32768 vocab) tiles in the compute
dtype; 8 fp32 statistics per token; fp32 grad of the hidden states (and of the head if it trains) in backward."""

FUSED_CE_MIN_CHUNK_BYTES = 1 << 28
"""``kernels: ftplan`` fused linear cross-entropy: chunk rows = min(N, max(N*H // V, 256 MiB / (V*elt))), a multiple
of 64 (``runtime/kernels/cross_entropy.py``; measured 0.31 GiB above the inputs at N=8192, Llama-3 vocab)."""

# --- Throughput --------------------------------------------------------------------------------------------------

HF_UTILISATION = {"autocast": 0.368, "plain": 0.30}
"""Fraction of the datasheet bf16 peak that plain HF+PEFT reaches, counting recomputation FLOPs (HFU).

Calibrated on LoRA bf16 Llama-3.1-8B s2048 b2 with gradient checkpointing on H200, 47.4 GFLOP/token
(6*N_mm + 6*N_lora + 8*L*s*d): under autocast (as the HF Trainer runs it) 7,669 tok/s = 364 TFLOP/s = 36.8 % of
989 (probe run); the plain loop of baselines.md (adapters in fp32, no autocast) 6,283 tok/s = 30 % (20 % MFU)."""

FTPLAN_KERNELS_SPEEDUP = 1.176
"""``kernels: ftplan`` vs plain HF under autocast: 9,017 vs 7,669 tok/s (LoRA s2048 b2, H200, probe run)."""

DEQUANT_BYTES_PER_PARAM = 0.516 + 2 + 2
"""HBM traffic of one NF4 dequantisation per quantized weight and pass: read the codes, write and re-read the bf16
copy (kernel-anchors.md section 3: ~31 GB per pass for 8B)."""

DEQUANT_BANDWIDTH_EFFICIENCY = 0.518
"""Effective fraction of datasheet bandwidth for the NF4 dequantisation. Calibrated on QLoRA (16-bit base parts, as
the runtime keeps them) vs LoRA, both ``kernels: ftplan`` under autocast, s2048 b2 on H200: 8,325 tok/s against the
model's 9,022 for LoRA = 0.038 s per micro-step for three passes over 6.98B NF4 weights."""

KBIT_UPCAST_TIME_FACTOR = 1.172
"""Step-time factor of a QLoRA base upcast by ``prepare_model_for_kbit_training`` (an fp32 residual stream cast to
16-bit around every ``Linear4bit``): the same probe on H200, s2048 b2, ``kernels: ftplan``: 7,106 tok/s upcast
(``arms-h200-1-lora-qlora-upcast.jsonl``) against 8,325 tok/s with 16-bit base parts
(``arms-h200-2-qlora-2048.jsonl``)."""
