"""Data stage: best-fit-decreasing packing and the deterministic train/validation split."""

from __future__ import annotations

import math
import random

import pytest

from ftplan_runtime.data import DataError
from ftplan_runtime.data.output import split_indices
from ftplan_runtime.data.pack import pack_bfd, pack_examples
from ftplan_runtime.data.tokenize import SftExample


def test_bfd_matches_a_hand_worked_example():
    # longest first: 5 opens A (room 3); 4 opens B (room 4); 3 -> A (best fit, room 0); 3 -> B (room 1);
    # 2 opens C (room 6); 2 -> C (room 4); 1 -> B (the tightest room that fits, room 0)
    assert pack_bfd([5, 4, 3, 3, 2, 2, 1], 8) == [[0, 2], [1, 3, 6], [4, 5]]


def test_bfd_ties_go_to_the_earliest_row_and_original_order():
    assert pack_bfd([2, 2, 2, 2], 4) == [[0, 1], [2, 3]]
    assert pack_bfd([3, 3, 1, 1], 4) == [[0, 2], [1, 3]]


def test_bfd_invariants_on_random_lengths():
    rng = random.Random(0)
    for capacity in (16, 100, 1000):
        lengths = [rng.randint(1, capacity) for _ in range(300)]
        rows = pack_bfd(lengths, capacity)
        assert sorted(i for r in rows for i in r) == list(range(len(lengths)))
        assert all(sum(lengths[i] for i in r) <= capacity for r in rows)
        assert len(rows) >= math.ceil(sum(lengths) / capacity)
        # no two rows could be merged: a row is opened only for an item that fits no earlier row
        rooms = sorted(capacity - sum(lengths[i] for i in r) for r in rows)
        assert len(rows) < 2 or rooms[-1] + rooms[-2] < capacity
        assert pack_bfd(lengths, capacity) == rows


def test_bfd_rejects_sequences_that_do_not_fit():
    with pytest.raises(ValueError, match="sequence 1 has 9 tokens"):
        pack_bfd([3, 9], 8)


def test_pack_examples_keeps_every_token_and_mask():
    examples = [SftExample([10 * k + j for j in range(n)], [j % 2 for j in range(n)])
                for k, n in enumerate([5, 4, 3, 3, 2, 2, 1])]
    rows = pack_examples(examples, 8)
    assert all(len(r.input_ids) <= 8 and sum(r.seq_lengths) == len(r.input_ids) for r in rows)
    assert [r.seq_lengths for r in rows] == [[5, 3], [4, 3, 1], [2, 2]]
    pieces = []
    for r in rows:
        start = 0
        for n in r.seq_lengths:
            pieces.append((tuple(r.input_ids[start:start + n]), tuple(r.completion_mask[start:start + n])))
            start += n
    assert sorted(pieces) == sorted((tuple(e.input_ids), tuple(e.completion_mask)) for e in examples)


def test_split_sizes_determinism_and_seed():
    train, val = split_indices(100, 0.1, seed=42)
    assert len(val) == 10 and len(train) == 90
    assert sorted(train + val) == list(range(100))
    assert train == sorted(train) and val == sorted(val)
    assert split_indices(100, 0.1, seed=42) == (train, val)
    assert split_indices(100, 0.1, seed=7)[1] != val
    assert split_indices(5, 0.0, seed=1) == ([0, 1, 2, 3, 4], [])
    assert len(split_indices(5, 0.01, seed=1)[1]) == 1  # at least one validation row


def test_split_needs_a_training_row():
    with pytest.raises(DataError, match="only 1 example"):
        split_indices(1, 0.2, seed=0)
