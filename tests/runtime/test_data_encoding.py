"""Text encodings of JSON/JSONL/CSV datasets: a UTF-8 byte-order mark is skipped; other encodings fail with one
clear message instead of a traceback."""

from __future__ import annotations

import pytest

from ftplan_runtime.data.errors import DataError
from ftplan_runtime.data.readers import read_rows

BOM = b"\xef\xbb\xbf"


def test_csv_with_a_byte_order_mark_keeps_its_first_column_name(tmp_path):
    """Spreadsheet programs save "UTF-8 CSV" with a BOM, which otherwise sticks to the first header
    ('\\ufeffinstruction') and makes every row miss its `instruction` field."""
    path = tmp_path / "d.csv"
    path.write_bytes(BOM + b"instruction,output\nhi,there\n")
    assert list(read_rows(str(path))) == [(1, {"instruction": "hi", "output": "there"})]


@pytest.mark.parametrize("name, body", [("d.jsonl", b'{"text": "a"}\n{"text": "b"}\n'),
                                        ("d.json", b'[{"text": "a"}, {"text": "b"}]')])
def test_json_with_a_byte_order_mark_reads_every_row(tmp_path, name, body):
    path = tmp_path / name
    path.write_bytes(BOM + body)
    assert list(read_rows(str(path))) == [(1, {"text": "a"}), (2, {"text": "b"})]


@pytest.mark.parametrize("name, body", [("d.jsonl", b'{"text": "caf\xe9"}\n'), ("d.csv", b"text\ncaf\xe9\n"),
                                        ("d.json", b'[{"text": "caf\xe9"}]')])
def test_a_file_that_is_not_utf8_is_a_data_error(tmp_path, name, body):
    path = tmp_path / name
    path.write_bytes(body)
    with pytest.raises(DataError, match="not UTF-8 text.*convert the file to UTF-8"):
        list(read_rows(str(path)))
