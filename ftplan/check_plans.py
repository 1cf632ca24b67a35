"""``ftplan-check-plans``: the pre-commit hook and CI step that keeps committed plans equal to their pipelines.

::

    ftplan-check-plans [PLAN_DIR ...]                       # every plan folder is current (exit 0) or not (1)
    ftplan-check-plans --diff-base REV [--markdown FILE]    # what this change does to each plan, against REV

Without ``PLAN_DIR`` it checks every plan folder git knows of in the current repository: every folder holding a
tracked or staged ``.ftplan-files`` marker, which only ``ftplan compile`` writes. Each plan folder's ``plan.json``
names its pipeline (``pipeline.file`` in the folder ``root_from_plan_dir`` leads to), and the check is exactly
``ftplan compile PIPELINE -o PLAN_DIR --check``: a stale plan prints the semantic diff (what changes per stage,
``ftplan diff``) and the files that would change, then the command that brings it up to date. Exit 0 when every
plan is current, 1 when one is stale or its pipeline does not check, 2 when a plan folder cannot be read.

With ``--diff-base REV`` it prints ``ftplan diff REV:PLAN_DIR PLAN_DIR`` for every plan folder (a new folder is
said to be new) and exits 0 unless a side cannot be read; ``--markdown FILE`` also writes the diffs as a
Markdown comment body for a pull request (``docs/ci.md``). Nothing is written elsewhere.
"""

from __future__ import annotations

import argparse
import json
import os
import posixpath
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from rich.console import Console
from rich.text import Text

from .write import MARKER

EXIT_OK, EXIT_STALE, EXIT_ERROR = 0, 1, 2


@dataclass(frozen=True)
class PlanFolder:
    """A committed plan folder and the pipeline it was compiled from."""

    plan_dir: str
    """The plan folder, relative to the current folder (POSIX)."""
    pipeline: str
    """Its pipeline file, relative to the current folder (POSIX)."""


class PlanFolderError(Exception):
    """A plan folder whose pipeline cannot be found; the message says why and what to do."""


def plan_folders_in_git(cwd: str | Path = ".") -> list[str]:
    """Every folder of the repository at ``cwd`` holding a tracked or staged ``.ftplan-files``, relative to
    ``cwd``, sorted."""
    proc = subprocess.run(["git", "ls-files", "-z", "--full-name", "--", f"*{MARKER}"], cwd=cwd,
                          capture_output=True, timeout=60)
    if proc.returncode != 0:
        reason = proc.stderr.decode("utf-8", "replace").strip().splitlines()
        raise PlanFolderError(f"cannot list the plan folders: {reason[-1] if reason else 'git ls-files failed'}; "
                              "run this in a git repository, or name the plan folders")
    top = subprocess.run(["git", "rev-parse", "--show-toplevel"], cwd=cwd, capture_output=True, text=True,
                         timeout=60, check=True).stdout.strip()
    folders = set()
    for name in proc.stdout.decode("utf-8").split("\0"):
        if name == MARKER or name.endswith("/" + MARKER):
            folder = Path(top) / posixpath.dirname(name)
            folders.add(Path(os.path.relpath(folder, Path(cwd).resolve())).as_posix())
    return sorted(folders)


def plan_folder(plan_dir: str) -> PlanFolder:
    """The plan folder and its pipeline, as its ``plan.json`` names it."""
    path = Path(plan_dir) / "plan.json"
    try:
        plan = json.loads(path.read_text(encoding="utf-8"))
        root = plan["root_from_plan_dir"]
        name = plan["pipeline"]["file"]
    except FileNotFoundError:
        raise PlanFolderError(f"{plan_dir} holds no plan.json; compile it with `ftplan compile PIPELINE -o "
                              f"{plan_dir}`") from None
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise PlanFolderError(f"{path} cannot be read as a plan ({exc}); recompile it with `ftplan compile "
                              f"PIPELINE -o {plan_dir}`") from None
    pipeline = posixpath.normpath(posixpath.join(Path(plan_dir).as_posix(), root, name))
    if not Path(pipeline).is_file():
        raise PlanFolderError(f"{plan_dir} was compiled from {pipeline}, which does not exist; recompile the plan "
                              "from its pipeline, or remove the folder")
    return PlanFolder(Path(plan_dir).as_posix(), pipeline)


