"""The terminal view and plan.md say the same things about the same pipeline, for every example: the headline, every
cell of the stage table (verdicts included), the memory terms, and the commands that launch the plan; ``check
--json`` gives the same verdicts.

Each example is compiled the way a user does it (``ftplan compile X.yaml -o ../plans/X`` from the examples folder),
so the terminal's paths and plan.md's (relative to the project folder) are the same words.
"""

from __future__ import annotations

import json
import re
import shutil
from io import StringIO
from pathlib import Path

import pytest
from rich.console import Console

from ftplan.cli import main
from ftplan.view_model import STAGE_COLUMNS, STATUS_MEANINGS

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = sorted(p.stem for p in (ROOT / "examples").glob("*.yaml"))


def run(*argv: str) -> tuple[int, str, str]:
    """``ftplan ARGV`` in-process: (exit code, stdout, stderr), plain text, 160 columns."""
    out, err = StringIO(), StringIO()
    code = main(list(argv),
                out=Console(file=out, width=160, color_system=None, highlight=False, soft_wrap=True),
                err=Console(file=err, width=160, color_system=None, highlight=False, soft_wrap=True))
    return code, out.getvalue(), err.getvalue()


@pytest.fixture
def examples(tmp_path, monkeypatch) -> Path:
    """A copy of the examples folder as the current folder (nothing local, such as a built demo model, leaks in)."""
    shutil.copytree(ROOT / "examples", tmp_path / "examples", ignore=shutil.ignore_patterns(".*"))
    monkeypatch.chdir(tmp_path / "examples")
    return tmp_path / "examples"


def console_table(out: str, stages: int) -> tuple[str, list[list[str]]]:
    """(headline, rows of cells) of the terminal's stage table."""
    lines = out.splitlines()
    assert re.split(r"\s{2,}", lines[2].strip()) == list(STAGE_COLUMNS)
    return lines[0], [re.split(r"\s{2,}", line.strip()) for line in lines[3:3 + stages]]


def md_table(md: str) -> tuple[str, list[list[str]]]:
    """(headline, rows of cells without the ``#`` column and code spans) of plan.md's stage table."""
    lines = md.splitlines()
    assert lines[0].startswith("# Plan: ")
    header = next(line for line in lines if line.startswith("| # |"))
    assert header == "| # | " + " | ".join(STAGE_COLUMNS) + " |"
    section = md.split("\n## Stages\n", 1)[1].split("\n## ", 1)[0]
    rows = [line.strip("|").split(" | ") for line in section.splitlines() if re.match(r"\| \d{2} \| ", line)]
    return lines[2], [[cell.strip().strip("`").replace("\\|", "|") for cell in row[1:]] for row in rows]


def how_to_run(md: str) -> list[str]:
    """The commands under plan.md's "How to run"."""
    section = md.split("## How to run\n", 1)[1]
    return section.split("```bash\n", 1)[1].split("```", 1)[0].splitlines()


@pytest.mark.parametrize("example", EXAMPLES)
def test_check_and_plan_md_agree(example, examples):
    status, out, err = run("compile", f"{example}.yaml", "-o", f"../plans/{example}")
    _, check_out, _ = run("check", f"{example}.yaml")
    report = json.loads(run("check", "--json", f"{example}.yaml")[1])
    stages = len(report["stages"])
    headline, rows = console_table(check_out, stages)
    assert [len(r) for r in rows] == [len(STAGE_COLUMNS)] * stages, rows
    verdicts = [r[-1] for r in rows]
    assert verdicts == [s["verdict"] for s in report["stages"]]  # the JSON's words are the table's
    assert set(verdicts) <= set(STATUS_MEANINGS)
    if status != 0:  # too-big: nothing compiled, the table still says why
        assert example == "too-big" and "oom" in verdicts
        return
    md = (examples.parent / "plans" / example / "plan.md").read_text(encoding="utf-8")
    md_headline, md_rows = md_table(md)
    assert md_headline == headline
    assert md_rows == rows
    legend = md.split("\nVerdicts: ", 1)[1].split("\n", 1)[0]
    assert legend == "; ".join(f"{v}: {STATUS_MEANINGS[v]}" for v in dict.fromkeys(verdicts)) + "."
    # compile prints the same launch commands as plan.md's "How to run": the folder given to -o is the one
    # plan.md names relative to the project folder
    printed = out.split("\nrun it:\n", 1)[1].splitlines()
    assert [line.strip() for line in printed if line.startswith("  bash ")] == how_to_run(md)


@pytest.mark.parametrize("example", [e for e in EXAMPLES if e != "too-big"])
def test_check_v_shows_the_memory_terms_plan_md_lists(example, examples):
    assert run("compile", f"{example}.yaml", "-o", f"../plans/{example}")[0] == 0
    md = (examples.parent / "plans" / example / "plan.md").read_text(encoding="utf-8")
    _, loud, _ = run("check", "-v", f"{example}.yaml")
    _, quiet, _ = run("check", f"{example}.yaml")
    assert "memory per GPU of each training stage" in loud and "memory per GPU of each training stage" not in quiet
    breakdown = loud.split("memory per GPU of each training stage (host memory on the CPU):\n", 1)[1].split("\n\n")[0]
    details = md.split("\n## Stage details\n", 1)[1].split("\n## ", 1)[0]
    for section in details.split("\n### ")[1:]:
        stage_id = re.match(r"\d{2} (\S+) \(", section).group(1)
        if "\n- batch: " not in section:  # not a training stage
            assert not re.search(rf"^{stage_id}: ", breakdown, re.M)
            continue
        block = breakdown.split(f"{stage_id}: ", 1)[1].split("\n")
        peak = re.search(r"^- peak VRAM: (.*?)(;|$)", section, re.M)
        if peak:  # on a GPU: the same peak and verdict as plan.md
            assert block[0] == f"peak {peak.group(1)}"
        terms = re.findall(r"^\| (?!largest terms)(.+?) \| (.+?) \| (.*?) \|$", section.split("| largest terms")[1],
                           re.M)
        assert terms
        for name, size, how in terms:
            assert f"  {name} {size} ({how})" in block
