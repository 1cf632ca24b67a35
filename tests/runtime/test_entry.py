"""The entry point `python -m ftplan_runtime args.json`: argument errors, exit codes, completion stamps, and a
whole data -> sft -> dpo -> merge chain driven through the command line."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from ftplan.schemas.runtime_args import COMPLETE_MARKER, RuntimeArgs

REPO = Path(__file__).resolve().parents[2]
CPU_PROMISE = {"device": "cpu", "world_size": 1, "num_machines": 1, "distributed_type": "NO", "precision": "fp32",
               "attention": "sdpa", "kernels": "none"}


def _main(argv):
    from ftplan_runtime.__main__ import main

    return main(argv)


def _one_line_error(err: str) -> str:
    lines = [line for line in err.splitlines() if line.startswith("ftplan_runtime: error:")]
    assert len(lines) == 1, err
    assert "Traceback" not in err
    return lines[0]


def _sft_args(root: Path, **over) -> dict:
    stage = {"id": "sft", "kind": "sft", "data": "prep", "learning_rate": 1e-3, "precision": "fp32",
             "max_steps": 2, "report_to": [], "adapter": {"type": "lora"}}
    doc = {"pipeline": "t", "stage": stage, "model": {"base": "base"},
           "source": {"weights": "base", "tokenizer": "base"}, "data_dir": "out/prep", "output_dir": "out/sft",
           "promise": CPU_PROMISE}
    doc.update(over)
    return doc


# ---------------------------------------------------------------------------------------------- argument errors


def test_usage_without_an_args_file(capsys):
    """No argument: usage on stderr, exit code 2."""
    assert _main([]) == 2
    assert "usage: python -m ftplan_runtime" in capsys.readouterr().err


@pytest.mark.parametrize("content, needle", [
    (None, "cannot read the arguments file"),
    ("{not json", "Invalid JSON"),
    (json.dumps({"format": 1}), "pipeline: Field required"),
    ("FORMAT2", "format: Input should be 1"),
    ("BADRATE", "learning_rate: Input should be greater than 0"),
])
def test_bad_args_file_is_one_line_and_exit_2(tmp_path, capsys, content, needle):
    """Unreadable, malformed or schema-invalid args files: one line naming the problem, exit code 2."""
    path = tmp_path / "args.json"
    if content == "FORMAT2":
        content = json.dumps(_sft_args(tmp_path, format=2))
    elif content == "BADRATE":
        doc = _sft_args(tmp_path)
        doc["stage"]["learning_rate"] = -1
        content = json.dumps(doc)
    if content is not None:
        path.write_text(content)
    assert _main([str(path)]) == 2
    line = _one_line_error(capsys.readouterr().err)
    assert needle in line and str(path) in line


def test_bad_args_from_the_command_line_has_no_traceback(tmp_path):
    """Through `python -m`: exit 2, one line, and no training stack imported for it (fast)."""
    path = tmp_path / "args.json"
    path.write_text("[]")
    proc = subprocess.run([sys.executable, "-m", "ftplan_runtime", str(path)], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 2
    assert "not a valid ftplan arguments file" in _one_line_error(proc.stderr)


def test_stage_failure_is_exit_1_and_clears_a_stale_marker(tmp_path, capsys, monkeypatch):
    """A stage error (data folder missing) is one line with exit 1; an old completion stamp is removed."""
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "out" / "sft"
    out.mkdir(parents=True)
    (out / COMPLETE_MARKER).write_text("stale\n")
    path = tmp_path / "args.json"
    path.write_text(json.dumps(_sft_args(tmp_path)))
    assert _main([str(path)]) == 1
    line = _one_line_error(capsys.readouterr().err)
    assert "stage 'sft'" in line and "run the data stage 'prep' first" in line
    assert not (out / COMPLETE_MARKER).exists()


def _data_args(root: Path, **over) -> dict:
    doc = {"pipeline": "t", "model": {"base": "tok"}, "output_dir": "out/prep", "promise": CPU_PROMISE,
           "stage": {"id": "prep", "kind": "data", "max_seq_len": 64,
                     "datasets": [{"path": "d.jsonl", "format": "text"}]}}
    doc.update(over)
    return doc


def _project(root: Path, monkeypatch) -> dict[str, str]:
    """A data stage and an SFT stage that reads it (``upstream``), as args files; cwd = ``root``."""
    monkeypatch.chdir(root)
    (root / "d.jsonl").write_text('{"text": "hello"}\n')
    (root / "stages/01-prep").mkdir(parents=True)
    (root / "stages/02-sft").mkdir(parents=True)
    (root / "stages/01-prep/args.json").write_text(json.dumps(_data_args(root)))
    sft = _sft_args(root, upstream=[{"stage": "prep", "args": "stages/01-prep/args.json"}])
    (root / "stages/02-sft/args.json").write_text(json.dumps(sft))
    return {"prep": "stages/01-prep/args.json", "sft": "stages/02-sft/args.json"}


def _fake_stage(monkeypatch, calls: list, fail: bool = False):
    """Replace the stage's work: record the call, write an output (or fail)."""
    import ftplan_runtime.__main__ as entry
    from ftplan_runtime.preflight import StageError

    def run(args, sha):
        calls.append(args.stage.id)
        if fail:
            raise StageError("bad row 9")
        Path(args.output_dir, "result.txt").parent.mkdir(parents=True, exist_ok=True)
        Path(args.output_dir, "result.txt").write_text("done")

    monkeypatch.setattr(entry, "run_stage", run)


