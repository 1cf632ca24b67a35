"""Preemption and resume: a killed stage resumes from its newest checkpoint and ends where an uninterrupted run
ends; SIGUSR1 writes a checkpoint and exits with REQUEUE_EXIT_CODE."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
datasets = pytest.importorskip("datasets")

from ftplan.schemas.runtime_args import COMPLETE_MARKER, REQUEUE_EXIT_CODE, RuntimeArgs  # noqa: E402


@pytest.fixture(scope="module")
def project(tmp_path_factory, tiny_base, sft_rows):
    """Tiny base and 120 tokenized SFT rows (one epoch = 60 steps of 2 rows)."""
    from transformers import AutoTokenizer

    base = tiny_base
    root = tmp_path_factory.mktemp("resume")
    tok = AutoTokenizer.from_pretrained(str(base))
    datasets.Dataset.from_dict(sft_rows(tok, 120, seed=0)).save_to_disk(str(root / "data" / "sft" / "train"))
    return {"root": root, "base": base}


def _write_args(project, out: str, **stage) -> Path:
    base = str(project["base"])
    fields = {"id": "sft", "kind": "sft", "data": "prep", "learning_rate": 1e-2, "precision": "fp32",
              "max_steps": 60, "micro_batch": 2, "logging_steps": 1, "save_steps": 2, "save_total_limit": 2,
              "report_to": [], "gradient_checkpointing": False, "seed": 7,
              "adapter": {"type": "lora", "r": 8, "alpha": 16, "dropout": 0.1}}
    fields.update(stage)
    args = RuntimeArgs.model_validate({
        "pipeline": "t", "stage": fields, "model": {"base": base},
        "source": {"weights": base, "tokenizer": base}, "data_dir": "data", "output_dir": out,
        "promise": {"device": "cpu", "world_size": 1, "num_machines": 1, "distributed_type": "NO",
                    "precision": "fp32", "attention": "sdpa", "kernels": "none"}})
    path = project["root"] / f"{out}.json"
    path.write_text(args.model_dump_json(indent=2))
    return path


def _env() -> dict[str, str]:
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    env.pop("TRITON_INTERPRET", None)
    return env


def _start(project, args_path: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "ftplan_runtime", str(args_path)], cwd=project["root"],
                            env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def _run(project, args_path: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "ftplan_runtime", str(args_path)], cwd=project["root"],
                          env=_env(), capture_output=True, text=True, timeout=300)


def _adapter(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(path / "adapter" / "adapter_model.safetensors"))


def _wait_for_checkpoint(ckpt_dir: Path, min_step: int, proc: subprocess.Popen, timeout: float = 120) -> int:
    from ftplan_runtime.preemption import latest_checkpoint

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        latest = latest_checkpoint(ckpt_dir)
        if latest is not None and int(latest.rsplit("-", 1)[1]) >= min_step:
            return int(latest.rsplit("-", 1)[1])
        if proc.poll() is not None:
            raise AssertionError(f"the run ended (code {proc.returncode}) before checkpoint {min_step}:\n"
                                 + proc.stderr.read()[-3000:])
        time.sleep(0.02)
    raise AssertionError(f"no checkpoint >= {min_step} within {timeout}s")


@pytest.mark.slow
def test_sigkill_then_rerun_resumes_and_matches_an_uninterrupted_run(project):
    """SIGKILL after a checkpoint exists; the same command resumes from it and ends with the same adapter."""
    root = project["root"]
    clean = _run(project, _write_args(project, "out-clean"))
    assert clean.returncode == 0, clean.stderr[-3000:]

    args_path = _write_args(project, "out-killed")
    proc = _start(project, args_path)
    step = _wait_for_checkpoint(root / "out-killed" / "checkpoints", 4, proc)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL, "the run finished before it could be killed"
    assert not (root / "out-killed" / COMPLETE_MARKER).exists()
    assert not (root / "out-killed" / "adapter").exists()

    rerun = _run(project, args_path)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    metrics = json.loads((root / "out-killed" / "metrics.json").read_text())
    assert metrics["resumed_from_step"] >= step and metrics["steps"] == 60
    assert json.loads((root / "out-killed" / COMPLETE_MARKER).read_text())["args_sha256"] == \
        __import__("hashlib").sha256(args_path.read_bytes()).hexdigest()

    want, got = _adapter(root / "out-clean"), _adapter(root / "out-killed")
    assert want.keys() == got.keys() and want
    for key in want:
        torch.testing.assert_close(got[key], want[key], atol=1e-5, rtol=1e-4, msg=key)
    first = next(iter(want.values()))
    assert first.abs().max() > 0


@pytest.mark.slow
def test_sigusr1_saves_a_checkpoint_and_exits_for_requeue(project):
    """SIGUSR1 mid-training: a complete checkpoint at the current step, exit code 75, no completion marker."""
    from ftplan_runtime.preemption import latest_checkpoint

    root = project["root"]
    args_path = _write_args(project, "out-usr1", save_steps=None, max_steps=400)
    proc = _start(project, args_path)
    for line in proc.stderr:  # progress lines: training has started
        if line.startswith("[sft] step 3/"):
            break
    proc.send_signal(signal.SIGUSR1)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == REQUEUE_EXIT_CODE, err[-3000:]
    assert "checkpoint saved" in err and "Traceback" not in err
    latest = latest_checkpoint(root / "out-usr1" / "checkpoints")
    assert latest is not None and 3 <= int(latest.rsplit("-", 1)[1]) < 400
    assert (Path(latest) / "adapter_model.safetensors").is_file() and (Path(latest) / "optimizer.pt").is_file()
    assert not (root / "out-usr1" / COMPLETE_MARKER).exists()


def test_latest_checkpoint_skips_and_removes_incomplete_ones(tmp_path):
    """A checkpoint without a parseable trainer_state.json (killed mid-save) is never resumed from."""
    from ftplan_runtime.preemption import latest_checkpoint

    for step, state in ((2, "{}"), (4, "{}"), (6, '{"trunc')):
        d = tmp_path / f"checkpoint-{step}"
        d.mkdir()
        (d / "trainer_state.json").write_text(state)
    (tmp_path / "checkpoint-8").mkdir()
    assert latest_checkpoint(tmp_path).endswith("checkpoint-4")
    assert (tmp_path / "checkpoint-6").exists()
    assert latest_checkpoint(tmp_path, remove_incomplete=True).endswith("checkpoint-4")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint-2", "checkpoint-4"]
    assert latest_checkpoint(tmp_path / "absent") is None


def test_checkpoints_from_other_arguments_are_not_resumed(tmp_path):
    """Changed stage arguments + old checkpoints: a clear error instead of a silently mixed run."""
    from ftplan_runtime.preemption import guard_checkpoints
    from ftplan_runtime.preflight import StageError

    guard_checkpoints(tmp_path, "a" * 64, write=True)
    (tmp_path / "checkpoint-2").mkdir()
    (tmp_path / "checkpoint-2" / "trainer_state.json").write_text("{}")
    guard_checkpoints(tmp_path, "a" * 64, write=True)
    with pytest.raises(StageError, match="different stage arguments"):
        guard_checkpoints(tmp_path, "b" * 64, write=True)


def test_a_checkpoint_at_the_last_step_is_published_not_trained_past(project):
    """Killed after the last checkpoint but before the final save: the rerun publishes that checkpoint's
    weights (Trainer.train would run one step past max_steps when resuming it mid-epoch)."""
    import shutil

    from ftplan_runtime.sft import run_sft

    args = RuntimeArgs.model_validate_json(_write_args(project, "out-last", max_steps=4).read_text())
    args = args.model_copy(update={"data_dir": str(project["root"] / "data"),
                                   "output_dir": str(project["root"] / "out-last")})
    first = run_sft(args, "c" * 64)
    out = Path(args.output_dir)
    want = _adapter(out)
    shutil.rmtree(out / "adapter")
    (out / "metrics.json").unlink()
    again = run_sft(args, "c" * 64)
    assert again["steps"] == first["steps"] == 4 and again["resumed_from_step"] == 4
    assert again["loss_last"] == first["loss_last"] and again["tokens_trained"] == 0
    got = _adapter(out)
    assert want.keys() == got.keys()
    assert all(torch.equal(want[k], got[k]) for k in want)
    assert (out / "adapter" / "tokenizer.json").is_file() and not (out / "adapter" / "optimizer.pt").exists()


def test_checkpoints_trained_from_other_inputs_are_retired(tmp_path):
    """Checkpoints of a run over other input files (an edited dataset, a retrained upstream adapter) are removed
    before training, so a rerun trains on the new inputs instead of resuming or publishing the old run."""
    from ftplan_runtime.preemption import INPUTS_STAMP, retire_stale_checkpoints

    ckpt = tmp_path / "checkpoints"
    (ckpt / "checkpoint-2").mkdir(parents=True)
    assert retire_stale_checkpoints(ckpt, "a" * 64) == []  # no record (an older runtime): kept
    assert (ckpt / "checkpoint-2").is_dir() and (ckpt / INPUTS_STAMP).read_text().strip() == "a" * 64
    assert retire_stale_checkpoints(ckpt, "a" * 64) == []  # the same inputs: resumed later
    (ckpt / "checkpoint-4").mkdir()
    (ckpt / "ARGS_SHA256").write_text("c" * 64)
    assert retire_stale_checkpoints(ckpt, "b" * 64) == ["checkpoint-2", "checkpoint-4"]
    assert sorted(p.name for p in ckpt.iterdir()) == ["ARGS_SHA256", INPUTS_STAMP]
    assert (ckpt / INPUTS_STAMP).read_text().strip() == "b" * 64
