"""The streaming row reader (``ftplan.data.reading``): what it yields never depends on where its read buffer
cuts the file, and every problem names its line."""

from __future__ import annotations

import json

import pytest

from ftplan.data import reading
from ftplan.data.reading import FileProblem, count_rows, read_rows

CASES = {
    "list.json": json.dumps([{"text": "a" * 50, "n": 1e308}, {"text": "é", "n": -12.5e-3}, [1, 2], "x", None],
                            indent=2, ensure_ascii=False),
    "wrapped.json": json.dumps({"rows": [{"text": "a"}, {"text": "b\nc"}]}, indent=1),
    "lines.json": '{"text": "a"}\n{"text": "b"}\n\n{"text": "c"}\n',
    "one-line.json": '{"data": [{"text": "a"}, {"text": "b"}]}',
    "broken.json": '[{"text": "a"},\n {"text": "b"},\n {"text": }]',
    "not-utf8.json": b'[{"text": "a"},\n {"text": "b"},\n {"text": "caf\xe9"}]',
    "trailing.json": '[{"text": "a"}] x',
    "two-keys.json": '{\n "a": [{"text": "a"}],\n "b": []\n}',
    "one-line-then-text.json": '\n\n  {"data": [{"text": "a"}, 1e5]}\nx',
    "spaced.json": '   \n\n   [ {"text": "a"} ,\n\n {"text": "b"}  ]  \n',
}


def outcome(path):
    rows, problem = [], None
    try:
        for r in read_rows(path):
            rows.append((r.number, r.line, r.value, r.problem))
    except FileProblem as e:
        problem = str(e)
    return rows, problem


@pytest.mark.parametrize("name", sorted(CASES))
def test_the_result_does_not_depend_on_the_read_chunk(name, tmp_path, monkeypatch):
    path = tmp_path / name
    data = CASES[name]
    path.write_bytes(data if isinstance(data, bytes) else data.encode())
    expected = outcome(path)
    for chunk in (1, 2, 3, 5, 8, 13, 64):
        monkeypatch.setattr(reading, "_CHUNK", chunk)
        assert outcome(path) == expected, chunk


def test_json_rows_carry_their_lines_and_problems_their_position(tmp_path):
    for name in ("list.json", "broken.json", "not-utf8.json", "trailing.json", "two-keys.json"):
        data = CASES[name]
        (tmp_path / name).write_bytes(data if isinstance(data, bytes) else data.encode())
    rows, problem = outcome(tmp_path / "list.json")
    assert [(n, line) for n, line, _, _ in rows] == [(1, 2), (2, 6), (3, 10), (4, 14), (5, 15)]
    assert rows[0][2]["n"] == 1e308 and rows[1][2] == {"text": "é", "n": -12.5e-3} and problem is None
    rows, problem = outcome(tmp_path / "broken.json")
    assert len(rows) == 2 and problem == ("item 3 (line 3, column 11) is not valid JSON: Expecting value; the rest "
                                          "of the file cannot be read")
    rows, problem = outcome(tmp_path / "not-utf8.json")
    assert len(rows) == 2 and problem == "line 3, column 15 is not UTF-8 text (byte 0xe9); save the file as UTF-8"
    assert outcome(tmp_path / "trailing.json")[1] == "line 1, column 17: unexpected text after the list of rows"
    assert "exactly one list of rows" in outcome(tmp_path / "two-keys.json")[1]


def test_count_rows_counts_non_blank_json_lines_only(tmp_path):
    (tmp_path / "a.jsonl").write_text('{"a": 1}\n\n  \n{"a": 2}\n{"a": 3}')
    assert count_rows(tmp_path / "a.jsonl") == 3
    (tmp_path / "a.json").write_text("[]")
    assert count_rows(tmp_path / "a.json") is None
