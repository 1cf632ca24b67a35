"""The command line as users and CI run it: exit codes, human and JSON output, the plan folder, catalogs, schema.

Most cases call ``ftplan.cli.main`` in-process with consoles that write to strings; a few run the real
``python -m ftplan`` and ``ftplan`` console script, where stdout is a pipe and a traceback would show.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import stat
import subprocess
import sys
from importlib.metadata import version
from io import StringIO
from pathlib import Path

import pytest
import yaml
from rich.console import Console

import ftplan
from ftplan import checks, estimate, lineage, resolve, schema_errors
from ftplan.catalog import GPUS, MODELS
from ftplan.cli import main
from ftplan.codes import all_codes

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = sorted((ROOT / "examples").glob("*.yaml"))
VENV_BIN = Path(sys.executable).parent

PIPELINE = """\
name: demo
model:
  base: meta-llama/Llama-3.1-8B
  revision: 0e9e39f249a16976918f6564b8830bc894c89659
hardware:
  gpu: h100-sxm-80gb
stages:
  - id: prep
    kind: data
    max_seq_len: 2048
    datasets:
      - {path: data/train.jsonl, format: alpaca}
  - id: sft
    kind: sft
    data: prep
    learning_rate: 2.0e-4
    adapter: {type: lora, r: 16}
"""
"""A valid data -> sft pipeline; the tests below edit single lines of it."""

ROWS = "".join(json.dumps({"instruction": f"question {i}", "output": f"answer {i}"}) + "\n" for i in range(8))

PLAN_FILES = ["plan.html", "plan.json", "plan.md", "run.sh", "stages/prep/args.json",
              "stages/sft/accelerate.yaml", "stages/sft/args.json"]
"""What ``compile`` writes for ``PIPELINE`` (no Slurm block)."""


def run(*argv: str) -> tuple[int, str, str]:
    """``ftplan ARGV`` in-process: (exit code, stdout, stderr), plain text, no colour.

    Consoles like the real ones (no highlighting, soft wrap) but 160 columns wide."""
    out, err = StringIO(), StringIO()
    code = main(list(argv),
                out=Console(file=out, width=160, color_system=None, highlight=False, soft_wrap=True),
                err=Console(file=err, width=160, color_system=None, highlight=False, soft_wrap=True))
    return code, out.getvalue(), err.getvalue()


def shell(*argv: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """A real process (stdout and stderr are pipes), run in the current directory."""
    return subprocess.run(list(argv), capture_output=True, text=True, timeout=60,
                          env={**os.environ, **(env or {})})


def snapshot(folder: Path) -> dict[str, tuple[bytes, int]]:
    """{relative path: (bytes, mode bits)} of every file under ``folder``."""
    return {p.relative_to(folder).as_posix(): (p.read_bytes(), stat.S_IMODE(p.stat().st_mode))
            for p in sorted(folder.rglob("*")) if p.is_file()}


def edit(text: str, old: str, new: str) -> str:
    """``text`` with the one occurrence of ``old`` replaced."""
    assert text.count(old) == 1, old
    return text.replace(old, new)


def position(text: str, line_part: str, value: str) -> str:
    """``LINE:COL`` (1-based) of ``value`` on the line containing ``line_part``."""
    for n, line in enumerate(text.splitlines(), 1):
        if line_part in line:
            return f"{n}:{line.index(value, line.index(line_part)) + 1}"
    raise AssertionError(line_part)


@pytest.fixture
def project(tmp_path, monkeypatch) -> Path:
    """``tmp_path`` as the current folder, holding ``pipeline.yaml`` (``PIPELINE``) and its data file."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "train.jsonl").write_text(ROWS, encoding="utf-8")
    (tmp_path / "pipeline.yaml").write_text(PIPELINE, encoding="utf-8")
    return tmp_path


# --- exit codes -------------------------------------------------------------------------------------------

def test_a_valid_pipeline_checks_and_compiles_with_exit_0(project):
    assert run("check", "pipeline.yaml")[0] == 0
    assert run("compile", "pipeline.yaml", "-o", "plan")[0] == 0
    assert run("compile", "pipeline.yaml", "-o", "plan", "--check")[0] == 0


@pytest.mark.parametrize("old, new, code", [
    ("learning_rate: 2.0e-4", "learning_rate: -0.0001", "FT004"),   # schema
    ("data: prep", "data: nothere", "FT202"),                        # stage graph
    ("gpu: h100-sxm-80gb", "gpu: t4", "FT301"),                      # pre-launch rule: bf16 on sm75
    ("gpu: h100-sxm-80gb", "gpu: h100-sxm-80gb\n  nodes: 2", "FT312"),  # rule: 2 nodes, no Slurm
    ("max_seq_len: 2048", "max_seq_len: 131072", "FT101"),           # does not fit in 80 GB
])
def test_an_invalid_pipeline_exits_1_for_check_and_compile(project, old, new, code):
    (project / "pipeline.yaml").write_text(edit(PIPELINE, old, new), encoding="utf-8")
    status, _, err = run("check", "pipeline.yaml")
    assert status == 1
    assert re.search(rf"^error\[{code}\] pipeline\.yaml:\d+:\d+: ", err, re.M), err
    status, _, _ = run("compile", "pipeline.yaml", "-o", "plan")
    assert status == 1
    assert not (project / "plan").exists()


@pytest.mark.parametrize("argv, message", [
    ((), "the following arguments are required: COMMAND"),
    (("lint", "pipeline.yaml"), "invalid choice: 'lint'"),
    (("compile", "pipeline.yaml"), "the following arguments are required: -o/--out"),
    (("check", "--jsn", "pipeline.yaml"), "unrecognized arguments: --jsn"),
    (("check", "missing.yaml"), "error: missing.yaml does not exist; pass the pipeline's YAML file"),
    (("compile", "missing.yaml", "-o", "plan"), "error: missing.yaml does not exist"),
    (("check", "data"), "error: data is a folder, not a pipeline file"),
])
def test_usage_errors_exit_2_with_the_reason_on_stderr(project, argv, message):
    status, out, err = run(*argv)
    assert (status, out) == (2, "")
    assert message in err
    assert not (project / "plan").exists()


