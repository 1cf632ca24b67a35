"""Target hardware: the GPUs the pipeline is checked against and launched on, and its Slurm settings."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from .base import (ContainerImage, ContainerMount, EnvName, FtplanModel, GresTypeName, MemSize, NonEmptyStr,
                   SafeToken, ShellLine)


SbatchExtraKey = Literal[
    "mail-type", "mail-user", "nice", "comment", "wckey", "licenses", "gpu-bind", "distribution",
    "hint", "switches", "begin", "deadline", "clusters", "exclude", "nodelist", "network",
    "gres-flags", "mem-bind", "cpu-freq", "power", "signal-job",
]
"""``#SBATCH`` long options that ``extra`` may set: none of them changes a job's shape."""


class StageSlurmSpec(FtplanModel):
    """One stage's own Slurm settings: each one set here replaces the pipeline's ``hardware.slurm`` value, or
    what ftplan derives, for this stage's job only. Not part of the stage's ``args.json``: changing them does
    not make a finished stage run again."""

    partition: SafeToken | None = None
    """Partition of this stage's job (``--partition``)."""

    account: SafeToken | None = None
    """Account charged for this stage's job (``--account``)."""

    qos: SafeToken | None = None
    """Quality of service of this stage's job (``--qos``)."""

    constraint: SafeToken | None = None
    """Node features this stage's job needs (``--constraint``)."""

    reservation: SafeToken | None = None
    """Reservation this stage's job runs in (``--reservation``)."""

    time: SafeToken | None = None
    """Wall-clock limit of this stage's job: ``MM``, ``HH:MM:SS`` or ``D-HH:MM:SS`` (``--time``). Unset: the
    pipeline's ``time``, else derived from the stage's estimated run time."""

    cpus_per_task: int | None = Field(default=None, ge=1, le=4096)
    """CPU cores per node for this stage (``--cpus-per-task``; one launcher task per node)."""

    mem: MemSize | None = None
    """Memory per node for this stage (``--mem``), such as ``200G``; ``0`` for all of it. It must cover the
    stage's host-memory estimate (FT330)."""

    mem_per_gpu: MemSize | None = None
    """Memory per allocated GPU for this stage (``--mem-per-gpu``), instead of ``mem``; GPU stages only."""

    exclusive: bool | None = None
    """Whole nodes for this stage (``--exclusive``), or not. Unset: the pipeline's ``exclusive``, else whole
    nodes only for a job over several nodes or over every GPU of a node (``node_gpus``)."""

    requeue: bool | None = None
    """Requeue this stage's job when it is preempted or reaches its time limit; unset: the pipeline's
    ``requeue``."""

    extra: dict[SbatchExtraKey, SafeToken] = Field(default_factory=dict)
    """Further ``#SBATCH`` options for this stage, merged over the pipeline's ``extra``."""


