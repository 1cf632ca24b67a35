"""write_plan: all-or-nothing writes, modes, only ftplan's files replaced (the marker), the user's kept, refusal
to clobber foreign folders and files; diff_plan: + ~ - per file and stage, ftplan's files only."""

from __future__ import annotations

import os
import stat

import pytest

from ftplan import write as write_mod
from ftplan.write import MARKER, PlanDiff, WriteError, diff_plan, marker_text, write_plan

FILES = {
    "plan.json": '{"format_version": 1}\n',
    "plan.md": "# Plan\n",
    "run.sh": "#!/usr/bin/env bash\necho run\n",
    "stages/01-data/args.json": "{}\n",
    "stages/02-sft/args.json": '{"a": 1}\n',
    "stages/02-sft/accelerate.yaml": "distributed_type: NO\n",
    "slurm/01-data.sbatch": "#!/usr/bin/env bash\n",
    "slurm/02-sft.sbatch": "#!/usr/bin/env bash\n",
    "slurm/submit.sh": "#!/usr/bin/env bash\n",
}


def tree(root):
    """{relative path: (bytes, mode)} of every file under root."""
    out = {}
    for dirpath, _, names in os.walk(root):
        for n in names:
            p = os.path.join(dirpath, n)
            out[os.path.relpath(p, root)] = (open(p, "rb").read(), stat.S_IMODE(os.stat(p).st_mode))
    return out


def siblings(out):
    return sorted(p.name for p in out.parent.iterdir())


def texts(root):
    """{relative path: text} of every file under root."""
    return {k: v[0].decode() for k, v in tree(root).items()}


def with_marker(files):
    """What a plan folder holding exactly ``files`` looks like: the files and ftplan's marker listing them."""
    return {**files, MARKER: marker_text(files)}


def put(root, rel, text, mode=0o644):
    """A file of the user's."""
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    os.chmod(path, mode)


def test_writes_every_file_with_modes_regardless_of_umask(tmp_path):
    out = tmp_path / "plans" / "bot"
    old = os.umask(0o077)
    try:
        result = write_plan(FILES, out)
    finally:
        os.umask(old)
    assert result.path == out and result.files == tuple(sorted(FILES))
    assert result.diff.added == tuple(sorted(FILES)) and not result.diff.changed and not result.diff.removed
    t = tree(out)
    assert {k: v[0].decode() for k, v in t.items()} == with_marker(FILES)
    for path, (_, mode) in t.items():
        assert mode == (0o755 if path.endswith((".sh", ".sbatch")) else 0o644), path
    assert stat.S_IMODE(os.stat(out / "stages").st_mode) == 0o755
    assert stat.S_IMODE(os.stat(out).st_mode) == 0o755
    assert siblings(out) == ["bot"]  # no temporary folders left behind


def test_rewrite_replaces_ftplans_files_and_drops_stale_ones(tmp_path):
    out = tmp_path / "plan"
    write_plan(FILES, out)
    new = {k: v for k, v in FILES.items() if not k.startswith("slurm/")}
    new["stages/02-sft/args.json"] = '{"a": 2}\n'
    new["stages/03-dpo/args.json"] = "{}\n"
    result = write_plan(new, out)
    assert texts(out) == with_marker(new)
    assert not (out / "slurm").exists()  # emptied folders go too
    assert result.diff.added == ("stages/03-dpo/args.json",)
    assert result.diff.changed == ("stages/02-sft/args.json",)
    assert result.diff.removed == ("slurm/01-data.sbatch", "slurm/02-sft.sbatch", "slurm/submit.sh")
    assert siblings(out) == ["plan"]


def test_a_failure_while_writing_leaves_the_existing_plan_untouched(tmp_path):
    out = tmp_path / "plan"
    write_plan(FILES, out)
    before = tree(out)
    broken = {**FILES, "stages/02-sft/args.json": "changed\n", "zz/file": "x\n", "zz/file/below": "y\n"}
    with pytest.raises(OSError):
        write_plan(broken, out)
    assert tree(out) == before
    assert siblings(out) == ["plan"]