def test_usage_of_argparse_goes_to_the_given_consoles(project, monkeypatch):
    monkeypatch.setenv("COLUMNS", "100")  # argparse wraps help to the terminal width
    status, out, err = run("check")
    assert (status, out) == (2, "")
    assert err.splitlines() == ["usage: ftplan check [-h] [--json] [-v] [--full-data] pipeline",
                                "ftplan check: error: the following arguments are required: pipeline"]
    status, out, err = run("--help")
    assert (status, err) == (0, "")
    assert out.startswith("usage: ftplan [-h] [--version] COMMAND ...")
    for command in ("check", "compile", "schema", "gpus", "models", "codes"):
        assert re.search(rf"^    {command}\s+\S", out, re.M), command


def test_version(project):
    assert ftplan.__version__ == version("ftplan")
    assert run("--version") == (0, f"ftplan {ftplan.__version__}\n", "")


def test_compile_check_exits_3_on_drift_and_writes_nothing(project):
    status, out, _ = run("compile", "pipeline.yaml", "-o", "plan", "--check")
    assert status == 3
    assert not (project / "plan").exists()
    assert out.splitlines()[-1] == "Plan: 7 to add, 0 to change, 0 to remove."

    assert run("compile", "pipeline.yaml", "-o", "plan")[0] == 0
    assert run("compile", "pipeline.yaml", "-o", "plan", "--check") == (0, "plan: up to date\n", "")
    plan = project / "plan"
    clean = snapshot(plan)

    with open(plan / "run.sh", "a", encoding="utf-8") as f:
        f.write("echo edited by hand\n")
    status, out, _ = run("compile", "pipeline.yaml", "-o", "plan", "--check")
    assert status == 3
    assert out.splitlines() == ["plan:", "  ~ plan: run.sh", "Plan: 0 to add, 1 to change, 0 to remove."]
    assert snapshot(plan)["run.sh"][0].endswith(b"echo edited by hand\n")  # --check repaired nothing

    run("compile", "pipeline.yaml", "-o", "plan")
    assert snapshot(plan) == clean
    notes = plan / "stages" / "sft" / "notes.txt"
    notes.write_text("mine\n", encoding="utf-8")  # a file ftplan did not write is no drift, and compile keeps it
    assert run("compile", "pipeline.yaml", "-o", "plan", "--check") == (
        0, "plan: up to date; kept 1 file ftplan did not write: stages/sft/notes.txt\n", "")
    run("compile", "pipeline.yaml", "-o", "plan")
    assert notes.read_text(encoding="utf-8") == "mine\n"
    notes.unlink()
    assert snapshot(plan) == clean
    os.chmod(plan / "plan.md", 0o755)
    status, out, _ = run("compile", "pipeline.yaml", "-o", "plan", "--check", "--json")
    assert status == 3
    assert json.loads(out)["changes"] == {
        "added": [], "changed": ["plan.md"], "removed": [], "clean": False,
        "stages": [{"symbol": "~", "stage": "plan", "files": ["plan.md"]}]}


def test_compile_check_of_an_invalid_pipeline_exits_1(project):
    assert run("compile", "pipeline.yaml", "-o", "plan")[0] == 0
    (project / "pipeline.yaml").write_text(edit(PIPELINE, "r: 16", "r: 0"), encoding="utf-8")
    assert run("compile", "pipeline.yaml", "-o", "plan", "--check")[0] == 1


# --- check: human output ----------------------------------------------------------------------------------

def test_check_prints_headline_stage_table_and_summary(project):
    status, out, err = run("check", "pipeline.yaml")
    assert status == 0
    lines = out.splitlines()
    assert lines[0] == "demo · meta-llama/Llama-3.1-8B (8.03 B) · 1 × H100 SXM 80GB (79.6 GiB, sm90)"
    assert lines[1] == ""
    assert re.split(r"\s{2,}", lines[2].strip()) == [
        "stage", "kind", "method", "batch", "tokens/step", "peak memory", "verdict"]
    assert re.fullmatch(r"prep\s+data\s+alpaca, ≤2048 tokens\s+—\s+—\s+—\s+ok", lines[3].rstrip())
    match = re.fullmatch(r"sft\s+sft\s+LoRA r16 α16\s+1\s+2,048\s+([█░]{16}) +(\d+\.\d) / 79\.6 GiB\s+fits",
                         lines[4].rstrip())
    assert match, lines[4]
    assert 10 < float(match[2]) < 30  # an 8B bf16 LoRA at 2k tokens: ~15 GiB of weights plus a few GiB
    assert abs(match[1].count("█") - 16 * float(match[2]) / 79.6) <= 1  # the bar is the share of the card
    assert err == "0 errors, 0 warnings, 1 note (-v shows them).\n"


def test_notes_are_hidden_without_v_and_shown_with_it(project):
    _, _, quiet = run("check", "pipeline.yaml")
    assert "info[" not in quiet
    _, _, loud = run("check", "-v", "pipeline.yaml")
    where = position(PIPELINE, "- id: sft", "id")
    assert loud.splitlines() == [
        f"info[FT603] pipeline.yaml:{where}: stages[sft].micro_batch: effective batch 1 sequence per optimizer "
        "step = 1 GPU × micro_batch 1 × grad_accum 1",
        "  hint: when the GPU count changes, scale `grad_accum` to keep this batch (and the tuned learning rate) "
        "the same",
        "",
        "0 errors, 0 warnings.",
    ]


