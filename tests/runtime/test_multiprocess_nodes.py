"""Two nodes on one host: the launch that a compiled 2-node sbatch script runs on each node, run here twice as
machine ranks 0 and 1 (gloo, the tiny model), with the environment Slurm gives each node's task.

From the compiled ``slurm/<id>.sbatch`` each node runs the script's own rendezvous block (the head node: the first
of ``scontrol show hostnames "$SLURM_JOB_NODELIST"``, answered here by a stand-in ``scontrol``) and then the command
its ``srun`` starts on every node (``bash -c 'trap "" USR1; exec accelerate launch ... --machine_rank
"$SLURM_NODEID" --main_process_ip "$HEAD_NODE" --main_process_port PORT --rdzv_conf timeout=N ...'``), with
``SLURM_NNODES``, ``SLURM_NODEID`` and the other variables Slurm sets for a task.

* the 2-node job completes, and its metrics.json holds both nodes' processes;
* a launcher started with another plan's config (2 processes on its node where the plan has 1) fails within
  seconds on both nodes, each naming the size it expected and the sizes the launchers started (the runtime's
  ``check_launch``), not at the rendezvous or process-group timeout (600 s and 30 min);
* a node whose partner never starts gives up after ``hardware.rendezvous_timeout_s`` saying how many joined.
"""

from __future__ import annotations

import importlib.util
import re
import shlex
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytest.importorskip("torch")
pytest.importorskip("accelerate")

_spec = importlib.util.spec_from_file_location("ftplan_multiprocess_plans", Path(__file__).with_name(
    "multiprocess_plans.py"))
mp = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(mp)

pytestmark = pytest.mark.slow

FAIL_FAST_S = 120
"""A mismatched launch must end well within this (measured: about 20 to 60 s on a loaded 2-core machine, most of it
Python starting three launchers and their processes), far below torch's 600 s rendezvous and 30 min
process-group timeouts that it would otherwise wait for."""
RENDEZVOUS_TIMEOUT_S = 15
"""The short ``rendezvous_timeout_s`` of the plan whose second node never starts."""


def node_script(sbatch: str) -> tuple[str, list[str]]:
    """(the bash a node runs, its arguments) from a compiled sbatch script: the rendezvous block, then the command
    that ``srun`` starts on every node (without ``srun`` and its options, which place it on the node)."""
    block = re.search(r"^HEAD_NODE=\$\(scontrol.*?^export HEAD_NODE$", sbatch, re.S | re.M)
    assert block, "no rendezvous block in the sbatch script"
    launch = re.search(r"^srun (?:[^\n]*\\\n)+[^\n]*&$", sbatch, re.M)
    assert launch, "no srun launch in the sbatch script"
    words = shlex.split(launch.group(0).replace("\\\n", " ").rstrip("&"))
    command = words[words.index("bash"):]
    assert command[1] == "-c" and "accelerate launch" in command[2], command
    script = "set -euo pipefail\n" + block.group(0) + "\nexec " + shlex.join(command) + "\n"
    return script, []


def slurm_env(root: Path, node: int, nodes: int = 2) -> dict[str, str]:
    """What Slurm sets for the task of node ``node`` of a ``nodes``-node job on hosts ``localhost``, plus a stand-in
    ``scontrol`` that lists them, first on PATH."""
    bin_dir = root / "fake-slurm"
    if not (bin_dir / "scontrol").is_file():
        bin_dir.mkdir(exist_ok=True)
        (bin_dir / "scontrol").write_text('#!/bin/sh\n[ "$1 $2" = "show hostnames" ] || exit 1\n'
                                          f"for i in $(seq {nodes}); do echo localhost; done\n")
        (bin_dir / "scontrol").chmod(0o755)
    env = mp.script_env(SLURM_JOB_ID="4242", SLURM_JOB_NUM_NODES=str(nodes), SLURM_NNODES=str(nodes),
                        SLURM_NODEID=str(node), SLURM_PROCID=str(node), SLURM_LOCALID="0", SLURM_NTASKS=str(nodes),
                        SLURM_JOB_NODELIST="localhost", SLURM_CPUS_ON_NODE="1", SLURMD_NODENAME="localhost")
    env["PATH"] = f"{bin_dir}:{env['PATH']}"
    return env


