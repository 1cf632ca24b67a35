"""Completion stamps (``ftplan_runtime.stamps``) on a compiled plan with synthetic stage outputs (no training):
what makes a stage and everything built on it incomplete, what does not, the CLI, and that the compiler's
``upstream`` lists agree with the paths the runtime reads."""

from __future__ import annotations

import json
import os
import posixpath
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from ftplan.context import Context, Inputs
from ftplan.lineage import trace
from ftplan.plan import build_plan
from ftplan.render import render
from ftplan.schemas import Pipeline
from ftplan.schemas.runtime_args import COMPLETE_MARKER
from ftplan.write import write_plan
from ftplan_runtime import stamps

REPO = Path(__file__).resolve().parents[2]
STAGES = ["data", "data_b", "sft", "dpo", "merge", "gguf", "sft_b"]
PIPELINE = {
    "name": "st",
    "model": {"base": "base", "chat_template": "tpl.jinja"},
    "hardware": {"device": "cpu"},
    "output_dir": "out",
    "stages": [
        {"id": "data", "kind": "data", "max_seq_len": 64,
         "datasets": [{"path": "data/chat.jsonl", "format": "messages"},
                      {"path": "data/prefs.jsonl", "format": "preference"}]},
        {"id": "data_b", "kind": "data", "max_seq_len": 64, "datasets": [{"path": "data/other", "format": "messages"}]},
        {"id": "sft", "kind": "sft", "data": "data", "adapter": {"type": "lora"}, "learning_rate": 1e-4},
        {"id": "dpo", "kind": "dpo", "input": "sft", "data": "data", "adapter": "continue", "learning_rate": 1e-6},
        {"id": "merge", "kind": "merge", "input": "dpo"},
        {"id": "gguf", "kind": "gguf", "input": "merge", "quant": ["f16"]},
        {"id": "sft_b", "kind": "sft", "data": "data_b", "adapter": {"type": "lora"}, "learning_rate": 1e-4},
    ],
}
OUTPUTS = {
    "data": {"manifest.json": "{}", "sft/train/data-00000-of-00001.arrow": "rows", "sft/train/state.json": "{}"},
    "data_b": {"manifest.json": "{}", "sft/train/data-00000-of-00001.arrow": "other rows"},
    "sft": {"adapter/adapter_model.safetensors": "sft weights", "adapter/adapter_config.json": "{}"},
    "dpo": {"adapter/adapter_model.safetensors": "dpo weights", "adapter/adapter_config.json": "{}"},
    "merge": {"model/model.safetensors": "merged", "model/config.json": "{}", "model/tokenizer.json": "tok"},
    "gguf": {"st-f16.gguf": "gguf"},
    "sft_b": {"adapter/adapter_model.safetensors": "sft_b weights", "adapter/adapter_config.json": "{}"},
}


def compile_into(root: Path, data: dict, plan_dir: str = "plan") -> dict[str, str]:
    p = Pipeline.model_validate(data)
    links, diags = trace(p)
    assert not diags
    ctx = Context(p, str(root / "p.yaml"), "0" * 64, Inputs(), None, None, "", links)
    files = render(build_plan(ctx, {}, [], plan_dir_from_root=plan_dir, ftplan_version="0.1.0"))
    write_plan(files, root / plan_dir)
    return files


def write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


@pytest.fixture
def project(tmp_path, monkeypatch):
    """A compiled plan in a project with a base model folder, a chat template and datasets (cwd = its root)."""
    monkeypatch.chdir(tmp_path)
    for name, text in {"base/config.json": "{}", "base/model.safetensors": "base weights",
                       "base/tokenizer.json": "{\"v\": 1}", "base/tokenizer_config.json": "{}",
                       "tpl.jinja": "{{ messages }}", "data/chat.jsonl": '{"messages": 1}\n{"messages": 2}\n',
                       "data/prefs.jsonl": '{"prompt": "a"}\n', "data/other/a.jsonl": '{"messages": 3}\n'}.items():
        write(tmp_path / name, text)
    files = compile_into(tmp_path, PIPELINE)
    args = {f.split("/")[1]: f"plan/{f}" for f in files if f.endswith("/args.json")}
    assert sorted(args) == sorted(STAGES)
    return tmp_path, args


def run_stage(args_paths: dict[str, str], stage: str, outputs: dict[str, str] | None = None) -> None:
    """What a successful run does around the stage's work: begin, outputs, metrics, stamp."""
    args, sha = stamps.read_args(args_paths[stage])
    build = stamps.begin(args, sha)
    for rel, text in (OUTPUTS[stage] if outputs is None else outputs).items():
        write(Path(args.output_dir) / rel, text)
    write(Path(args.output_dir) / "metrics.json", '{"wall_time_s": 1}')
    stamps.finish(build)