def test_check_v_prints_the_memory_breakdown_of_a_stage_that_fits(project):
    _, quiet, _ = run("check", "pipeline.yaml")
    assert "memory per GPU" not in quiet
    _, loud, _ = run("check", "-v", "pipeline.yaml")
    lines = loud.splitlines()
    start = lines.index("memory per GPU of each training stage (host memory on the CPU):")
    peak = re.fullmatch(r"sft: peak (\d+\.\d) / 79\.6 GiB per GPU \(fits\)", lines[start + 1])
    assert peak, lines[start + 1]
    assert re.search(rf"[█░] {peak[1]} / 79\.6 GiB\s+fits$", lines[4].rstrip())  # the table's peak and verdict
    terms = lines[start + 2:lines.index("", start)]
    assert len(terms) >= 8 and all(t.startswith("  ") for t in terms)
    assert "  weights (bf16) 15.0 GiB (8.03B params × 2 B)" in terms  # name, size, how
    coverage = next(i for i, line in enumerate(lines) if line.startswith("stage  dataset"))
    assert lines.index("", start) < coverage  # before the data coverage table


def test_a_negative_learning_rate_is_reported_at_its_line_and_column(project):
    text = edit(PIPELINE, "learning_rate: 2.0e-4", "learning_rate: -0.0001")
    (project / "pipeline.yaml").write_text(text, encoding="utf-8")
    status, out, err = run("check", "pipeline.yaml")
    assert (status, out) == (1, "")  # no resolved pipeline: no headline, no table
    where = position(text, "learning_rate:", "-0.0001")
    assert where == "16:20"
    assert err.splitlines() == [
        f"error[FT004] pipeline.yaml:{where}: stages[sft].learning_rate: must be > 0 (got -0.0001)",
        "  hint: write a value > 0 and at most 1, e.g. `learning_rate: 2e-4`; learning_rate: peak learning rate",
        "",
        "1 error, 0 warnings.",
    ]


def test_every_error_of_a_file_is_reported_at_once_in_file_order(project):
    text = edit(PIPELINE, "learning_rate: 2.0e-4", "learning_rate: -0.0001")
    text = edit(text, "r: 16", "r: 0")
    text = edit(text, "max_seq_len: 2048", "max_seq_lenn: 2048")
    text = edit(text, "gpu: h100-sxm-80gb", "gpu: h100-sxm-80gb\n  gpus_per_nod: 2")
    (project / "pipeline.yaml").write_text(text, encoding="utf-8")
    status, _, err = run("check", "pipeline.yaml")
    assert status == 1
    assert err.splitlines() == [
        f"error[FT003] pipeline.yaml:{position(text, 'gpus_per_nod', 'gpus_per_nod')}: hardware: "
        "unknown key 'gpus_per_nod'",
        "  hint: did you mean 'gpus_per_node'?",
        f"error[FT003] pipeline.yaml:{position(text, 'max_seq_lenn', 'max_seq_lenn')}: stages[prep]: "
        "unknown key 'max_seq_lenn'",
        "  hint: did you mean 'max_seq_len'?",
        f"error[FT004] pipeline.yaml:{position(text, 'learning_rate', '-0.0001')}: stages[sft].learning_rate: "
        "must be > 0 (got -0.0001)",
        "  hint: write a value > 0 and at most 1, e.g. `learning_rate: 2e-4`; learning_rate: peak learning rate",
        f"error[FT004] pipeline.yaml:{position(text, 'adapter:', '0}')}: stages[sft].adapter.r: "
        "must be at least 1 (got 0)",
        "  hint: write a value at least 1 and at most 4096, e.g. `r: 16` (the default); r: rank of the update "
        "matrices",
        "",
        "4 errors, 0 warnings.",
    ]


def test_a_rule_error_keeps_the_table_and_names_the_fix(project):
    (project / "pipeline.yaml").write_text(edit(PIPELINE, "data: prep", "data: nothere"), encoding="utf-8")
    status, out, err = run("check", "pipeline.yaml")
    assert status == 1
    assert out.splitlines()[0].startswith("demo · meta-llama/Llama-3.1-8B")
    where = position(PIPELINE, "data: prep", "prep")
    assert err.splitlines()[:2] == [f"error[FT202] pipeline.yaml:{where}: stages[sft].data: no stage is named "
                                    "'nothere'", "  hint: stage ids: prep, sft"]
    assert err.splitlines()[-1] == "1 error, 0 warnings, 1 note (-v shows them)."


@pytest.mark.parametrize("name, content, code, first", [
    ("garbage.yaml", bytes(range(256)) * 8, "FT000", "byte 0x80 is not UTF-8 text"),
    ("empty.yaml", b"", "FT007", "the pipeline file is empty"),
    ("list.yaml", b"- name: demo\n- stages: []\n", "FT007", "the top level must be a mapping of keys, not a list"),
    ("scalar.yaml", b"just some words\n", "FT007", ""),
    ("syntax.yaml", b"name: demo\nmodel: {base: x\nstages: [\n", "FT001", ""),
    ("tabs.yaml", b"name: demo\nmodel:\n\tbase: x\n", "FT001", ""),
    ("null.yaml", b"~\n", "FT007", ""),
    ("stages.yaml", PIPELINE.split("stages:")[0].encode() + b"stages: 5\n", "FT006", "stages: must be a list"),
    ("bomb.yaml", b"a: &a [x, x, x, x, x, x, x, x, x]\nb: &b [*a, *a, *a, *a, *a, *a, *a, *a, *a]\n"
                  b"c: &c [*b, *b, *b, *b, *b, *b, *b, *b, *b]\nd: &d [*c, *c, *c, *c, *c, *c, *c, *c, *c]\n"
                  b"e: &e [*d, *d, *d, *d, *d, *d, *d, *d, *d]\nf: [*e, *e, *e, *e, *e, *e, *e, *e, *e]\n",
     "FT008", ""),
])
def test_malformed_files_are_diagnostics_not_tracebacks(project, name, content, code, first):
    (project / name).write_bytes(content)
    status, out, err = run("check", name)  # an exception here would fail the test
    assert (status, out) == (1, "")
    head = err.splitlines()[0]
    assert re.match(rf"error\[{code}\] {re.escape(name)}:\d+:\d+: ", head), err
    assert first in head
    assert "Traceback" not in err


