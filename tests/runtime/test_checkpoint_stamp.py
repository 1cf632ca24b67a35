"""The args stamp of the checkpoints folder under several ranks: rank 0 never leaves it half-written while the
other ranks read it on resume."""

from __future__ import annotations

import threading

from ftplan_runtime.preemption import ARGS_STAMP, guard_checkpoints
from ftplan_runtime.preflight import StageError


def test_resume_with_the_same_args_reads_a_stable_stamp(tmp_path):
    """Rank 0 re-stamping (truncate, then write) while rank 1 reads the stamp made rank 1 see an empty hash and
    refuse the checkpoints as "different stage arguments", leaving rank 0 waiting at the barrier."""
    sha = "a" * 64
    (tmp_path / "checkpoint-2").mkdir()
    (tmp_path / "checkpoint-2" / "trainer_state.json").write_text("{}")
    guard_checkpoints(tmp_path, sha, write=True)
    before = (tmp_path / ARGS_STAMP).stat()
    errors: list[Exception] = []
    stop = threading.Event()

    def other_rank():
        while not stop.is_set():
            try:
                guard_checkpoints(tmp_path, sha, write=False)
            except StageError as e:
                errors.append(e)
                return

    reader = threading.Thread(target=other_rank)
    reader.start()
    try:
        for _ in range(2000):
            guard_checkpoints(tmp_path, sha, write=True)
    finally:
        stop.set()
        reader.join()
    assert not errors, errors[0]
    after = (tmp_path / ARGS_STAMP).stat()
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)


def test_a_new_stamp_is_written_when_no_checkpoint_is_left(tmp_path):
    guard_checkpoints(tmp_path, "a" * 64, write=True)
    guard_checkpoints(tmp_path, "b" * 64, write=True)
    assert (tmp_path / ARGS_STAMP).read_text().strip() == "b" * 64
    assert sorted(p.name for p in tmp_path.iterdir()) == [ARGS_STAMP]
