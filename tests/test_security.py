"""Hostile strings in every user-controlled field that reaches bash or sbatch: the generated scripts parse, run
without executing any of it, and hand each string to the launched program verbatim as one argument."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from pydantic import ValidationError

from ftplan.catalog import get_gpu
from ftplan.context import Context, Inputs
from ftplan.lineage import trace
from ftplan.plan import build_plan
from ftplan.render import render
from ftplan.schemas import Pipeline
from ftplan.write import write_plan

HOSTILE = "x $(touch pwned) `touch pwned`; touch pwned && 'sq' \"dq\" \\bs\nnl|touch pwned $HOME *"
ENV = {"EVIL_A": HOSTILE, "EVIL_B": "$(touch pwned)", "EVIL_C": "a'b\"c\\d\re`touch pwned`"}
MODULES = [HOSTILE, "cuda/12.4; touch pwned"]
VENV = "venvs/" + HOSTILE
PLAN_DIR = "plans/p " + HOSTILE
OUTPUT_DIR = "out $(touch pwned) `touch pwned`; touch pwned 'sq' \"dq\" \\bs && touch pwned"
PIPELINE_FILE = "p $(touch pwned) `x`;\n'q'.yaml"

FAKE = """#!/bin/bash
# Records its name, arguments and the EVIL_* variables, NUL-separated, then succeeds.
printf '%s\\0' "$#" "$(basename "$0")" "$@" "${EVIL_A-}" "${EVIL_B-}" "${EVIL_C-}" >> "$FTLOG"
"""
FAKE_PYTHON = """#!/bin/bash
# The runtime's own checks (importable? packages installed? stage complete?) run in the real Python; a stage
# launch is only recorded.
case "${1-} ${2-}" in
  "-c import ftplan_runtime"|"-m ftplan_runtime.stamps"|"-m ftplan_runtime.installed") exec "$REAL_PYTHON" "$@" ;;
