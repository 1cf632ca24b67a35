"""write_plan: atomic swap, modes, refusal to clobber foreign folders; diff_plan: + ~ - per file and stage."""

from __future__ import annotations

import os
import stat

import pytest

from ftplan import write as write_mod
from ftplan.write import PlanDiff, WriteError, diff_plan, write_plan

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
    assert {k: v[0].decode() for k, v in t.items()} == FILES
    for path, (_, mode) in t.items():
        assert mode == (0o755 if path.endswith((".sh", ".sbatch")) else 0o644), path
    assert stat.S_IMODE(os.stat(out / "stages").st_mode) == 0o755
    assert stat.S_IMODE(os.stat(out).st_mode) == 0o755
    assert siblings(out) == ["bot"]  # no temporary folders left behind


def test_rewrite_replaces_the_folder_and_drops_stale_files(tmp_path):
    out = tmp_path / "plan"
    write_plan(FILES, out)
    new = {k: v for k, v in FILES.items() if not k.startswith("slurm/")}
    new["stages/02-sft/args.json"] = '{"a": 2}\n'
    new["stages/03-dpo/args.json"] = "{}\n"
    result = write_plan(new, out)
    assert {k: v[0].decode() for k, v in tree(out).items()} == new
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


def test_a_failure_during_the_swap_restores_the_old_plan(tmp_path, monkeypatch):
    out = tmp_path / "plan"
    write_plan(FILES, out)
    before = tree(out)
    real_rename = os.rename

    def rename(src, dst):
        if os.path.basename(str(src)).startswith(".plan.new-"):
            raise OSError("disk full")
        return real_rename(src, dst)

    monkeypatch.setattr(write_mod.os, "rename", rename)
    with pytest.raises(OSError, match="disk full"):
        write_plan({**FILES, "plan.md": "# new\n"}, out)
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