def test_a_complete_stage_says_so_and_does_nothing(tmp_path, capsys, monkeypatch):
    paths = _project(tmp_path, monkeypatch)
    calls: list = []
    _fake_stage(monkeypatch, calls)
    assert _main([paths["prep"]]) == 0 and calls == ["prep"]
    stamp = json.loads((tmp_path / "out/prep" / COMPLETE_MARKER).read_text())
    assert stamp["args_sha256"] == hashlib.sha256((tmp_path / paths["prep"]).read_bytes()).hexdigest()
    assert list(stamp["inputs"]) == ["d.jsonl"]
    capsys.readouterr()
    assert _main([paths["prep"]]) == 0 and calls == ["prep"]
    assert "stage 'prep' is complete; nothing to do" in capsys.readouterr().err
    (tmp_path / "d.jsonl").write_text('{"text": "hello again"}\n')
    assert _main([paths["prep"]]) == 0 and calls == ["prep", "prep"]
    assert "d.jsonl changed since it last ran" in capsys.readouterr().err


def test_a_stage_refuses_to_run_on_an_incomplete_upstream_stage(tmp_path, capsys, monkeypatch):
    paths = _project(tmp_path, monkeypatch)
    calls: list = []
    _fake_stage(monkeypatch, calls)
    assert _main([paths["sft"]]) == 1 and calls == []
    line = _one_line_error(capsys.readouterr().err)
    assert "stage 'sft': upstream stage prep must run first (it has not run yet)" in line
    assert _main([paths["prep"]]) == 0 and _main([paths["sft"]]) == 0 and calls == ["prep", "sft"]
    (tmp_path / "d.jsonl").write_text("{}\n")  # the data changed: sft must not run on the old output
    capsys.readouterr()
    assert _main([paths["sft"]]) == 1 and calls == ["prep", "sft"]
    assert "upstream stage prep must run first (d.jsonl changed since it last ran)" in capsys.readouterr().err


def test_a_failed_run_removes_the_stamp_first(tmp_path, capsys, monkeypatch):
    from ftplan_runtime.stamps import check

    paths = _project(tmp_path, monkeypatch)
    calls: list = []
    _fake_stage(monkeypatch, calls)
    assert _main([paths["prep"]]) == 0 and _main([paths["sft"]]) == 0
    (tmp_path / "d.jsonl").write_text("{}\n")
    (tmp_path / "out/.prep.tmp-999").mkdir()  # what a killed run left
    _fake_stage(monkeypatch, calls, fail=True)
    assert _main([paths["prep"]]) == 1
    assert not (tmp_path / "out/prep" / COMPLETE_MARKER).exists()
    assert not (tmp_path / "out/.prep.tmp-999").exists()
    assert (tmp_path / "out/prep/result.txt").exists()  # the old output stays, no longer complete
    assert check(paths["prep"]).reason == "its last run did not finish"
    assert check(paths["sft"]).reason == "upstream stage prep must run first (its last run did not finish)"


