"""``ftplan report PLAN_DIR [-o FILE] [--open]``: rebuilds plan.html from plan.json byte for byte as compile
wrote it, writes only a page that is ftplan's (listed in .ftplan-files) or a free path, and says what is wrong,
where and what to do, never with a traceback."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from io import StringIO
from pathlib import Path

import pytest
from rich.console import Console

from ftplan.cli import main
from ftplan.write import MARKER

ROOT = Path(__file__).resolve().parent.parent


def run(*argv: str) -> tuple[int, str, str]:
    """``ftplan ARGV`` in-process: (exit code, stdout, stderr), plain text."""
    out, err = StringIO(), StringIO()
    code = main(list(argv), out=Console(file=out, width=300, color_system=None, highlight=False, soft_wrap=True),
                err=Console(file=err, width=300, color_system=None, highlight=False, soft_wrap=True))
    return code, out.getvalue(), err.getvalue()


@pytest.fixture(scope="module")
def compiled_once(tmp_path_factory) -> Path:
    work = tmp_path_factory.mktemp("compiled")
    shutil.copytree(ROOT / "examples", work / "examples", ignore=shutil.ignore_patterns(".*"))
    code, _, err = run("compile", str(work / "examples" / "llama3-8b-qlora-24gb.yaml"), "-o", str(work / "plan"))
    assert code == 0, err
    return work


@pytest.fixture
def project(compiled_once, tmp_path) -> Path:
    """A fresh copy of a project with its compiled plan in ``plan/``."""
    shutil.copytree(compiled_once, tmp_path / "project")
    return tmp_path / "project"


def listed(plan: Path) -> list[str]:
    return [line for line in (plan / MARKER).read_text().splitlines() if not line.startswith("#")]


def test_report_writes_the_page_compile_wrote(project):
    plan = project / "plan"
    page = (plan / "plan.html").read_bytes()
    assert "plan.html" in listed(plan) and page.startswith(b"<!DOCTYPE html>")
    assert run("report", str(plan)) == (0, f"{plan / 'plan.html'}: up to date\n", "")
    (plan / "plan.html").unlink()
    assert run("report", str(plan)) == (0, f"wrote {plan / 'plan.html'}\n", "")
    assert (plan / "plan.html").read_bytes() == page
    (plan / "plan.html").write_text("stale\n")
    assert run("report", str(plan))[0] == 0 and (plan / "plan.html").read_bytes() == page
    assert oct((plan / "plan.html").stat().st_mode & 0o777) == "0o644"
    code, out, _ = run("compile", str(project / "examples" / "llama3-8b-qlora-24gb.yaml"), "-o", str(plan), "--check")
    assert code == 0 and "up to date" in out


def test_report_follows_plan_json(project):
    plan = project / "plan"
    doc = json.loads((plan / "plan.json").read_text())
    doc["stages"][1]["batch"]["tokens_per_step"] = 987_654_321
    (plan / "plan.json").write_text(json.dumps(doc))
    assert run("report", str(plan))[0] == 0
    assert "987,654,321" in (plan / "plan.html").read_text()


def test_report_adds_its_page_to_a_marker_that_lacks_it(project):
    plan = project / "plan"
    (plan / "plan.html").unlink()
    marker = (plan / MARKER).read_text()
    (plan / MARKER).write_text(marker.replace("plan.html\n", ""))
    assert run("report", str(plan))[0] == 0
    assert (plan / MARKER).read_text() == marker  # listed again, in its sorted place
    code, out, _ = run("compile", str(project / "examples" / "llama3-8b-qlora-24gb.yaml"), "-o", str(plan), "--check")
    assert code == 0 and "up to date" in out


def test_report_never_overwrites_a_page_ftplan_did_not_write(project):
    plan = project / "plan"
    (plan / MARKER).write_text((plan / MARKER).read_text().replace("plan.html\n", ""))
    (plan / "plan.html").write_text("my own notes\n")
    code, out, err = run("report", str(plan))
    assert code == 2 and out == ""
    assert f"{plan / 'plan.html'} was not written by ftplan" in err and "move or rename it" in err
    assert (plan / "plan.html").read_text() == "my own notes\n"
    assert "plan.html" not in listed(plan)
    code, out, _ = run("report", str(plan), "-o", str(project / "elsewhere.html"))
    assert code == 0 and (project / "elsewhere.html").read_text().startswith("<!DOCTYPE html>")


def test_report_to_a_file_of_your_choice(project):
    plan = project / "plan"
    target = project / "out" / "report.html"
    code, _, err = run("report", str(plan), "-o", str(target))
    assert code == 2 and "cannot write" in err and str(target) in err and "Traceback" not in err
    target.parent.mkdir()
    assert run("report", str(plan), "-o", str(target)) == (0, f"wrote {target}\n", "")
    assert target.read_bytes() == (plan / "plan.html").read_bytes()
    assert run("report", str(plan), "-o", str(target)) == (0, f"{target}: up to date\n", "")
    assert not list(target.parent.glob("*.ftplan-new"))
    code, _, err = run("report", str(plan), "-o", str(target.parent))
    assert code == 2 and "is a folder" in err


def test_report_on_something_that_is_not_a_plan(tmp_path):
    code, out, err = run("report", str(tmp_path / "missing"))
    assert (code, out) == (2, "") and f"{tmp_path / 'missing'} does not exist" in err
    code, _, err = run("report", str(tmp_path))
    assert code == 2 and "holds no plan.json, so it is not a compiled plan" in err and "ftplan compile" in err


@pytest.mark.parametrize("damage, says", [
    ('{"format_version": 1,\n  "stages": [', "plan.json:2:14: not valid JSON"),
    ('{"format_version": 99}', "has format_version 99, but this ftplan reads format 1"),
    ('[1, 2]', "has format_version None"),
    ('{"format_version": 1}', "lacks the key 'pipeline'"),
    (b"\xff\xfe{}", "is not UTF-8 text"),
])
def test_report_on_a_damaged_plan_json(project, damage, says):
    plan = project / "plan"
    page = (plan / "plan.html").read_bytes()
    if isinstance(damage, bytes):
        (plan / "plan.json").write_bytes(damage)
    else:
        (plan / "plan.json").write_text(damage)
    code, out, err = run("report", str(plan))
    assert (code, out) == (1, "") and says in err and "compile the plan again" in err, err
    assert (plan / "plan.html").read_bytes() == page


def test_report_refuses_a_folder_an_older_ftplan_wrote(project):
    plan = project / "plan"
    (plan / MARKER).unlink()
    (plan / "plan.html").unlink()
    code, _, err = run("report", str(plan))
    assert code == 2 and f"holds no {MARKER}" in err and "compile the plan again" in err
    assert not (plan / "plan.html").exists()


def test_report_open_starts_the_browser(project, tmp_path):
    plan = project / "plan"
    opened = tmp_path / "opened.txt"
    browser = tmp_path / "browser.sh"
    browser.write_text(f'#!/bin/sh\nprintf "%s" "$1" > {opened}\n')
    browser.chmod(0o755)
    env = {**os.environ, "BROWSER": str(browser)}
    env.pop("DISPLAY", None)
    r = subprocess.run([sys.executable, "-m", "ftplan", "report", str(plan), "--open"], capture_output=True, text=True,
                       env=env, timeout=60)
    uri = (plan / "plan.html").resolve().as_uri()
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines()[-1] == f"opened {uri}"
    assert opened.read_text() == uri


def test_report_usage():
    code, _, err = run("report")
    assert code == 2 and "PLAN_DIR" in err
    code, out, _ = run("report", "--help")
    assert code == 0 and "--open" in out and "-o FILE" in out
