"""Fuzz the dataset reader in CI: mutated data files give row or file problems with a position, never a
traceback, and the runtime's reader and ``ftplan check`` judge them alike (``bench/fuzz_data.py`` runs 10,000+
cases outside the suite)."""

from __future__ import annotations

import importlib.util
import random
import sys
from pathlib import Path

import pytest

pytest.importorskip("ftplan_runtime.data.readers")

_spec = importlib.util.spec_from_file_location("ftplan_bench_fuzz_data",
                                               Path(__file__).parents[1] / "bench" / "fuzz_data.py")
fuzz = importlib.util.module_from_spec(_spec)
sys.modules[_spec.name] = fuzz
_spec.loader.exec_module(fuzz)


@pytest.mark.parametrize("seed", range(4))
def test_mutated_data_files_never_crash_and_check_agrees_with_the_runtime(seed, tmp_path):
    rng = random.Random(seed)
    outcomes = {"clean": 0, "problems": 0}
    for _ in range(100):
        fmt, container, data, chunk = fuzz.make_case(fuzz.Chooser(rng))
        outcomes[fuzz.run_case(fmt, container, data, tmp_path, chunk)] += 1
    assert outcomes["clean"] and outcomes["problems"]  # the mutations reach both outcomes


def test_the_fuzzer_catches_a_disagreement(tmp_path, monkeypatch):
    """A runtime that judged rows differently from check must be caught, or the fuzz proves nothing."""
    import ftplan.data.scan as scan

    original = scan.convert_row
    calls = {"n": 0}

    def flaky(spec, value):
        calls["n"] += 1
        return original(spec, {} if calls["n"] == 1 else value)

    monkeypatch.setattr(scan, "convert_row", flaky)
    fmt, container, data, _ = "text", "jsonl", b'{"text": "a"}\n{"text": "b"}\n', 4096
    with pytest.raises(AssertionError, match="runtime and check disagree"):
        fuzz.run_case(fmt, container, data, tmp_path)
