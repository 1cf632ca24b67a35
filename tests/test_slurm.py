"""The Slurm chain: #SBATCH lines and bodies checked structurally always; with Slurm installed, every sbatch file
goes through ``sbatch --test-only`` and whole chains run on a single-node test cluster (tests/slurm_cluster.sh)
with stub launchers: order and afterok, a failure cancelling the rest, and exit code 75 requeueing a stage."""

from __future__ import annotations

import importlib.util

import json
import os
import re
import shlex
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ftplan.catalog import get_gpu, get_model
from ftplan.context import Context, Inputs
from ftplan.estimate.types import StageEstimate
from ftplan.lineage import trace
from ftplan.plan import build_plan
from ftplan.render import render
from ftplan.schemas import Pipeline
from ftplan.schemas.runtime_args import REQUEUE_EXIT_CODE
from ftplan.write import write_plan

_jobs_spec = importlib.util.spec_from_file_location("ftplan_slurm_jobs", Path(__file__).with_name("slurm_jobs.py"))
slurm_jobs = importlib.util.module_from_spec(_jobs_spec)
_jobs_spec.loader.exec_module(slurm_jobs)
DONE, job, wait_all = slurm_jobs.DONE, slurm_jobs.job, slurm_jobs.wait_all

HERE = Path(__file__).resolve().parent
VENV_BIN = str(Path(sys.executable).parent)
"""Where the scripts' `python` (with the runtime, for the completion and package checks) and `accelerate` are."""
PLAN_DIR = "plans/chain"

STAGES = [
    {"id": "data", "kind": "data", "max_seq_len": 256,
     "datasets": [{"path": "d.jsonl", "format": "messages"}, {"path": "p.jsonl", "format": "preference"}]},
    {"id": "sft", "kind": "sft", "data": "data", "adapter": {"type": "lora"}, "learning_rate": 1e-4},
    {"id": "dpo", "kind": "dpo", "input": "sft", "data": "data", "adapter": "continue", "learning_rate": 1e-6},
    {"id": "merge", "kind": "merge", "input": "dpo"},
    {"id": "gguf", "kind": "gguf", "input": "merge", "quant": ["q8_0"]},
]


def compile_plan(root: Path, *, stages=STAGES, slurm=None, gpus=2, nodes=1, estimates=None,
                 **hardware) -> dict[str, str]:
    data = {"name": "chain", "model": {"base": "meta-llama/Llama-3.1-8B-Instruct"},
            "hardware": {"gpu": "h100", "gpus_per_node": gpus, "nodes": nodes,
                         "slurm": {"time": "10", "exclusive": True} if slurm is None else slurm, **hardware},
            "stages": stages}
    p = Pipeline.model_validate(data)
    links, diags = trace(p)
    assert not diags
    ctx = Context(p, "chain.yaml", "0" * 64, Inputs(), get_gpu("h100"), get_model(p.model.base), "catalog", links)
    files = render(build_plan(ctx, estimates or {}, [], plan_dir_from_root=PLAN_DIR, ftplan_version="0.1.0"))
    if root is not None:
        write_plan(files, root / PLAN_DIR)
    return files


def sbatch_lines(text: str) -> list[str]:
    """The #SBATCH lines, checked to come before the first command."""
    lines = text.splitlines()
    first_command = next(i for i, line in enumerate(lines) if line and not line.startswith("#"))
    directives = [line for line in lines if line.startswith("#SBATCH")]
    assert all(lines.index(d) < first_command for d in directives)
    return directives


# --- structure (always) ----------------------------------------------------------------------------------------