def run_all(args_paths: dict[str, str]) -> None:
    for stage in STAGES:
        run_stage(args_paths, stage)


def verdicts(args_paths: dict[str, str]) -> dict[str, stamps.Verdict]:
    return {s: stamps.check(args_paths[s]) for s in STAGES}


def incomplete(args_paths: dict[str, str]) -> set[str]:
    return {s for s, v in verdicts(args_paths).items() if not v.complete}


def edit(path: str, old: str, new: str) -> None:
    p = Path(path)
    st = p.stat()
    p.write_text(p.read_text().replace(old, new))
    os.utime(p, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))


def touch(path: str) -> None:
    st = Path(path).stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 5_000_000_000))


DATA_CHAIN = {"data", "sft", "dpo", "merge", "gguf"}


def test_every_stage_is_complete_after_its_stamp_and_not_before(project):
    root, paths = project
    v = verdicts(paths)
    assert v["data"].reason == "it has not run yet"
    assert v["sft"].reason == "upstream stage data must run first (it has not run yet)"
    assert v["gguf"].reason == "upstream stage merge must run first (stage data: it has not run yet)"
    run_all(paths)
    assert incomplete(paths) == set()
    stamp = json.loads((root / "out/sft" / COMPLETE_MARKER).read_text())
    assert stamp["format"] == 1 and stamp["stage"] == "sft" and stamp["upstream"] == ["data"]
    assert stamp["args_sha256"] == stamps.args_sha256((root / paths["sft"]).read_bytes())
    assert sorted(stamp["inputs"]) == [
        "base/config.json", "base/model.safetensors", "base/tokenizer.json", "base/tokenizer_config.json",
        "out/data/manifest.json", "out/data/sft/train/data-00000-of-00001.arrow", "out/data/sft/train/state.json",
        "tpl.jinja"]  # the data stage's own stamp and metrics.json are not inputs
    text = (root / "out/sft" / COMPLETE_MARKER).read_text()
    assert text == json.dumps(json.loads(text), indent=2, sort_keys=True) + "\n"
    data_inputs = json.loads((root / "out/data" / COMPLETE_MARKER).read_text())["inputs"]
    # only the tokenizer files of the base model, not its weights
    assert sorted(data_inputs) == ["base/tokenizer.json", "base/tokenizer_config.json", "data/chat.jsonl",
                                   "data/prefs.jsonl", "tpl.jinja"]
    assert not (root / "out/sft" / stamps.DIGEST_CACHE).exists()


@pytest.mark.parametrize("same_size", [False, True])
def test_an_edited_dataset_invalidates_its_data_stage_and_everything_built_on_it(project, same_size):
    _, paths = project
    run_all(paths)
    if same_size:
        edit("data/chat.jsonl", '"messages": 2', '"messages": 7')
    else:
        Path("data/chat.jsonl").write_text('{"messages": 1}\n')  # half the rows deleted
    v = verdicts(paths)
    assert {s for s, x in v.items() if not x.complete} == DATA_CHAIN
    assert v["data"].reason == "data/chat.jsonl changed since it last ran"
    assert v["sft"].reason == "upstream stage data must run first (data/chat.jsonl changed since it last ran)"
    assert v["merge"].reason == ("upstream stage dpo must run first (stage data: data/chat.jsonl changed since it "
                                 "last ran)")
    assert v["merge"].upstream == "dpo"
    # the data stage runs again with the new rows: what was built on its old output still has to run
    run_stage(paths, "data", {**OUTPUTS["data"], "sft/train/data-00000-of-00001.arrow": "new rows"})
    v = verdicts(paths)
    assert {s for s, x in v.items() if not x.complete} == DATA_CHAIN - {"data"}
    assert v["sft"].reason == "out/data/sft/train/data-00000-of-00001.arrow changed since it last ran"
    for stage in ("sft", "dpo", "merge", "gguf"):
        run_stage(paths, stage)
    assert incomplete(paths) == set()


