"""The compiled example plans on a real Slurm cluster with real limits (tests/slurm_cluster.sh: partitions cpu and
gpu with time limits enforced at submission, memory a consumable resource enforced by cgroups, 8 fake h100 GPUs, a
second node that never starts).

* every example's sbatch files pass ``sbatch --test-only`` as compiled, and submitted held, each job asks Slurm for
  what plan.md says: partition, nodes, GPUs (none for CPU stages), CPUs, memory, time, whole nodes;
* the tiny pipeline runs to the end under sbatch, every stage a job on the CPU partition;
* a stage that goes over its memory is killed, the job says so, and the stages after it are cancelled.
"""

from __future__ import annotations

import importlib.util

import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

_jobs_spec = importlib.util.spec_from_file_location("ftplan_slurm_jobs", Path(__file__).with_name("slurm_jobs.py"))
slurm_jobs = importlib.util.module_from_spec(_jobs_spec)
_jobs_spec.loader.exec_module(slurm_jobs)
DONE, job, wait_all = slurm_jobs.DONE, slurm_jobs.job, slurm_jobs.wait_all

ROOT = Path(__file__).resolve().parent.parent
VENV_BIN = str(Path(sys.executable).parent)
SLURM_EXAMPLES = sorted(p.stem for p in (ROOT / "examples").glob("*.yaml")
                        if (yaml.safe_load(p.read_text()).get("hardware") or {}).get("slurm") is not None)

pytestmark = pytest.mark.slow