def test_sbatch_directives_are_literal_and_complete():
    slurm = {"partition": "gpu", "account": "proj-1", "qos": "high", "time": "1-00:00:00", "constraint": "h100&ib",
             "reservation": "res", "cpus_per_task": 48, "mem": "480G", "signal_lead_s": 600,
             "extra": {"mail-type": "END,FAIL", "comment": "ftplan"}}
    files = compile_plan(None, slurm=slurm, gpus=8, nodes=2)
    for name, text in files.items():
        if not name.endswith(".sbatch"):
            continue
        directives = sbatch_lines(text)
        assert not any("$" in d or "`" in d or "'" in d or '"' in d for d in directives), name
        assert text.startswith("#!/usr/bin/env bash\n# ---------- SBATCH ---------- #\n")
        stage = name[len("slurm/"):-len(".sbatch")]
        gpu_stage = whole = stage in ("sft", "dpo")  # 2 nodes: whole nodes; the CPU stages share theirs
        expected = [f"#SBATCH --job-name=chain-{stage}",
                    f"#SBATCH --nodes={2 if whole else 1}",
                    "#SBATCH --ntasks-per-node=1",
                    *(["#SBATCH --gpus-per-node=8"] if gpu_stage else []),
                    "#SBATCH --cpus-per-task=48", "#SBATCH --mem=480G", "#SBATCH --time=1-00:00:00",
                    "#SBATCH --partition=gpu", "#SBATCH --account=proj-1", "#SBATCH --qos=high",
                    "#SBATCH --constraint=h100&ib", "#SBATCH --reservation=res", "#SBATCH --comment=ftplan",
                    "#SBATCH --mail-type=END,FAIL", *(["#SBATCH --exclusive"] if whole else []),
                    f"#SBATCH --output=logs/chain/{stage}-%j.out", f"#SBATCH --error=logs/chain/{stage}-%j.err",
                    "#SBATCH --open-mode=append", "#SBATCH --requeue", "#SBATCH --signal=B:USR1@600"]
        assert directives == expected, name
        assert "localhost" not in text and "127.0.0.1" not in text


def test_no_requeue_lines_when_requeue_is_off():
    files = compile_plan(None, slurm={"requeue": False})
    text = files["slurm/sft.sbatch"]
    assert "--requeue" not in text and "--signal" not in text and "scontrol requeue" not in text
    assert "scancel" not in text and "trap on_usr1" not in text
    assert f'if [ "$rc" -eq {REQUEUE_EXIT_CODE} ]; then' in text and "resubmit to continue" in text


def test_srun_expands_the_node_rank_inside_each_nodes_shell():
    text = compile_plan(None, gpus=8, nodes=2)["slurm/sft.sbatch"]
    command = re.search(r"^srun .*?(?<!\\)$", text.replace("\\\n", " "), re.M).group(0)
    words = shlex.split(command)  # what the batch shell passes to srun, after its own quote removal
    assert words[:4] == ["srun", "--ntasks-per-node=1", "--kill-on-bad-exit=1", "--cpus-per-task=$SLURM_CPUS_ON_NODE"]
    inner = words[words.index("-c") + 1]
    for literal in ('--machine_rank "$SLURM_NODEID"', '--num_machines "$SLURM_NNODES"',
                    '--main_process_ip "$HEAD_NODE"', "--main_process_port 29500", 'trap "" USR1; exec accelerate'):
        assert literal in inner  # still unexpanded: the srun'd shell on each node expands them
    assert words[-3:] == [f"{PLAN_DIR}/stages/sft/accelerate.yaml", f"{PLAN_DIR}/stages/sft/args.json", "&"]
    assert 'HEAD_NODE=$(scontrol show hostnames "$SLURM_JOB_NODELIST")' in text
    assert 'scontrol requeue "$SLURM_JOB_ID"' in text and 'scancel --signal=USR1 "$SLURM_JOB_ID"' in text
    assert "trap on_usr1 USR1\nsrun " in text


def test_submit_sh_chains_with_afterok():
    text = compile_plan(None)["slurm/submit.sh"]
    assert 'sbatch --parsable --chdir="$ROOT" --dependency="afterok:$prev" --kill-on-invalid-dep=yes' in text
    assert 'ROOT=$(cd "$(dirname "$0")"/../../.. && pwd)' in text
    order = [text.index(f"submit {PLAN_DIR}/slurm/{n}.sbatch") for n in
             ("data", "sft", "dpo", "merge", "gguf")]
    assert order == sorted(order)


