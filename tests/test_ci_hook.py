"""The CI recipe: the pre-commit hook (``.pre-commit-hooks.yaml`` -> ``ftplan-check-plans``) run for real in a
temporary git repository holding a pipeline and its committed plan, and the ``--diff-base`` comment for pull
requests. The hook runs as its own process (``python -m ftplan.check_plans``), as pre-commit runs it."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
ENV = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
"""The processes below import the ftplan of this checkout, whatever is installed."""


def _git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@example.com", *args], cwd=repo,
                          check=True, capture_output=True, text=True).stdout


def hook(repo: Path, *args: str) -> subprocess.CompletedProcess:
    """The hook's entry point in ``repo``, as a separate process."""
    return subprocess.run([sys.executable, "-m", "ftplan.check_plans", *args], cwd=repo, capture_output=True,
                          text=True, timeout=120, env=ENV)


def ftplan(repo: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "ftplan", *args], cwd=repo, capture_output=True, text=True,
                          timeout=120, env=ENV)


@pytest.fixture
def repo(tmp_path) -> Path:
    """A git repository: pipelines/bot.yaml (the 24 GB QLoRA example) and its data, compiled into plans/bot,
    all committed on ``main``."""
    repo = tmp_path / "repo"
    (repo / "pipelines").mkdir(parents=True)
    shutil.copytree(ROOT / "examples" / "data", repo / "pipelines" / "data")
    shutil.copy(ROOT / "examples" / "llama3-8b-qlora-24gb.yaml", repo / "pipelines" / "bot.yaml")
    _git(repo, "init", "-q", "-b", "main")
    assert ftplan(repo, "compile", "pipelines/bot.yaml", "-o", "plans/bot").returncode == 0
    _git(repo, "add", ".")
    _git(repo, "commit", "-q", "-m", "pipeline and its plan")
    return repo


def _edit(repo: Path, old: str, new: str) -> None:
    path = repo / "pipelines" / "bot.yaml"
    text = path.read_text(encoding="utf-8")
    assert text.count(old) == 1
    path.write_text(text.replace(old, new), encoding="utf-8")


def test_the_hook_fails_on_an_edit_with_the_semantic_diff_and_passes_once_recompiled(repo):
    ok = hook(repo)
    assert (ok.returncode, ok.stderr) == (0, ""), ok.stdout + ok.stderr
    assert ok.stdout == "plans/bot: up to date\n"

    _edit(repo, "micro_batch: 2\n", "micro_batch: 4\n")
    stale = hook(repo)
    assert stale.returncode == 1, stale.stdout + stale.stderr
    lines = stale.stdout.splitlines()
    assert lines[:2] == ["--- plans/bot (plan support-bot)", "+++ pipelines/bot.yaml (pipeline support-bot)"]
    assert "~ sft  QLoRA r16 α32" in lines
    assert any(line.split() == ["~", "micro", "batch", "2", "→", "4"] for line in lines)
    assert any(line.split()[:4] == ["~", "tokens", "per", "step"] for line in lines)
    assert "Stages: 0 to add, 1 to change, 0 to remove." in lines
    assert any(line.startswith("Plan: 0 to add, ") for line in lines)  # the files that would change
    assert ("stale: plans/bot is not what pipelines/bot.yaml compiles to; run `ftplan compile pipelines/bot.yaml "
            "-o plans/bot` and commit the plan") in lines

    assert ftplan(repo, "compile", "pipelines/bot.yaml", "-o", "plans/bot").returncode == 0
    again = hook(repo)
    assert (again.returncode, again.stdout) == (0, "plans/bot: up to date\n")


def test_a_data_change_alone_makes_the_plan_stale(repo):
    with open(repo / "pipelines" / "data" / "support-prefs.jsonl", "a", encoding="utf-8") as f:
        f.write((repo / "pipelines" / "data" / "support-prefs.jsonl").read_text(encoding="utf-8").splitlines()[0]
                + "\n")
    stale = hook(repo)
    assert stale.returncode == 1
    assert any(line.split()[:3] == ["~", "dataset", "data/support-prefs.jsonl"] for line in stale.stdout.splitlines())


def test_a_pipeline_that_no_longer_checks_fails_the_hook(repo):
    _edit(repo, "micro_batch: 2\n", "micro_batch: 64\n")  # no longer fits the 24 GB card
    failed = hook(repo)
    assert failed.returncode == 1
    assert "error[FT101] pipelines/bot.yaml:" in failed.stderr