esac
""" + FAKE.split("\n", 1)[1]
FAKE_SBATCH = FAKE + 'echo "$(( $(tr -cd "\\\\0" < "$FTLOG" | wc -c) ))"\n'
FAKE_SRUN = """#!/bin/bash
# Drops srun's options and runs the task the way one node would: SLURM_NODEID is set for the task only.
printf '%s\\0' "$#" srun "$@" "" "" "" >> "$FTLOG"
while [ "${1#-}" != "$1" ]; do shift; done
SLURM_NODEID=0 exec "$@"
"""
FAKE_SCONTROL = """#!/bin/bash
printf '%s\\0' "$#" scontrol "$@" "" "" "" >> "$FTLOG"
if [ "$1 $2" = "show hostnames" ]; then echo node-a; echo node-b; fi
"""


def pipeline_data() -> dict:
    return {
        "name": "evil",
        "model": {"base": HOSTILE, "tokenizer": HOSTILE},
        "output_dir": OUTPUT_DIR,
        "hardware": {"gpu": "h100", "gpus_per_node": 2, "env": ENV, "modules": MODULES, "venv": VENV,
                     "setup": ['echo "setup ran" >> "$FTLOG.setup"'], "slurm": {}},
        "stages": [
            {"id": "data", "kind": "data", "max_seq_len": 512,
             "datasets": [{"path": HOSTILE, "format": "messages"}, {"path": HOSTILE + ".p", "format": "preference"}]},
            {"id": "sft", "kind": "sft", "data": "data", "adapter": {"type": "lora"}, "learning_rate": 1e-4},
            {"id": "dpo", "kind": "dpo", "input": "sft", "data": "data", "adapter": "continue",
             "learning_rate": 1e-6, "distributed": "zero2"},
            {"id": "merge", "kind": "merge", "input": "dpo"},
            {"id": "gguf", "kind": "gguf", "input": "merge", "quant": ["q8_0"]},
        ],
    }


def read_calls(log: Path) -> list[tuple[str, list[str], list[str]]]:
    """(program, argv, [EVIL_A, EVIL_B, EVIL_C]) per recorded call."""
    if not log.exists():
        return []
    fields = log.read_bytes().decode().split("\0")[:-1]
    calls, i = [], 0
    while i < len(fields):
        n = int(fields[i])
        calls.append((fields[i + 1], fields[i + 2:i + 2 + n], fields[i + 2 + n:i + 5 + n]))
        i += 5 + n
    return calls


def pwned(root: Path) -> list[str]:
    """Files a hostile string created (the tests' own data files named after the dataset paths aside)."""
    return [os.path.join(d, n) for d, _, names in os.walk(root) for n in names
            if "pwned" in n and n not in (HOSTILE, HOSTILE + ".p")]


@pytest.fixture
def project(tmp_path):
    """A compiled hostile plan on disk, fake programs on PATH, and the environment to run its scripts."""
    root = tmp_path / "project"
    root.mkdir()
    p = Pipeline.model_validate(pipeline_data())
    links, diags = trace(p)
    assert not diags
    ctx = Context(p, str(root / PIPELINE_FILE), "0" * 64, Inputs(), get_gpu("h100"), None, "", links)
    plan = build_plan(ctx, {}, [], plan_dir_from_root=PLAN_DIR, ftplan_version="0.1.0")
    files = render(plan)
    write_plan(files, root / PLAN_DIR)
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name, text in {"accelerate": FAKE, "python": FAKE_PYTHON, "module": FAKE, "sbatch": FAKE_SBATCH,
                       "srun": FAKE_SRUN, "scontrol": FAKE_SCONTROL}.items():
        (bin_dir / name).write_text(text)
        (bin_dir / name).chmod(0o755)
    activate = root / VENV / "bin" / "activate"
    activate.parent.mkdir(parents=True)
    activate.write_text('echo activated >> "$FTLOG.venv"\n')
    (tmp_path / "home").mkdir()
    (tmp_path / "elsewhere").mkdir()
    env = {"PATH": f"{bin_dir}:/usr/bin:/bin", "HOME": str(tmp_path / "home"), "FTLOG": str(tmp_path / "log"),
           "LANG": "C.UTF-8", "REAL_PYTHON": sys.executable}
    return {"root": root, "plan": plan, "files": files, "env": env, "log": tmp_path / "log", "tmp": tmp_path}


def script_paths(project):
    base = project["root"] / PLAN_DIR
    return [base / name for name in project["files"] if name.endswith((".sh", ".sbatch"))]


def test_every_script_parses(project):
    for path in script_paths(project):
        r = subprocess.run(["bash", "-n", str(path)], capture_output=True, text=True)
        assert r.returncode == 0, (path.name, r.stderr)


def _stage_args(project, stage: str) -> str:
    name = next(s.dir for s in project["plan"].stages if s.id == stage)
    return f"{PLAN_DIR}/{name}/args.json"


def _complete(project, stage: str, monkeypatch) -> None:
    """What a successful run of the stage leaves: its completion stamp over its current inputs."""
    from ftplan_runtime import stamps

    monkeypatch.chdir(project["root"])
    args, sha = stamps.read_args(_stage_args(project, stage))
    stamps.finish(stamps.begin(args, sha))


def _run_sh(project) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(project["root"] / PLAN_DIR / "run.sh")], cwd=project["tmp"] / "elsewhere",
                          env=project["env"], capture_output=True, text=True, timeout=120)


