"""Preemption and resume: save a checkpoint on SIGTERM/SIGUSR1 and ask to be requeued; resume at start.

    with Preemption() as pre:                      # installs the signal handlers, restores them on exit
        trainer.add_callback(PreemptionCallback(pre))
        trainer.train(resume_from_checkpoint=latest_checkpoint(ckpt_dir))
        if pre.stopped_early(trainer.state): raise Requeue(...)   # __main__ exits with REQUEUE_EXIT_CODE

A signal only sets a flag; the callback turns it into "save a checkpoint at this step boundary and stop". With
several processes the flag is OR-ed across ranks at every step, so all ranks stop at the same step even when
only one of them got the signal. A checkpoint counts as complete once its ``trainer_state.json`` (written last
by the Trainer) parses; incomplete ones (a process killed mid-save) are removed before resuming. A checkpoint
taken at the last step (the process died before the final save) is published as the result, not trained on
(with ``load_best_model_at_end``, the best checkpoint it records).

The checkpoints folder records which args file (``ARGS_STAMP``) and which input files (``INPUTS_STAMP``) its
checkpoints were trained with: other arguments are refused (``guard_checkpoints``), other inputs (an edited
dataset, a retrained upstream adapter) retire the checkpoints, so the stage trains again on the new inputs.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
from pathlib import Path

from transformers import TrainerCallback

from .preflight import Requeue, StageError

__all__ = ["ARGS_STAMP", "INPUTS_STAMP", "SIGNALS", "Preemption", "PreemptionCallback", "Requeue", "checkpoint_complete",
           "checkpoint_state", "finished_checkpoint", "guard_checkpoints", "latest_checkpoint", "publish_checkpoint",
           "result_checkpoint", "retire_stale_checkpoints"]

SIGNALS = (signal.SIGTERM, signal.SIGUSR1)
"""Signals that request a checkpoint and a requeue (Slurm preemption, ``--signal=USR1@...`` time limits)."""

ARGS_STAMP = "ARGS_SHA256"
"""File in the checkpoints folder recording which args file wrote the checkpoints."""

INPUTS_STAMP = "INPUTS_SHA256"
"""File in the checkpoints folder recording a digest of the input files the checkpoints were trained from
(``stamps.inputs_sha256``)."""

_CHECKPOINT_RE = re.compile(r"^checkpoint-(\d+)$")


class Preemption:
    """Signal handlers for ``SIGNALS`` that only record which signal arrived (a context manager)."""

    def __init__(self) -> None:
        self.signal: int | None = None
        self._previous: dict[int, object] = {}

    def __enter__(self) -> Preemption:
        for sig in SIGNALS:
            self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()

    def _handle(self, signum, frame) -> None:
        self.signal = signum

    @property
    def requested(self) -> bool:
        """Whether this process received a preemption signal."""
        return self.signal is not None


class PreemptionCallback(TrainerCallback):
    """At each step end: if any rank was signalled, save a checkpoint now and stop training."""

    def __init__(self, preemption: Preemption):
        self.preemption = preemption
        self.stopped_at: int | None = None

    def on_step_end(self, args, state, control, **kwargs):
        """Turn a pending signal into should_save + should_training_stop (agreed across ranks)."""
        if _any_rank(self.preemption.requested, args):
            control.should_save = True
            control.should_training_stop = True
            self.stopped_at = state.global_step
        return control

    def stopped_early(self, state) -> bool:
        """True when training stopped for a signal before reaching its last step."""
        return self.stopped_at is not None and state.global_step < state.max_steps


def _any_rank(flag: bool, args) -> bool:
    import torch
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return flag
    t = torch.tensor([1 if flag else 0], device=args.device, dtype=torch.int32)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item())


def checkpoint_complete(path: Path) -> bool:
    """Whether a Trainer checkpoint folder was fully written (its trainer_state.json parses)."""
    state = path / "trainer_state.json"
    try:
        json.loads(state.read_text())
    except (OSError, ValueError):
        return False
    return True


def latest_checkpoint(ckpt_dir: str | Path, *, remove_incomplete: bool = False) -> str | None:
    """Path of the newest complete ``checkpoint-N`` in ``ckpt_dir`` (None if there is none).

    With ``remove_incomplete`` (main process only), folders newer than it that were not fully written are
    deleted, so checkpoint rotation never counts them.
    """
    root = Path(ckpt_dir)
    if not root.is_dir():
        return None
    found = sorted(((int(m.group(1)), p) for p in root.iterdir()
                    if p.is_dir() and (m := _CHECKPOINT_RE.match(p.name))), reverse=True)
    for _, path in found:
        if checkpoint_complete(path):
            return str(path)
        if remove_incomplete:
            shutil.rmtree(path, ignore_errors=True)
    return None


def guard_checkpoints(ckpt_dir: str | Path, sha256: str, *, write: bool) -> None:
    """Refuse to resume checkpoints written by a different args file; stamp the folder with this one's hash."""
    root = Path(ckpt_dir)
    stamp = root / ARGS_STAMP
    old = None
    if stamp.is_file():
        old = stamp.read_text().strip()
        if old != sha256 and latest_checkpoint(root) is not None:
            raise StageError(
                f"{root} holds checkpoints written with different stage arguments (args sha256 {old[:12]}…, now "
                f"{sha256[:12]}…); resuming them would mix two configurations. Delete {root} to start this stage "
                "over, or restore the previous args.json to resume")
    if write and old != sha256:
        # atomic, and only when it changes: the other ranks read the stamp at the same time
        root.mkdir(parents=True, exist_ok=True)
        tmp = root / f".{ARGS_STAMP}.tmp"
        tmp.write_text(sha256 + "\n")
        os.replace(tmp, stamp)