def test_plan_folders_are_found_by_their_marker_or_named(repo):
    (repo / "tests" / "golden" / "plan").mkdir(parents=True)  # a plan.json with no marker is not a plan folder
    shutil.copy(repo / "plans" / "bot" / "plan.json", repo / "tests" / "golden" / "plan" / "plan.json")
    assert ftplan(repo, "compile", "pipelines/bot.yaml", "-o", "plans/bot-copy").returncode == 0
    _git(repo, "add", "plans/bot-copy", "tests")  # staged, not yet committed: found too
    found = hook(repo)
    assert (found.returncode, found.stdout) == (0, "plans/bot: up to date\nplans/bot-copy: up to date\n")
    named = hook(repo, "plans/bot-copy")
    assert (named.returncode, named.stdout) == (0, "plans/bot-copy: up to date\n")
    missing = hook(repo, "plans/nothing")
    assert missing.returncode == 2
    assert missing.stderr.startswith("error: plans/nothing holds no plan.json")
    (repo / "pipelines" / "bot.yaml").rename(repo / "pipelines" / "renamed.yaml")
    moved = hook(repo, "plans/bot")
    assert moved.returncode == 2
    assert "plans/bot was compiled from pipelines/bot.yaml, which does not exist" in moved.stderr


def test_diff_base_prints_what_the_change_does_and_writes_the_pull_request_comment(repo):
    _git(repo, "checkout", "-q", "-b", "change")
    _edit(repo, "gpu: rtx-4090", "gpu: l40s")
    assert ftplan(repo, "compile", "pipelines/bot.yaml", "-o", "plans/bot").returncode == 0
    assert ftplan(repo, "compile", "pipelines/bot.yaml", "-o", "plans/new").returncode == 0
    _git(repo, "add", ".")
    _git(repo, "commit", "-q", "-m", "bigger card")
    assert hook(repo).returncode == 0  # the committed plans are current

    done = hook(repo, "--diff-base", "main", "--markdown", "comment.md")
    assert done.returncode == 0, done.stdout + done.stderr
    lines = done.stdout.splitlines()
    assert lines[:2] == ["--- main:plans/bot (plan support-bot)", "+++ plans/bot (plan support-bot)"]
    assert "Stages: 0 to add, 2 to change, 0 to remove; 1 pipeline-wide change." in lines
    assert "plans/new: a new plan (it has no plan.json in main)" in lines
    comment = (repo / "comment.md").read_text(encoding="utf-8")
    assert comment.startswith("### ftplan: what this change does to the plans (against `main`)\n")
    assert "**plans/bot**: Stages: 0 to add, 2 to change, 0 to remove; 1 pipeline-wide change.\n" in comment
    assert "```text\n--- main:plans/bot (plan support-bot)\n" in comment

    unknown = hook(repo, "--diff-base", "nosuchbranch")
    assert unknown.returncode == 2
    assert unknown.stderr.startswith("error: git knows no commit 'nosuchbranch'")


def test_the_hook_definition_names_the_installed_entry_point():
    hooks = yaml.safe_load((ROOT / ".pre-commit-hooks.yaml").read_text(encoding="utf-8"))
    assert [h["id"] for h in hooks] == ["ftplan-plans"]
    (h,) = hooks
    assert (h["language"], h["pass_filenames"], h["always_run"]) == ("python", False, True)
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]["scripts"]
    assert scripts[h["entry"]] == "ftplan.check_plans:entrypoint"


def test_the_ci_doc_runs_the_commands_this_ftplan_has():
    doc = (ROOT / "docs" / "ci.md").read_text(encoding="utf-8")
    (workflow,) = [b.split("```", 1)[0] for b in doc.split("```yaml\n")[1:] if "\njobs:" in b.split("```", 1)[0]]
    steps = yaml.safe_load(workflow)["jobs"]["plans"]["steps"]
    runs = "\n".join(s.get("run", "") for s in steps)
    assert "ftplan-check-plans\n" in runs
    assert 'ftplan-check-plans --diff-base "origin/$BASE" --markdown plan-diff.md' in runs
    assert "gh pr comment" in runs
    assert "id: ftplan-plans" in doc and "repo: local" in doc
