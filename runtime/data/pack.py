"""Padding-free best-fit-decreasing packing of supervised examples into rows of at most ``max_seq_len`` tokens.

Examples are taken longest first (ties by original order) and each goes into the open row with the least room
that still fits it (ties: the row opened first), or a new row. A segment tree over "room left" makes each step
O(log max_seq_len). Each packed row keeps ``seq_lengths``, the lengths of the examples in it, from which TRL's
``DataCollatorForLanguageModeling(padding_free=True)`` restarts position ids at every example boundary.
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass

from .tokenize import SftExample


class _RoomTree:
    """Counts of rows by room left (0..capacity); finds the smallest room >= a length."""

    def __init__(self, capacity: int) -> None:
        self.size = 1
        while self.size < capacity + 1:
            self.size *= 2
        self.count = [0] * (2 * self.size)

    def add(self, room: int, delta: int) -> None:
        i = room + self.size
        while i:
            self.count[i] += delta
            i //= 2

    def smallest_at_least(self, need: int) -> int | None:
        return self._find(1, 0, self.size - 1, need)

    def _find(self, node: int, lo: int, hi: int, need: int) -> int | None:
        if hi < need or self.count[node] == 0:
            return None
        if lo == hi:
            return lo
        mid = (lo + hi) // 2
        left = self._find(2 * node, lo, mid, need)
        return left if left is not None else self._find(2 * node + 1, mid + 1, hi, need)


def pack_bfd(lengths: list[int], capacity: int) -> list[list[int]]:
    """Best-fit-decreasing: the indices of ``lengths`` in each row, rows in the order they were opened."""
    rows: list[list[int]] = []
    tree = _RoomTree(capacity)
    by_room: dict[int, list[int]] = {}  # room left -> heap of row numbers
    for i in sorted(range(len(lengths)), key=lambda k: (-lengths[k], k)):
        length = lengths[i]
        if not 1 <= length <= capacity:
            raise ValueError(f"sequence {i} has {length} tokens; packing needs 1..{capacity}")
        room = tree.smallest_at_least(length)
        if room is None:
            row, room = len(rows), capacity
            rows.append([])
        else:
            row = heapq.heappop(by_room[room])
            tree.add(room, -1)
        rows[row].append(i)
        left = room - length
        if left > 0:
            heapq.heappush(by_room.setdefault(left, []), row)
            tree.add(left, 1)
    return rows


@dataclass(frozen=True)
class PackedRow:
    """One packed row."""

    input_ids: list[int]
    """Concatenated token ids."""
    completion_mask: list[int]
    """Concatenated completion masks."""
    seq_lengths: list[int]
    """Length of each example in the row, in order; they sum to ``len(input_ids)``."""


def pack_examples(examples: list[SftExample], capacity: int) -> list[PackedRow]:
    """Pack supervised examples (each at most ``capacity`` tokens) into rows of at most ``capacity`` tokens."""
    out = []
    for members in pack_bfd([len(e.input_ids) for e in examples], capacity):
        ids: list[int] = []
        mask: list[int] = []
        for i in members:
            ids.extend(examples[i].input_ids)
            mask.extend(examples[i].completion_mask)
        out.append(PackedRow(ids, mask, [len(examples[i].input_ids) for i in members]))
    return out