def retire_stale_checkpoints(ckpt_dir: str | Path, inputs_sha256: str) -> list[str]:
    """Main process, before training starts: remove the checkpoints trained from other input files (a changed
    dataset, tokenizer, base model or upstream output), so the stage trains again instead of resuming them or
    publishing a finished one; then record ``inputs_sha256``. Returns the removed checkpoint names.

    Checkpoints written with other *arguments* are left to ``guard_checkpoints``, which refuses them; those of a
    runtime that recorded no inputs are kept."""
    root = Path(ckpt_dir)
    stamp = root / INPUTS_STAMP
    try:
        old: str | None = stamp.read_text().strip()
    except OSError:
        old = None
    if old == inputs_sha256:
        return []
    removed: list[str] = []
    if old is not None and root.is_dir():
        for path in sorted(root.iterdir()):
            if path.is_dir() and _CHECKPOINT_RE.match(path.name):
                shutil.rmtree(path)
                removed.append(path.name)
    root.mkdir(parents=True, exist_ok=True)
    tmp = root / f".{INPUTS_STAMP}.tmp"
    tmp.write_text(inputs_sha256 + "\n")
    os.replace(tmp, stamp)
    return removed


# Top-level files of a Trainer checkpoint that make up the trained weights (the rest is optimizer/RNG state).
_WEIGHT_FILES = ("adapter_config.json", "config.json", "generation_config.json")
_WEIGHT_SUFFIXES = (".safetensors", ".safetensors.index.json")


def checkpoint_state(path: str | Path) -> dict:
    """The ``trainer_state.json`` of a checkpoint."""
    return json.loads((Path(path) / "trainer_state.json").read_text())


def finished_checkpoint(path: str | Path | None) -> bool:
    """Whether a checkpoint was written at the run's last step (nothing is left to train).

    Resuming such a checkpoint with ``Trainer.train`` would run one step past ``max_steps`` when the run ends
    mid-epoch, so the runtime publishes its weights instead."""
    if path is None:
        return False
    state = checkpoint_state(path)
    return 0 < int(state.get("max_steps") or 0) <= int(state.get("global_step") or 0)


def result_checkpoint(path: str | Path, *, best: bool) -> str:
    """The checkpoint whose weights are the run's result: ``path`` (the last one), or with ``best``
    (``load_best_model_at_end``) the best one it records, as ``Trainer.train`` would have loaded at the end."""
    step = checkpoint_state(path).get("best_global_step") if best else None
    if step:
        candidate = Path(path).parent / f"checkpoint-{int(step)}"
        if not checkpoint_complete(candidate):
            raise StageError(f"the best checkpoint (step {step}) recorded in {path} is missing or incomplete; "
                             f"delete {Path(path).parent} to train this stage again")
        return str(candidate)
    return str(path)


def publish_checkpoint(path: str | Path, dest: str | Path) -> None:
    """Copy a checkpoint's weight files (adapter or full model, not optimizer state) into ``dest``."""
    src, dest = Path(path), Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    for f in sorted(src.iterdir()):
        if f.is_file() and (f.name in _WEIGHT_FILES or f.name.endswith(_WEIGHT_SUFFIXES)):
            shutil.copyfile(f, dest / f.name)