def test_a_failure_while_renaming_into_place_restores_the_old_plan(tmp_path, monkeypatch):
    out = tmp_path / "plan"
    write_plan(FILES, out)
    before = tree(out)
    real_rename = os.rename
    renames = []

    def rename(src, dst):
        if str(src).endswith(".ftplan-new") and not str(src).endswith(MARKER + ".ftplan-new"):
            renames.append(src)
            if len(renames) == 3:  # two plan files are already in place
                raise OSError("disk full")
        return real_rename(src, dst)

    monkeypatch.setattr(write_mod.os, "rename", rename)
    with pytest.raises(OSError, match="disk full"):
        write_plan({k: v.upper() for k, v in FILES.items() if k != "slurm/submit.sh"}, out)
    monkeypatch.undo()
    assert tree(out) == before
    assert siblings(out) == ["plan"]


def test_an_io_error_midway_leaves_the_existing_plan_untouched(tmp_path, monkeypatch):
    out = tmp_path / "plan"
    write_plan(FILES, out)
    before = tree(out)
    calls = []
    real_fsync = os.fsync

    def fsync(fd):
        calls.append(fd)
        if len(calls) == 4:
            raise OSError("I/O error")
        return real_fsync(fd)

    monkeypatch.setattr(write_mod.os, "fsync", fsync)
    with pytest.raises(OSError, match="I/O error"):
        write_plan({k: v.upper() for k, v in FILES.items()}, out)
    monkeypatch.undo()
    assert tree(out) == before
    assert siblings(out) == ["plan"]


def test_refuses_to_replace_a_folder_that_is_not_a_plan(tmp_path):
    project = tmp_path / "project"
    project.mkdir()
    (project / "pipeline.yaml").write_text("name: x\n")
    with pytest.raises(WriteError, match="not an ftplan plan"):
        write_plan(FILES, project)
    assert (project / "pipeline.yaml").read_text() == "name: x\n"
    (tmp_path / "file").write_text("x")
    with pytest.raises(WriteError, match="not a folder"):
        write_plan(FILES, tmp_path / "file")
    empty = tmp_path / "empty"
    empty.mkdir()
    write_plan(FILES, empty)
    assert (empty / "plan.json").is_file()


@pytest.mark.parametrize("bad", ["/etc/passwd", "../escape", "a/../../b", "./x", "a//b", "a\\b", ""])
def test_refuses_paths_outside_the_plan_folder(tmp_path, bad):
    with pytest.raises(WriteError, match="relative paths"):
        write_plan({**FILES, bad: "x\n"}, tmp_path / "plan")
    assert not (tmp_path / "plan").exists()


def test_diff_plan_reports_added_changed_removed_and_mode_drift(tmp_path):
    out = tmp_path / "plan"
    assert diff_plan(FILES, out).added == tuple(sorted(FILES))
    write_plan(FILES, out)
    assert diff_plan(FILES, out).clean
    os.chmod(out / "run.sh", 0o644)
    new = dict(FILES)
    del new["slurm/02-sft.sbatch"], new["stages/02-sft/accelerate.yaml"], new["stages/02-sft/args.json"]
    new["stages/01-data/args.json"] = '{"x": 1}\n'
    new["stages/03-dpo/args.json"] = "{}\n"
    d = diff_plan(new, out)
    assert d.added == ("stages/03-dpo/args.json",)
    assert d.changed == ("run.sh", "stages/01-data/args.json")
    assert d.removed == ("slurm/02-sft.sbatch", "stages/02-sft/accelerate.yaml", "stages/02-sft/args.json")
    assert d.stages() == [
        ("~", "plan", ("run.sh",)),
        ("~", "01-data", ("stages/01-data/args.json",)),
        ("-", "02-sft", ("slurm/02-sft.sbatch", "stages/02-sft/accelerate.yaml", "stages/02-sft/args.json")),
        ("+", "03-dpo", ("stages/03-dpo/args.json",)),
    ]
    assert d.lines()[-1] == "Plan: 1 to add, 2 to change, 3 to remove."
    assert d.lines()[2] == "- 02-sft: slurm/02-sft.sbatch, stages/02-sft/accelerate.yaml, stages/02-sft/args.json"