def test_touch_without_a_change_keeps_every_stage_complete(project, monkeypatch):
    _, paths = project
    run_all(paths)
    for path in ("data/chat.jsonl", "base/model.safetensors", "base/tokenizer.json", "tpl.jinja",
                 "out/sft/adapter/adapter_model.safetensors", "out/data/manifest.json"):
        touch(path)
    assert incomplete(paths) == set()
    hashed = []
    real = stamps.file_sha256
    monkeypatch.setattr(stamps, "file_sha256", lambda p: hashed.append(str(p)) or real(p))
    assert incomplete(paths) == set()  # touched files are hashed again (their mtime changed) ...
    assert "base/model.safetensors" in hashed
    hashed.clear()
    run_stage(paths, "data")  # ... and a new run records the new mtime
    assert stamps.check(paths["data"]).complete and hashed.count("data/chat.jsonl") == 1


def test_unchanged_files_are_not_hashed_again(project, monkeypatch):
    """A check hashes nothing that kept its size and mtime; a run reuses the digests of upstream stamps."""
    _, paths = project
    hashed: list[str] = []
    real = stamps.file_sha256
    monkeypatch.setattr(stamps, "file_sha256", lambda p: hashed.append(str(p)) or real(p))
    for stage in ("data", "data_b", "sft"):
        run_stage(paths, stage)
    assert hashed.count("base/model.safetensors") == 1  # sft read it
    hashed.clear()
    for stage in ("dpo", "merge", "gguf"):
        run_stage(paths, stage)
    assert "base/model.safetensors" not in hashed and "base/tokenizer.json" not in hashed  # from sft's stamp
    hashed.clear()
    assert incomplete(paths) == {"sft_b"}
    assert hashed == []


@pytest.mark.parametrize("path, chain", [
    ("base/tokenizer.json", DATA_CHAIN | {"data_b", "sft_b"}),
    ("tpl.jinja", DATA_CHAIN | {"data_b", "sft_b"}),
    ("base/model.safetensors", {"sft", "dpo", "merge", "gguf", "sft_b"}),
])
def test_tokenizer_template_and_weights_edits(project, path, chain):
    _, paths = project
    run_all(paths)
    edit(path, "", "")  # same content: still complete
    assert incomplete(paths) == set()
    Path(path).write_text(Path(path).read_text() + " ")
    v = verdicts(paths)
    assert {s for s, x in v.items() if not x.complete} == chain
    first = "data" if "data" in chain else "sft"
    assert v[first].reason == f"{path} changed since it last ran"


def test_an_edited_upstream_adapter_invalidates_the_stages_that_read_it(project):
    _, paths = project
    run_all(paths)
    Path("out/sft/adapter/adapter_model.safetensors").write_text("retrained")
    v = verdicts(paths)
    assert {s for s, x in v.items() if not x.complete} == {"dpo", "merge", "gguf"}
    assert v["dpo"].reason == "out/sft/adapter/adapter_model.safetensors changed since it last ran"
    assert v["merge"].reason.startswith("upstream stage dpo must run first (out/sft/adapter/")
    Path("out/dpo/adapter/adapter_model.safetensors").write_text("retrained")
    assert stamps.check(paths["merge"]).reason.startswith("upstream stage dpo must run first")


def test_files_added_to_or_removed_from_an_input_folder(project):
    root, paths = project
    run_all(paths)
    write(root / "data/other/b.jsonl", "{}\n")
    v = verdicts(paths)
    assert {s for s, x in v.items() if not x.complete} == {"data_b", "sft_b"}
    assert v["data_b"].reason == "data/other/b.jsonl is new since it last ran"
    (root / "data/other/b.jsonl").unlink()
    write(root / "data/other/.hidden", "editor swap file")  # hidden names are no inputs
    write(root / "out/data/metrics.json", '{"wall_time_s": 2}')  # nor an upstream stage's own files
    assert incomplete(paths) == set()
    (root / "out/data/sft/train/state.json").unlink()
    v = verdicts(paths)
    assert {s for s, x in v.items() if not x.complete} == {"sft", "dpo", "merge", "gguf"}
    assert v["sft"].reason == "out/data/sft/train/state.json was removed since it last ran"
    (root / "base/model.safetensors").unlink()
    assert stamps.check(paths["sft_b"]).reason == "base/model.safetensors was removed since it last ran"


def test_a_failed_rerun_leaves_the_stage_and_everything_downstream_incomplete(project):
    root, paths = project
    run_all(paths)
    args, sha = stamps.read_args(paths["data"])
    stamps.begin(args, sha)  # the rerun starts ... and fails: no finish
    assert not (root / "out/data" / COMPLETE_MARKER).exists()
    assert (root / "out/data/manifest.json").exists()  # the previous output stays, no longer complete
    v = verdicts(paths)
    assert {s for s, x in v.items() if not x.complete} == DATA_CHAIN
    assert v["data"].reason == "its last run did not finish"
    assert v["sft"].reason == "upstream stage data must run first (its last run did not finish)"
    assert (root / "out/data" / stamps.DIGEST_CACHE).is_file()  # digests kept for the next attempt


