"""``ftplan diff``: review facts read from plan.json, compared stage by stage; its golden outputs over realistic
edits of every example; plan folders, git revisions, errors, exit codes; ``compile --check``'s semantic diff.

Golden files: ``tests/golden/diff/<example>-<edit>.txt`` (the text view) and ``.json`` (``--json``). Regenerate
after an intended change with ``python -m pytest tests/test_diff.py --update-golden`` and review the diff.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from io import StringIO
from pathlib import Path
from typing import Callable

import pytest
from rich.console import Console

from ftplan.cli import main
from ftplan.render.serialize import to_json
from ftplan.review import diff_plans, review_facts
from ftplan.review_sources import SideError, diff_sources, read_side, side_error_json
from ftplan.review_text import diff_lines, side_error_lines

ROOT = Path(__file__).resolve().parent.parent
GOLDEN = Path(__file__).resolve().parent / "golden" / "diff"
EXAMPLES = sorted(p.stem for p in (ROOT / "examples").glob("*.yaml"))

TOO_BIG_FIX = [("micro_batch: 8", "micro_batch: 2"), ("grad_accum: 2", "grad_accum: 8")]
"""The change ``ftplan check examples/too-big.yaml`` suggests; its edits start from the fixed pipeline."""


def _more_chat_rows(examples: Path) -> None:
    """A data change: 40 more conversations in data/support-chat.jsonl (the first 40, once more)."""
    path = examples / "data" / "support-chat.jsonl"
    lines = path.read_text(encoding="utf-8").splitlines(keepends=True)
    path.write_text("".join(lines + lines[:40]), encoding="utf-8")


def _fewer_pref_rows(examples: Path) -> None:
    """A data change: the last 60 preference pairs of data/support-prefs.jsonl dropped."""
    path = examples / "data" / "support-prefs.jsonl"
    lines = path.read_text(encoding="utf-8").splitlines(keepends=True)
    path.write_text("".join(lines[:-60]), encoding="utf-8")


def _fewer_kto_rows(examples: Path) -> None:
    """A data change: the last 30 labelled answers of data/support-kto.jsonl dropped."""
    path = examples / "data" / "support-kto.jsonl"
    lines = path.read_text(encoding="utf-8").splitlines(keepends=True)
    path.write_text("".join(lines[:-30]), encoding="utf-8")


def _more_docs(examples: Path) -> None:
    """A data change: the first 10 documents of data/acme-docs.jsonl once more."""
    path = examples / "data" / "acme-docs.jsonl"
    lines = path.read_text(encoding="utf-8").splitlines(keepends=True)
    path.write_text("".join(lines + lines[:10]), encoding="utf-8")


Edit = tuple[list[tuple[str, str]], Callable[[Path], None] | None]
"""Replacements in the pipeline text (each ``old`` occurs once), and a change to the data files."""

EDITS: dict[str, dict[str, Edit]] = {
    "llama3-8b-qlora-24gb": {
        "micro-batch": ([("micro_batch: 2\n    grad_accum: 8", "micro_batch: 4\n    grad_accum: 4")], None),
        "gpu": ([("gpu: rtx-4090", "gpu: l40s")], None),
        "add-stage": ([("  - id: merge\n", "  - id: merge_sft\n    kind: merge\n    input: sft\n    dtype: bf16\n"
                        "  - id: merge\n")], None),
        "data": ([], _fewer_pref_rows),
    },
    "llama3-70b-lora-8xh100": {
        "micro-batch": ([("micro_batch: 1\n    grad_accum: 4", "micro_batch: 2\n    grad_accum: 2")], None),
        "gpu": ([("gpu: h100-sxm-80gb", "gpu: h200-sxm-141gb"), ("gpu_type: h100", "gpu_type: h200")], None),
        "add-stage": ([("    dtype: bf16\n", "    dtype: bf16\n  - id: gguf\n    kind: gguf\n    input: merge\n"
                        "    quant: [q8_0, q4_k_m]\n")], None),
        "data": ([], _more_chat_rows),
    },
    "llama3-70b-qlora-2x24gb-fsdp": {
        "micro-batch": ([("micro_batch: 1\n    grad_accum: 16", "micro_batch: 2\n    grad_accum: 8")], None),
        "gpu": ([("gpu: rtx-4090", "gpu: rtx-3090")], None),
        "add-stage": ([("    dtype: bf16\n", "    dtype: bf16\n  - id: gguf\n    kind: gguf\n    input: merge\n"
                        "    quant: [q4_k_m]\n")], None),
        "data": ([], _more_chat_rows),
    },
    "slurm-2node-full": {
        "micro-batch": ([("micro_batch: 2", "micro_batch: 4")], None),
        "gpu": ([("gpu: h100-sxm-80gb", "gpu: a100-sxm-80gb")], None),
        "add-stage": ([("      - {path: data/support-chat.jsonl, format: sharegpt}\n",
                        "      - {path: data/support-chat.jsonl, format: sharegpt}\n"
                        "      - {path: data/support-prefs.jsonl, format: preference}\n"),
                       ("  - id: gguf\n", "  - id: dpo\n    kind: dpo\n    input: sft\n    data: data\n"
                        "    adapter: {type: full}\n    distributed: zero3\n    attention: flash_attention_2\n"
                        "    micro_batch: 1\n    grad_accum: 8\n    learning_rate: 5.0e-7\n    epochs: 1\n"
                        "  - id: gguf\n"),
                       ("    input: sft\n    quant:", "    input: dpo\n    quant:")], None),
        "data": ([], _more_chat_rows),
    },
    "tiny-cpu": {
        "micro-batch": ([("micro_batch: 8\n    grad_accum: 1", "micro_batch: 4\n    grad_accum: 2")], None),
        "gpu": ([("  device: cpu\n  slurm: {partition: cpu}", "  gpu: t4\n  slurm: {partition: gpu, cpu_partition: cpu}")],
                None),
        "add-stage": ([("  - id: dpo\n", "  - id: merge_sft\n    kind: merge\n    input: sft\n    dtype: fp32\n"
                        "  - id: dpo\n")], None),
        "data": ([], _more_chat_rows),
    },
    "cpt-llama3-8b-h100": {
        "micro-batch": ([("micro_batch: 2\n    grad_accum: 8", "micro_batch: 4\n    grad_accum: 4")], None),
        "gpu": ([("gpu: h100-sxm-80gb", "gpu: a100-sxm-80gb")], None),
        "add-stage": ([("    epochs: 2\n", "    epochs: 2\n  - id: merge\n    kind: merge\n    input: sft\n")], None),
        "data": ([], _more_docs),
    },
    "kto-llama3-8b-feedback": {
        "micro-batch": ([("micro_batch: 4\n    grad_accum: 4\n    learning_rate: 5.0e-6",
                          "micro_batch: 8\n    grad_accum: 2\n    learning_rate: 5.0e-6")], None),
        "gpu": ([("gpu: a100-sxm-80gb", "gpu: h100-sxm-80gb")], None),
        "add-stage": ([("    input: kto\n", "    input: kto\n  - id: gguf\n    kind: gguf\n    input: merge\n"
                        "    quant: [q8_0]\n")], None),
        "data": ([], _fewer_kto_rows),
    },
    "orpo-qwen2.5-7b-24gb": {
        "micro-batch": ([("micro_batch: 1\n    grad_accum: 16", "micro_batch: 2\n    grad_accum: 8")], None),
        "gpu": ([("gpu: rtx-4090", "gpu: l40s")], None),
        "add-stage": ([("    quant: [q4_k_m]\n", "    quant: [q4_k_m]\n  - id: gguf_q8\n    kind: gguf\n"
                        "    input: merge\n    quant: [q8_0]\n")], None),
        "data": ([], _fewer_pref_rows),
    },
    "simpo-llama3-8b-instruct-h100": {
        "micro-batch": ([("micro_batch: 2\n    grad_accum: 16", "micro_batch: 1\n    grad_accum: 32")], None),
        "gpu": ([("gpu: h100-sxm-80gb", "gpu: h200-sxm-141gb")], None),
        "add-stage": ([("    input: simpo\n", "    input: simpo\n  - id: gguf\n    kind: gguf\n    input: merge\n"
                        "    quant: [q4_k_m]\n")], None),
        "data": ([], _fewer_pref_rows),
    },
    "reward-llama3-8b-4xh100": {
        "micro-batch": ([("micro_batch: 2\n    grad_accum: 8", "micro_batch: 4\n    grad_accum: 4")], None),
        "gpu": ([("gpu: h100-sxm-80gb", "gpu: h200-sxm-141gb")], None),
        "add-stage": ([("  - id: rm\n", "  - id: dpo\n    kind: dpo\n    input: sft_merged\n    data: data\n"
                        "    adapter: {type: lora, r: 16, alpha: 32}\n    micro_batch: 2\n    grad_accum: 4\n"
                        "    learning_rate: 5.0e-6\n    epochs: 1\n  - id: rm\n")], None),
        "data": ([], _more_chat_rows),
    },
    "too-big": {
        "micro-batch": ([("micro_batch: 2", "micro_batch: 1"), ("grad_accum: 8", "grad_accum: 16")], None),
        "gpu": ([("gpu: a100-sxm-40gb", "gpu: a100-sxm-80gb")], None),
        "add-stage": ([("    epochs: 1\n", "    epochs: 1\n  - id: merge\n    kind: merge\n    input: sft\n"
                        "    dtype: bf16\n")], None),
        "data": ([], _more_chat_rows),
    },
}
"""Per example, the edits a pull request makes: micro-batch, GPU type, a stage added, the data changed."""

CASES = [(example, name) for example in EXAMPLES for name in EDITS.get(example, {})]


def _replace(text: str, pairs: list[tuple[str, str]]) -> str:
    for old, new in pairs:
        assert text.count(old) == 1, old
        text = text.replace(old, new)
    return text


def _sides(tmp_path: Path, example: str, edit: Edit | None) -> tuple[str, str]:
    """``old/examples/<example>.yaml`` (too-big: with its suggested fix) and ``new/...`` with ``edit`` applied,
    each next to its own copy of the data; the paths are relative to ``tmp_path``, the current folder."""
    for side in ("old", "new"):
        shutil.copytree(ROOT / "examples", tmp_path / side / "examples", ignore=shutil.ignore_patterns(".*"))
    base = (ROOT / "examples" / f"{example}.yaml").read_text(encoding="utf-8")
    if example == "too-big":
        base = _replace(base, TOO_BIG_FIX)
    (tmp_path / "old" / "examples" / f"{example}.yaml").write_text(base, encoding="utf-8")
    new = base
    if edit is not None:
        new = _replace(base, edit[0])
        if edit[1] is not None:
            edit[1](tmp_path / "new" / "examples")
    (tmp_path / "new" / "examples" / f"{example}.yaml").write_text(new, encoding="utf-8")
    return f"old/examples/{example}.yaml", f"new/examples/{example}.yaml"


def run(*argv: str) -> tuple[int, str, str]:
    """``ftplan ARGV`` in-process: (exit code, stdout, stderr), plain text."""
    out, err = StringIO(), StringIO()
    code = main(list(argv), out=Console(file=out, width=160, color_system=None, highlight=False, soft_wrap=True),
                err=Console(file=err, width=160, color_system=None, highlight=False, soft_wrap=True))
    return code, out.getvalue(), err.getvalue()


def _check_golden(name: str, files: dict[str, str], request) -> None:
    if request.config.getoption("--update-golden"):
        GOLDEN.mkdir(parents=True, exist_ok=True)
        for suffix, text in files.items():
            (GOLDEN / f"{name}{suffix}").write_bytes(text.encode("utf-8"))
        return
    for suffix, text in files.items():
        path = GOLDEN / f"{name}{suffix}"
        assert path.is_file(), f"{path} is missing; rerun with --update-golden and review it"
        assert text == path.read_bytes().decode("utf-8"), f"{name}{suffix} differs from the golden copy"


# --- golden diffs over every example -----------------------------------------------------------------------

def test_every_example_has_the_four_edits():
    assert set(EXAMPLES) <= set(EDITS), "add the new example's edits to EDITS"
    assert all(set(edits) == {"micro-batch", "gpu", "add-stage", "data"} for edits in EDITS.values())


@pytest.mark.parametrize("example, edit", CASES)
def test_diff_of_an_edited_example_matches_its_golden(example, edit, tmp_path, monkeypatch, request):
    monkeypatch.chdir(tmp_path)
    old, new = _sides(tmp_path, example, EDITS[example][edit])
    diff = diff_sources(old, new)
    assert not diff.equal
    _check_golden(f"{example}-{edit}", {".txt": "\n".join(diff_lines(diff)) + "\n",
                                        ".json": to_json(diff.as_json())}, request)


def test_a_change_that_breaks_the_pipeline_exits_2_naming_the_side(tmp_path, monkeypatch, request):
    """The reverse of too-big's fix: the new side no longer fits its card, and the diff says so."""
    monkeypatch.chdir(tmp_path)
    old, new = _sides(tmp_path, "too-big", ([("micro_batch: 2", "micro_batch: 8"), ("grad_accum: 8", "grad_accum: 2")],
                                            None))
    with pytest.raises(SideError) as caught:
        diff_sources(old, new)
    assert caught.value.side == "new"
    text = "\n".join(side_error_lines(caught.value)) + "\n"
    assert text.startswith(f"error: cannot diff the new side: {new} does not pass its checks (1 error)\n")
    assert f"error[FT101] {new}:" in text
    _check_golden("too-big-oom", {".txt": text, ".json": to_json(side_error_json(caught.value))}, request)
    status, out, err = run("diff", old, new)
    assert (status, out, err) == (2, "", text)