class SlurmSpec(FtplanModel):
    """Slurm batch settings; each stage becomes one sbatch job chained to the previous one with ``afterok``.

    Each job asks for what its stage needs: a training stage for its nodes and GPUs, a data, GGUF or CPU merge
    stage for CPU cores and memory only (on ``cpu_partition`` when set). Values set here apply to every stage
    that does not set its own in the stage's ``slurm:`` block; unset ones are derived per stage (memory from the
    host-memory estimate, time from the estimated run time). ``plan.md`` shows each job's shape.

    Values go into ``#SBATCH`` lines, which Slurm reads literally (no shell expansion), so they are restricted
    to characters that need no quoting."""

    partition: SafeToken | None = None
    """Partition (``--partition``) of every stage, except CPU-only stages when ``cpu_partition`` is set."""

    cpu_partition: SafeToken | None = None
    """Partition of the stages that use no GPU (data, GGUF, a merge on the CPU); unset: ``partition``."""

    account: SafeToken | None = None
    """Account to charge (``--account``)."""

    qos: SafeToken | None = None
    """Quality of service (``--qos``)."""

    time: SafeToken | None = None
    """Wall-clock limit of every stage job: ``MM``, ``HH:MM:SS`` or ``D-HH:MM:SS`` (``--time``). Unset: per
    stage, the estimated run time (steps × estimated step time) with a margin for a training stage with an
    estimate, otherwise a default of its kind (``plan.md`` says which)."""

    constraint: SafeToken | None = None
    """Node features required (``--constraint``), such as ``h100&ib``; for the jobs on ``partition`` (not those
    sent to ``cpu_partition``)."""

    reservation: SafeToken | None = None
    """Reservation name (``--reservation``)."""

    cpus_per_task: int | None = Field(default=None, ge=1, le=4096)
    """CPU cores per node (``--cpus-per-task``; one launcher task per node). Unset: all of them for a job on
    whole nodes, 8 per GPU for a GPU job on part of a node, 8 for a CPU-only stage."""

    mem: MemSize | None = None
    """Memory per node of every stage (``--mem``), such as ``480G``; ``0`` for all of it. Unset: all of it for a
    job on whole nodes, otherwise the stage's host-memory estimate with headroom. It must cover each stage's
    estimate (FT330)."""

    mem_per_gpu: MemSize | None = None
    """Memory per allocated GPU (``--mem-per-gpu``) of the GPU stages, instead of ``mem``."""

    mem_request: Literal["mem", "mem-per-gpu"] = "mem"
    """How a GPU job on part of a node asks for the memory ftplan derives: ``mem`` (``--mem``, per node) or
    ``mem-per-gpu`` (``--mem-per-gpu``, the need divided over its GPUs), for sites that bill memory per GPU."""

    exclusive: bool | None = None
    """Whole nodes for every stage (``true``, ``--exclusive``) or for none (``false``). Unset: whole nodes only
    for a job over several nodes or over every GPU of a node (``node_gpus``)."""

    node_gpus: int = Field(default=8, ge=1, le=64)
    """GPUs in one node of the GPU partition: a job that uses all of them takes the whole node."""

    gpu_request: Literal["gpus-per-node", "gres"] = "gpus-per-node"
    """How GPU jobs ask for GPUs: ``gpus-per-node`` (``--gpus-per-node=[TYPE:]N``) or ``gres``
    (``--gres=gpu[:TYPE]:N``, for sites that require typed generic resources or use ``select/cons_res``)."""

    gpu_type: GresTypeName | None = None
    """GPU type name in the request, as the site's ``gres.conf`` calls it (``h100`` gives
    ``--gres=gpu:h100:8``); unset: any GPU of the partition."""

    requeue: bool = True
    """Requeue a stage job that was preempted: the job gets a signal ``signal_lead_s`` before the end, the
    stage saves a checkpoint and exits with the requeue code, and the job resumes from it."""

    signal_lead_s: int = Field(default=300, ge=30, le=3600)
    """Seconds before the time limit (or preemption) at which Slurm sends SIGUSR1 to the stage."""

    logs_dir: SafeToken = "logs"
    """Folder (relative to the project root) for the jobs' logs: ``<logs_dir>/<pipeline>/<id>-<job id>.out``
    (stdout) and ``.err`` (stderr)."""

    extra: dict[SbatchExtraKey, SafeToken] = Field(default_factory=dict)
    """Further ``#SBATCH`` long options by name (without ``--``), such as ``{mail-type: END}``. Options that
    ftplan sets itself (nodes, tasks, GPUs, memory, time, output) cannot be set here."""


