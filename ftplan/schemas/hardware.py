"""Target hardware: the GPUs the pipeline is checked against and launched on, and its Slurm settings."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from .base import EnvName, FtplanModel, NonEmptyStr, SafeToken, ShellLine


class SlurmSpec(FtplanModel):
    """Slurm batch settings; each stage becomes one sbatch job chained to the previous one with ``afterok``.

    Values go into ``#SBATCH`` lines, which Slurm reads literally (no shell expansion), so they are restricted
    to characters that need no quoting."""

    partition: SafeToken | None = None
    """Partition (``--partition``)."""

    account: SafeToken | None = None
    """Account to charge (``--account``)."""

    qos: SafeToken | None = None
    """Quality of service (``--qos``)."""

    time: SafeToken = "24:00:00"
    """Wall-clock limit per stage job: ``MM``, ``HH:MM:SS`` or ``D-HH:MM:SS`` (``--time``)."""

    constraint: SafeToken | None = None
    """Node features required (``--constraint``), e.g. ``h100&ib``."""

    reservation: SafeToken | None = None
    """Reservation name (``--reservation``)."""

    cpus_per_task: int | None = Field(default=None, ge=1, le=512)
    """CPU cores per node-level launcher task (``--cpus-per-task``)."""

    mem: SafeToken | None = None
    """Memory per node (``--mem``), e.g. ``0`` for all of it or ``480G``."""

    exclusive: bool = True
    """Request whole nodes (``--exclusive``)."""

    requeue: bool = True
    """Requeue a stage job that was preempted: the job gets a signal ``signal_lead_s`` before the end, the
    stage saves a checkpoint and exits with the requeue code, and the job resumes from it."""

    signal_lead_s: int = Field(default=300, ge=30, le=3600)
    """Seconds before the time limit (or preemption) at which Slurm sends SIGUSR1 to the stage."""

    logs_dir: SafeToken = "logs"
    """Folder (relative to the project root) for the jobs' stdout/stderr files."""

    extra: dict[Literal[
        "mail-type", "mail-user", "nice", "comment", "wckey", "licenses", "gpu-bind", "distribution",
        "hint", "switches", "begin", "deadline", "clusters", "exclude", "nodelist", "network",
        "gres-flags", "mem-bind", "cpu-freq", "power", "signal-job",
    ], SafeToken] = Field(default_factory=dict)
    """Further ``#SBATCH`` long options by name (without ``--``), e.g. ``{mail-type: END}``. Options that
    ftplan sets itself (nodes, tasks, GPUs, time, output) cannot be overridden here."""


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

    modules: list[NonEmptyStr] = Field(default_factory=list)
    """Environment modules loaded before each stage (``module load NAME``), e.g. ``cuda/12.4``."""

    venv: NonEmptyStr | None = None
    """Python virtual environment activated before each stage (``source VENV/bin/activate``)."""

    setup: list[ShellLine] = Field(default_factory=list)
    """Shell lines run verbatim before each stage (after modules and venv). These are code you own: they
    are not quoted."""

    env: dict[EnvName, str] = Field(default_factory=dict)
    """Environment variables set for every stage, e.g. ``{NCCL_DEBUG: WARN}``."""

    main_process_port: int = Field(default=29500, ge=1024, le=65535)
    """TCP port of the rendezvous on the first node (multi-GPU and multi-node stages)."""

    slurm: SlurmSpec | None = None
    """Slurm settings; when present ``compile`` also writes ``slurm/*.sbatch`` and ``slurm/submit.sh``."""

    @property
    def world_size(self) -> int:
        """Total training processes: one per GPU on every node (1 on CPU)."""
        return 1 if self.device == "cpu" else self.gpus_per_node * self.nodes
