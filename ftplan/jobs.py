"""JOBS: what each stage needs (``Resources``) and what it asks Slurm for (``SlurmJob``), decided once.

``plan.build_plan`` stores both on every ``PlanStage``; the sbatch scripts, ``submit.sh``, ``plan.md`` and
``plan.json`` only print them, and the Slurm rules (``checks/slurm.py``) judge the same values.

What a stage needs:

* where it runs, as ``resolved_stage.placement`` decides: a training stage on every node and GPU of the target
  (one process per GPU) or one CPU process; data, merge and GGUF stages on one CPU process;
* the estimator's host-memory figure and, for a training stage, its run time: optimizer steps
  (``TrainingFacts.steps``) × the estimated step time.

What its Slurm job asks for, each value taken from the stage's own ``slurm:`` block, else from
``hardware.slurm``, else derived here:

* **GPUs**: ``--gpus-per-node=[TYPE:]N`` or ``--gres=gpu[:TYPE]:N`` (``gpu_request``, ``gpu_type``); none for a
  CPU-only stage, which goes to ``cpu_partition`` when one is set.
* **whole nodes** (``--exclusive``): only for a job over several nodes or over every GPU of a node
  (``node_gpus``).
* **CPUs** (``--cpus-per-task``, one launcher task per node): all of them on whole nodes, ``CPUS_PER_GPU`` per
  GPU for a GPU job on part of a node, ``CPU_STAGE_CPUS`` for a CPU-only stage.
* **memory** (``--mem`` per node): all of it on whole nodes (``--mem=0``); otherwise the estimator's host figure
  (``StageEstimate.host_bytes``: the merge or export working set, the offloaded states of a node, the whole
  estimate of a stage on the CPU) plus, per process, ``RUNTIME_PROCESS_BYTES`` and, for a training process on a
  GPU, the weights it loads through host memory; times ``MEM_HEADROOM``, rounded up to a GiB. A declared size
  below the estimator's figure is an error (FT330).
* **time** (``--time``): for a training stage whose steps and step time are estimated, steps × step time ×
  ``TIME_MARGIN`` + ``TIME_ALLOWANCE_S`` rounded up to the hour; otherwise ``DEFAULT_TIME`` of its kind. An
  estimated run time above a declared limit is a warning (FT331).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal, TypeVar

from .catalog import param_counts
from .estimate.types import StageEstimate
from .schemas import TRAIN_KINDS, ContainerSpec, SlurmSpec, StageSlurmSpec
from .units import GIB, KIB, MIB, TIB, format_duration, size

if TYPE_CHECKING:  # pragma: no cover
    from .context import Context

RUNTIME_PROCESS_BYTES = 2 * GIB
"""Host memory of one runtime process beyond what the estimator counts: the interpreter, torch and the stage's
libraries. Measured peak RSS: 0.84 GiB for a data stage (``bench/results/llama8b-qlora-data-metrics.json``) and
1.07 GiB beside the loaded weights in training processes (``bench/results/vram``: 3.37 GiB with Llama-3.2-1B's
2.30 GiB, 16.03 GiB with Llama-3.1-8B's 14.96 GiB); rounded up for tokenizer, data-loader and logging buffers."""

MEM_HEADROOM = 1.25
"""Factor on the host-memory need of a job that does not take whole nodes: a job over its ``--mem`` is killed."""

CPUS_PER_GPU = 8
"""CPU cores per GPU of a GPU job on part of a node (data loading, the launcher, NCCL's proxy threads)."""

CPU_STAGE_CPUS = 8
"""CPU cores of a CPU-only stage (tokenizing, merging, GGUF export and quantization)."""

TIME_MARGIN = 1.5
"""Factor on a training stage's estimated run time (the step time is a planning figure, +-30 %)."""

TIME_ALLOWANCE_S = 1800
"""Seconds added to a training stage's estimated run time: loading the model, evaluation, checkpoint saves."""

DEFAULT_TIME = {"data": "04:00:00", "merge": "04:00:00", "gguf": "04:00:00", "sft": "1-00:00:00",
                "dpo": "1-00:00:00", "cpt": "1-00:00:00", "orpo": "1-00:00:00", "kto": "1-00:00:00",
                "reward": "1-00:00:00"}
"""Time limit of a stage whose run time is not estimated (no step time, or an unknown number of steps)."""

_TIME = re.compile(r"^(?:(\d+)|(\d+):(\d{1,2})|(\d+):(\d{1,2}):(\d{1,2})"
                   r"|(\d+)-(\d{1,2})(?::(\d{1,2})(?::(\d{1,2}))?)?)$")
_MEM = re.compile(r"^(0|[1-9][0-9]*)([KMGTkmgt]?)$")
_MEM_UNITS = {"": MIB, "K": KIB, "M": MIB, "G": GIB, "T": TIB}

SetIn = Literal["stage", "hardware"]
"""Where a Slurm setting was declared: the stage's ``slurm`` block or ``hardware.slurm``."""

_T = TypeVar("_T")


@dataclass(frozen=True)
class Resources:
    """What one stage needs, whatever launches it."""

    device: Literal["cuda", "cpu"]
    """Where the stage computes."""
    nodes: int
    """Nodes (one launcher task each)."""
    gpus_per_node: int
    """GPUs per node; 0 for CPU-only stages."""
    processes_per_node: int
    """Runtime processes on each node: one per GPU for a training stage on GPUs, ``cpu_processes`` for one on the
    CPU, otherwise 1."""
    host_bytes: int | None
    """The estimator's host-memory figure per node (``StageEstimate.host_bytes``), when it has one."""
    steps: int | None
    """Optimizer steps of a training stage: ``max_steps``, or epochs × the training rows (when every dataset file
    was read whole) over the effective batch."""
    steps_at_most: bool
    """``steps`` counts examples before packing, so it is an upper bound."""
    run_time_s: float | None
    """Estimated run time: steps × the estimated step time (training stages on a GPU)."""


@dataclass(frozen=True)
class SlurmJob:
    """What one stage's sbatch job asks Slurm for, and why."""

    name: str
    """Job name: ``<pipeline>-<stage id>``."""
    partition: str | None
    """``--partition``."""
    account: str | None
    """``--account``."""
    qos: str | None
    """``--qos``."""
    constraint: str | None
    """``--constraint``."""
    reservation: str | None
    """``--reservation``."""
    nodes: int
    """``--nodes``."""
    gpus_per_node: int
    """GPUs per node (0: a CPU-only job)."""
    gpu_type: str | None
    """The GPU type the request names (``hardware.slurm.gpu_type``), if any."""
    gpu_option: tuple[str, str] | None
    """The GPU request: (``gpus-per-node``, ``[TYPE:]N``) or (``gres``, ``gpu[:TYPE]:N``)."""
    exclusive: bool
    """Whole nodes (``--exclusive``)."""
    exclusive_reason: str
    """Why (or why not) whole nodes."""
    cpus_per_task: int | None
    """``--cpus-per-task`` (None: every CPU of the whole nodes)."""
    mem: str | None
    """``--mem`` per node (``0``: all of it); None when ``mem_per_gpu`` is used."""
    mem_per_gpu: str | None
    """``--mem-per-gpu``."""
    mem_bytes: int | None
    """Memory per node the job asks for in bytes (None: all of the node's)."""
    mem_need_bytes: int | None
    """The memory need per node this request was derived from or is checked against: the estimator's host
    figure plus the runtime processes."""
    mem_reason: str
    """Where the memory request comes from."""
    mem_set_in: SetIn | None
    """Where the request was declared: the stage's ``slurm`` block or ``hardware.slurm`` (None: derived)."""
    time: str
    """``--time``."""
    time_s: int | None
    """The limit in seconds (None: no limit, ``0``)."""
    time_reason: str
    """Where the time limit comes from."""
    time_set_in: SetIn | None
    """Where the limit was declared (None: derived)."""
    requeue: bool
    """Requeue on preemption or at the time limit (``--requeue``, ``--signal=B:USR1@lead``)."""
    signal_lead_s: int
    """Seconds before the end at which the job gets SIGUSR1."""
    output: str
    """``--output``: the job's stdout file, relative to the project root."""
    error: str
    """``--error``: the job's stderr file."""
    extra: tuple[tuple[str, str], ...]
    """Further ``#SBATCH`` options, sorted by name."""
    container: ContainerSpec | None
    """The container the stage's launcher runs in."""

    @property
    def directives(self) -> tuple[tuple[str, str | None], ...]:
        """Every ``#SBATCH`` option in order, as (long name, value or None for a flag)."""
        out: list[tuple[str, str | None]] = [("job-name", self.name), ("nodes", str(self.nodes)),
                                             ("ntasks-per-node", "1")]
        if self.gpu_option:
            out.append(self.gpu_option)
        if self.cpus_per_task:
            out.append(("cpus-per-task", str(self.cpus_per_task)))
        out.append(("mem-per-gpu", self.mem_per_gpu) if self.mem_per_gpu else ("mem", self.mem or "0"))
        out.append(("time", self.time))
        out += [(k, v) for k, v in (("partition", self.partition), ("account", self.account), ("qos", self.qos),
                                    ("constraint", self.constraint), ("reservation", self.reservation)) if v]
        out += list(self.extra)
        if self.exclusive:
            out.append(("exclusive", None))
        out += [("output", self.output), ("error", self.error)]
        if self.requeue:
            out += [("open-mode", "append"), ("requeue", None), ("signal", f"B:USR1@{self.signal_lead_s}")]
        return tuple(out)

    @property
    def gpu_hours(self) -> float:
        """GPU hours booked at the time limit: whole nodes count every GPU of the node."""
        if self.gpus_per_node == 0 or self.time_s is None:
            return 0.0
        return self.nodes * self.gpus_per_node * self.time_s / 3600


# --- what a stage needs --------------------------------------------------------------------------------------------

def stage_resources(ctx: "Context", index: int, estimate: StageEstimate | None) -> Resources:
    """What the stage at ``index`` needs: where it runs (its ``ResolvedStage``), the estimator's host figure and
    its run time."""
    facts = ctx.stages[index]
    host = estimate.host_bytes if estimate is not None and estimate.host_bytes else None
    steps, at_most, run_time = None, False, None
    if facts.train is not None:
        steps, at_most = facts.train.steps, facts.train.steps_at_most
        step_time = estimate.step_time_s if estimate is not None else None
        if facts.device == "cuda" and steps is not None and step_time:
            run_time = steps * step_time
    return Resources(facts.device, facts.nodes, facts.gpus_per_node, facts.processes_per_node, host, steps, at_most,
                     run_time)


# --- what its Slurm job asks for -----------------------------------------------------------------------------------

def slurm_job(ctx: "Context", index: int, res: Resources) -> SlurmJob | None:
    """The sbatch job of the stage at ``index`` (None without ``hardware.slurm``)."""
    hw = ctx.pipeline.hardware
    stage = ctx.pipeline.stages[index]
    top = hw.slurm
    if top is None:
        return None
    own = stage.slurm or StageSlurmSpec()
    gpu = res.gpus_per_node > 0
    partition, constraint = _partition(top, own, gpu)
    exclusive, why = _exclusive(top, own, res)
    cpus = _pick(own.cpus_per_task, top.cpus_per_task)
    if cpus is None and not exclusive:
        cpus = CPUS_PER_GPU * res.gpus_per_node if gpu else CPU_STAGE_CPUS
    mem, mem_per_gpu, mem_bytes, need, mem_reason, mem_set_in = _memory(ctx, index, top, own, res, exclusive)
    time, time_s, time_reason, time_set_in = _time(stage.kind, top, own, res)
    requeue = own.requeue if own.requeue is not None else top.requeue
    logs = f"{top.logs_dir.rstrip('/')}/{ctx.pipeline.name}/{stage.id}-%j"
    return SlurmJob(
        name=f"{ctx.pipeline.name}-{stage.id}", partition=partition, account=_pick(own.account, top.account),
        qos=_pick(own.qos, top.qos), constraint=constraint, reservation=_pick(own.reservation, top.reservation),
        nodes=res.nodes, gpus_per_node=res.gpus_per_node,
        gpu_type=top.gpu_type if gpu else None, gpu_option=_gpu_option(top, res.gpus_per_node),
        exclusive=exclusive, exclusive_reason=why, cpus_per_task=cpus, mem=mem, mem_per_gpu=mem_per_gpu,
        mem_bytes=mem_bytes, mem_need_bytes=need, mem_reason=mem_reason, mem_set_in=mem_set_in, time=time,
        time_s=time_s, time_reason=time_reason, time_set_in=time_set_in, requeue=requeue, signal_lead_s=top.signal_lead_s, output=f"{logs}.out",
        error=f"{logs}.err", extra=tuple(sorted({**top.extra, **own.extra}.items())), container=hw.container,
    )


def _pick(*values: _T | None) -> _T | None:
    """The first value that is set."""
    return next((v for v in values if v is not None), None)


def _partition(top: SlurmSpec, own: StageSlurmSpec, gpu: bool) -> tuple[str | None, str | None]:
    """(partition, constraint): a CPU-only stage goes to ``cpu_partition`` when set, without the GPU nodes'
    constraint."""
    to_cpu_partition = not gpu and top.cpu_partition is not None
    partition = _pick(own.partition, top.cpu_partition if to_cpu_partition else top.partition)
    constraint = _pick(own.constraint, None if to_cpu_partition else top.constraint)
    return partition, constraint


def _exclusive(top: SlurmSpec, own: StageSlurmSpec, res: Resources) -> tuple[bool, str]:
    if own.exclusive is not None:
        return own.exclusive, "set in the stage's slurm block"
    if top.exclusive is not None:
        return top.exclusive, "hardware.slurm.exclusive"
    if res.nodes > 1:
        return True, f"{res.nodes} nodes"
    if res.gpus_per_node and res.gpus_per_node >= top.node_gpus:
        return True, f"all {top.node_gpus} GPUs of a node"
    if res.gpus_per_node:
        return False, f"{res.gpus_per_node} of {top.node_gpus} GPUs of a node"
    return False, "a CPU-only stage"


def _gpu_option(top: SlurmSpec, gpus: int) -> tuple[str, str] | None:
    if not gpus:
        return None
    typed = f"{top.gpu_type}:" if top.gpu_type else ""
    if top.gpu_request == "gres":
        return "gres", f"gpu:{typed}{gpus}"
    return "gpus-per-node", f"{typed}{gpus}"


def memory_need(ctx: "Context", index: int, res: Resources) -> int:
    """Host memory per node a stage needs: the estimator's figure, plus ``RUNTIME_PROCESS_BYTES`` per runtime
    process, plus for a training stage on GPUs the weights loaded through host memory before they move to the
    GPUs (``loaded_weights``)."""
    host, weights, _ = _need_parts(ctx, index, res)
    return host + res.processes_per_node * RUNTIME_PROCESS_BYTES + weights


def loaded_weights(ctx: "Context", index: int, res: Resources) -> tuple[int, str]:
    """(bytes per node, how) of the weights a training stage on GPUs loads through host memory, at its precision
    (16-bit, or 32-bit at ``precision: fp32``; a QLoRA base is loaded 16-bit and quantized on the GPU): every
    process loads all of them, except under ZeRO-3, which builds a 16-bit model partitioned (``zero3_init``: each
    process holds its share), and FSDP2, whose ``cpu_ram_efficient_loading`` loads them on the first process only.
    Neither applies to a 4-bit base: under ZeRO-3 every process loads all of it, and under FSDP2 every process
    quantizes all of it in host memory before sharding it onto its GPU, which the estimator's host figure counts
    (``estimate.states.host_load``): nothing more here."""
    stage, train = ctx.pipeline.stages[index], ctx.stages[index].train
    if train is None or res.device != "cuda" or ctx.shape is None:
        return 0, ""
    full = param_counts(ctx.shape).total * (4 if getattr(stage, "precision", None) == "fp32" else 2)
    strategy = train.strategy
    world = res.nodes * res.gpus_per_node
    count = res.processes_per_node
    if train.method == "qlora" and strategy == "fsdp2":
        return 0, ""
    if strategy == "zero3" and train.method != "qlora":
        share = res.processes_per_node * full // world
        return share, f"{size(share)} weights (this node's ZeRO-3 shares)"
    if strategy == "fsdp2":
        return full, f"{size(full)} weights (loaded by the first process)"
    return count * full, (f"{count} × " if count > 1 else "") + f"{size(full)} weights"


def _need_parts(ctx: "Context", index: int, res: Resources) -> tuple[int, int, str]:
    """(the estimator's host bytes per node, weights loaded per node, how)."""
    weights, how = loaded_weights(ctx, index, res)
    return res.host_bytes or 0, weights, how


def _memory(ctx: "Context", index: int, top: SlurmSpec, own: StageSlurmSpec, res: Resources,
            exclusive: bool) -> tuple[str | None, str | None, int | None, int, str, SetIn | None]:
    """(mem, mem_per_gpu, bytes per node, need per node, reason, where declared)."""
    need = memory_need(ctx, index, res)
    gpu = res.gpus_per_node > 0
    for level, spec in _declared(own, top):
        where = "the stage's slurm block" if level == "stage" else "hardware.slurm"
        if spec.mem is not None:
            return spec.mem, None, mem_bytes(spec.mem), need, f"{where}: mem {spec.mem}", level
        if spec.mem_per_gpu is not None and gpu:
            declared = mem_bytes(spec.mem_per_gpu)
            total = declared * res.gpus_per_node if declared is not None else None
            return None, spec.mem_per_gpu, total, need, f"{where}: mem_per_gpu {spec.mem_per_gpu}", level
    parts = need_text(ctx, index, res)
    summed = f" = {size(need)}" if " + " in parts else ""
    if exclusive:
        return "0", None, None, need, f"whole nodes: all of their memory; the stage needs {parts}{summed}", None
    reason = f"{parts}{summed}, + {MEM_HEADROOM - 1:.0%} headroom"
    if gpu and top.mem_request == "mem-per-gpu":
        per_gpu_gib = max(1, math.ceil(need * MEM_HEADROOM / res.gpus_per_node / GIB))
        return None, f"{per_gpu_gib}G", per_gpu_gib * GIB * res.gpus_per_node, need, \
            f"{reason}, over {res.gpus_per_node} GPU(s)", None
    mem = derived_mem(need)
    return mem, None, mem_bytes(mem), need, reason, None


def need_text(ctx: "Context", index: int, res: Resources) -> str:
    """What ``memory_need`` adds up: ``host estimate 133.4 GiB + 2.0 GiB runtime``."""
    host, weights, how = _need_parts(ctx, index, res)
    count = res.processes_per_node
    parts = [(f"{count} × " if count > 1 else "") + f"{size(RUNTIME_PROCESS_BYTES)} runtime"]
    if host:
        parts.insert(0, f"host estimate {size(host)}")
    if weights:
        parts.append(how)
    return " + ".join(parts)


def derived_mem(need: int) -> str:
    """The ``--mem`` ftplan asks for a need of ``need`` bytes per node: with headroom, in whole GiB."""
    return f"{max(1, math.ceil(need * MEM_HEADROOM / GIB))}G"


def _time(kind: str, top: SlurmSpec, own: StageSlurmSpec,
          res: Resources) -> tuple[str, int | None, str, SetIn | None]:
    """(limit, seconds, reason, where declared)."""
    for level, spec in _declared(own, top):
        if spec.time is not None:
            where = "the stage's slurm block" if level == "stage" else "hardware.slurm"
            return spec.time, time_seconds(spec.time), f"{where}: time {spec.time}", level
    if res.run_time_s is not None:
        seconds = math.ceil((res.run_time_s * TIME_MARGIN + TIME_ALLOWANCE_S) / 3600) * 3600
        text = format_time(seconds)
        bound = "at most " if res.steps_at_most else ""
        return text, seconds, (f"estimated run time {bound}{format_duration(res.run_time_s)} × {TIME_MARGIN:g} + "
                               f"{TIME_ALLOWANCE_S // 60} min, rounded up to the hour"), None
    default = DEFAULT_TIME[kind]
    why = "without a run-time estimate" if kind in TRAIN_KINDS else ", which have no run-time estimate"
    return default, time_seconds(default), f"the default for {kind} stages{' ' if why[0] != ',' else ''}{why}", None


def _declared(own: StageSlurmSpec, top: SlurmSpec) -> tuple[tuple[SetIn, StageSlurmSpec | SlurmSpec], ...]:
    """Where a job setting can be declared, in the order that wins: the stage's block, then ``hardware.slurm``."""
    return (("stage", own), ("hardware", top))


def time_limit_share(res: Resources, job: SlurmJob | None) -> float | None:
    """The stage's estimated run time as a share of its job's time limit (above 1: it would be stopped, FT332);
    None without a run-time estimate, a job or a limit."""
    if res.run_time_s is None or job is None or not job.time_s:
        return None
    return res.run_time_s / job.time_s


def time_seconds(value: str) -> int | None:
    """Seconds of a Slurm time limit (``MM``, ``MM:SS``, ``HH:MM:SS``, ``D-HH``, ``D-HH:MM``, ``D-HH:MM:SS``);
    None for ``0`` (no limit) or a value Slurm does not accept."""
    m = _TIME.match(value)
    if not m:
        return None
    g = [int(x) if x is not None else None for x in m.groups()]
    n = [x or 0 for x in g]  # the groups of the form that matched are all set, but the last two of D-HH[:MM[:SS]]
    if g[0] is not None:
        seconds = n[0] * 60
    elif g[1] is not None:
        seconds = n[1] * 60 + n[2]
    elif g[3] is not None:
        seconds = n[3] * 3600 + n[4] * 60 + n[5]
    else:
        seconds = n[6] * 86400 + n[7] * 3600 + n[8] * 60 + n[9]
    return seconds or None


def format_time(seconds: int) -> str:
    """``HH:MM:SS``, or ``D-HH:MM:SS`` from a day up (what sbatch reads)."""
    days, rest = divmod(int(seconds), 86400)
    h, rest = divmod(rest, 3600)
    m, s = divmod(rest, 60)
    return f"{days}-{h:02d}:{m:02d}:{s:02d}" if days else f"{h:02d}:{m:02d}:{s:02d}"


def mem_bytes(value: str) -> int | None:
    """Bytes of a Slurm memory size (``64G``; megabytes without a unit); None for ``0`` (all of a node's)."""
    m = _MEM.match(value)
    if not m or m.group(1) == "0":
        return None
    return int(m.group(1)) * _MEM_UNITS[m.group(2).upper()]

