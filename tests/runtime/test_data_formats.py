"""Data stage: reading files and turning each format's rows into canonical records (no tokenizer needed)."""

from __future__ import annotations

import json

import pytest
from pydantic import TypeAdapter

from ftplan.schemas.datasets import DatasetSpec
from ftplan_runtime.data import BadRow, DataError
from ftplan_runtime.data.formats import Conversation, Pair, Text, Unpaired, group_of, to_record
from ftplan_runtime.data.readers import locate, read_rows, source_digest

SPEC = TypeAdapter(DatasetSpec)


def spec(**kw):
    return SPEC.validate_python({"path": "x.jsonl", **kw})


def turns(*pairs):
    return [{"role": r, "content": c} for r, c in pairs]


# ---- formats ---------------------------------------------------------------------------------------------


def test_alpaca_with_system_and_input():
    row = {"instruction": "Sum these.", "input": "3 and 3", "output": "6", "system": "Be brief."}
    rec = to_record(spec(format="alpaca"), row, 1)
    assert rec == Conversation(turns(("system", "Be brief."), ("user", "Sum these.\n\n3 and 3"), ("assistant", "6")))


def test_alpaca_without_input_or_system_and_mapped_columns():
    s = spec(format="alpaca", columns={"instruction": "q", "output": "a", "input": "ctx"})
    rec = to_record(s, {"q": "Hi?", "a": "Hello.", "ctx": ""}, 1)
    assert rec == Conversation(turns(("user", "Hi?"), ("assistant", "Hello.")))
    with pytest.raises(BadRow) as e:
        to_record(s, {"instruction": "Hi?", "a": "Hello."}, 4)
    assert e.value.row == 4
    assert e.value.reason == "missing field 'q' (columns.instruction); the row has fields 'a', 'instruction'"


def test_sharegpt_default_roles_map_to_canonical():
    row = {"conversations": [{"from": "system", "value": "S"}, {"from": "human", "value": "Q"},
                             {"from": "gpt", "value": "A"}, {"from": "function", "value": "T"}]}
    rec = to_record(spec(format="sharegpt"), row, 1)
    assert rec == Conversation(turns(("system", "S"), ("user", "Q"), ("assistant", "A"), ("tool", "T")))


def test_messages_with_mapped_columns_and_roles():
    s = spec(format="messages", columns={"messages": "dialog", "role": "who", "content": "text"},
             roles={"customer": "user", "agent": "assistant"})
    row = {"dialog": [{"who": "customer", "text": "Q"}, {"who": "agent", "text": "A"}]}
    assert to_record(s, row, 1) == Conversation(turns(("user", "Q"), ("assistant", "A")))


def test_unmapped_role_names_turn_and_fix():
    row = {"messages": turns(("user", "a"), ("assistant", "b"), ("bot", "c"))}
    with pytest.raises(BadRow) as e:
        to_record(spec(format="messages"), row, 17)
    assert str(e.value) == ("row 17: turn 3 has role 'bot', which has no mapping in roles "
                            "(add roles: {bot: assistant})")
    assert str(e.value.in_dataset("data/tickets.jsonl")) == (
        "data/tickets.jsonl row 17: turn 3 has role 'bot', which has no mapping in roles "
        "(add roles: {bot: assistant})")


@pytest.mark.parametrize("row, reason", [
    ({"messages": "hi"}, "field 'messages' is a text; expected a list of turns"),
    ({"messages": []}, "field 'messages' is an empty list of turns"),
    ({"messages": [{"role": "user"}]}, "turn 1 has no 'content' field (columns.content); it has 'role'"),
    ({"messages": [{"role": "user", "content": ["x"]}]},
     "turn 1 content is a list; only plain-text content is supported"),
    ({"messages": None}, "field 'messages' (columns.messages) is null"),
])
def test_malformed_conversations(row, reason):
    with pytest.raises(BadRow) as e:
        to_record(spec(format="messages"), row, 2)
    assert e.value.reason == reason