class ContainerSpec(FtplanModel):
    """A container every stage runs in. The batch script itself runs on the node (modules, ``venv`` and
    ``setup`` apply there, and ftplan's completion checks need ``ftplan`` there); the launcher it starts with
    ``srun`` runs inside the image, which must hold ``ftplan[runtime,gpu]``."""

    runtime: Literal["pyxis", "apptainer", "singularity"]
    """``pyxis`` (enroot through ``srun --container-image``), or ``apptainer``/``singularity``
    (``srun apptainer exec --nv IMAGE ...``); Slurm only."""

    image: ContainerImage
    """The image: for pyxis a registry reference such as ``nvcr.io#nvidia/pytorch:25.01-py3`` or a
    ``.sqsh`` file; for Apptainer a ``.sif`` file or a ``docker://`` address."""

    mounts: list[ContainerMount] = Field(default_factory=list)
    """Extra mounts ``SRC[:DST[:FLAGS]]`` (shared datasets, a model cache). The project folder is mounted at
    its own path and is the working directory."""

    options: list[NonEmptyStr] = Field(default_factory=list)
    """Further options, one word each, for ``srun`` (pyxis, such as ``--container-remap-root``) or for
    ``apptainer exec`` (such as ``--cleanenv``)."""


class HardwareSpec(FtplanModel):
    """Where the pipeline runs: the GPU type and count it is checked against, and how jobs start."""

    device: Literal["cuda", "cpu"] = "cuda"
    """``cuda`` for GPUs; ``cpu`` runs every stage on the CPU (tiny models, tests and demos)."""

    gpu: NonEmptyStr | None = None
    """GPU type from the catalog (``ftplan gpus``), e.g. ``h100-sxm-80gb``; required when ``device: cuda``."""

    gpus_per_node: int = Field(default=1, ge=1, le=16)
    """GPUs per node; every training stage launches one process per GPU."""

    nodes: int = Field(default=1, ge=1, le=1024)
    """Number of nodes. More than one needs a ``slurm`` block."""

    cpu_processes: int = Field(default=1, ge=1, le=64)
    """With ``device: cpu``: training processes per node. More than 1 trains data-parallel over gloo (DDP, each
    process on its share of every batch, as ``gpus_per_node`` GPUs do), to rehearse a multi-GPU or multi-node plan
    on CPUs (tests, CI); ZeRO and FSDP2 still need GPUs. With ``device: cuda`` it must stay 1: one process per GPU
    (FT300)."""

    modules: list[NonEmptyStr] = Field(default_factory=list)
    """Environment modules loaded before each stage (``module load NAME``), such as ``cuda/12.4``. They load
    with ``set -u`` off, which Lmod and environment-modules scripts need."""

    venv: NonEmptyStr | None = None
    """Python virtual environment activated before each stage (``source VENV/bin/activate``)."""

    setup: list[ShellLine] = Field(default_factory=list)
    """Shell lines run verbatim before each stage (after modules and venv, with ``set -u`` off). These are
    code you own: they are not quoted."""

    env: dict[EnvName, str] = Field(default_factory=dict)
    """Environment variables set for every stage, e.g. ``{NCCL_DEBUG: WARN}``."""

    main_process_port: int = Field(default=29500, ge=1024, le=65535)
    """TCP port of the rendezvous on the first node (multi-GPU and multi-node stages)."""

    rendezvous_timeout_s: int = Field(default=600, ge=5, le=86400)
    """Seconds the launcher on the first node waits for the other nodes' launchers to join a multi-node stage
    (torch's static rendezvous ``timeout``, passed as ``--rdzv_conf timeout=N``) before it fails with how many
    joined; torch's default is 600. Lower it to learn sooner that a node never started; keep it above the time a
    node's launcher may take to start (a container image pulled on each node counts)."""

    slurm: SlurmSpec | None = None
    """Slurm settings; when present ``compile`` also writes ``slurm/*.sbatch`` and ``slurm/submit.sh``."""

    container: ContainerSpec | None = None
    """A container the stages run in under Slurm (pyxis/enroot or Apptainer/Singularity); needs ``slurm``."""

    @property
    def world_size(self) -> int:
        """Total training processes: one per GPU on every node, or ``cpu_processes`` per node on the CPU."""
        return (self.cpu_processes if self.device == "cpu" else self.gpus_per_node) * self.nodes
