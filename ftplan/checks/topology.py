"""Launch-topology and sharding rules: strategy vs world size, nodes and Slurm, offload, 8-bit optimizers
under DeepSpeed/FSDP, and a 4-bit (QLoRA) base under sharding.

Decisions (see the messages for the user-facing reasons):

* Sharded QLoRA (the FSDP-QLoRA recipe): under ZeRO-3 and FSDP2 the runtime stores the packed 4-bit codes in the
  compute dtype (the contract's ``quant_storage``), which both partition like any 16-bit weight; with the stack
  ftplan pins (transformers 5.24, accelerate 1.15, DeepSpeed 0.19, bitsandbytes 0.50) both train a LoRA on a
  sharded 4-bit base to the unsharded loss (``tests/runtime/test_sharded_qlora.py``, two processes). What differs
  is the load: FSDP2 quantizes the base in host memory and moves it onto the GPUs one layer at a time
  (``loads_4bit_on_host``), while under ZeRO-3 every GPU holds the whole 4-bit model until DeepSpeed partitions it,
  a memory matter the estimator counts (its model-load phase). So QLoRA with ``zero3`` is accepted for every kind,
  and QLoRA with ``fsdp2`` for SFT, CPT and reward models; ``kernels: ftplan`` (FT309, FT320) and the 8-bit
  optimizers (FT315) are refused there as for any FSDP2 run.
* QLoRA + FSDP2 for DPO, ORPO and KTO stays refused (FT319): those trainers' passes over an FSDP2-sharded 4-bit base
  (the adapter switched off for the reference, log-probs precomputed before the model is sharded) have not been run,
  and Axolotl refuses the combination as well; ``zero3`` shards the same 4-bit base for them.
  QLoRA with ZeRO-1/2 is fine (only optimizer states and gradients are partitioned).
* A bitsandbytes 8-bit optimizer under ZeRO runs as a client optimizer DeepSpeed calls "untested" (the
  trainer sets ``zero_allow_untested_optimizer``): a warning. With ``offload_optimizer`` DeepSpeed refuses a
  client optimizer (``zero_force_ds_cpu_optimizer``), and under FSDP2 the optimizer meets sharded DTensor
  parameters it cannot step (bitsandbytes#89, #1633): both errors.
"""

from __future__ import annotations

import re

from ftplan.context import Context
from ftplan.diagnostics import Diagnostic, KeyPath, error, warning
from ftplan.resolved_stage import TrainingFacts
from ftplan.schemas import DistributedSpec, TrainStage

from ._common import EIGHT_BIT_OPTIMIZERS, SHARDED, ZERO, strategy_path, train_stages

CODES = {
    "FT310": "`distributed: none` with more than one GPU",
    "FT311": "a multi-GPU strategy with one GPU",
    "FT312": "more than one node without a `slurm` block",
    "FT313": "offload without a strategy that supports it",
    "FT314": "a bitsandbytes 8-bit optimizer under DeepSpeed ZeRO",
    "FT315": "a bitsandbytes 8-bit optimizer with optimizer offload or FSDP2",
    "FT316": "invalid Slurm time limit",
    "FT317": "more than 8 GPUs per node",
    "FT319": "QLoRA with FSDP2 in a preference stage (DPO, ORPO, KTO)",
}

_TIME = re.compile(r"^(?:(\d+)|(\d+):(\d{1,2})|(\d+):(\d{1,2}):(\d{1,2})"
                   r"|(\d+)-(\d{1,2})(?::(\d{1,2})(?::(\d{1,2}))?)?)$")


def check(ctx: Context) -> list[Diagnostic]:
    """Pipeline-level topology rules, then the per-stage ones."""
    diags = _hardware(ctx)
    for i, stage, facts in train_stages(ctx):
        diags += _stage(ctx, i, stage, facts)
    return diags


def valid_slurm_time(value: str) -> bool:
    """True for ``MM``, ``MM:SS``, ``HH:MM:SS``, ``D-HH``, ``D-HH:MM`` and ``D-HH:MM:SS`` (minutes, seconds and
    hours after a day count within their ranges)."""
    m = _TIME.match(value)
    if not m:
        return False
    g = m.groups()
    bounded = [(g[2], 60), (g[4], 60), (g[5], 60), (g[7], 24), (g[8], 60), (g[9], 60)]
    return all(v is None or int(v) < limit for v, limit in bounded)


