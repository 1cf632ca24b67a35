"""Helpers shared by the Slurm tests (no tests here): a job's fields from ``scontrol`` and waiting for jobs to end.

The tests load this module by path, since the tests folder is not a package."""

from __future__ import annotations

import subprocess
import time

DONE = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY", "BOOT_FAIL", "DEADLINE"}
"""Job states after which a job never runs again."""


def job(env: dict, job_id: str) -> dict[str, str]:
    """``scontrol show job``'s fields of one job."""
    out = subprocess.run(["scontrol", "show", "job", job_id], env=env, capture_output=True, text=True).stdout
    return dict(tok.split("=", 1) for tok in out.split() if "=" in tok)


def wait_all(env: dict, ids, timeout: float = 120, poll: float = 0.5) -> dict[str, dict[str, str]]:
    """Wait until every job has ended; their fields. Fails the test after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        info = {i: job(env, i) for i in ids}
        if all(v.get("JobState") in DONE for v in info.values()):
            return info
        assert time.monotonic() < deadline, {i: v.get("JobState") for i, v in info.items()}
        time.sleep(poll)
