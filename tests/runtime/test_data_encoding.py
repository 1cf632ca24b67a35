"""Text encodings of JSON/JSONL/CSV datasets: a UTF-8 byte-order mark is skipped; other encodings are named at
their line (and column) instead of a traceback or a byte offset of a read block."""

from __future__ import annotations

import pytest

from ftplan_runtime.data.errors import DataError
from ftplan_runtime.data.readers import read_rows

BOM = b"\xef\xbb\xbf"


def values(path):
    return [(r.number, r.value) for r in read_rows(str(path))]


def test_csv_with_a_byte_order_mark_keeps_its_first_column_name(tmp_path):
    """Spreadsheet programs save "UTF-8 CSV" with a BOM, which otherwise sticks to the first header
    ('\\ufeffinstruction') and makes every row miss its `instruction` field."""
    path = tmp_path / "d.csv"
    path.write_bytes(BOM + b"instruction,output\nhi,there\n")
    assert values(path) == [(1, {"instruction": "hi", "output": "there"})]


@pytest.mark.parametrize("name, body", [("d.jsonl", b'{"text": "a"}\n{"text": "b"}\n'),
                                        ("d.json", b'[{"text": "a"}, {"text": "b"}]')])
def test_json_with_a_byte_order_mark_reads_every_row(tmp_path, name, body):
    path = tmp_path / name
    path.write_bytes(BOM + body)
    assert values(path) == [(1, {"text": "a"}), (2, {"text": "b"})]


@pytest.mark.parametrize("name, body, problem", [
    ("d.jsonl", b'{"text": "a"}\n' * 5001 + b'{"text": "caf\xe9"}\n', "not UTF-8 text (byte 0xe9 at column 14)"),
    ("d.csv", b"text\n" + b"a\n" * 5000 + b"caf\xe9\n", "column 'text' is not UTF-8 text"),
])
def test_a_row_that_is_not_utf8_is_named_by_its_line(tmp_path, name, body, problem):
    """Not the byte offset of a read block: the line, and the rows around it are still read."""
    path = tmp_path / name
    path.write_bytes(body + (b'{"text": "z"}\n' if name.endswith("jsonl") else b"z\n"))
    rows = list(read_rows(str(path)))
    bad = [r for r in rows if r.problem]
    assert len(bad) == 1 and bad[0].line == 5002 and problem in bad[0].problem
    assert len(rows) == 5003 - name.endswith("csv")


def test_a_json_file_that_is_not_utf8_names_line_and_column(tmp_path):
    path = tmp_path / "d.json"
    path.write_bytes(b'[{"text": "a"},\n {"text": "caf\xe9"}]')
    with pytest.raises(DataError, match=r"line 2, column 15 is not UTF-8 text \(byte 0xe9\)"):
        list(read_rows(str(path)))
