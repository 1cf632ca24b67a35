"""The data stage's readers: local JSON Lines/JSON/CSV through ``ftplan.data.reading``, Parquet, ``datasets``
folders and hub ids (the row judgement itself is tested without torch in tests/test_data_rows.py)."""

from __future__ import annotations

import json

import pytest

from ftplan_runtime.data import DataError
from ftplan_runtime.data.readers import locate, read_rows, source_digest


# ---- readers ---------------------------------------------------------------------------------------------


def test_jsonl_row_numbers_are_line_numbers_and_bad_lines_are_rows(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "d.jsonl").write_text('{"a": 1}\n\n{"a": 2\n[1, 2]\n{"a": 3}\n', encoding="utf-8")
    got = list(read_rows("d.jsonl"))
    assert [r.number for r in got] == [1, 3, 4, 5]
    assert got[0].value == {"a": 1} and got[3].value == {"a": 3}
    assert got[1].problem.startswith("not valid JSON") and got[2].value == [1, 2]
    assert [r.number for r in read_rows("d.jsonl", max_rows=2)] == [1, 3]


def test_json_csv_parquet_and_dataset_folder(tmp_path, monkeypatch):
    import datasets
    import pyarrow as pa
    import pyarrow.parquet as pq

    monkeypatch.chdir(tmp_path)
    rows = [{"prompt": "Q1", "completion": "A1"}, {"prompt": "Q2", "completion": "A2"}]
    (tmp_path / "a.json").write_text(json.dumps(rows))
    (tmp_path / "b.json").write_text(json.dumps({"data": rows}))
    (tmp_path / "c.csv").write_text("prompt,completion\nQ1,A1\nQ2,A2\n")
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "d.parquet")
    datasets.DatasetDict({"train": datasets.Dataset.from_list(rows),
                          "test": datasets.Dataset.from_list(rows[:1])}).save_to_disk(str(tmp_path / "folder"))
    for path in ("a.json", "b.json", "c.csv", "d.parquet", "folder"):
        assert [(r.number, r.value) for r in read_rows(path)] == [(1, rows[0]), (2, rows[1])], path
    assert [(r.number, r.value) for r in read_rows("folder", split="test")] == [(1, rows[0])]
    with pytest.raises(DataError, match="folder: no split 'dev'; the folder has test, train"):
        list(read_rows("folder", split="dev"))


def test_a_broken_json_file_is_a_data_error_with_its_line(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "a.json").write_text('[{"a": 1},\n {"a": }]')
    with pytest.raises(DataError, match=r"a.json: item 2 \(line 2, column 8\) is not valid JSON"):
        list(read_rows("a.json"))


def test_locate_errors(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(DataError, match="data/missing.jsonl: no such file"):
        locate("data/missing.jsonl")
    with pytest.raises(DataError, match="unsupported file type '.txt'"):
        locate("notes.txt")
    assert locate("org/name") == ("hub", "org/name")
    # a value of no hub id's form: the words `ftplan check` says (FT516, tests/checks/test_data.py)
    from ftplan.data.hub import hub_id_problem

    for value in ("my data", "org/sub/name", "org/-chat"):
        with pytest.raises(DataError) as refused:
            locate(value)
        assert str(refused.value) == (f"'{value}' is not a local file or folder, and not a hub dataset id: "
                                      f"{hub_id_problem(value)}")


def test_source_digest_follows_bytes(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "d.jsonl").write_text('{"a": 1}\n')
    first = source_digest("d.jsonl")
    assert source_digest("d.jsonl") == first
    (tmp_path / "d.jsonl").write_text('{"a": 2}\n')
    assert source_digest("d.jsonl") != first