def test_a_malformed_file_is_a_json_report_and_compiles_nothing(project):
    (project / "garbage.yaml").write_bytes(bytes(range(256)))
    status, out, err = run("check", "--json", "garbage.yaml")
    assert (status, err) == (1, "")
    report = json.loads(out)
    assert (report["ok"], report["pipeline"], report["stages"]) == (False, None, [])
    assert [(d["code"], d["file"], d["path"]) for d in report["diagnostics"]] == [("FT000", "garbage.yaml", "")]
    assert run("compile", "garbage.yaml", "-o", "plan")[0] == 1
    assert not (project / "plan").exists()


def test_paths_that_look_like_console_markup_are_printed_verbatim(project):
    status, _, err = run("check", "[/red].yaml")
    assert (status, err) == (2, "error: [/red].yaml does not exist; pass the pipeline's YAML file\n")
    shutil.copy(project / "pipeline.yaml", project / "[red]p.yaml")
    status, out, err = run("compile", "[red]p.yaml", "-o", "[/x]")
    assert status == 0, err
    assert out.splitlines()[-7] == "[/x]:"
    assert out.splitlines()[-1] == "  bash '[/x]/run.sh'    # every stage on this machine, skipping finished ones"
    assert run("compile", "[red]p.yaml", "-o", "[/x]", "--check") == (0, "[/x]: up to date\n", "")
    status, _, err = run("compile", "[red]p.yaml", "-o", "[red]p.yaml")
    assert status == 2 and err.startswith("error: cannot write the plan to [red]p.yaml: [red]p.yaml exists")


def test_a_real_process_prints_no_traceback_for_bad_input(project):
    (project / "garbage.yaml").write_bytes(b"\x00\xff\xfe" * 100)
    proc = shell(sys.executable, "-m", "ftplan", "check", "garbage.yaml")
    assert proc.returncode == 1
    assert proc.stderr.startswith("error[FT000] garbage.yaml:")
    assert "Traceback" not in proc.stderr + proc.stdout
    proc = shell(sys.executable, "-m", "ftplan", "compile", "pipeline.yaml", "-o", "pipeline.yaml/plan")
    assert proc.returncode == 2
    assert proc.stderr.startswith("error: cannot write the plan to pipeline.yaml/plan: ")
    assert "Traceback" not in proc.stderr


# --- --json -----------------------------------------------------------------------------------------------

DIAGNOSTIC_KEYS = {"code", "severity", "file", "line", "col", "path", "message", "hint", "notes", "related"}


def test_check_json_of_an_invalid_pipeline(project):
    text = edit(PIPELINE, "learning_rate: 2.0e-4", "learning_rate: -0.0001")
    (project / "pipeline.yaml").write_text(text, encoding="utf-8")
    status, out, err = run("check", "--json", "pipeline.yaml")
    assert (status, err) == (1, "")
    report = json.loads(out)
    assert report == {
        "ok": False, "file": "pipeline.yaml", "pipeline": None, "stages": [], "datasets": [],
        "diagnostics": [{"code": "FT004", "severity": "error", "file": "pipeline.yaml", "line": 16, "col": 20,
                         "path": "stages[sft].learning_rate", "message": "must be > 0 (got -0.0001)",
                         "hint": "write a value > 0 and at most 1, e.g. `learning_rate: 2e-4`; learning_rate: peak "
                         "learning rate", "notes": [], "related": []}]}


def test_check_json_of_a_valid_pipeline_has_stage_estimates(project):
    status, out, err = run("check", "--json", "pipeline.yaml")
    assert (status, err) == (0, "")
    report = json.loads(out)
    assert (report["ok"], report["file"], report["pipeline"]) == (True, "pipeline.yaml", "demo")
    (note,) = report["diagnostics"]
    assert set(note) == DIAGNOSTIC_KEYS
    assert (note["code"], note["severity"], note["path"]) == ("FT603", "info", "stages[sft].micro_batch")
    assert f"{note['line']}:{note['col']}" == position(PIPELINE, "- id: sft", "id")
    prep, sft = report["stages"]
    assert (prep["id"], prep["kind"], prep["verdict"], prep["terms"]) == ("prep", "data", "ok", [])
    assert (sft["id"], sft["kind"], sft["verdict"], sft["tokens_per_step"]) == ("sft", "sft", "fits", 2048)
    assert sft["capacity_gib"] == 79.65
    names = [t["name"] for t in sft["terms"]]
    assert "weights (bf16)" in names and len(names) == len(set(names))
    for term in sft["terms"]:
        assert set(term) == {"name", "gib", "detail"} and term["gib"] >= 0 and term["detail"]
    assert sum(t["gib"] for t in sft["terms"]) == pytest.approx(sft["peak_gib"], abs=0.02)


def test_check_json_of_an_oom_example(monkeypatch):
    monkeypatch.chdir(ROOT)
    status, out, _ = run("check", "--json", "examples/too-big.yaml")
    assert status == 1
    report = json.loads(out)
    assert report["ok"] is False
    errors = [d for d in report["diagnostics"] if d["severity"] == "error"]
    assert [(d["code"], d["file"]) for d in errors] == [("FT101", "examples/too-big.yaml")]
    assert errors[0]["hint"] and errors[0]["notes"]
    sft = next(s for s in report["stages"] if s["id"] == "sft")
    assert sft["verdict"] == "oom" and sft["peak_gib"] > sft["capacity_gib"]


