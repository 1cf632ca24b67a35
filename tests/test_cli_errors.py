"""The CLI reports only the errors it owns: bad command lines, pipeline files that are not files, plan folders that
cannot be written, each command's own refusals. A failure anywhere else is a bug in ftplan: it must surface as one
(an exception with its traceback), not as a usage error (exit 2) with a message that sends the user looking for a
mistake they did not make."""

from __future__ import annotations

import json
import subprocess
import sys
from io import StringIO
from pathlib import Path
from typing import Callable

import pytest
from rich.console import Console

import ftplan.api
import ftplan.init
import ftplan.render
from ftplan.cli import EXIT_USAGE, main
from ftplan.plan import PlanFolderError

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

ROWS = "".join(json.dumps({"instruction": f"question {i}", "output": f"answer {i}"}) + "\n" for i in range(8))


def run(*argv: str) -> tuple[int, str, str]:
    """``ftplan ARGV`` in-process: (exit code, stdout, stderr)."""
    out, err = StringIO(), StringIO()
    code = main(list(argv), out=Console(file=out, width=160, color_system=None),
                err=Console(file=err, width=160, color_system=None))
    return code, out.getvalue(), err.getvalue()


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A folder with a valid pipeline and its data, as the current directory."""
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "train.jsonl").write_text(ROWS)
    (tmp_path / "pipeline.yaml").write_text(PIPELINE)
    monkeypatch.chdir(tmp_path)
    return tmp_path


def _broken(exc: Exception) -> Callable[..., None]:
    """A stand-in for an internal function with a bug: it raises ``exc``."""
    def broken(*args: object, **kwargs: object) -> None:
        raise exc
    return broken


@pytest.mark.parametrize("exc", [RuntimeError("internal bug"), ValueError("internal bug"), KeyError("bug"),
                                 OSError("internal bug")])
def test_a_bug_while_planning_is_raised_not_reported_as_a_usage_error(project, monkeypatch, exc):
    """``plan_files`` failing (a bug in planning or rendering) reaches the caller with its own exception; the
    ValueError and OSError cases used to be caught and printed as "cannot write the plan" with exit 2."""
    monkeypatch.setattr(ftplan.api, "plan_files", _broken(exc))
    with pytest.raises(type(exc), match="bug"):
        run("compile", "pipeline.yaml", "-o", "plan")
    assert not (project / "plan").exists()


def test_a_bug_in_a_renderer_is_raised_from_compile_check_too(project, monkeypatch):
    monkeypatch.setattr(ftplan.render, "render", _broken(ValueError("renderer bug")))
    with pytest.raises(ValueError, match="renderer bug"):
        run("compile", "pipeline.yaml", "-o", "plan", "--check", "--json")


def test_a_bug_in_init_is_raised_not_reported_as_a_write_error(project, monkeypatch):
    """Only writing the new file is ``init``'s OSError to report; one raised while building the starter is a bug."""
    monkeypatch.setattr(ftplan.init, "starter_pipeline", _broken(OSError(5, "internal bug")))
    with pytest.raises(OSError, match="internal bug"):
        run("init", "--model", "llama-3.1-8b", "--gpu", "h100-sxm-80gb", "-o", "new.yaml")
    assert not (project / "new.yaml").exists()


def test_the_errors_the_cli_owns_are_still_usage_errors(project, monkeypatch):
    """A plan folder that is a file (WriteError), an unwritable place (OSError) and one that cannot be placed
    relative to the project (PlanFolderError) stay one ``error:`` line and exit 2."""
    (project / "file").write_text("x")
    status, _, err = run("compile", "pipeline.yaml", "-o", "file")
    assert status == EXIT_USAGE and err.startswith("error: cannot write the plan to file: ")
    status, _, err = run("compile", "pipeline.yaml", "-o", "file/plan")
    assert status == EXIT_USAGE and err.startswith("error: cannot write the plan to file/plan: ")
    status, _, err = run("init", "--model", "llama-3.1-8b", "--gpu", "h100-sxm-80gb", "-o", "file/new.yaml")
    assert status == EXIT_USAGE and err.startswith("error: cannot write file/new.yaml: not a folder (file); ")
    monkeypatch.setattr(ftplan.api, "plan_files", _broken(PlanFolderError("the plan folder 'x' lies outside ...")))
    status, _, err = run("compile", "pipeline.yaml", "-o", "plan")
    assert status == EXIT_USAGE and err.startswith("error: cannot write the plan to plan: the plan folder 'x' lies")


def test_a_plan_folder_on_another_drive_is_a_plan_folder_error(monkeypatch):
    """Windows' relpath refuses paths on two drives; ``plan_dir_from_root`` says so instead of a ValueError."""
    def relpath(path: str, start: str) -> str:
        raise ValueError("path is on mount 'D:', start on mount 'C:'")

    monkeypatch.setattr(ftplan.api.os.path, "relpath", relpath)
    with pytest.raises(PlanFolderError, match="is on another drive than the project folder"):
        ftplan.api.plan_dir_from_root("C:/project/pipeline.yaml", "D:/plans/x")


def test_a_bug_exits_with_a_traceback_in_a_real_process(project):
    """What a user sees: Python's traceback naming the failing function and exit status 1, not ftplan's exit 2."""
    code = ("import sys, ftplan.api, ftplan.cli\n"
            "def plan_files(*a, **k):\n"
            "    raise RuntimeError('internal bug')\n"
            "ftplan.api.plan_files = plan_files\n"
            "sys.exit(ftplan.cli.main(['compile', 'pipeline.yaml', '-o', 'plan']))\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=project)
    assert proc.returncode == 1, proc.stderr
    assert "Traceback (most recent call last)" in proc.stderr
    assert proc.stderr.rstrip().endswith("RuntimeError: internal bug")
    assert "cannot write the plan" not in proc.stderr + proc.stdout