def _stub_sbatch(tmp_path: Path) -> dict:
    """PATH with an `sbatch` that records its arguments and prints a job id."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "sbatch").write_text('#!/bin/sh\necho "$@" >> "$SBATCH_LOG"\necho 42\n')
    (bin_dir / "sbatch").chmod(0o755)
    return {**os.environ, "PATH": f"{bin_dir}:{VENV_BIN}:{os.environ['PATH']}",
            "SBATCH_LOG": str(tmp_path / "sbatch.log")}


@pytest.mark.parametrize("option", [["--nodes=1"], ["-N", "1"], ["-N1"], ["--ntasks=4"], ["--gpus-per-node=4"],
                                    ["--gres=gpu:4"], ["-G", "2"]])
def test_submit_refuses_options_that_change_the_job_shape(tmp_path, option):
    """The world size is compiled into each stage's accelerate config: a pass-through option that changes the
    shape is refused before any job is submitted (it would otherwise hang at the rendezvous)."""
    root = tmp_path / "project"
    compile_plan(root, nodes=2)
    env = _stub_sbatch(tmp_path)
    r = subprocess.run(["bash", str(root / PLAN_DIR / "slurm/submit.sh"), "--wait", *option], env=env,
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and "change the job shape" in r.stderr and "recompile" in r.stderr
    assert not (tmp_path / "sbatch.log").exists()


def test_submit_passes_other_options_to_every_sbatch_call(tmp_path):
    root = tmp_path / "project"
    compile_plan(root, nodes=2)
    env = _stub_sbatch(tmp_path)
    r = subprocess.run(["bash", str(root / PLAN_DIR / "slurm/submit.sh"), "--qos=high", "--nice=5"], env=env,
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    calls = (tmp_path / "sbatch.log").read_text().splitlines()
    assert len(calls) == 5 and all("--qos=high --nice=5" in c for c in calls)
    assert r.stdout.splitlines()[:2] == ["data: must run: it has not run yet", "data: job 42"]


def test_submit_skips_complete_stages_and_submits_the_rest_as_one_chain(tmp_path, monkeypatch):
    """Which stages run is decided before any job starts: complete ones are skipped, and a stage built on one
    that must run is submitted too; the chain starts at the first submitted stage."""
    from ftplan_runtime import stamps

    root = tmp_path / "project"
    compile_plan(root, nodes=2)
    monkeypatch.chdir(root)
    for n in ("data", "sft", "dpo", "merge", "gguf"):
        args, sha = stamps.read_args(f"{PLAN_DIR}/stages/{n}/args.json")
        stamps.finish(stamps.begin(args, sha))
    (root / "outputs/dpo/adapter").mkdir(parents=True)  # dpo's output changes under merge: merge and gguf rerun
    (root / "outputs/dpo/adapter/adapter_model.safetensors").write_text("retrained")
    env = _stub_sbatch(tmp_path)
    r = subprocess.run(["bash", str(root / PLAN_DIR / "slurm/submit.sh")], env=env, capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines() == [
        "data: complete, skipped", "sft: complete, skipped", "dpo: complete, skipped",
        "merge: must run: outputs/dpo/adapter/adapter_model.safetensors is new since it last ran",
        "merge: job 42",
        "gguf: must run: upstream stage merge must run first (outputs/dpo/adapter/adapter_model.safetensors is "
        "new since it last ran)",
        "gguf: job 42"]
    calls = (tmp_path / "sbatch.log").read_text().splitlines()
    assert [c.split()[-1].rsplit("/", 1)[1] for c in calls] == ["merge.sbatch", "gguf.sbatch"]
    assert "--dependency" not in calls[0] and "--dependency=afterok:42" in calls[1]


def test_a_training_job_of_another_shape_stops_before_the_rendezvous(tmp_path):
    """Submitted by hand with a different --nodes (or GPU count), the stage script exits at once with a message
    instead of waiting for processes that never join."""
    root = tmp_path / "project"
    compile_plan(root, nodes=2, gpus=8)
    script = str(root / PLAN_DIR / "slurm/sft.sbatch")
    for env, words in (({"SLURM_JOB_NUM_NODES": "1"}, "compiled for 2 node(s) but this job has 1"),
                       ({"SLURM_JOB_NUM_NODES": "2", "SLURM_GPUS_ON_NODE": "4"},
                        "compiled for 8 GPU(s) per node but this job has only 4")):
        r = subprocess.run(["bash", script], cwd=root, env={**os.environ, **env}, capture_output=True, text=True,
                           timeout=60)
        assert r.returncode == 1 and words in r.stderr, r.stderr
    # an exclusive job on a bigger node holds more GPUs than the stage uses: that is fine, and the script goes on
    # to find its head node (a stub `scontrol` that lists none stops it there)
    stub = tmp_path / "bin"
    stub.mkdir()
    (stub / "scontrol").write_text("#!/bin/sh\n")
    (stub / "scontrol").chmod(0o755)
    env = {**os.environ, "SLURM_JOB_NUM_NODES": "2", "SLURM_GPUS_ON_NODE": "16", "SLURM_JOB_NODELIST": "",
           "PATH": f"{stub}:{VENV_BIN}:{os.environ['PATH']}"}
    r = subprocess.run(["bash", script], cwd=root, env=env, capture_output=True, text=True, timeout=60)
    assert "compiled for" not in r.stderr and "no head node" in r.stderr, r.stderr
    assert "ftplan: stage sft: upstream stage data must run first (it has not run yet)" in r.stdout


def test_module_loads_and_setup_lines_run_with_set_u_off(tmp_path):
    """Lmod's `module` (a shell function) and activation scripts read variables that may be unset: under
    `set -u` they would stop the job; the generated scripts turn it off around them, and back on after."""
    root = tmp_path / "project"
    compile_plan(root, modules=["cuda/12.4"], setup=['echo "setup saw ${UNSET_BY_SITE}" >> "$FTLOG"'])
    log = tmp_path / "log"
    stub = tmp_path / "bin"
    stub.mkdir()
    (stub / "python").write_text("#!/bin/sh\nexit 3\n")  # stops the script at its runtime check, after the setup
    (stub / "python").chmod(0o755)
    env = {**os.environ, "FTLOG": str(log), "PATH": f"{stub}:{os.environ['PATH']}",
           "BASH_FUNC_module%%": '() { : "$LMOD_NOT_SET"; echo "module $*" >> "$FTLOG"; }'}
    env.pop("UNSET_BY_SITE", None)
    env.pop("LMOD_NOT_SET", None)
    text = (root / PLAN_DIR / "slurm/data.sbatch").read_text()
    assert "set +u\n" in text and "module load cuda/12.4\n" in text and "\nset -u\n" in text
    for script in ("slurm/data.sbatch", "slurm/submit.sh", "run.sh"):
        log.unlink(missing_ok=True)
        r = subprocess.run(["bash", str(root / PLAN_DIR / script)], cwd=root, env=env, capture_output=True,
                           text=True, timeout=60)
        assert "unbound variable" not in r.stderr and r.returncode == 1, (script, r.stderr)
        assert log.read_text() == "module load cuda/12.4\nsetup saw \n", script
        assert "cannot import the ftplan runtime" in r.stderr, script


def test_every_slurm_script_parses():
    for name, text in compile_plan(None).items():
        if name.startswith("slurm/"):
            r = subprocess.run(["bash", "-n"], input=text, text=True, capture_output=True)
            assert r.returncode == 0, (name, r.stderr)


# --- a real single-node cluster ------------------------------------------------------------------------------------

@pytest.fixture
def cluster(slurm_cluster):
    """SLURM_CONF of the session's test cluster (tests/conftest.py)."""
    return slurm_cluster.conf