def test_compile_json_reports_the_changes(project):
    status, out, err = run("compile", "--json", "pipeline.yaml", "-o", "plan")
    assert (status, err) == (0, "")
    report = json.loads(out)
    assert report["ok"] is True and [s["id"] for s in report["stages"]] == ["prep", "sft"]
    assert report["changes"]["added"] == PLAN_FILES
    assert (report["changes"]["changed"], report["changes"]["removed"], report["changes"]["clean"]) == (
        [], [], False)
    assert [(s["symbol"], s["stage"]) for s in report["changes"]["stages"]] == [
        ("+", "plan"), ("+", "prep"), ("+", "sft")]
    again = json.loads(run("compile", "--json", "pipeline.yaml", "-o", "plan")[1])
    assert again["changes"] == {"added": [], "changed": [], "removed": [], "clean": True, "stages": []}
    assert {k: v for k, v in again.items() if k != "changes"} == {
        k: v for k, v in report.items() if k != "changes"}


def test_compile_json_of_an_invalid_pipeline_has_no_changes(project):
    (project / "pipeline.yaml").write_text(edit(PIPELINE, "r: 16", "r: 0"), encoding="utf-8")
    status, out, _ = run("compile", "--json", "pipeline.yaml", "-o", "plan")
    report = json.loads(out)
    assert (status, report["ok"], "changes" in report) == (1, False, False)
    assert [d["code"] for d in report["diagnostics"]] == ["FT004"]


@pytest.mark.parametrize("argv, code, message", [
    (("check", "--json", "missing.yaml"), 2, "missing.yaml does not exist"),
    (("check", "--json", "data"), 2, "data is a folder, not a pipeline file"),
    (("compile", "--json", "missing.yaml", "-o", "plan"), 2, "missing.yaml does not exist"),
    (("compile", "--json", "data", "-o", "plan"), 2, "data is a folder, not a pipeline file"),
])
def test_json_reports_a_missing_or_unusable_pipeline_file(project, argv, code, message):
    status, out, err = run(*argv)
    assert (status, err) == (code, "")
    report = json.loads(out)
    assert (report["ok"], report["pipeline"], report["stages"]) == (False, None, [])
    [d] = report["diagnostics"]
    assert (d["code"], d["severity"], d["message"]) == ("FT000", "error", message)
    assert d["hint"].startswith("pass the pipeline's YAML file")
    assert not (project / "plan").exists()


def test_json_reports_an_unreadable_pipeline_file(project, monkeypatch):
    real = Path.read_bytes

    def refuse(self):
        if self.name == "pipeline.yaml":
            raise PermissionError(13, "Permission denied", str(self))
        return real(self)

    monkeypatch.setattr(Path, "read_bytes", refuse)
    for argv in (("check", "--json", "pipeline.yaml"), ("compile", "--json", "pipeline.yaml", "-o", "plan")):
        status, out, err = run(*argv)
        assert (status, err) == (1, "")
        [d] = json.loads(out)["diagnostics"]
        assert (d["code"], d["message"]) == ("FT000", "cannot read pipeline.yaml: Permission denied")


@pytest.mark.parametrize("target, reason", [
    ("pipeline.yaml", "pipeline.yaml exists and is not a folder"),
    ("pipeline.yaml/plan", "File exists"),
    ("mine", "mine is not empty and holds no plan.json"),
])
def test_compile_json_reports_a_plan_folder_it_cannot_write(project, target, reason):
    (project / "mine").mkdir()
    (project / "mine" / "notes.txt").write_text("keep me\n", encoding="utf-8")
    status, out, err = run("compile", "--json", "pipeline.yaml", "-o", target)
    assert (status, err) == (2, "")
    report = json.loads(out)
    assert report["ok"] is False and "changes" not in report
    assert report["error"]["message"].startswith(f"cannot write the plan to {target}: ")
    assert reason in report["error"]["message"] and report["error"]["hint"]
    assert [s["id"] for s in report["stages"]] == ["prep", "sft"]  # the check itself went through


@pytest.mark.parametrize("argv", [("check", "--json"), ("compile", "--json", "pipeline.yaml")])
def test_json_reports_a_command_line_that_does_not_parse(project, argv):
    status, out, err = run(*argv)
    assert (status, err) == (2, "")
    report = json.loads(out)
    assert report["ok"] is False and "the following arguments are required" in report["error"]["message"]
    assert report["error"]["hint"] == f"see `ftplan {argv[0]} --help`"


# --- the verdict column -----------------------------------------------------------------------------------

def _verdicts(out: str) -> dict[str, str]:
    """stage id -> verdict, from the printed stage table."""
    rows = out.split("\n\n")[1].splitlines()[1:]
    return {row.split()[0]: row.split()[-1] for row in rows}


@pytest.mark.parametrize("old, new, expected", [
    ("gpu: h100-sxm-80gb", "gpu: A100", {"prep": "ok", "sft": "unknown"}),                       # unknown GPU
    ("base: meta-llama/Llama-3.1-8B", "base: acme/secret-model", {"prep": "ok", "sft": "unknown"}),  # unknown model
    ("format: alpaca}", "format: alpaca, columns: {output: answer}}", {"prep": "error", "sft": "fits"}),  # FT503 rows
    ("data: prep", "data: nothere", {"prep": "ok", "sft": "error"}),                               # FT202 in sft
    ("learning_rate: 2.0e-4", "learning_rate: 2.0e-4\n    eval_steps: 10", {"prep": "ok", "sft": "error"}),  # FT605
])
def test_the_verdict_is_never_ok_for_a_stage_with_errors_or_no_estimate(project, old, new, expected):
    (project / "pipeline.yaml").write_text(edit(PIPELINE, old, new), encoding="utf-8")
    status, out, _ = run("check", "pipeline.yaml")
    assert status == 1
    assert _verdicts(out) == expected
    if expected["sft"] == "unknown":
        assert re.search(r"^sft .*—\s+unknown$", out, re.M)  # no memory figure either
    report = json.loads(run("check", "--json", "pipeline.yaml")[1])
    assert {s["id"]: s["verdict"] for s in report["stages"]} == expected