def test_plan_diff_groups_mixed_changes_as_update():
    d = PlanDiff(added=("stages/02-sft/deepspeed.json",), changed=("stages/02-sft/args.json",), removed=())
    assert d.stages() == [("~", "02-sft", ("stages/02-sft/args.json", "stages/02-sft/deepspeed.json"))]
    assert PlanDiff((), (), ()).clean and PlanDiff((), (), ()).lines() == ["Plan: 0 to add, 0 to change, 0 to remove."]
    assert PlanDiff((), (), ()).summary("plans/x") == "plans/x: up to date"
    assert d.summary("plans/x") == ("plans/x:\n  ~ 02-sft: stages/02-sft/args.json, stages/02-sft/deepspeed.json\n"
                                    "Plan: 1 to add, 1 to change, 0 to remove.")
    assert d.as_json() == {"added": ["stages/02-sft/deepspeed.json"], "changed": ["stages/02-sft/args.json"],
                           "removed": [], "clean": False,
                           "stages": [{"symbol": "~", "stage": "02-sft",
                                       "files": ["stages/02-sft/args.json", "stages/02-sft/deepspeed.json"]}]}


# --- the plan folder is ftplan's only: the marker, the user's files --------------------------------------------

USER = {".git/HEAD": "ref: refs/heads/main\n", ".git/objects/ab/cdef01": "blob\n", "NOTES.txt": "my notes\n"}
"""Files of the user's next to a plan: a repository (nested files) and notes."""

SMALLER = {k: v for k, v in FILES.items() if "01-data" not in k}
"""``FILES`` with stage 01-data removed and stage 02-sft changed."""
SMALLER["stages/02-sft/args.json"] = '{"a": 2}\n'


def test_the_marker_lists_ftplans_files_sorted_byte_stable(tmp_path):
    out = tmp_path / "plan"
    write_plan(dict(reversed(FILES.items())), out)
    marker = (out / MARKER).read_bytes()
    assert marker == (b"# Written by ftplan: it replaces or removes only the files listed here and keeps "
                      b"everything else.\n" + "".join(f"{p}\n" for p in sorted(FILES)).encode())
    assert stat.S_IMODE(os.stat(out / MARKER).st_mode) == 0o644
    assert marker_text(FILES).encode() == marker
    write_plan(FILES, tmp_path / "again")
    assert (tmp_path / "again" / MARKER).read_bytes() == marker


def test_keeps_the_users_files_and_replaces_only_ftplans(tmp_path):
    out = tmp_path / "plan"
    write_plan(FILES, out)
    for rel, text in USER.items():
        put(out, rel, text)
    os.chmod(out / ".git" / "HEAD", 0o600)
    mine = {k: v for k, v in tree(out).items() if k in USER}
    assert diff_plan(FILES, out).clean
    result = write_plan(SMALLER, out)
    assert {k: v for k, v in tree(out).items() if k in USER} == mine  # byte for byte, modes too
    assert texts(out) == {**with_marker(SMALLER), **USER}
    assert not (out / "stages" / "01-data").exists()
    assert result.diff.removed == ("slurm/01-data.sbatch", "stages/01-data/args.json")
    assert result.diff.changed == ("stages/02-sft/args.json",) and not result.diff.added
    assert result.diff.kept == (".git/", "NOTES.txt")
    assert result.diff.summary("plan").splitlines() == [
        "plan:",
        "  - 01-data: slurm/01-data.sbatch, stages/01-data/args.json",
        "  ~ 02-sft: stages/02-sft/args.json",
        "  kept 1 folder and 1 file ftplan did not write: .git/, NOTES.txt",
        "Plan: 0 to add, 1 to change, 2 to remove."]
    again = write_plan(SMALLER, out)
    assert again.diff.clean and again.diff.summary("plan") == (
        "plan: up to date; kept 1 folder and 1 file ftplan did not write: .git/, NOTES.txt")
    assert siblings(out) == ["plan"]