STUB = """#!/bin/bash
# Stands in for accelerate/python: logs the stage and its arguments, then fails, asks for a requeue or succeeds.
# The runtime's own checks (importable? packages installed? stage complete?) run in the real Python.
case "${1-} ${2-}" in
  "-c import ftplan_runtime"|"-m ftplan_runtime.stamps"|"-m ftplan_runtime.installed") exec "$REAL_PYTHON" "$@" ;;
esac
args=${@: -1}
stage=$(basename "$(dirname "$args")")
echo "$(basename "$0") $stage job=${SLURM_JOB_ID:-} restart=${SLURM_RESTART_COUNT:-0} node=${SLURM_NODEID:-} $*" >> "$FTLOG"
[ "$stage" = "${FTFAIL:-}" ] && exit 1
if [ "$stage" = "${FTOOM:-}" ]; then  # more memory than the job asked for
  exec "$REAL_PYTHON" -c "import time; a = bytearray(1 << 30); time.sleep(10)"
fi
if [ "$stage" = "${FTREQUEUE:-}" ] && [ ! -e "$FTLOG.requeued" ]; then touch "$FTLOG.requeued"; exit 75; fi
sleep "${FTSLEEP:-0}"
exit 0
"""


@pytest.fixture
def chain(cluster, tmp_path):
    root = tmp_path / "project"
    root.mkdir()
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name in ("accelerate", "python"):
        (bin_dir / name).write_text(STUB)
        (bin_dir / name).chmod(0o755)
    env = {**os.environ, "SLURM_CONF": cluster, "PATH": f"{bin_dir}:{VENV_BIN}:{os.environ['PATH']}",
           "FTLOG": str(tmp_path / "stages.log"), "REAL_PYTHON": sys.executable}
    return root, env, tmp_path / "stages.log"