def compile_example(project: Path, name: str) -> Path:
    """Compile ``examples/<name>.yaml`` of ``project`` into ``project/plans/<name>``; the plan folder."""
    r = subprocess.run([sys.executable, "-m", "ftplan", "compile", f"examples/{name}.yaml", "-o", f"plans/{name}"],
                       cwd=project, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    return project / "plans" / name


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> Path:
    """A copy of the examples with every Slurm example compiled into plans/."""
    root = tmp_path_factory.mktemp("cluster") / "project"
    shutil.copytree(ROOT / "examples", root / "examples", ignore=shutil.ignore_patterns(".*"))
    for name in SLURM_EXAMPLES:
        compile_example(root, name)
    return root


def jobs_table(plan_md: str) -> dict[str, dict[str, str]]:
    """plan.md's "Slurm jobs" table: stage id -> column -> cell."""
    section = plan_md.split("## Slurm jobs\n", 1)[1].split("\n## ", 1)[0]
    rows = [line.strip("|").split(" | ") for line in section.splitlines() if line.startswith("| ")]
    header = [h.strip() for h in rows[0]]
    return {r[1].strip(): dict(zip(header, (c.strip() for c in r))) for r in rows[1:]}


def gib(slurm_size: str) -> float:
    """GiB of a size as scontrol prints it (``170G``, ``3072M``, ``1.50T``)."""
    value, unit = float(slurm_size[:-1]), slurm_size[-1]
    return value * {"M": 1 / 1024, "G": 1, "T": 1024}[unit]


def assert_asks_for(info: dict[str, str], row: dict[str, str], where: str) -> None:
    """A submitted job asks Slurm for what plan.md's row says."""
    assert info["Partition"] == row["partition"], where
    gpus = re.match(r"(\d+) nodes? × (\d+) (\S+ )?GPUs?", row["GPUs"])
    nodes = int(gpus.group(1)) if gpus else 1
    assert info["NumNodes"].split("-")[0] == str(nodes), where
    tres = info.get("TresPerNode", "")
    if gpus:
        typed = f"{gpus.group(3).strip()}:" if gpus.group(3) else ""
        assert tres == f"gres:gpu:{typed}{gpus.group(2)}", (where, tres)
    else:
        assert row["GPUs"] == "no GPU" and "gpu" not in tres and "gres/gpu" not in info.get("TRES", ""), where
    assert info["TimeLimit"] == row["time limit"], where
    whole = row["whole nodes"] == "yes"
    assert (info["OverSubscribe"] == "NO") == whole, (where, info["OverSubscribe"])
    if row["CPUs"].endswith("CPUs per node"):
        assert info["MinCPUsNode"] == row["CPUs"].split()[0], where
    memory = row["memory"]
    if memory == "all of each node's":
        assert info["MinMemoryNode"] == "0", where  # --mem=0: all of it
    else:
        assert memory.endswith(" GiB per node"), where
        assert gib(info["MinMemoryNode"]) == pytest.approx(float(memory.split()[0]), abs=0.05), where


def test_every_example_passes_test_only_and_asks_for_what_plan_md_says(slurm_cluster, project):
    env = slurm_cluster.env
    assert set(SLURM_EXAMPLES) >= {"llama3-70b-lora-8xh100", "slurm-2node-full", "tiny-cpu"}
    held = []
    try:
        for name in SLURM_EXAMPLES:
            plan = project / "plans" / name
            table = jobs_table((plan / "plan.md").read_text())
            root = project / "examples"
            for sbatch in sorted((plan / "slurm").glob("*.sbatch")):
                where = f"{name}/{sbatch.name}"
                row = table[sbatch.stem]
                r = subprocess.run(["sbatch", "--test-only", f"--chdir={root}", str(sbatch)], env=env,
                                   capture_output=True, text=True, timeout=60)
                assert r.returncode == 0 and "to start at" in r.stderr, (where, r.stderr)
                assert f"in partition {row['partition']}" in r.stderr, (where, r.stderr)
                if row["GPUs"] == "no GPU":
                    assert row["partition"] == "cpu", where  # CPU-only stages go to the CPU partition
                r = subprocess.run(["sbatch", "--hold", "--parsable", f"--chdir={root}", str(sbatch)], env=env,
                                   capture_output=True, text=True, timeout=60)
                assert r.returncode == 0, (where, r.stderr)
                held.append(r.stdout.strip().split(";")[0])
                assert_asks_for(job(env, held[-1]), row, where)
    finally:
        if held:
            subprocess.run(["scancel", *held], env=env, capture_output=True, timeout=60)


def test_a_job_over_the_partition_limit_is_refused(slurm_cluster, project, tmp_path):
    """The limits are real: a stage whose time is over its partition's limit is refused at submission."""
    plan = (project / "plans" / "tiny-cpu" / "slurm" / "data.sbatch").read_text()
    over = tmp_path / "over.sbatch"
    over.write_text(plan.replace("#SBATCH --time=04:00:00", "#SBATCH --time=2-00:00:00"))
    r = subprocess.run(["sbatch", "--test-only", f"--chdir={project / 'examples'}", str(over)],
                       env=slurm_cluster.env, capture_output=True, text=True, timeout=60)
    assert r.returncode != 0 and "time limit" in r.stderr.lower(), r.stderr


def test_the_tiny_pipeline_completes_under_slurm_on_the_cpu_partition(slurm_cluster, tmp_path):
    """The demo pipeline, compiled as it is and submitted with submit.sh: every stage runs as a job on the CPU
    partition, without GPUs, with the memory and time plan.md gives it, and the chain completes."""
    shutil.copytree(ROOT / "examples", tmp_path / "examples", ignore=shutil.ignore_patterns(".*"))
    env = {**slurm_cluster.env, "PATH": f"{VENV_BIN}:{os.environ['PATH']}", "HF_HUB_OFFLINE": "1"}
    r = subprocess.run([sys.executable, "-m", "ftplan_runtime.tiny", ".demo/tiny-model"], cwd=tmp_path, env=env,
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    plan = compile_example(tmp_path, "tiny-cpu")
    table = jobs_table((plan / "plan.md").read_text())
    r = subprocess.run(["bash", str(plan / "slurm" / "submit.sh"), *slurm_cluster.run_options], env=env,
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    jobs = dict(line.split(": job ") for line in r.stdout.splitlines() if ": job " in line)
    assert list(jobs) == ["data", "sft", "dpo", "merge", "gguf"]
    for name, job_id in jobs.items():  # what each job asks for, while it waits or runs
        assert_asks_for(job(env, job_id), table[name], name)
    info = wait_all(env, jobs.values(), timeout=900)
    logs = tmp_path / "examples" / "logs" / "tiny-cpu"
    states = {name: info[j]["JobState"] for name, j in jobs.items()}
    assert set(states.values()) == {"COMPLETED"}, (states, *(p.read_text()[-3000:] for p in sorted(logs.glob("*.err"))))
    outputs = tmp_path / ".demo" / "outputs"
    assert all((outputs / s / "_COMPLETE").is_file() for s in ("data", "sft", "dpo", "merge", "gguf"))
    assert sorted(p.name for p in (outputs / "gguf").glob("*.gguf")) == [
        "tiny-cpu-f16.gguf", "tiny-cpu-q4_k_m.gguf", "tiny-cpu-q8_0.gguf"]
    assert sorted(p.name for p in logs.iterdir()) == sorted(f"{n}-{j}.{ext}" for n, j in jobs.items()
                                                            for ext in ("out", "err"))
    # submitted again, every stage is complete and nothing is submitted
    r = subprocess.run(["bash", str(plan / "slurm" / "submit.sh"), *slurm_cluster.run_options], env=env,
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0 and r.stdout.count("complete, skipped") == 5, r.stdout + r.stderr
