"""The commands a reviewer copies from ``plan.md`` and ``plan.html``: a stage's launch command and the scripts that
run the whole plan, as run from the project folder.

Both pages write them from the same few plan values (the plan folder, the stage's folder and launcher, its node
count and the rendezvous port), so ``plan.html``, which is rendered from ``plan.json`` alone, shows exactly what
``plan.md`` shows.
"""

from __future__ import annotations

import posixpath

from .shell import shq


def plan_path(plan_dir: str, *parts: str) -> str:
    """A path inside the plan folder, relative to the project folder (``plans/x/run.sh``)."""
    return posixpath.normpath(posixpath.join(plan_dir, *parts))


def launch_command(plan_dir: str, stage_dir: str, launcher: str, nodes: int, port: int,
                   rendezvous_timeout_s: int | None = None) -> str:
    """The stage's launch command, as run from the project folder.

    On several nodes the accelerate YAML holds only node 0's view (``machine_rank: 0``, no head address), so the
    command shows the per-node rendezvous arguments the sbatch script passes: without them accelerate's launcher
    would rendezvous at ``None:<port>``; and the rendezvous timeout (``rendezvous_option``), when the plan has one
    (plans written before ``hardware.rendezvous_timeout_s`` have none)."""
    args = shq(plan_path(plan_dir, stage_dir, "args.json"))
    if launcher != "accelerate":
        return f"python -m ftplan_runtime {args}"
    config = f"--config_file {shq(plan_path(plan_dir, stage_dir, 'accelerate.yaml'))}"
    if nodes > 1:
        config += (f' --num_machines {nodes} --machine_rank "$SLURM_NODEID" --main_process_ip '
                   f'"$HEAD_NODE" --main_process_port {port}') + rendezvous_option(nodes, rendezvous_timeout_s)
    return f"accelerate launch {config} -m ftplan_runtime {args}"


def rendezvous_option(nodes: int, timeout_s: int | None) -> str:
    """`` --rdzv_conf timeout=N`` for a launch whose launchers meet over several nodes (``hardware.
    rendezvous_timeout_s``: how long the first node's launcher waits for the others), else nothing."""
    return f" --rdzv_conf timeout={timeout_s}" if nodes > 1 and timeout_s is not None else ""


def run_commands(plan_dir: str, slurm: bool, nodes: int = 1) -> list[tuple[str, str]]:
    """``(command, what it does)`` for running the whole plan (``view_model.run_commands``, the words plan.md and
    the terminal use): ``run.sh``, and ``submit.sh`` with Slurm jobs; only ``submit.sh`` when a stage spans several
    ``nodes`` (``run.sh`` refuses such a plan and exits 1)."""
    from ..view_model import run_commands as commands

    return commands(plan_dir, slurm=slurm, nodes=nodes)