def submit(root: Path, env: dict, *args: str) -> dict[str, str]:
    """Run submit.sh with ``args`` (and off the cluster's node that never starts); {stage: job id}."""
    r = subprocess.run(["bash", str(root / PLAN_DIR / "slurm/submit.sh"), "--exclude=ftplan-n2", *args], env=env,
                       capture_output=True, text=True, timeout=240)
    assert r.returncode == 0, (r.stdout, r.stderr)
    jobs = dict(line.split(": job ") for line in r.stdout.splitlines() if ": job " in line)
    assert jobs, r.stdout
    return jobs


def logged_stages(log: Path) -> list[str]:
    return [line.split()[1] for line in log.read_text().splitlines()]


@pytest.mark.slow
def test_every_sbatch_file_passes_test_only(cluster, tmp_path):
    compile_plan(tmp_path)
    for path in sorted((tmp_path / PLAN_DIR / "slurm").glob("*.sbatch")):
        r = subprocess.run(["sbatch", "--test-only", f"--chdir={tmp_path}", str(path)], capture_output=True,
                           text=True, env={**os.environ, "SLURM_CONF": cluster})
        assert r.returncode == 0 and "to start at" in r.stderr, (path.name, r.stderr)


@pytest.mark.slow
def test_chain_runs_in_order_with_wait(chain):
    """Each stage a job of its own shape: the GPU stages on the gpu partition with their 2 GPUs, the CPU stages on
    the cpu partition without any, each with the memory and time its plan gives it."""
    root, env, log = chain
    files = compile_plan(root, slurm={"partition": "gpu", "cpu_partition": "cpu"})
    jobs = submit(root, env, "--wait")
    assert list(jobs) == ["data", "sft", "dpo", "merge", "gguf"]
    assert logged_stages(log) == ["data", "sft", "dpo", "merge", "gguf"]
    info = wait_all(env, jobs.values())
    assert all(v["JobState"] == "COMPLETED" for v in info.values())
    planned = {s["dir"].split("/")[-1]: s["slurm"] for s in json.loads(files["plan.json"])["stages"]}
    for name, job_id in jobs.items():
        got, want = info[job_id], planned[name]
        assert got["Partition"] == ("gpu" if name in ("sft", "dpo") else "cpu"), name
        assert got["Partition"] == want["partition"] and got["TimeLimit"] == want["time"], name
        assert got["MinMemoryNode"] == want["mem"] and got["MinCPUsNode"] == str(want["cpus_per_task"]), name
        assert got.get("TresPerNode", "") == ("gres:gpu:2" if want["gpus_per_node"] else ""), name
        assert got["OverSubscribe"] != "NO", name  # 2 of a node's 8 GPUs: the node is shared
    sft = next(line for line in log.read_text().splitlines() if " sft " in line)
    head = socket.gethostname().split(".")[0]
    assert "--machine_rank 0 " in sft and f"--main_process_ip {head} " in sft and "--num_machines 1 " in sft
    assert f"--config_file {PLAN_DIR}/stages/sft/accelerate.yaml" in sft and "node=0" in sft
    logs = root / "logs" / "chain"
    assert sorted(p.name for p in logs.iterdir()) == sorted(f"{n}-{jobs[n]}.{ext}" for n in jobs for ext in ("out", "err"))


@pytest.mark.slow
def test_a_failed_stage_cancels_the_rest_of_the_afterok_chain(chain):
    root, env, log = chain
    compile_plan(root, stages=STAGES[:4])
    jobs = submit(root, {**env, "FTFAIL": "sft", "FTSLEEP": "2"})
    ids = list(jobs.values())
    assert job(env, ids[1])["Dependency"] == f"afterok:{ids[0]}(unfulfilled)"
    assert job(env, ids[2])["Dependency"] == f"afterok:{ids[1]}(unfulfilled)"
    info = wait_all(env, ids)
    assert [info[i]["JobState"] for i in ids] == ["COMPLETED", "FAILED", "CANCELLED", "CANCELLED"]
    assert info[ids[2]]["Reason"] == info[ids[3]]["Reason"] == "DependencyNeverSatisfied"
    assert logged_stages(log) == ["data", "sft"]