def start_node(root: Path, plan: Path, stage: str, node: int) -> subprocess.Popen:
    """Start node ``node``'s part of the compiled ``slurm/<stage>.sbatch`` of ``plan`` (from the project root)."""
    script, _ = node_script((plan / "slurm" / f"{stage}.sbatch").read_text())
    config, args = plan / "stages" / stage / "accelerate.yaml", plan / "stages" / stage / "args.json"
    return subprocess.Popen(["bash", "-c", script, f"ftplan-{stage}", str(config.relative_to(root)),
                             str(args.relative_to(root))], cwd=root, env=slurm_env(root, node),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def finish(procs: list[subprocess.Popen], timeout: float) -> list[tuple[int, str]]:
    out = []
    for p in procs:
        try:
            text, _ = p.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            p.kill()
            text, _ = p.communicate()
            out.append((124, text))
            continue
        out.append((p.returncode, text))
    return out


@pytest.fixture(scope="module")
def project(tmp_path_factory, tiny_base):
    """The project with its data stage run, and four 2-node plans on one rendezvous port: ``two`` and ``other``
    (2 nodes × 1 process), ``four`` (2 nodes × 2 processes) and ``short`` (2 × 1, a short rendezvous timeout)."""
    root = mp.make_project(tmp_path_factory.mktemp("nodes") / "project", tiny_base)
    port = mp.free_port()
    hw = {"nodes": 2, "main_process_port": port, "slurm": {"partition": "cpu"}}
    plans = {
        "two": mp.compile_plan(root, mp.pipeline(root, "two.yaml", stage="two", hardware=hw), "plans/two"),
        "other": mp.compile_plan(root, mp.pipeline(root, "other.yaml", stage="other", hardware=hw), "plans/other"),
        "four": mp.compile_plan(root, mp.pipeline(root, "four.yaml", stage="four",
                                                  hardware={**hw, "cpu_processes": 2}), "plans/four"),
        "short": mp.compile_plan(root, mp.pipeline(root, "short.yaml", stage="short",
                                                   hardware={**hw, "rendezvous_timeout_s": RENDEZVOUS_TIMEOUT_S}),
                                 "plans/short"),
    }
    r = subprocess.run([sys.executable, "-m", "ftplan_runtime", "plans/two/stages/data/args.json"], cwd=root,
                       env=mp.script_env(), capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-4000:]
    return root, plans


def test_the_sbatch_launch_runs_as_two_nodes_on_one_host(project):
    root, plans = project
    sbatch = (plans["two"] / "slurm" / "two.sbatch").read_text()
    assert '--machine_rank "$SLURM_NODEID" --main_process_ip "$HEAD_NODE"' in sbatch
    assert "--rdzv_conf timeout=600 " in sbatch  # the default, written out
    results = finish([start_node(root, plans["two"], "two", node) for node in (0, 1)], timeout=600)
    for node, (rc, text) in enumerate(results):
        assert rc == 0, f"node {node}:\n{text[-5000:]}"
    m = mp.metrics(root, "two")
    assert m["world_size"] == 2 and m["steps"] == 3
    assert [r["rank"] for r in m["ranks"]] == [0, 1]
    assert [r["local_rank"] for r in m["ranks"]] == [0, 0]  # one process on each node
    assert (root / "out/two/_COMPLETE").is_file()


def test_a_launcher_expecting_another_world_size_fails_fast_naming_both_sizes(project):
    root, plans = project
    start = time.monotonic()
    results = finish([start_node(root, plans["other"], "other", 0), start_node(root, plans["four"], "four", 1)],
                     timeout=FAIL_FAST_S)
    elapsed = time.monotonic() - start
    (rc0, out0), (rc1, out1) = results
    assert rc0 not in (0, 124) and rc1 not in (0, 124), (out0[-3000:], out1[-3000:])
    assert elapsed < FAIL_FAST_S
    assert ("the plan promised world size = 2 (2 machine(s) × 1 process(es)), but this process has a launch of "
            "3 process(es) on 2 machine(s): machine rank 0 started 1 and the other 1 machine(s) 2") in out0
    assert ("the plan promised world size = 4 (2 machine(s) × 2 process(es)), but this process has a launch of "
            "3 process(es) on 2 machine(s): machine rank 1 started 2 and the other 1 machine(s) 1") in out1
    assert "exitcode  : 3" in out0 and "exitcode  : 3" in out1  # the preflight's exit code, on every process
    assert "Building labels" not in out0 + out1  # it failed before any data or model was loaded


def test_a_node_whose_partner_never_starts_gives_up_after_the_rendezvous_timeout(project):
    root, plans = project
    assert f"--rdzv_conf timeout={RENDEZVOUS_TIMEOUT_S} " in (plans["short"] / "slurm" / "short.sbatch").read_text()
    start = time.monotonic()
    [(rc, out)] = finish([start_node(root, plans["short"], "short", 0)], timeout=RENDEZVOUS_TIMEOUT_S + 90)
    elapsed = time.monotonic() - start
    assert rc not in (0, 124), out[-3000:]
    assert re.search(r"Timed out after \d+ seconds waiting for clients\. 1/2 clients joined", out), out[-3000:]
    assert RENDEZVOUS_TIMEOUT_S <= elapsed < RENDEZVOUS_TIMEOUT_S + 90
