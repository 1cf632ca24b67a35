"""mypy --strict over ftplan/ is part of the test command: pyproject's ``[tool.mypy]`` (strict, files = ftplan) run
as ``python -m mypy`` from the project root, failing with mypy's report. About 10 s with a cold cache (the cache
goes to a temporary folder, so a stale one never hides an error)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def test_ftplan_passes_mypy_strict(tmp_path: Path) -> None:
    proc = subprocess.run([sys.executable, "-m", "mypy", "--cache-dir", str(tmp_path / "mypy-cache")], cwd=ROOT,
                          capture_output=True, text=True, timeout=600)
    report = proc.stdout + proc.stderr
    assert "No module named mypy" not in report, "mypy is missing: install the dev extra (make setup)"
    assert proc.returncode == 0, f"mypy --strict finds errors in ftplan/ (pyproject's [tool.mypy]):\n{report}"
    assert report.startswith("Success: no issues found in "), report


def test_the_mypy_configuration_is_strict_on_the_compiler() -> None:
    """The test above is only as strong as the configuration it reads."""
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["mypy"]
    assert config["strict"] is True
    assert config["files"] == ["ftplan"]
    assert not config.get("ignore_errors") and not config.get("ignore_missing_imports")


def test_every_type_ignore_names_its_error_and_why() -> None:
    """Targeted ignores only, each with the error code it silences and the reason (a third-party stub's gap)."""
    bare = []
    for path in sorted((ROOT / "ftplan").rglob("*.py")):
        for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if "type: ignore" in line and not re.search(r"# type: ignore\[[a-z-]+(, [a-z-]+)*\]  # \S", line):
                bare.append(f"{path.relative_to(ROOT)}:{n}: {line.strip()}")
    assert not bare, "\n".join(bare)