def test_run_sh_executes_nothing_hostile_and_passes_strings_verbatim(project, monkeypatch):
    from ftplan_runtime.stamps import show

    root, env, log = project["root"], project["env"], project["log"]
    (root / HOSTILE).write_text('{"messages": []}\n')  # the data stage's first dataset is a local file
    _complete(project, "data", monkeypatch)  # finished, and its inputs are unchanged: skipped
    stale = root / OUTPUT_DIR / "sft"
    stale.mkdir(parents=True)
    (stale / "_COMPLETE").write_text(json.dumps({"format": 1, "args_sha256": "0" * 64, "inputs": {}}))

    r = _run_sh(project)
    assert r.returncode == 0, r.stderr
    assert pwned(project["tmp"]) == []
    assert Path(str(log) + ".venv").read_text() == "activated\n"
    assert Path(str(log) + ".setup").read_text() == "setup ran\n"
    assert r.stdout.splitlines()[:3] == [
        "ftplan: stage data is complete; skipping",
        "ftplan: stage sft: its arguments changed since it last ran",  # finished with other arguments
        "ftplan: stage dpo: upstream stage sft must run first (its arguments changed since it last ran)"]

    calls = read_calls(log)
    assert [(prog, argv) for prog, argv, _ in calls[:2]] == [("module", ["load", MODULES[0]]),
                                                            ("module", ["load", MODULES[1]])]
    launches = [(prog, argv) for prog, argv, _ in calls[2:]]
    stage = f"{PLAN_DIR}/stages"
    assert launches == [
        ("accelerate", ["launch", "--config_file", f"{stage}/sft/accelerate.yaml", "-m", "ftplan_runtime",
                        f"{stage}/sft/args.json"]),
        ("accelerate", ["launch", "--config_file", f"{stage}/dpo/accelerate.yaml", "-m", "ftplan_runtime",
                        f"{stage}/dpo/args.json"]),
        ("python", ["-m", "ftplan_runtime", f"{stage}/merge/args.json"]),
        ("python", ["-m", "ftplan_runtime", f"{stage}/gguf/args.json"]),
    ]
    for _, _, env_values in calls:
        assert env_values == [ENV["EVIL_A"], ENV["EVIL_B"], ENV["EVIL_C"]]
    # The paths the launcher receives exist relative to the root run.sh moved to, and hold the hostile values.
    args = json.loads((root / f"{stage}/data/args.json").read_text())
    assert args["stage"]["datasets"][0]["path"] == HOSTILE and args["output_dir"] == f"{OUTPUT_DIR}/data"
    acc = (root / f"{stage}/dpo/accelerate.yaml").read_text()
    assert (root / PLAN_DIR / "stages/dpo/deepspeed.json").is_file() and "deepspeed_config_file" in acc

    # the hostile data file changes: the reason names it on one line, and it runs again, verbatim
    (root / HOSTILE).write_text('{"messages": [1]}\n')
    log.unlink()
    r = _run_sh(project)
    assert r.returncode == 0, r.stderr
    assert pwned(project["tmp"]) == []
    assert r.stdout.splitlines()[0] == f"ftplan: stage data: {show(HOSTILE)} changed since it last ran"
    assert [argv for prog, argv, _ in read_calls(log) if prog == "python"][0] == [
        "-m", "ftplan_runtime", f"{stage}/data/args.json"]


def test_run_sh_without_the_runtime_is_one_line_and_starts_nothing(project):
    """A Python that cannot import ftplan_runtime: one line with the install command, no traceback."""
    bin_dir = project["tmp"] / "bin"
    (bin_dir / "python").write_text(
        '#!/bin/bash\necho "Traceback (most recent call last):" >&2\n'
        'echo "ModuleNotFoundError: No module named \'transformers\'" >&2\nexit 1\n')
    r = _run_sh(project)
    assert r.returncode == 1 and r.stdout == ""
    assert r.stderr.splitlines() == [
        f"ftplan: this Python ({bin_dir}/python) cannot import the ftplan runtime; install it with: pip install "
        "'ftplan[runtime,gpu]' (pip install 'ftplan[runtime]' on CPU-only machines)"]
    assert not any(prog in ("python", "accelerate") for prog, _, _ in read_calls(project["log"]))


@pytest.mark.skipif(not Path("/usr/bin/python3").exists(), reason="no system Python")
def test_run_sh_with_a_plain_system_python_is_one_line(project):
    """The user report: a machine without the runtime (here the system Python, which has no ftplan)."""
    if subprocess.run(["/usr/bin/python3", "-c", "import ftplan_runtime"], capture_output=True).returncode == 0:
        pytest.skip("the system Python has the runtime")
    (project["tmp"] / "bin" / "python").unlink()
    (project["tmp"] / "bin" / "python").symlink_to("/usr/bin/python3")
    r = _run_sh(project)
    assert r.returncode == 1 and "Traceback" not in r.stderr and len(r.stderr.splitlines()) == 1
    assert "cannot import the ftplan runtime; install it with: pip install 'ftplan[runtime,gpu]'" in r.stderr


def test_run_sh_names_missing_packages_before_any_stage(project):
    """The `accelerate` command is missing: one line naming it, the stages that need it and the install
    command; no stage starts."""
    (project["tmp"] / "bin" / "accelerate").unlink()
    r = _run_sh(project)
    assert r.returncode == 1 and r.stdout == "" and "Traceback" not in r.stderr
    (line,) = r.stderr.splitlines()
    assert line.startswith(f"ftplan: this Python ({sys.executable}) cannot run the plan: missing the `accelerate` "
                           "command (stages sft, dpo); install with: pip install 'ftplan[runtime,gpu]'")
    assert not any(prog in ("python", "accelerate") for prog, _, _ in read_calls(project["log"]))