@pytest.mark.parametrize("example", EXAMPLES)
def test_an_unedited_example_equals_itself_and_its_compiled_plan(example, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    old, new = _sides(tmp_path, example, None)
    diff = diff_sources(old, new)
    assert diff.equal and diff.summary_line() == "No changes: the plans are equal."
    assert run("compile", new, "-o", "plans/x")[0] == 0
    status, out, _ = run("diff", "plans/x", old)
    assert status == 0, out
    assert out.splitlines()[-1] == "No changes: the plans are equal."
    assert run("diff", "plans/x/plan.json", "plans/x")[0] == 0


# --- what the diff says ------------------------------------------------------------------------------------

def test_the_text_view_of_a_micro_batch_change(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    old, new = _sides(tmp_path, "llama3-8b-qlora-24gb", EDITS["llama3-8b-qlora-24gb"]["micro-batch"])
    status, out, err = run("diff", old, new)
    assert (status, err) == (1, "")
    lines = out.splitlines()
    assert lines[:2] == [f"--- {old} (pipeline support-bot)", f"+++ {new} (pipeline support-bot)"]
    assert "~ sft  QLoRA r16 α32" in lines
    assert any(line.split() == ["~", "micro", "batch", "2", "→", "4"] for line in lines)
    assert any(line.split() == ["~", "grad", "accum", "8", "→", "4"] for line in lines)
    assert not any("dpo" in line for line in lines)  # an unchanged stage is not shown
    assert lines[-1] == "Stages: 0 to add, 1 to change, 0 to remove."


def test_the_peak_line_shows_the_card_and_both_verdicts():
    plan = _compiled_plan_json("llama3-8b-qlora-24gb")
    edited = json.loads(json.dumps(plan))
    sft = next(s for s in edited["stages"] if s["id"] == "sft")
    sft["estimate"].update(peak_bytes=int(22.5 * 2**30), verdict="tight")  # the diff reads plan.json; it recomputes nothing
    lines = diff_lines(diff_plans(plan, edited))
    assert "    ~ peak memory per GPU     8.9 → 22.5 GiB of 24.0 (fits → tight)" in lines  # 22 + 2 columns
    assert lines[-1] == "Stages: 0 to add, 1 to change, 0 to remove."


def test_a_renamed_stage_is_one_removed_and_one_added():
    plan = _compiled_plan_json("too-big", fix=True)
    renamed = json.loads(json.dumps(plan))
    renamed["stages"][1]["id"] = "sft_long"
    diff = diff_plans(plan, renamed)
    assert [(s.id, s.symbol) for s in diff.stages] == [("data", "="), ("sft", "-"), ("sft_long", "+")]
    assert diff.summary_line() == "Stages: 1 to add, 0 to change, 1 to remove."
    lines = diff_lines(diff)
    assert "+ sft_long  LoRA r16 α32" in lines and "- sft  LoRA r16 α32" in lines


def test_pipeline_wide_changes_are_their_own_section():
    plan = _compiled_plan_json("too-big", fix=True)
    bumped = json.loads(json.dumps(plan))
    bumped["versions"]["transformers"] = "9.9.9"
    diff = diff_plans(plan, bumped)
    lines = diff_lines(diff)
    i = lines.index("~ pipeline")
    assert lines[i + 1].split() == ["~", "version", "transformers", plan["versions"]["transformers"], "→", "9.9.9"]
    assert lines[-1] == "Stages: 0 to add, 0 to change, 0 to remove; 1 pipeline-wide change."
    assert diff.as_json()["pipeline"]["changes"] == [{
        "key": "version:transformers", "label": "version transformers", "old": plan["versions"]["transformers"],
        "new": "9.9.9", "old_text": plan["versions"]["transformers"], "new_text": "9.9.9"}]


def test_where_the_plan_lives_and_the_pipeline_files_bytes_are_no_review_fact(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    old, new = _sides(tmp_path, "llama3-8b-qlora-24gb", ([("name: support-bot", "# a comment\nname: support-bot")],
                                                        None))
    assert run("compile", old, "-o", "plans/a")[0] == 0
    assert run("compile", new, "-o", "deeper/plans/b")[0] == 0
    assert json.loads((tmp_path / "plans/a/plan.json").read_text())["pipeline"]["sha256"] != \
        json.loads((tmp_path / "deeper/plans/b/plan.json").read_text())["pipeline"]["sha256"]
    assert run("diff", "plans/a", "deeper/plans/b")[0] == 0


def test_review_facts_of_a_data_stage_name_each_dataset_with_its_hash():
    plan = _compiled_plan_json("llama3-8b-qlora-24gb")
    data = next(s for s in review_facts(plan).stages if s.id == "data")
    facts = {f.key: f for f in data.facts}
    chat = next(i for i in plan["inputs"] if i["path"] == "data/support-chat.jsonl")
    assert facts["dataset:data/support-chat.jsonl"].value == {"sha256": chat["sha256"], "size": chat["size"]}
    assert facts["dataset:data/support-chat.jsonl"].text == \
        f"sharegpt, sha256 {chat['sha256'][:12]}, {chat['size']:,} bytes"
    assert facts["dataset:data/support-chat.jsonl.format"].value == "sharegpt"


def test_json_is_one_document_with_sorted_keys(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    old, new = _sides(tmp_path, "too-big", EDITS["too-big"]["gpu"])
    status, out, _ = run("diff", old, new, "--json")
    assert status == 1
    doc = json.loads(out)
    assert list(doc) == sorted(doc)
    assert doc["ok"] is True and doc["equal"] is False and doc["format"] == 1
    assert doc["summary"] == {"add": 0, "change": 1, "remove": 0, "pipeline_changed": True}
    assert doc["old"] == {"source": old, "kind": "pipeline", "pipeline": "too-big"}
    sft = next(s for s in doc["stages"] if s["id"] == "sft")
    peak = next(c for c in sft["changes"] if c["key"] == "peak")
    assert peak["old"]["capacity_bytes"] < peak["new"]["capacity_bytes"]
    assert (peak["old_text"], peak["new_text"]) == ("26.6 GiB of 40.0 (fits)", "26.6 GiB of 80.0 (fits)")
    assert [s["symbol"] for s in doc["stages"]] == ["=", "~"]


# --- sides: plan folders, git revisions, errors --------------------------------------------------------------

@pytest.mark.parametrize("make, spec, message", [
    (lambda p: None, "nothere.yaml", "nothere.yaml does not exist"),
    (lambda p: (p / "empty").mkdir(), "empty", "empty is a folder without plan.json"),
    (lambda p: (p / "broken.json").write_text("{", encoding="utf-8"), "broken.json",
     "broken.json: plan.json is not valid JSON (line 1, column 2"),
    (lambda p: (p / "other.json").write_text('{"a": 1}', encoding="utf-8"), "other.json",
     "other.json: this JSON file is not a plan.json ftplan wrote"),
    (lambda p: (p / "future.json").write_text('{"format_version": 9, "stages": []}', encoding="utf-8"),
     "future.json", "future.json: plan.json has format 9; this ftplan reads format 1"),
    (lambda p: (p / "bad.yaml").write_text("name: [", encoding="utf-8"), "bad.yaml",
     "bad.yaml does not pass its checks (1 error)"),
])
def test_an_unreadable_side_exits_2_saying_which_and_why(make, spec, message, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    old, _ = _sides(tmp_path, "too-big", None)
    make(tmp_path)
    status, out, err = run("diff", old, spec)
    assert (status, out) == (2, "")
    assert err.startswith(f"error: cannot diff the new side: {message}"), err
    assert err.splitlines()[-1].startswith("hint: ")
    status, out, err = run("diff", spec, old, "--json")
    assert (status, err) == (2, "")
    doc = json.loads(out)
    assert doc["ok"] is False and doc["equal"] is None
    assert doc["error"]["side"] == "old" and doc["error"]["source"] == spec
    assert doc["error"]["message"].startswith(message) and doc["error"]["hint"]


def test_a_pipeline_with_errors_lists_them_in_the_json(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    old, new = _sides(tmp_path, "too-big", ([("micro_batch: 2", "micro_batch: 0")], None))
    status, out, _ = run("diff", old, new, "--json")
    assert status == 2
    error = json.loads(out)["error"]
    assert error["side"] == "new"
    assert [(d["code"], d["path"], d["line"]) for d in error["diagnostics"]] == [("FT004", "stages[sft].micro_batch", 20)]


def test_usage_errors_of_diff_exit_2(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    status, out, err = run("diff", "only-one")
    assert (status, out) == (2, "")
    assert "the following arguments are required: new" in err
    status, out, _ = run("diff", "only-one", "--json")
    assert status == 2 and json.loads(out)["error"]["message"] == "the following arguments are required: new"


def _git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@example.com", *args], cwd=repo,
                          check=True, capture_output=True, text=True).stdout


@pytest.fixture
def repo(tmp_path, monkeypatch) -> Path:
    """A git repository holding the too-big example (fixed) and its data, committed, as the current folder."""
    monkeypatch.chdir(tmp_path)
    _sides(tmp_path, "too-big", None)
    repo = tmp_path / "old"
    _git(repo, "init", "-q", "-b", "main")
    assert run("compile", "old/examples/too-big.yaml", "-o", "old/plans/too-big")[0] == 0
    _git(repo, "add", ".")
    _git(repo, "commit", "-q", "-m", "pipeline and plan")
    monkeypatch.chdir(repo)
    return repo


def test_a_git_revision_of_a_pipeline_is_checked_as_if_it_were_at_its_path(repo):
    path = repo / "examples" / "too-big.yaml"
    path.write_text(_replace(path.read_text(encoding="utf-8"), [("micro_batch: 2", "micro_batch: 1")]),
                    encoding="utf-8")
    status, out, _ = run("diff", "main:examples/too-big.yaml", "examples/too-big.yaml")
    assert status == 1
    assert out.splitlines()[0] == "--- main:examples/too-big.yaml (pipeline too-big)"
    assert any(line.split() == ["~", "micro", "batch", "2", "→", "1"] for line in out.splitlines())
    assert run("diff", "HEAD:examples/too-big.yaml", "main:examples/too-big.yaml")[0] == 0
    status, out, _ = run("diff", "main:examples/too-big.yaml", "plans/too-big")
    assert status == 0, out


def test_a_git_revision_of_a_plan_folder_is_its_committed_plan_json(repo, monkeypatch):
    (repo / "examples" / "data" / "support-chat.jsonl").write_text("", encoding="utf-8")  # data changed since
    status, out, err = run("diff", "main:plans/too-big", "examples/too-big.yaml")
    assert status == 2  # an empty dataset fails the checks: the error names the new side
    assert err.startswith("error: cannot diff the new side: examples/too-big.yaml does not pass its checks")
    _git(repo, "checkout", "-q", "--", "examples/data/support-chat.jsonl")
    monkeypatch.chdir(repo / "examples")  # PATH is relative to the current folder, like the other side's
    assert run("diff", "main:../plans/too-big/plan.json", "main:too-big.yaml")[0] == 0
    _more_chat_rows(repo / "examples")
    status, out, _ = run("diff", "main:../plans/too-big", "too-big.yaml")
    assert status == 1
    assert "~ data  sharegpt, ≤8192 tokens" in out.splitlines()
    assert any(line.split()[:5] == ["~", "dataset", "data/support-chat.jsonl", "sharegpt,", "sha256"]
               for line in out.splitlines())


@pytest.mark.parametrize("spec, message", [
    ("nosuchbranch:examples/too-big.yaml", "cannot read nosuchbranch:examples/too-big.yaml from git: "),
    ("main:examples/absent.yaml", "cannot read main:examples/absent.yaml from git: "),
    ("main:examples", "main:examples is a folder without plan.json at main"),
])
def test_a_git_side_git_cannot_read_exits_2(repo, spec, message):
    status, out, err = run("diff", spec, "examples/too-big.yaml")
    assert (status, out) == (2, "")
    assert err.startswith(f"error: cannot diff the old side: {message}"), err


def test_a_git_side_outside_a_repository_says_so(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "x.yaml").write_text("name: x\n", encoding="utf-8")
    with pytest.raises(SideError, match=r"cannot read main:x\.yaml from git: not a git repository"):
        read_side("main:x.yaml")


# --- compile --check ---------------------------------------------------------------------------------------

def test_compile_check_prints_the_semantic_diff_then_the_stale_files(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    old, _ = _sides(tmp_path, "llama3-8b-qlora-24gb", None)
    assert run("compile", old, "-o", "plans/bot")[0] == 0
    path = tmp_path / old
    path.write_text(_replace(path.read_text(encoding="utf-8"), EDITS["llama3-8b-qlora-24gb"]["gpu"][0]),
                    encoding="utf-8")
    status, out, _ = run("compile", old, "-o", "plans/bot", "--check")
    assert status == 3
    lines = out.splitlines()
    assert lines[:2] == ["--- plans/bot (plan support-bot)", f"+++ {old} (pipeline support-bot)"]
    assert "~ pipeline" in lines and "~ sft  QLoRA r16 α32" in lines
    assert "Stages: 0 to add, 2 to change, 0 to remove; 1 pipeline-wide change." in lines
    assert lines[lines.index("plans/bot:") - 1] == ""
    assert lines[-1].startswith("Plan: 0 to add, ") and lines[-1].endswith(" to change, 0 to remove.")
    status, out, _ = run("compile", old, "-o", "plans/bot", "--check", "--json")
    assert status == 3
    review = json.loads(out)["review"]
    assert review["summary"] == {"add": 0, "change": 2, "remove": 0, "pipeline_changed": True}
    assert run("compile", old, "-o", "plans/bot")[0] == 0
    assert run("compile", old, "-o", "plans/bot", "--check") == (0, "plans/bot: up to date\n", "")


def _compiled_plan_json(example: str, fix: bool = False) -> dict:
    """An example's plan.json as ``compile`` renders it (too-big with its fix applied when ``fix``)."""
    from ftplan.api import check_text
    from ftplan.review_sources import compiled_plan

    text = (ROOT / "examples" / f"{example}.yaml").read_text(encoding="utf-8")
    result = check_text(_replace(text, TOO_BIG_FIX) if fix else text, f"{example}.yaml", ROOT / "examples")
    assert result.ok
    return compiled_plan(result)


def test_the_readme_diff_is_what_ftplan_diff_prints(tmp_path, monkeypatch):
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    [block] = [b for b in readme.split("```console\n")[1:] if b.startswith("$ ftplan diff ")]
    command, *expected = block.split("```", 1)[0].splitlines()
    shutil.copytree(ROOT / "examples", tmp_path / "examples", ignore=shutil.ignore_patterns(".*"))
    _git(tmp_path, "init", "-q", "-b", "main")
    _git(tmp_path, "add", ".")
    _git(tmp_path, "commit", "-q", "-m", "examples")
    path = tmp_path / "examples" / "slurm-2node-full.yaml"
    path.write_text(_replace(path.read_text(encoding="utf-8"), EDITS["slurm-2node-full"]["micro-batch"][0]),
                    encoding="utf-8")
    monkeypatch.chdir(tmp_path)
    status, out, _ = run(*command.split()[2:])
    assert status == 1
    assert out.splitlines() == expected