# --- duplicated stage ids ---------------------------------------------------------------------------------

TWO_PREPS = PIPELINE.replace("  - id: sft\n", """\
  - id: prep
    kind: data
    max_seq_len: 4096
    val_fraction: 0.1
    datasets:
      - {path: data/other.jsonl, format: alpaca}
  - id: sft
""").replace("    learning_rate: 2.0e-4\n", "    learning_rate: 2.0e-4\n    eval_steps: 10\n")


def test_a_duplicated_stage_id_is_one_error_with_both_positions(project):
    (project / "data" / "other.jsonl").write_text('{"instruction": "q"}\n', encoding="utf-8")
    (project / "pipeline.yaml").write_text(TWO_PREPS, encoding="utf-8")
    status, out, err = run("check", "pipeline.yaml")
    assert status == 1
    first, second = (position(TWO_PREPS, "- id: prep", "prep"),
                     position(TWO_PREPS.replace("- id: prep", "- id: PREP", 1), "- id: prep", "prep"))
    lines = err.splitlines()
    assert lines[:3] == [
        f"error[FT201] pipeline.yaml:{second}: stages[1].id: stage id 'prep' is already used by stages[0]; outputs, "
        "references and checks need one stage per id",
        f"  pipeline.yaml:{first}: stage id 'prep' first used here",
        "  hint: rename one of them, e.g. `id: prep_2`, and point each `input`/`data` at the stage it means",
    ]
    codes = re.findall(r"^error\[(FT\d+)\]", err, re.M)
    assert codes.count("FT201") == 1
    assert "FT605" not in codes  # 'sft' reads 'prep', which is ambiguous: no rule guesses which one
    rows = out.split("\n\n")[1].splitlines()[1:]
    assert [r.split()[-1] for r in rows] == ["ok", "error", "unknown"]  # no estimate read off the other 'prep'
    report = json.loads(run("check", "--json", "pipeline.yaml")[1])
    [dup] = [d for d in report["diagnostics"] if d["code"] == "FT201"]
    assert dup["related"] == [{"message": "stage id 'prep' first used here", "path": "stages[0].id",
                               "file": "pipeline.yaml", "line": int(first.split(":")[0]),
                               "col": int(first.split(":")[1])}]


def test_json_on_a_narrow_pipe_is_not_wrapped(project):
    proc = shell(sys.executable, "-m", "ftplan", "check", "--json", "pipeline.yaml", env={"COLUMNS": "30"})
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == ""
    assert "\x1b[" not in proc.stdout  # no colour codes in a pipe
    assert json.loads(proc.stdout)["stages"][1]["verdict"] == "fits"


# --- compile: the plan folder -----------------------------------------------------------------------------

def test_compile_of_a_two_node_plan_names_the_command_that_launches_it(project):
    """run.sh refuses a plan over several nodes (exit 1): compile and plan.md name the Slurm chain instead."""
    text = edit(PIPELINE, "gpu: h100-sxm-80gb", "gpu: h100-sxm-80gb\n  gpus_per_node: 8\n  nodes: 2\n  slurm: {}")
    (project / "pipeline.yaml").write_text(text, encoding="utf-8")
    status, out, err = run("compile", "pipeline.yaml", "-o", "plan")
    assert status == 0, err
    assert out.splitlines()[-3:] == [
        "run it:", "  bash plan/slurm/submit.sh    # the Slurm job chain (afterok)",
        "  (run.sh refuses this plan (it exits 1): a stage spans 2 nodes, which only the Slurm jobs start)"]
    md = (project / "plan" / "plan.md").read_text(encoding="utf-8")
    how = md.split("## How to run")[1]
    assert "bash plan/slurm/submit.sh    # the Slurm job chain (afterok)" in how and "run.sh    #" not in how
    refused = shell("bash", "plan/run.sh")
    assert refused.returncode == 1
    assert refused.stderr == "ftplan: this plan spans 2 nodes; submit it with: bash plan/slurm/submit.sh\n"


def test_compile_writes_the_plan_layout_and_reports_it(project):
    status, out, err = run("compile", "pipeline.yaml", "-o", "plan")
    assert status == 0
    assert sorted(snapshot(project / "plan")) == [".ftplan-files", *PLAN_FILES]  # the marker lists ftplan's files
    assert out.splitlines()[0].startswith("demo · meta-llama/Llama-3.1-8B")
    assert out.splitlines()[-7:-2] == [
        "plan:",
        "  + plan: plan.html, plan.json, plan.md, run.sh",
        "  + prep: stages/prep/args.json",
        "  + sft: stages/sft/accelerate.yaml, stages/sft/args.json",
        "Plan: 7 to add, 0 to change, 0 to remove.",
    ]
    # then how to launch it, in plan.md's words ("How to run"), with the folder as given to -o
    run_sh = "bash plan/run.sh    # every stage on this machine, skipping finished ones"
    assert out.splitlines()[-2:] == ["run it:", f"  {run_sh}"]
    assert run_sh in (project / "plan" / "plan.md").read_text(encoding="utf-8")
    assert err == "0 errors, 0 warnings, 1 note (-v shows them).\n"
    plan = json.loads((project / "plan" / "plan.json").read_text(encoding="utf-8"))
    assert isinstance(plan, dict) and plan
    assert (project / "plan" / "plan.md").read_text(encoding="utf-8").strip()


def test_compile_twice_is_byte_identical(project):
    assert run("compile", "pipeline.yaml", "-o", "plan")[0] == 0
    first = snapshot(project / "plan")
    assert run("compile", "pipeline.yaml", "-o", "plan")[0] == 0
    assert snapshot(project / "plan") == first
    assert sorted(p.name for p in project.iterdir()) == ["data", "pipeline.yaml", "plan"]  # no temp folders