def test_only_the_main_process_touches_the_stamp(tmp_path, capsys, monkeypatch):
    """Other ranks agree on "complete" and run when the stage must run, but never remove or write the stamp."""
    paths = _project(tmp_path, monkeypatch)
    calls: list = []
    _fake_stage(monkeypatch, calls)
    assert _main([paths["prep"]]) == 0
    stamp = (tmp_path / "out/prep" / COMPLETE_MARKER).read_text()
    monkeypatch.setenv("RANK", "1")
    capsys.readouterr()
    assert _main([paths["prep"]]) == 0 and calls == ["prep"]  # complete: every rank agrees, nothing runs
    assert capsys.readouterr().err == ""
    (tmp_path / "d.jsonl").write_text("{}\n")
    assert _main([paths["prep"]]) == 0 and calls == ["prep", "prep"]
    assert (tmp_path / "out/prep" / COMPLETE_MARKER).read_text() == stamp  # rank 1 neither removes nor writes it


def test_preflight_failure_is_exit_3(tmp_path, capsys, monkeypatch):
    """A plan made for GPUs, run where there are none: exit 3 with promised vs actual."""
    torch = pytest.importorskip("torch")
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    monkeypatch.chdir(tmp_path)
    promise = dict(CPU_PROMISE, device="cuda", precision="bf16", gpu_name="h100-sxm-80gb", gpu_memory_mib=81559)
    path = tmp_path / "args.json"
    doc = _sft_args(tmp_path, promise=promise)
    doc["stage"]["precision"] = "bf16"
    path.write_text(json.dumps(doc))
    assert _main([str(path)]) == 3
    line = _one_line_error(capsys.readouterr().err)
    assert "promised device = cuda" in line and "ftplan compile" in line


# ---------------------------------------------------------------------------------------------- end to end


def _write(root: Path, name: str, args: RuntimeArgs) -> Path:
    path = root / "stages" / name / "args.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(args.model_dump_json(indent=2))
    return path


def _stage(root: Path, name: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, OMP_NUM_THREADS="1")
    env.pop("TRITON_INTERPRET", None)
    return subprocess.run([sys.executable, "-m", "ftplan_runtime", f"stages/{name}/args.json"], cwd=root, env=env,
                          capture_output=True, text=True, timeout=600)