def test_changed_arguments_and_old_or_broken_stamps(project):
    root, paths = project
    run_all(paths)
    args_file = root / paths["sft"]
    doc = json.loads(args_file.read_text())
    doc["stage"]["learning_rate"] = 2e-4
    args_file.write_text(json.dumps(doc))
    v = verdicts(paths)
    assert v["sft"].reason == "its arguments changed since it last ran"
    assert {s for s, x in v.items() if not x.complete} == {"sft", "dpo", "merge", "gguf"}
    (root / "out/data" / COMPLETE_MARKER).write_text("a" * 64 + "\n")  # the bare sha256 of earlier runtimes
    assert stamps.check(paths["data"]).reason == ("it was completed by an older ftplan runtime, which did not "
                                                  "record its inputs")
    (root / "out/data_b" / COMPLETE_MARKER).write_text('{"format": 99}')
    assert stamps.check(paths["data_b"]).reason == "its completion stamp has another format (99)"


def test_leftovers_of_a_killed_run_are_cleaned_when_the_stage_runs_again(project):
    root, paths = project
    run_all(paths)
    pid = "12345"
    leftovers = [f"out/.data.tmp-{pid}/sft/train/x.arrow", f"out/.data.old-{pid}/manifest.json",
                 "out/data/.metrics.json.tmp", "out/data/metrics.json.tmp", f"out/data/.{COMPLETE_MARKER}.tmp"]
    kept = [f"out/.data_b.tmp-{pid}/x", "out/data/sft/keep.tmp", "out/.datax.tmp-1/x"]
    for path in leftovers + kept:
        write(root / path, "x")
    removed = stamps.begin(*stamps.read_args(paths["data"])).removed
    assert sorted(removed) == sorted({"/".join(p.split("/")[:2]) if ".data." in p else p for p in leftovers})
    for path in leftovers:
        assert not (root / path).exists(), path
    for path in kept:
        assert (root / path).exists(), path
    gguf = [f"out/gguf/.st-f16.gguf.{pid}.tmp", f"out/gguf/.st-q4_k_m.gguf.{pid}.tmp"]
    sft = ["out/sft/checkpoints/.ARGS_SHA256.tmp", "out/sft/adapter/.adapter_model.safetensors.9.tmp"]
    for path in gguf + sft:
        write(root / path, "x")
    assert sorted(stamps.begin(*stamps.read_args(paths["gguf"])).removed) == sorted(gguf)
    assert sorted(stamps.begin(*stamps.read_args(paths["sft"])).removed) == sorted(sft)


def test_a_file_edited_during_the_run_fails_the_next_check(project):
    _, paths = project
    run_all(paths)
    args, sha = stamps.read_args(paths["data"])
    build = stamps.begin(args, sha)  # digests taken at the start ...
    Path("data/chat.jsonl").write_text('{"messages": "edited while the stage ran"}\n')
    stamps.finish(build)  # ... so the stamp records the content the stage read
    assert stamps.check(paths["data"]).reason == "data/chat.jsonl changed since it last ran"


def test_an_upstream_args_file_that_is_missing_or_wrong_is_an_error(project):
    root, paths = project
    (root / paths["data"]).unlink()
    with pytest.raises(stamps.StampError, match="cannot read the arguments file"):
        stamps.check(paths["sft"])
    shutil.copy(root / paths["data_b"], root / paths["data"])
    with pytest.raises(stamps.StampError, match="holds stage 'data_b'.*recompile"):
        stamps.check(paths["sft"])


# ---------------------------------------------------------------------------------------------- CLI


def _cli(*argv: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "ftplan_runtime.stamps", *argv], cwd=cwd, capture_output=True,
                          text=True, timeout=60)