def check_plans(folders: list[PlanFolder], out: Console, err: Console) -> int:
    """``ftplan compile PIPELINE -o PLAN_DIR --check`` for each folder (its output as is); the worst exit code
    mapped to this command's: 0 all current, 1 stale or invalid."""
    from .cli import main

    worst = EXIT_OK
    for f in folders:
        code = main(["compile", f.pipeline, "-o", f.plan_dir, "--check"], out=out, err=err)
        if code != 0:
            worst = EXIT_STALE
            if code == 3:
                out.print(Text(f"stale: {f.plan_dir} is not what {f.pipeline} compiles to; run "
                               f"`ftplan compile {f.pipeline} -o {f.plan_dir}` and commit the plan", style="bold red"))
            out.print()
    return worst


def diff_against(base: str, folders: list[PlanFolder], out: Console, err: Console,
                 markdown: str | None) -> int:
    """``ftplan diff BASE:PLAN_DIR PLAN_DIR`` for each folder, printed (and as Markdown when asked)."""
    from .review_sources import SideError, diff_sources
    from .review_text import diff_lines, side_error_lines

    known = subprocess.run(["git", "rev-parse", "--verify", "--quiet", f"{base}^{{commit}}"], capture_output=True,
                           timeout=60)
    if known.returncode != 0:
        err.print(Text(f"error: git knows no commit {base!r}; pass a branch, tag or commit (in CI, fetch the base "
                       "branch first: git fetch origin main)"))
        return EXIT_ERROR
    code = EXIT_OK
    sections = []
    for f in folders:
        if not _in_revision(base, f"{f.plan_dir}/plan.json"):
            lines = [f"{f.plan_dir}: a new plan (it has no plan.json in {base})"]
        else:
            try:
                lines = diff_lines(diff_sources(f"{base}:{f.plan_dir}", f.plan_dir))
            except SideError as exc:
                lines = side_error_lines(exc)
                code = EXIT_ERROR
        for line in lines:
            out.print(Text(line))
        out.print()
        sections.append((f.plan_dir, lines))
    if markdown is not None:
        Path(markdown).write_text(markdown_report(base, sections), encoding="utf-8")
    return code


def _in_revision(rev: str, path: str) -> bool:
    """True when ``path`` (relative to the current folder) exists in the commit ``rev``."""
    return subprocess.run(["git", "cat-file", "-e", f"{rev}:./{path}"], capture_output=True, timeout=60).returncode == 0


def markdown_report(base: str, sections: list[tuple[str, list[str]]]) -> str:
    """A pull-request comment: per plan folder its summary line, then the whole diff in a code block."""
    out = [f"### ftplan: what this change does to the plans (against `{base}`)", ""]
    if not sections:
        out.append("No plan folders found.")
    for plan_dir, lines in sections:
        fence = "```"
        while any(fence in line for line in lines):
            fence += "`"
        out += [f"**{plan_dir}**: {lines[-1]}", "", f"{fence}text", *lines, fence, ""]
    return "\n".join(out).rstrip("\n") + "\n"


def main(argv: list[str] | None = None, *, out: Console | None = None, err: Console | None = None) -> int:
    """Run the hook; returns the exit code."""
    parser = argparse.ArgumentParser(
        prog="ftplan-check-plans",
        description="Fail when a committed ftplan plan folder is not what its pipeline compiles to now.")
    parser.add_argument("plan_dirs", nargs="*", metavar="PLAN_DIR",
                        help="plan folders (default: every folder with a .ftplan-files marker git knows of)")
    parser.add_argument("--diff-base", metavar="REV",
                        help="instead, print `ftplan diff REV:PLAN_DIR PLAN_DIR` for each plan folder")
    parser.add_argument("--markdown", metavar="FILE", help="with --diff-base: also write the diffs as Markdown")
    args = parser.parse_args(argv)
    out = out or Console(highlight=False, soft_wrap=True)
    err = err or Console(stderr=True, highlight=False, soft_wrap=True)
    if args.markdown and not args.diff_base:
        err.print(Text("error: --markdown needs --diff-base REV"))
        return EXIT_ERROR
    try:
        names = args.plan_dirs or plan_folders_in_git()
        folders = [plan_folder(name) for name in names]
    except PlanFolderError as exc:
        err.print(Text(f"error: {exc}"))
        return EXIT_ERROR
    if args.diff_base:
        return diff_against(args.diff_base, folders, out, err, args.markdown)
    if not folders:
        out.print(Text("no plan folders (.ftplan-files) in this repository: nothing to check"))
    return check_plans(folders, out, err)


def entrypoint() -> None:
    """Console-script entry point."""
    sys.exit(main())


if __name__ == "__main__":  # pragma: no cover - `python -m ftplan.check_plans`
    entrypoint()