@pytest.mark.slow
def test_a_stage_over_its_memory_is_killed_and_the_rest_cancelled(chain, slurm_cluster):
    """cgroup memory enforcement: the data stage's job asks for 400 MiB, its stage takes 1 GiB. Slurm kills it, the
    job log says it ran out of memory and what to change, and the stages after it are cancelled, not run."""
    if not slurm_cluster.enforcement.startswith("cgroup/"):
        pytest.skip("this machine's Slurm cannot enforce job memory: " + slurm_cluster.enforcement.split(": ", 1)[1])
    root, env, log = chain
    stages = [{**STAGES[0], "slurm": {"mem": "400M"}}, *STAGES[1:3]]
    compile_plan(root, stages=stages, slurm={"partition": "gpu", "cpu_partition": "cpu"})
    jobs = submit(root, {**env, "FTOOM": "data"})
    ids = list(jobs.values())
    info = wait_all(env, ids)
    assert info[ids[0]]["MinMemoryNode"] == "400M"
    assert [info[i]["JobState"] for i in ids] == ["FAILED", "CANCELLED", "CANCELLED"]
    assert info[ids[1]]["Reason"] == info[ids[2]]["Reason"] == "DependencyNeverSatisfied"
    err = (root / "logs" / "chain" / f"data-{ids[0]}.err").read_text()
    assert "Out Of Memory" in err, err
    assert ("ftplan: stage data ran out of memory: Slurm killed it at its job's limit (--mem=400M: 400.0 MiB per "
            "node); give the stage a larger `mem` in its `slurm:` block and recompile") in err, err
    assert logged_stages(log) == ["data"]


@pytest.mark.slow
def test_the_requeue_exit_code_requeues_the_stage(chain):
    root, env, log = chain
    compile_plan(root, stages=STAGES[:3])
    jobs = submit(root, {**env, "FTREQUEUE": "sft"}, "--wait")
    info = wait_all(env, jobs.values())
    assert all(v["JobState"] == "COMPLETED" for v in info.values())
    assert info[jobs["sft"]]["Restarts"] == "1"
    lines = log.read_text().splitlines()
    assert logged_stages(log) == ["data", "sft", "sft", "dpo"]
    assert "restart=0" in lines[1] and "restart=1" in lines[2]


TRAINER_STUB = """#!{python}
# Stands in for accelerate launch: on its first run of stage FTWAIT it waits for the time-limit signal, then
# exits 1, which is what accelerate's launcher reports when the trainer stops with the requeue exit code.
import os, signal, sys, time
log, stage = os.environ["FTLOG"], os.path.basename(os.path.dirname(sys.argv[-1]))
with open(log, "a") as f:
    f.write(f"accelerate {{stage}} restart={{os.environ.get('SLURM_RESTART_COUNT', '0')}}\\n")
if stage == os.environ.get("FTWAIT") and not os.path.exists(log + ".signalled"):
    def stop(signum, frame):
        open(log + ".signalled", "w").close()
        sys.exit(1)
    signal.signal(signal.SIGUSR1, stop)  # works although the launcher shell ignores USR1, as the runtime's does
    open(log + ".waiting", "w").close()
    time.sleep(90)
    sys.exit(3)
"""


@pytest.mark.slow
def test_the_time_limit_signal_checkpoints_and_requeues_a_training_stage(chain):
    root, env, log = chain
    stub = Path(env["PATH"].split(":")[0]) / "accelerate"
    stub.write_text(TRAINER_STUB.format(python=shutil.which("python3") or "/usr/bin/python3"))
    compile_plan(root, stages=STAGES[:3])
    jobs = submit(root, {**env, "FTWAIT": "sft"})
    deadline = time.monotonic() + 60
    while not Path(str(log) + ".waiting").exists():
        assert time.monotonic() < deadline, log.read_text() if log.exists() else "no stage started"
        time.sleep(0.3)
    # what Slurm does signal_lead_s before the time limit (--signal=B:USR1@...): signal the batch script
    r = subprocess.run(["scancel", "--batch", "--signal=USR1", jobs["sft"]], env=env, capture_output=True,
                       text=True)
    assert r.returncode == 0, r.stderr
    info = wait_all(env, jobs.values())
    assert [info[j]["JobState"] for j in jobs.values()] == ["COMPLETED"] * 3
    assert info[jobs["sft"]]["Restarts"] == "1"
    assert Path(str(log) + ".signalled").exists()
    assert log.read_text().splitlines()[1:] == ["accelerate sft restart=0", "accelerate sft restart=1",
                                                "accelerate dpo restart=0"]
    out = (root / "logs" / "chain" / f"sft-{jobs['sft']}.out").read_text()
    assert "asking stage sft to save a checkpoint" in out and "requeueing job" in out