def _hardware(ctx: Context) -> list[Diagnostic]:
    hw = ctx.pipeline.hardware
    diags = []
    if hw.nodes > 1 and hw.slurm is None:
        diags.append(error("FT312", ("hardware", "nodes"), f"`nodes: {hw.nodes}` needs a launcher that starts one "
                           "process group per node; ftplan generates it for Slurm only",
                           hint="add a `slurm:` block under `hardware` (partition, time, ...), or set `nodes: 1`"))
    times: list[tuple[KeyPath, str | None]] = [(("hardware", "slurm", "time"), hw.slurm.time if hw.slurm else None)]
    times += [(("stages", i, "slurm", "time"), s.slurm.time) for i, s in enumerate(ctx.pipeline.stages) if s.slurm]
    for path, value in times:
        if value is not None and not valid_slurm_time(value):
            diags.append(error("FT316", path, f"Slurm time limit '{value}' is not in a format sbatch accepts",
                               hint="write MM, MM:SS, HH:MM:SS, D-HH, D-HH:MM or D-HH:MM:SS, e.g. `time: "
                               "\"12:00:00\"` for 12 hours or `time: \"1-00:00:00\"` for one day"))
    if hw.device == "cuda" and hw.gpus_per_node > 8:
        diags.append(warning("FT317", ("hardware", "gpus_per_node"), f"`gpus_per_node: {hw.gpus_per_node}` is "
                             "unusual: most GPU nodes have at most 8", hint="check the node type; use `nodes` "
                             "for more GPUs"))
    return diags


def _stage(ctx: Context, i: int, stage: TrainStage, facts: TrainingFacts) -> list[Diagnostic]:
    diags = []
    world = facts.batch.world_size
    spec = stage.distributed_spec()
    name = facts.strategy
    spath = strategy_path(i, stage)
    offload = spec.offload_optimizer or spec.offload_params
    if name == "none" and world > 1:
        units = "GPUs" if ctx.pipeline.hardware.device == "cuda" else "CPU processes"
        diags.append(error("FT310", spath, f"`distributed: none` with {world} {units} launches one process: only 1 "
                           f"of {world} {units} would train", hint="use `auto` (DDP), `zero2`, `zero3` or `fsdp2`"))
    if name in ("ddp", *SHARDED) and world == 1 and not offload and ctx.pipeline.hardware.device == "cuda":
        diags.append(warning("FT311", spath, f"`{name}` with one GPU only adds launcher overhead: there is nothing "
                             "to replicate or shard", hint="use `distributed: auto` (or `none`); keep ZeRO only "
                             "together with CPU offload"))
    if spec.offload_params and name not in ("zero3", "fsdp2"):
        diags.append(error("FT313", ("stages", i, "distributed", "offload_params"), f"`offload_params` needs "
                           f"`zero3` or `fsdp2` (parameters are sharded there); this stage uses `{name}`",
                           hint="set `strategy: zero3` or `fsdp2`, or remove `offload_params`"))
    if spec.offload_optimizer and name not in ("zero2", "zero3", "fsdp2"):
        diags.append(error("FT313", ("stages", i, "distributed", "offload_optimizer"), f"`offload_optimizer` needs "
                           f"`zero2`, `zero3` or `fsdp2`; this stage uses `{name}`",
                           hint="set `strategy: zero2`, or remove `offload_optimizer`"))
    diags += _optimizer(stage, i, name, spec)
    diags += _quantized(stage, facts, i, name, spath)
    return diags


def _optimizer(stage: TrainStage, i: int, name: str, spec: DistributedSpec) -> list[Diagnostic]:
    if stage.optimizer not in EIGHT_BIT_OPTIMIZERS:
        return []
    path = ("stages", i, "optimizer")
    opt = stage.optimizer
    if name == "fsdp2":
        return [error("FT315", path, f"`optimizer: {opt}` (bitsandbytes) cannot step FSDP2's sharded DTensor "
                      "parameters", hint="use `optimizer: adamw`, or a ZeRO strategy")]
    if name in ZERO and spec.offload_optimizer:
        return [error("FT315", path, f"`optimizer: {opt}` with `offload_optimizer`: the offloaded optimizer "
                      "states and the step live in CPU memory, where bitsandbytes' 8-bit optimizers (GPU kernels) "
                      "do not run", hint="use `optimizer: adamw` (torch AdamW steps the offloaded states on the "
                      "CPU), or drop `offload_optimizer`")]
    if name in ZERO:
        return [warning("FT314", path, f"`optimizer: {opt}` under `{name}`: DeepSpeed wraps it as an untested "
                        "client optimizer over its flattened fp32 partitions, and bitsandbytes' 32-bit override for "
                        "embedding rows no longer applies", hint="prefer `optimizer: adamw` with ZeRO (the "
                        "sharded states already save memory); keep the 8-bit optimizer with `none`/`ddp`")]
    return []


def _quantized(stage: TrainStage, facts: TrainingFacts, i: int, name: str,
               spath: KeyPath) -> list[Diagnostic]:
    if facts.method != "qlora" or name != "fsdp2" or stage.kind not in ("dpo", "orpo", "kto"):
        return []
    return [error("FT319", spath, f"QLoRA with `fsdp2` is not offered for a {stage.kind.upper()} stage: ftplan shards "
                  "a 4-bit base with FSDP2 for SFT, CPT and reward models, but has not run TRL's preference trainers "
                  "over one (the reference pass with the adapter switched off, log-probs precomputed before the "
                  "model is sharded), and Axolotl refuses the combination too",
                  hint="use `zero3`, which shards the same 4-bit base (each GPU holds all of it while it loads), "
                  "or `zero2`")]