def test_a_stage_that_cannot_be_judged_stops_the_job(project):
    """An unreadable upstream args file is no "must run": the job stops before launching anything."""
    root, env, log = project["root"], project["env"], project["log"]
    (root / _stage_args(project, "data")).write_text("{broken")
    job_env = {**env, "SLURM_JOB_NODELIST": "node-a", "SLURM_NNODES": "1", "SLURM_JOB_ID": "42",
               "SLURM_CPUS_ON_NODE": "2"}
    r = subprocess.run(["bash", str(root / PLAN_DIR / "slurm/sft.sbatch")], cwd=root, env=job_env,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert "not a valid ftplan arguments file" in r.stderr and "cannot tell whether the stage of" in r.stderr
    assert not any(prog in ("srun", "accelerate") for prog, _, _ in read_calls(log))


def test_submit_sh_chains_hostile_paths_verbatim(project):
    root, env, log = project["root"], project["env"], project["log"]
    r = subprocess.run(["bash", str(root / PLAN_DIR / "slurm/submit.sh"), "--extra=1"],
                       cwd=project["tmp"] / "elsewhere", env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert pwned(project["tmp"]) == []
    assert (root / "logs").is_dir()
    sbatch = [argv for prog, argv, _ in read_calls(log) if prog == "sbatch"]
    jobs = [line.split(": job ")[1] for line in r.stdout.splitlines() if ": job " in line]
    assert len(sbatch) == len(jobs) == 5
    assert r.stdout.splitlines()[0] == "data: must run: it has not run yet"
    assert sbatch[0] == ["--parsable", f"--chdir={root}", "--extra=1", f"{PLAN_DIR}/slurm/data.sbatch"]
    for i, argv in enumerate(sbatch[1:], start=1):
        assert argv[2] == "--dependency=afterok:" + jobs[i - 1]
        assert argv[3:] == ["--kill-on-invalid-dep=yes", "--extra=1", f"{PLAN_DIR}/slurm/"
                            + ["sft", "dpo", "merge", "gguf"][i - 1] + ".sbatch"]


def test_submit_sh_skips_complete_stages_and_submits_what_is_built_on_a_changed_one(project, monkeypatch):
    """Decided before any job runs: the data stage is complete, sft is not, so everything after sft is
    submitted too (its stamps are complete but built on sft's old output)."""
    root, env, log = project["root"], project["env"], project["log"]
    for stage in ("data", "sft", "dpo", "merge", "gguf"):
        _complete(project, stage, monkeypatch)
    r = subprocess.run(["bash", str(root / PLAN_DIR / "slurm/submit.sh")], cwd=project["tmp"] / "elsewhere",
                       env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines() == [f"{s}: complete, skipped" for s in
                                     ("data", "sft", "dpo", "merge", "gguf")]
    assert not [argv for prog, argv, _ in read_calls(log) if prog == "sbatch"]
    doc = json.loads((root / _stage_args(project, "sft")).read_text())
    doc["stage"]["learning_rate"] = 3e-4  # sft's arguments change (an edited, recompiled plan)
    (root / _stage_args(project, "sft")).write_text(json.dumps(doc, indent=2))
    r = subprocess.run(["bash", str(root / PLAN_DIR / "slurm/submit.sh")], cwd=project["tmp"] / "elsewhere",
                       env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[0] == "data: complete, skipped"
    assert lines[1] == "sft: must run: its arguments changed since it last ran"
    assert "dpo: must run: upstream stage sft must run first (its arguments changed since it last ran)" in lines
    sbatch = [argv for prog, argv, _ in read_calls(log) if prog == "sbatch"]
    assert [a[-1].rsplit("/", 1)[1] for a in sbatch] == ["sft.sbatch", "dpo.sbatch", "merge.sbatch",
                                                          "gguf.sbatch"]
    assert not any(a.startswith("--dependency") for a in sbatch[0]) and sbatch[1][2].startswith("--dependency")


def test_sbatch_of_a_complete_stage_has_nothing_to_do(project, monkeypatch):
    root, env, log = project["root"], project["env"], project["log"]
    _complete(project, "data", monkeypatch)
    job_env = {**env, "SLURM_JOB_NODELIST": "node-a", "SLURM_NNODES": "1", "SLURM_JOB_ID": "42",
               "SLURM_CPUS_ON_NODE": "2"}
    r = subprocess.run(["bash", str(root / PLAN_DIR / "slurm/data.sbatch")], cwd=root, env=job_env,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines() == ["ftplan: stage data is complete; nothing to do"]
    assert not any(prog in ("srun", "python") for prog, _, _ in read_calls(log))


def test_sbatch_body_passes_paths_and_rank_to_the_launcher(project):
    root, env, log = project["root"], project["env"], project["log"]
    job_env = {**env, "SLURM_JOB_NODELIST": "node-[a-b]", "SLURM_NNODES": "2", "SLURM_JOB_ID": "42",
               "SLURM_CPUS_ON_NODE": "4"}
    r = subprocess.run(["bash", str(root / PLAN_DIR / "slurm/sft.sbatch")], cwd=root, env=job_env,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert pwned(project["tmp"]) == []
    assert r.stdout.splitlines()[0] == "ftplan: stage sft: upstream stage data must run first (it has not run yet)"
    calls = [(prog, argv) for prog, argv, _ in read_calls(log)]
    assert ("scontrol", ["show", "hostnames", "node-[a-b]"]) in calls
    srun = next(argv for prog, argv in calls if prog == "srun")
    # the job's own CPUs: 2 of a node's 8 GPUs share the node, with 8 cores per GPU
    assert srun[:3] == ["--ntasks-per-node=1", "--kill-on-bad-exit=1", "--cpus-per-task=16"]
    acc = next(argv for prog, argv in calls if prog == "accelerate")
    assert acc == ["launch", "--config_file", f"{PLAN_DIR}/stages/sft/accelerate.yaml", "--num_machines", "2",
                   "--machine_rank", "0", "--main_process_ip", "node-a", "--main_process_port", "29500",
                   "-m", "ftplan_runtime", f"{PLAN_DIR}/stages/sft/args.json"]


def test_sbatch_requeues_on_the_requeue_exit_code(project):
    root, env, log = project["root"], project["env"], project["log"]
    (project["tmp"] / "bin" / "python").write_text(FAKE_PYTHON + "exit 75\n")
    job_env = {**env, "SLURM_JOB_NODELIST": "node-a", "SLURM_NNODES": "1", "SLURM_JOB_ID": "42",
               "SLURM_CPUS_ON_NODE": "2"}
    r = subprocess.run(["bash", str(root / PLAN_DIR / "slurm/data.sbatch")], cwd=root, env=job_env,
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert ("scontrol", ["requeue", "42"]) in [(prog, argv) for prog, argv, _ in read_calls(log)]


def test_text_outputs_keep_hostile_strings_on_one_line(project):
    files = project["files"]
    md = files["plan.md"]
    header = next(line for line in md.splitlines() if line.startswith("evil · "))
    assert "\\n" in header and "touch pwned" in header
    for name in ("run.sh", "slurm/submit.sh", "slurm/sft.sbatch"):
        for line in files[name].splitlines():
            if line.startswith("# generated by"):
                assert line.endswith("; do not edit.") and "\\n'q'.yaml" in line


@pytest.mark.parametrize("field", ["partition", "cpu_partition", "account", "qos", "time", "constraint",
                                   "reservation", "mem", "mem_per_gpu", "gpu_type", "logs_dir"])
@pytest.mark.parametrize("value", ["$(touch pwned)", "`touch pwned`", "a;b", "a b", "a\nb", "'q'", '"q"', "a\\b",
                                   "${HOME}", ""])
def test_schema_rejects_hostile_slurm_values(field, value):
    data = pipeline_data()
    data["hardware"]["slurm"] = {field: value}
    with pytest.raises(ValidationError):
        Pipeline.model_validate(data)
    if field not in ("cpu_partition", "gpu_type", "logs_dir"):  # a stage's own block has the job's values only
        data = pipeline_data()
        data["stages"][1]["slurm"] = {field: value}
        with pytest.raises(ValidationError):
            Pipeline.model_validate(data)


def test_schema_rejects_hostile_names_and_lines():
    for patch in ({"name": "a $(x)"}, {"name": "a;b"},
                  {"hardware": {**pipeline_data()["hardware"], "env": {"A;B": "1"}}},
                  {"hardware": {**pipeline_data()["hardware"], "setup": ["echo a\nrm -rf /"]}},
                  {"hardware": {**pipeline_data()["hardware"], "slurm": {"extra": {"output": "x"}}}},
                  {"hardware": {**pipeline_data()["hardware"], "slurm": {"extra": {"comment": "a b"}}}}):
        with pytest.raises(ValidationError):
            Pipeline.model_validate({**pipeline_data(), **patch})
    bad_id = pipeline_data()
    bad_id["stages"][0]["id"] = "data$(x)"
    with pytest.raises(ValidationError):
        Pipeline.model_validate(bad_id)


IMAGE = "img$(touch${IFS}pwned)`touch${IFS}pwned`;&&'q'\"dq\"\\bs|*"
MOUNT = "/data$(touch${IFS}pwned):/d;`touch${IFS}pwned`'q'"
OPTION = "--x=" + HOSTILE
FAKE_APPTAINER = """#!/bin/bash
# Records its arguments, then runs the command after the image, as `apptainer exec` would inside it.
printf '%s\\0' "$#" apptainer "$@" "" "" "" >> "$FTLOG"
while [ "$1" != "$FAKE_IMAGE" ]; do shift; done
shift
exec "$@"
"""


@pytest.mark.parametrize("runtime", ["pyxis", "apptainer"])
def test_container_options_reach_srun_and_apptainer_verbatim(project, tmp_path, runtime):
    """Image, mounts and options are user strings on the srun line: each arrives as one word, and the stage inside
    the container checks its packages and starts with the plan's arguments."""
    data = pipeline_data()
    data["hardware"]["container"] = {"runtime": runtime, "image": IMAGE, "mounts": [MOUNT], "options": [OPTION]}
    p = Pipeline.model_validate(data)
    links, _ = trace(p)
    root = project["root"]
    ctx = Context(p, str(root / PIPELINE_FILE), "0" * 64, Inputs(), get_gpu("h100"), None, "", links)
    files = render(build_plan(ctx, {}, [], plan_dir_from_root=PLAN_DIR, ftplan_version="0.1.0"))
    write_plan(files, root / PLAN_DIR)
    bin_dir = project["tmp"] / "bin"
    (bin_dir / "apptainer").write_text(FAKE_APPTAINER)
    (bin_dir / "apptainer").chmod(0o755)
    env = {**project["env"], "SLURM_JOB_NODELIST": "node-[a-b]", "SLURM_NNODES": "2", "SLURM_JOB_ID": "42",
           "FAKE_IMAGE": IMAGE}
    for stage in ("sft", "merge"):
        r = subprocess.run(["bash", str(root / PLAN_DIR / f"slurm/{stage}.sbatch")], cwd=root, env=env,
                           capture_output=True, text=True, timeout=120)
        assert r.returncode == 0, r.stderr
    assert pwned(project["tmp"]) == []
    calls = [(prog, argv) for prog, argv, _ in read_calls(project["log"])]
    sruns = [argv for prog, argv in calls if prog == "srun"]
    stages = f"{PLAN_DIR}/stages"
    if runtime == "pyxis":
        for argv in sruns:
            assert argv[3:7] == [f"--container-image={IMAGE}", f"--container-mounts={root}:{root},{MOUNT}",
                                 f"--container-workdir={root}", OPTION]
    else:
        inner = [argv for prog, argv in calls if prog == "apptainer"]
        assert inner[0][:6] == ["exec", "--nv", "--bind", MOUNT, OPTION, IMAGE]  # the GPU stage gets --nv
        assert inner[1][:5] == ["exec", "--bind", MOUNT, OPTION, IMAGE]  # the CPU merge does not
    launched = [(prog, argv) for prog, argv in calls if prog in ("accelerate", "python")]
    assert launched == [
        ("accelerate", ["launch", "--config_file", f"{stages}/sft/accelerate.yaml", "--num_machines", "2",
                        "--machine_rank", "0", "--main_process_ip", "node-a", "--main_process_port", "29500",
                        "-m", "ftplan_runtime", f"{stages}/sft/args.json"]),
        ("python", ["-m", "ftplan_runtime", f"{stages}/merge/args.json"])]
    # outside the container only ftplan itself is needed: the package check runs inside it
    text = files["slurm/submit.sh"]
    assert "python -m ftplan_runtime.installed" not in text and "install it here with: pip install ftplan" in text