def test_an_invalid_pipeline_leaves_the_existing_plan_untouched(project):
    assert run("compile", "pipeline.yaml", "-o", "plan")[0] == 0
    before, inode = snapshot(project / "plan"), (project / "plan").stat().st_ino
    (project / "pipeline.yaml").write_text(edit(PIPELINE, "learning_rate: 2.0e-4", "learning_rate: -1"),
                                           encoding="utf-8")
    status, out, err = run("compile", "pipeline.yaml", "-o", "plan")
    assert status == 1
    assert "error[FT004]" in err and "Plan:" not in out
    assert snapshot(project / "plan") == before
    assert (project / "plan").stat().st_ino == inode  # not even swapped for a copy


def test_compile_refuses_a_folder_that_is_not_a_plan(project):
    mine = project / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep me\n", encoding="utf-8")
    status, out, err = run("compile", "pipeline.yaml", "-o", "mine")
    assert (status, out) == (2, "")
    assert err.startswith("error: cannot write the plan to mine: mine is not empty and holds no plan.json")
    assert err.rstrip().endswith("Choose a new or empty folder with -o")
    assert snapshot(mine) == {"notes.txt": (b"keep me\n", 0o644)}
    assert sorted(p.name for p in project.iterdir()) == ["data", "mine", "pipeline.yaml"]


@pytest.mark.parametrize("target, reason", [
    ("pipeline.yaml", "pipeline.yaml exists and is not a folder"),
    ("pipeline.yaml/plan", "File exists"),
])
def test_compile_to_an_impossible_folder_is_a_usage_error(project, target, reason):
    status, out, err = run("compile", "pipeline.yaml", "-o", target)
    assert (status, out) == (2, "")
    assert err.startswith(f"error: cannot write the plan to {target}: ")
    assert reason in err
    assert (project / "pipeline.yaml").read_text(encoding="utf-8") == PIPELINE