def test_a_plan_an_older_ftplan_wrote_keeps_the_users_files(tmp_path):
    out = tmp_path / "plan"
    for rel, text in {**FILES, "README.md": "review notes\n", "stages/01-data/extra.txt": "mine\n"}.items():
        put(out, rel, text, 0o755 if rel.endswith((".sh", ".sbatch")) else 0o644)
    check = diff_plan(FILES, out)  # compile --check: only the marker is new, and says so
    assert (check.added, check.changed, check.removed) == ((MARKER,), (), ())
    assert check.kept == ("README.md", "stages/01-data/extra.txt")
    assert check.lines()[0] == "+ plan: .ftplan-files"
    result = write_plan(SMALLER, out)
    assert result.diff.removed == ("slurm/01-data.sbatch", "stages/01-data/args.json")
    assert MARKER in result.diff.added
    assert texts(out) == {**with_marker(SMALLER), "README.md": "review notes\n", "stages/01-data/extra.txt": "mine\n"}


def test_a_user_file_where_the_plan_writes_one_is_refused(tmp_path):
    out = tmp_path / "plan"
    no_slurm = {k: v for k, v in FILES.items() if not k.startswith("slurm/")}
    write_plan(no_slurm, out)
    put(out, "slurm/submit.sh", "#!/bin/sh\necho mine\n", 0o755)
    before = tree(out)
    for attempt in (write_plan, diff_plan):
        with pytest.raises(WriteError, match=r"plan/slurm/submit\.sh was not written by ftplan.*move or rename it"):
            attempt(FILES, out)
    assert tree(out) == before
    (out / "slurm" / "submit.sh").unlink()
    put(out, "stages/03-dpo", "a file where the plan needs a folder\n")
    with pytest.raises(WriteError, match=r"plan/stages/03-dpo is not a folder, but the new plan writes "
                                         r"stages/03-dpo/args\.json inside it"):
        write_plan({**no_slurm, "stages/03-dpo/args.json": "{}\n"}, out)
    assert siblings(out) == ["plan"]


def test_a_user_run_sh_in_a_new_folder_is_refused(tmp_path):
    out = tmp_path / "plan"
    put(out, "run.sh", "#!/bin/sh\necho mine\n", 0o755)
    with pytest.raises(WriteError, match="not an ftplan plan folder"):
        write_plan(FILES, out)
    put(out, "plan.json", "{}\n")  # now a plan an older ftplan wrote, where run.sh is ftplan's
    write_plan(FILES, out)
    assert texts(out) == with_marker(FILES)


def test_a_failure_leaves_the_users_files_and_the_plan_as_they_were(tmp_path, monkeypatch):
    out = tmp_path / "plan"
    write_plan(FILES, out)
    for rel, text in USER.items():
        put(out, rel, text)
    put(out, "stages/02-sft/notes.md", "mine\n")
    write_plan(SMALLER, out)
    before = tree(out)
    assert {k: v[0].decode() for k, v in before.items() if k in USER} == USER
    broken = {**FILES, "zz/file": "x\n", "zz/file/below": "y\n"}
    with pytest.raises(OSError):
        write_plan(broken, out)
    assert tree(out) == before
    real_fsync, calls = os.fsync, []

    def fsync(fd):
        calls.append(fd)
        if len(calls) == 5:
            raise OSError("I/O error")
        return real_fsync(fd)

    monkeypatch.setattr(write_mod.os, "fsync", fsync)
    with pytest.raises(OSError, match="I/O error"):
        write_plan(FILES, out)
    monkeypatch.undo()
    assert tree(out) == before
    assert not [p for p in tree(out) if p.endswith(".ftplan-new")]
    assert siblings(out) == ["plan"]


