"""Fuzz the front end with hypothesis: mutated pipeline files give located diagnostics, never a crash.

The mutations live in ``bench/fuzz.py`` (which runs 10,000+ cases outside the test suite); here hypothesis
draws their choices, so failures shrink to a small edit of the seed pipeline.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st


_spec = importlib.util.spec_from_file_location("ftplan_bench_fuzz", Path(__file__).parents[1] / "bench" / "fuzz.py")
fuzz = importlib.util.module_from_spec(_spec)
sys.modules[_spec.name] = fuzz
_spec.loader.exec_module(fuzz)

FILENAME = fuzz.FILENAME
SETTINGS = dict(deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


TARGET = fuzz.api_check_text
"""What the tests fuzz: the whole ``ftplan check`` path (``fuzz.check_text`` is the front end alone)."""


class DrawChooser:
    """Mutation choices drawn from hypothesis (so failing cases shrink)."""

    def __init__(self, data: st.DataObject):
        self.data = data

    def int(self, lo: int, hi: int) -> int:
        """An integer in ``[lo, hi]``."""
        return self.data.draw(st.integers(lo, hi))


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A project folder holding the local files the seed pipeline refers to."""
    return fuzz.write_root(tmp_path_factory.mktemp("fuzz"))


def assert_located(text: str, root: Path) -> list:
    diags = TARGET(text, root)
    assert fuzz.problems(text, diags) == []
    return diags


def test_seed_is_clean(root):
    assert fuzz.check_text(fuzz.SEED_TEXT, root) == []  # schema-valid; the whole path may still report rules
    assert_located(fuzz.SEED_TEXT, root)


@settings(max_examples=150, **SETTINGS)
@given(st.data())
def test_text_mutations_give_located_diagnostics(root, data):
    chooser = DrawChooser(data)
    text = fuzz.SEED_TEXT
    for _ in range(chooser.int(1, 3)):
        text = fuzz.pick(chooser, fuzz.TEXT_MUTATIONS)(text, chooser)
    assert_located(text, root)


@settings(max_examples=150, **SETTINGS)
@given(st.data())
def test_structure_mutations_give_located_diagnostics(root, data):
    text = fuzz.mutate_structure(DrawChooser(data))
    assert_located(text, root)


@settings(max_examples=60, **SETTINGS)
@given(st.text(alphabet=st.characters(codec="utf-8"), max_size=300))
def test_arbitrary_text_gives_located_diagnostics(root, text):
    assert_located(text, root)


def test_every_truncation_of_the_seed(root):
    text = fuzz.SEED_TEXT
    for end in range(0, len(text), 4):
        assert_located(text[:end], root)