def test_compile_a_slurm_example_makes_its_scripts_executable(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    shutil.copy(ROOT / "examples" / "slurm-2node-full.yaml", tmp_path / "pipeline.yaml")
    shutil.copytree(ROOT / "examples" / "data", tmp_path / "data")
    assert run("compile", "pipeline.yaml", "-o", "plan")[0] == 0
    files = snapshot(tmp_path / "plan")
    scripts = sorted(p for p in files if p.endswith((".sh", ".sbatch")))
    assert scripts == ["run.sh", "slurm/data.sbatch", "slurm/gguf.sbatch", "slurm/sft.sbatch",
                       "slurm/submit.sh"]
    for path, (content, mode) in files.items():
        assert mode == (0o755 if path in scripts else 0o644), path
        if path in scripts:
            assert content.startswith(b"#!"), path
    assert {"stages/data/args.json", "stages/sft/args.json", "stages/gguf/args.json"} <= set(files)
    assert any(p.startswith("stages/sft/") and p.endswith(".json") and "deepspeed" in p for p in files)
    assert shell("bash", "-n", str(tmp_path / "plan" / "run.sh")).returncode == 0


# --- schema -----------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def printed_schema() -> dict:
    """What ``ftplan schema`` prints, parsed."""
    status, out, err = run("schema")
    assert (status, err) == (0, "")
    return json.loads(out)


def _properties(node, where="#"):
    """(where, name, property schema) for every ``properties`` entry anywhere in a JSON Schema."""
    if isinstance(node, dict):
        for name, prop in (node.get("properties") or {}).items():
            yield where, name, prop
        for key, value in node.items():
            yield from _properties(value, f"{where}/{key}")
    elif isinstance(node, list):
        for i, value in enumerate(node):
            yield from _properties(value, f"{where}/{i}")


def test_schema_documents_every_property(printed_schema):
    assert printed_schema["title"] == "Pipeline"
    assert {"name", "model", "hardware", "stages"} <= set(printed_schema["required"])
    props = list(_properties(printed_schema))
    assert len(props) > 100
    undocumented = [f"{where}.{name}" for where, name, prop in props
                    if not (isinstance(prop.get("description"), str) and prop["description"].strip())]
    assert undocumented == []
    for name, definition in printed_schema["$defs"].items():
        if definition.get("type") == "object" and "properties" in definition:
            assert definition.get("additionalProperties") is False, name
            assert definition.get("description", "").strip(), name


def test_every_example_validates_against_the_printed_schema(printed_schema):
    import jsonschema  # a dev dependency (pyproject's dev extra)

    jsonschema.Draft202012Validator.check_schema(printed_schema)
    validator = jsonschema.Draft202012Validator(printed_schema)
    assert len(EXAMPLES) >= 5
    for example in EXAMPLES:
        data = yaml.safe_load(example.read_text(encoding="utf-8"))
        errors = [f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(data)]
        assert errors == [], example.name


@pytest.mark.parametrize("where", ["top", "hardware", "stage", "adapter", "dataset"])
def test_an_unknown_key_fails_the_json_schema(printed_schema, where):
    import jsonschema  # a dev dependency (pyproject's dev extra)

    data = yaml.safe_load(PIPELINE)
    validator = jsonschema.Draft202012Validator(printed_schema)
    assert list(validator.iter_errors(data)) == []
    target = {"top": data, "hardware": data["hardware"], "stage": data["stages"][1],
              "adapter": data["stages"][1]["adapter"], "dataset": data["stages"][0]["datasets"][0]}[where]
    target["colour"] = "blue"
    assert not validator.is_valid(data)


def test_schema_bounds_agree_with_check(printed_schema):
    import jsonschema  # a dev dependency (pyproject's dev extra)

    data = yaml.safe_load(edit(PIPELINE, "learning_rate: 2.0e-4", "learning_rate: -0.0001"))
    assert not jsonschema.Draft202012Validator(printed_schema).is_valid(data)


# --- catalogs and codes -----------------------------------------------------------------------------------

GPU_KEYS = {"name", "memory_mib", "compute_capability", "bf16", "fp8", "peak_bf16_tflops", "aliases"}


def test_gpus_table_lists_every_gpu():
    status, out, err = run("gpus")
    assert (status, err) == (0, "")
    lines = out.splitlines()
    assert re.split(r"\s{2,}", lines[0].strip()) == ["key", "name", "memory", "sm", "bf16", "fp8", "bf16 TFLOP/s"]
    assert [line.split()[0] for line in lines[1:]] == list(GPUS)
    h100 = next(line for line in lines if line.split()[0] == "h100-sxm-80gb")
    assert re.search(r"H100 SXM 80GB\s+79\.6 GiB\s+9\.0\s+yes\s+yes", h100)


def test_gpus_json_has_the_required_keys():
    status, out, _ = run("gpus", "--json")
    gpus = json.loads(out)
    assert status == 0 and list(gpus) == list(GPUS)
    for key, gpu in gpus.items():
        assert set(gpu) == GPU_KEYS, key
        assert isinstance(gpu["memory_mib"], int) and gpu["memory_mib"] > 1024, key
        assert gpu["name"] and gpu["peak_bf16_tflops"] > 0 and isinstance(gpu["aliases"], list), key
        assert gpu["compute_capability"] is None or len(gpu["compute_capability"]) == 2, key
    assert gpus["h100-sxm-80gb"]["compute_capability"] == [9, 0] and gpus["t4"]["bf16"] is False


def test_models_table_and_json():
    status, out, err = run("models")
    assert (status, err) == (0, "")
    lines = out.splitlines()
    assert re.split(r"\s{2,}", lines[0].strip()) == ["key", "family", "params", "layers", "hidden", "vocab",
                                                     "context"]
    assert [line.split()[0] for line in lines[1:]] == list(MODELS)
    assert re.match(r"llama-3\.1-8b\s+llama\s+8\.03 B\s+32\s+4096\s+128,256\s+131,072$",
                    next(line.strip() for line in lines if line.split()[0] == "llama-3.1-8b"))
    status, out, _ = run("models", "--json")
    models = json.loads(out)
    assert status == 0 and list(models) == list(MODELS)
    for key, model in models.items():
        assert set(model) == {"family", "hub_ids", "params"}, key
        assert model["family"] and isinstance(model["hub_ids"], list) and model["params"] > 0, key
    assert models["llama-3.1-8b"]["params"] == pytest.approx(8.03e9, rel=1e-3)


def test_codes_lists_every_code_once_in_order():
    status, out, err = run("codes")
    assert (status, err) == (0, "")
    rows = [re.fullmatch(r"(FT\d{3})  (\S.*)", line) for line in out.splitlines()]
    assert all(rows), out
    listed = [(m[1], m[2]) for m in rows]
    assert listed == list(all_codes().items())
    codes = [c for c, _ in listed]
    assert codes == sorted(set(codes))


def test_no_code_is_owned_by_two_modules():
    owners = {"schema_errors": schema_errors.CODES, "resolve": resolve.CODES, "lineage": lineage.CODES,
              "estimate": estimate.CODES}
    owners.update({m.__name__: m.CODES for m in checks.RULE_MODULES})
    seen: dict[str, str] = {}
    for owner, codes in owners.items():
        for code in codes:
            assert code not in seen, f"{code} is defined in {seen.get(code)} and {owner}"
            seen[code] = owner
    assert sorted(seen) == list(all_codes())


# --- the installed entry points ---------------------------------------------------------------------------

def test_console_script_and_module_agree(project):
    script = shell(str(VENV_BIN / "ftplan"), "--version")
    assert (script.returncode, script.stdout, script.stderr) == (0, f"ftplan {ftplan.__version__}\n", "")
    proc = shell(str(VENV_BIN / "ftplan"), "check", "pipeline.yaml")
    assert proc.returncode == 0
    assert proc.stdout.splitlines()[0] == "demo · meta-llama/Llama-3.1-8B (8.03 B) · 1 × H100 SXM 80GB (79.6 GiB, sm90)"
    assert proc.stderr == "0 errors, 0 warnings, 1 note (-v shows them).\n"
    proc = shell(sys.executable, "-m", "ftplan", "compile", "pipeline.yaml", "-o", "plan")
    assert proc.returncode == 0 and "Traceback" not in proc.stderr
    assert run("compile", "pipeline.yaml", "-o", "plan", "--check")[0] == 0  # in-process agrees byte for byte
    proc = shell(sys.executable, "-m", "ftplan")
    assert proc.returncode == 2 and proc.stdout == "" and proc.stderr.startswith("usage: ftplan")


# --- how much data check reads --------------------------------------------------------------------------

def test_check_says_how_many_rows_of_each_dataset_it_read(project, monkeypatch):
    import ftplan.inputs

    code, out, _ = run("check", "pipeline.yaml")
    assert code == 0 and re.search(r"prep\s+data/train.jsonl\s+all 8 rows checked", out)
    bad = json.dumps({"instruction": "question", "response": "answer"}) + "\n"
    (project / "data" / "train.jsonl").write_text(ROWS * 30 + bad, encoding="utf-8")  # a bad row at line 241
    monkeypatch.setattr(ftplan.inputs, "FULL_READ_BYTES", 1_000)
    monkeypatch.setattr(ftplan.inputs, "HEAD_ROWS", 200)
    code, out, err = run("check", "pipeline.yaml")
    assert code == 0 and "rows 1–200 of 241 checked (--full-data checks every row)" in out
    code, out, err = run("check", "--full-data", "pipeline.yaml")
    assert code == 1 and "all 241 rows checked" in out
    assert "data/train.jsonl: line 241: missing column 'output' (format alpaca)" in err
    code, out, _ = run("check", "--json", "--full-data", "pipeline.yaml")
    [row] = json.loads(out)["datasets"]
    assert row == {"stage": "prep", "path": "data/train.jsonl", "rows_read": 241, "rows_total": 241,
                   "complete": True, "checked": "all 241 rows checked"}