def test_prompt_completion_strings_and_lists():
    s = spec(format="prompt_completion")
    assert to_record(s, {"prompt": "Q", "completion": "A"}, 1) == Conversation(
        turns(("user", "Q"), ("assistant", "A")), train_from=1)
    row = {"prompt": turns(("system", "S"), ("user", "Q1"), ("assistant", "A1"), ("user", "Q2")),
           "completion": turns(("assistant", "A2"))}
    rec = to_record(s, row, 1)
    assert rec.train_from == 4 and rec.turns[-1] == {"role": "assistant", "content": "A2"}
    with pytest.raises(BadRow, match="'prompt' turn 1 has role 'human', which is not one of system, user"):
        to_record(s, {"prompt": turns(("human", "Q")), "completion": "A"}, 1)


def test_text_and_mapped_text_column():
    assert to_record(spec(format="text", columns={"text": "body"}), {"body": "raw"}, 1) == Text("raw")
    with pytest.raises(BadRow, match="field 'text' is empty"):
        to_record(spec(format="text"), {"text": ""}, 1)


def test_preference_string_prompt_becomes_user_turn():
    rec = to_record(spec(format="preference", columns={"prompt": "question"}),
                    {"question": "Q", "chosen": "good", "rejected": "bad"}, 1)
    assert rec == Pair(turns(("user", "Q")), turns(("assistant", "good")), turns(("assistant", "bad")))


def test_preference_message_lists_use_roles():
    s = spec(format="preference", roles={"human": "user", "gpt": "assistant"})
    row = {"prompt": turns(("human", "Q")), "chosen": turns(("gpt", "good")), "rejected": turns(("gpt", "bad"))}
    assert to_record(s, row, 1) == Pair(turns(("user", "Q")), turns(("assistant", "good")),
                                        turns(("assistant", "bad")))
    with pytest.raises(BadRow, match="missing field 'rejected'"):
        to_record(s, {"prompt": "Q", "chosen": "good"}, 1)


@pytest.mark.parametrize("value, expected", [(True, True), (False, False), (1, True), ("false", False),
                                             ("True", True)])
def test_kto_labels(value, expected):
    rec = to_record(spec(format="kto"), {"prompt": "Q", "completion": "A", "label": value}, 1)
    assert rec == Unpaired(turns(("user", "Q")), turns(("assistant", "A")), expected)


def test_kto_bad_label():
    with pytest.raises(BadRow, match=r"field 'label' \(columns.label\) is 'maybe'; expected true or false"):
        to_record(spec(format="kto"), {"prompt": "Q", "completion": "A", "label": "maybe"}, 1)


def test_groups():
    assert [group_of(f) for f in ("alpaca", "sharegpt", "messages", "prompt_completion", "text", "preference",
                                  "kto")] == ["sft"] * 5 + ["preference", "kto"]


# ---- readers ---------------------------------------------------------------------------------------------


def test_jsonl_row_numbers_are_line_numbers_and_bad_lines_are_rows(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "d.jsonl").write_text('{"a": 1}\n\n{"a": 2\n[1, 2]\n{"a": 3}\n', encoding="utf-8")
    got = list(read_rows("d.jsonl"))
    assert [n for n, _ in got] == [1, 3, 4, 5]
    assert got[0][1] == {"a": 1} and got[3][1] == {"a": 3}
    assert isinstance(got[1][1], BadRow) and got[1][1].reason.startswith("line is not valid JSON")
    assert got[2][1].reason == "row is a JSON list, not an object with named fields"
    assert [n for n, _ in read_rows("d.jsonl", max_rows=2)] == [1, 3]


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
        assert list(read_rows(path)) == [(1, rows[0]), (2, rows[1])], path
    assert list(read_rows("folder", split="test")) == [(1, rows[0])]
    with pytest.raises(DataError, match="folder: no split 'dev'; the folder has test, train"):
        list(read_rows("folder", split="dev"))


def test_locate_errors(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(DataError, match="data/missing.jsonl: no such file"):
        locate("data/missing.jsonl")
    with pytest.raises(DataError, match="unsupported file type '.txt'"):
        locate("notes.txt")
    assert locate("org/name") == ("hub", "org/name")


def test_source_digest_follows_bytes(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "d.jsonl").write_text('{"a": 1}\n')
    first = source_digest("d.jsonl")
    assert source_digest("d.jsonl") == first
    (tmp_path / "d.jsonl").write_text('{"a": 2}\n')
    assert source_digest("d.jsonl") != first