def test_cli_exit_codes_and_one_line(project):
    root, paths = project
    r = _cli("check", paths["sft"], cwd=root)
    assert (r.returncode, r.stdout, r.stderr) == (1, "upstream stage data must run first (it has not run yet)\n", "")
    run_all(paths)
    r = _cli("check", paths["sft"], cwd=root)
    assert (r.returncode, r.stdout) == (0, "complete\n")
    Path(root / "data/chat.jsonl").write_text("{}\n")
    r = _cli("check", paths["data"], cwd=root)
    assert (r.returncode, r.stdout) == (1, "data/chat.jsonl changed since it last ran\n")
    (root / paths["data"]).write_text("{broken")
    r = _cli("check", paths["sft"], cwd=root)
    assert r.returncode == 2 and r.stdout == "" and len(r.stderr.splitlines()) == 1
    assert "not a valid ftplan arguments file" in r.stderr and "Traceback" not in r.stderr
    r = _cli("check", "nowhere/args.json", cwd=root)
    assert r.returncode == 2 and "cannot read the arguments file 'nowhere/args.json'" in r.stderr
    r = _cli(cwd=root)
    assert r.returncode == 2 and r.stderr.startswith("usage:")


def test_the_light_modules_import_no_training_stack():
    code = ("import sys, ftplan_runtime.stamps, ftplan_runtime.installed; "
            "print(sorted(m for m in ('torch', 'transformers', 'datasets', 'peft', 'trl', 'numpy') if m in sys.modules))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert (r.returncode, r.stdout) == (0, "[]\n"), r.stderr


# ---------------------------------------------------------------------------------------------- compiler vs runtime


def _inside(path: str, folder: str) -> bool:
    return path == folder or path.startswith(folder.rstrip("/") + "/")


def _agree(root: Path, plan_dir: str) -> int:
    """For every stage of the plan: the stages the compiler lists as upstream are exactly those whose output
    folders hold a path the runtime reads; returns the number of upstream links seen."""
    arg_files = sorted((root / plan_dir / "stages").glob("*/args.json"))
    all_args = {p: stamps.read_args(p)[0] for p in arg_files}
    outputs = {a.stage.id: posixpath.normpath(a.output_dir) for a in all_args.values()}
    links = 0
    for path, args in all_args.items():
        read = [r.path for r in stamps.input_roots(args)]
        derived = {sid for sid, out in outputs.items() if sid != args.stage.id and any(_inside(p, out) for p in read)}
        listed = [ref.stage for ref in args.upstream]
        assert set(listed) == derived, (path, listed, derived)
        assert len(listed) == len(set(listed))
        for ref in args.upstream:
            assert posixpath.normpath(posixpath.join(plan_dir, "stages")) in ref.args
            assert stamps.read_args(root / ref.args)[0].stage.id == ref.stage
        links += len(listed)
    return links


@pytest.mark.parametrize("example", sorted(p.stem for p in (REPO / "examples").glob("*.yaml") if p.stem != "too-big"))
def test_the_compilers_upstream_lists_match_what_the_runtime_reads(example, tmp_path, monkeypatch):
    from ftplan.api import check_file, plan_files

    shutil.copytree(REPO / "examples", tmp_path / "examples", ignore=shutil.ignore_patterns(".*"))
    result = check_file(tmp_path / "examples" / f"{example}.yaml")
    assert result.ok
    files = plan_files(result, "plan")
    write_plan(files, tmp_path / "examples" / "plan")
    monkeypatch.chdir(tmp_path / "examples")
    assert _agree(tmp_path / "examples", "plan") > 0


def test_upstream_lists_for_every_hand_off(tmp_path, monkeypatch):
    """merge_input, full fine-tunes and merges of whole chains: the lists and the read paths agree."""
    monkeypatch.chdir(tmp_path)
    data = {**PIPELINE, "stages": [
        PIPELINE["stages"][0],
        {"id": "sft", "kind": "sft", "data": "data", "adapter": {"type": "lora"}, "learning_rate": 1e-4},
        {"id": "dpo", "kind": "dpo", "input": "sft", "data": "data", "merge_input": True,
         "adapter": {"type": "lora"}, "learning_rate": 1e-6},
        {"id": "merge", "kind": "merge", "input": "dpo"},
        {"id": "full", "kind": "sft", "input": "merge", "data": "data", "adapter": {"type": "full"},
         "learning_rate": 1e-5},
        {"id": "gguf", "kind": "gguf", "input": "full", "quant": ["f16"]},
    ]}
    compile_into(tmp_path, data, "plans/x y")
    assert _agree(tmp_path, "plans/x y") == 8
    ups = {a.stage.id: [r.stage for r in a.upstream] for a in
           (stamps.read_args(p)[0] for p in sorted((tmp_path / "plans/x y/stages").glob("*/args.json")))}
    assert ups == {"data": [], "sft": ["data"], "dpo": ["data", "sft"], "merge": ["sft", "dpo"],
                   "full": ["data", "merge"], "gguf": ["full"]}