def test_a_crash_midway_is_tidied_up_by_the_next_compile(tmp_path, monkeypatch):
    out = tmp_path / "plan"
    write_plan(SMALLER, out)
    put(out, "NOTES.txt", "my notes\n")
    real_rename, renames = os.rename, []

    def rename(src, dst):
        renames.append(src)
        if len(renames) == 4:
            raise OSError("power cut")
        return real_rename(src, dst)

    monkeypatch.setattr(write_mod.os, "rename", rename)
    monkeypatch.setattr(write_mod._Changes, "rollback", lambda self: None)  # a crash undoes nothing
    with pytest.raises(OSError, match="power cut"):
        write_plan(FILES, out)
    monkeypatch.undo()
    assert [p for p in tree(out) if p.endswith(".ftplan-new")]  # left behind, but listed in the marker
    check = diff_plan(FILES, out)
    assert check.removed and all(p.endswith(".ftplan-new") for p in check.removed)
    write_plan(FILES, out)
    assert texts(out) == {**with_marker(FILES), "NOTES.txt": "my notes\n"}


def test_a_user_file_in_a_stage_folder_keeps_the_folder(tmp_path):
    out = tmp_path / "plan"
    write_plan(FILES, out)
    put(out, "stages/02-sft/notes.md", "why lr 2e-4\n")
    without_sft = {k: v for k, v in FILES.items() if "02-sft" not in k}
    result = write_plan(without_sft, out)
    assert result.diff.removed == ("slurm/02-sft.sbatch", "stages/02-sft/accelerate.yaml", "stages/02-sft/args.json")
    assert result.diff.kept == ("stages/02-sft/notes.md",)
    assert texts(out) == {**with_marker(without_sft), "stages/02-sft/notes.md": "why lr 2e-4\n"}
    assert stat.S_IMODE(os.stat(out / "stages" / "02-sft").st_mode) == 0o755
    write_plan(FILES, out)  # the stage comes back next to the note
    assert texts(out) == {**with_marker(FILES), "stages/02-sft/notes.md": "why lr 2e-4\n"}


def test_diff_plan_counts_only_ftplans_files(tmp_path):
    out = tmp_path / "plan"
    write_plan(FILES, out)
    for rel, text in {**USER, "stages/01-data/mine.txt": "x\n", "slurm/extra.sbatch": "#!/bin/sh\n"}.items():
        put(out, rel, text)
    d = diff_plan(FILES, out)
    assert d.clean and d.kept == (".git/", "NOTES.txt", "slurm/extra.sbatch", "stages/01-data/mine.txt")
    assert d.as_json()["removed"] == [] and d.as_json()["clean"] is True
    d = diff_plan(SMALLER, out)
    assert d.removed == ("slurm/01-data.sbatch", "stages/01-data/args.json")
    assert all(k not in d.added + d.changed + d.removed for k in d.kept)


def test_the_marker_alone_differing_is_drift_and_a_damaged_one_is_refused(tmp_path):
    out = tmp_path / "plan"
    write_plan(FILES, out)
    (out / MARKER).write_text(marker_text(FILES) + "# a comment of mine\n")
    d = diff_plan(FILES, out)
    assert (d.added, d.changed, d.removed) == ((), (MARKER,), ())
    write_plan(FILES, out)
    assert texts(out) == with_marker(FILES)
    (out / MARKER).write_text(marker_text(FILES) + "../../etc/passwd\n")
    before = tree(out)
    with pytest.raises(WriteError, match=r"\.ftplan-files, line 11: '\.\./\.\./etc/passwd' is not a path inside "
                                         r"the plan folder; correct it, or delete"):
        write_plan(FILES, out)
    assert tree(out) == before


@pytest.mark.parametrize("reserved", [MARKER, "run.sh.ftplan-new"])
def test_refuses_ftplans_bookkeeping_names_as_plan_files(tmp_path, reserved):
    with pytest.raises(WriteError, match="reserved"):
        write_plan({**FILES, reserved: "x\n"}, tmp_path / "plan")
    assert not (tmp_path / "plan").exists()


def test_plan_diff_names_at_most_five_kept_entries():
    d = PlanDiff((), (), (), kept=("a/", "b", "c", "d", "e", "f", "g/"))
    assert d.kept_line() == "kept 2 folders and 5 files ftplan did not write: a/, b, c, d, e and 2 more"
    assert PlanDiff((), (), (), kept=("x",)).kept_line() == "kept 1 file ftplan did not write: x"