def _run_chain(root: Path, promise: dict, train: dict) -> None:
    """data -> sft -> dpo -> merge, each through `python -m ftplan_runtime stages/NN-id/args.json` in `root`;
    checks every stage's marker and metrics, and that the merged model equals base + the DPO adapter."""
    import torch

    model = {"base": "base"}

    def args(stage, out, source=None, data_dir=None, stage_promise=None):
        return RuntimeArgs.model_validate({"pipeline": "e2e", "stage": stage, "model": model, "source": source,
                                           "data_dir": data_dir, "output_dir": out,
                                           "promise": stage_promise or promise, "estimate_peak_gib": 1.0})

    sft_ref = {"stage": "sft", "path": "outputs/sft/adapter", "type": "lora"}
    dpo_ref = {"stage": "dpo", "path": "outputs/dpo/adapter", "type": "lora"}
    plan = [
        ("01-prep", args({"id": "prep", "kind": "data", "max_seq_len": 256, "val_fraction": 0.1, "datasets": [
            {"path": "data/support-chat.jsonl", "format": "sharegpt", "max_rows": 40},
            {"path": "data/support-prefs.jsonl", "format": "preference", "max_rows": 24}]}, "outputs/prep",
            stage_promise=CPU_PROMISE)),
        ("02-sft", args({"id": "sft", "kind": "sft", "data": "prep", "learning_rate": 2e-3, "max_steps": 6,
                         "eval_steps": 3, "save_steps": 3, "adapter": {"type": "lora", "r": 8}, **train},
                        "outputs/sft", {"weights": "base", "tokenizer": "base"}, "outputs/prep")),
        ("03-dpo", args({"id": "dpo", "kind": "dpo", "input": "sft", "data": "prep", "learning_rate": 5e-3,
                         "max_steps": 3, "adapter": "continue", "reference": "precomputed", **train},
                        "outputs/dpo", {"weights": "base", "tokenizer": "base", "continue_adapter": sft_ref},
                        "outputs/prep")),
        ("04-merge", args({"id": "merge", "kind": "merge", "input": "dpo", "dtype": "fp32"}, "outputs/merge",
                          {"weights": "base", "tokenizer": "base", "merge": [dpo_ref]},
                          stage_promise=dict(promise, precision="fp32", attention="eager", kernels="none"))),
    ]
    for name, stage_args in plan:
        path = _write(root, name, stage_args)
        proc = _stage(root, name)
        assert proc.returncode == 0, f"{name}:\n{proc.stderr[-4000:]}"
        out = root / stage_args.output_dir
        stamp = json.loads((out / COMPLETE_MARKER).read_text())
        assert stamp["args_sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
        metrics = json.loads((out / "metrics.json").read_text())
        assert metrics["stage"] == stage_args.stage.id and metrics["kind"] == stage_args.stage.kind
    sft = json.loads((root / "outputs/sft/metrics.json").read_text())
    assert sft["steps"] == 6 and sft["eval_loss"] is not None and sft["tokens_trained"] > 0

    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    merged = AutoModelForCausalLM.from_pretrained(str(root / "outputs/merge/model"), dtype=torch.float32).eval()
    base = AutoModelForCausalLM.from_pretrained(str(root / "base"), dtype=torch.float32)
    chain = PeftModel.from_pretrained(base, str(root / "outputs/dpo/adapter")).eval()
    ids = torch.tensor([[1, 3, 50, 60, 70, 4, 80]])
    with torch.no_grad():
        torch.testing.assert_close(merged(input_ids=ids).logits, chain(input_ids=ids).logits, atol=1e-4, rtol=1e-4)


def _chain_project(tmp_path_factory, tiny_base: Path, name: str) -> Path:
    root = tmp_path_factory.mktemp(name)
    shutil.copytree(tiny_base, root / "base")
    shutil.copytree(REPO / "examples" / "data", root / "data")
    return root


@pytest.mark.slow
def test_data_sft_dpo_merge_through_the_command_line(tmp_path_factory, tiny_base):
    """Four stages on CPU (fp32), each `python -m ftplan_runtime stages/NN-id/args.json` from the project root;
    every stage leaves metrics.json and a completion stamp with its args file's sha256; the merged model
    equals the base with the DPO adapter (which continued the SFT adapter)."""
    pytest.importorskip("torch")
    root = _chain_project(tmp_path_factory, tiny_base, "e2e")
    _run_chain(root, CPU_PROMISE, {"precision": "fp32", "micro_batch": 2, "logging_steps": 1, "report_to": [],
                                   "gradient_checkpointing": False})
    again = _stage(root, "01-prep")  # a complete stage is not redone
    assert again.returncode == 0 and "stage 'prep' is complete; nothing to do" in again.stderr


@pytest.mark.gpu
def test_gpu_bf16_chain_with_ftplan_kernels(tmp_path_factory, tiny_base):
    """The same chain on a CUDA GPU: bf16, fused AdamW, compiled ftplan kernels, the GPU's real memory as the
    promise; metrics report torch and device peak memory against the estimate."""
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")
    if not torch.cuda.is_bf16_supported():
        pytest.skip("needs a bf16 GPU")
    props = torch.cuda.get_device_properties(0)
    promise = dict(CPU_PROMISE, device="cuda", precision="bf16", kernels="ftplan", gpu_name=props.name,
                   gpu_memory_mib=props.total_memory // 2**20)
    root = _chain_project(tmp_path_factory, tiny_base, "e2e-gpu")
    _run_chain(root, promise, {"precision": "bf16", "kernels": "ftplan", "micro_batch": 2, "logging_steps": 1,
                               "report_to": [], "gradient_checkpointing": True})
    sft = json.loads((root / "outputs/sft/metrics.json").read_text())
    assert sft["kernels"] == {"rms_norm": 5, "swiglu": 2, "rope": 2, "lora": 14}  # 7 LoRA projections × 2 layers
    assert sft["gpu_name"] and sft["torch_peak_allocated_gib"] > 0 and sft["device_used_peak_gib"] > 0
    assert sft["peak_vs_estimate"] == pytest.approx(sft["device_used_peak_gib"] / 1.0)

    bad = json.loads((root / "stages/02-sft/args.json").read_text())
    bad["promise"]["gpu_memory_mib"] = int(props.total_memory // 2**20 * 1.5)
    bad["output_dir"] = "outputs/sft-bad"
    (root / "stages/09-bad").mkdir()
    (root / "stages/09-bad/args.json").write_text(json.dumps(bad))
    proc = _stage(root, "09-bad")
    assert proc.returncode == 3 and "promised GPU memory" in _one_line_error(proc.stderr)
