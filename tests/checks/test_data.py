"""Data contract rules on the first rows of local files (FT501-FT510)."""

from ftplan.checks.data import MAX_REPORTED
from ftplan.diagnostics import Severity


def one_dataset(tools, dataset: dict, kind: str = "sft"):
    """A pipeline whose data stage holds exactly ``dataset``, feeding one training stage."""
    stage = ({"id": "train", "kind": "sft", "data": "data", "learning_rate": 1e-4, "adapter": {"type": "lora"}}
             if kind == "sft" else
             {"id": "train", "kind": "dpo", "input": "sft", "data": "data", "learning_rate": 1e-6,
              "adapter": {"type": "lora"}})
    stages = [{"id": "data", "kind": "data", "max_seq_len": 1024, "datasets": [dataset]}]
    if kind == "dpo":
        stages.append({"id": "sft", "kind": "sft", "data": "sft_data", "learning_rate": 1e-4,
                       "adapter": {"type": "full"}})
        stages.insert(0, {"id": "sft_data", "kind": "data", "max_seq_len": 1024,
                          "datasets": [{"path": "x.jsonl", "format": "text"}]})
    stages.append(stage)
    return tools.build(stages=stages)


def rows_check(check, tools, dataset: dict, rows: list, kind: str = "sft"):
    pipeline = one_dataset(tools, dataset, kind)
    return check(pipeline, tools.Inputs(datasets={("data", 0): tools.DatasetHead(dataset["path"], tuple(rows))}))


def test_clean_rows_have_no_data_diagnostics(check, tools):
    diags = check(tools.build(), tools.Inputs(datasets=tools.heads(data_0=[tools.CHAT_ROW], data_1=[tools.PAIR_ROW])))
    assert not [d for d in diags if d.code.startswith("FT5")]


def test_ft501_missing_file(check, tools):
    inputs = tools.Inputs(missing=((("stages", 0, "datasets", 1, "path"), "data/pairs.jsonl"),))
    [d] = tools.codes(check(tools.build(), inputs), "FT501")
    assert d.path == ("stages", 0, "datasets", 1, "path") and "'data/pairs.jsonl' does not exist" in d.message


def test_ft502_unreadable_row(check, tools):
    head = tools.DatasetHead("data/chat.jsonl", rows=(tools.CHAT_ROW,), error="Expecting value", error_row=2)
    [d] = tools.codes(check(tools.build(), tools.Inputs(datasets={("data", 0): head})), "FT502")
    assert d.message == "data/chat.jsonl: row 2: Expecting value"
    # messages of the snapshot reader already name the line: no second prefix
    head = tools.DatasetHead("data/chat.jsonl", rows=(), error="line 7 is not valid JSON: Expecting value", error_row=7)
    [d] = tools.codes(check(tools.build(), tools.Inputs(datasets={("data", 0): head})), "FT502")
    assert d.message == "data/chat.jsonl: line 7 is not valid JSON: Expecting value"


def test_ft503_missing_column_with_mapping_hint(check, tools):
    alpaca = {"path": "a.jsonl", "format": "alpaca"}
    rows = [{"instruction": "i", "input": "", "output": "o"}] * 2 + [{"instruction": "i", "response": "o"}]
    [d] = tools.codes(rows_check(check, tools, alpaca, rows), "FT503")
    assert d.message == "a.jsonl: row 3: missing column 'output' (format alpaca)"
    assert "columns: {output: <column>}" in d.hint and "response" in d.hint
    # mapped, the same rows are fine
    mapped = {**alpaca, "columns": {"output": "response"}}
    assert not tools.codes(rows_check(check, tools, mapped, [{"instruction": "i", "response": "o"}]), "FT503")


def test_ft503_did_you_mean_over_the_row_keys(check, tools):
    [d] = tools.codes(rows_check(check, tools, {"path": "a.jsonl", "format": "alpaca"},
                                 [{"instruction": "i", "outputs": "o"}]), "FT503")
    assert d.hint.startswith("did you mean 'outputs'?") and "`columns: {output: outputs}`" in d.hint


def test_ft504_malformed_conversation(check, tools):
    ds = {"path": "c.jsonl", "format": "messages"}
    [d] = tools.codes(rows_check(check, tools, ds, [{"messages": "hello"}]), "FT504")
    assert "row 1" in d.message and "not a non-empty list of turns" in d.message
    [d] = tools.codes(rows_check(check, tools, ds, [{"messages": [{"from": "user", "value": "x"}]}]), "FT504")
    assert "has no 'role' key" in d.message and "columns: {role: <key>}" in d.hint
    [d] = tools.codes(rows_check(check, tools, ds, ["just a string"]), "FT504")
    assert "not an object" in d.message


def test_sharegpt_defaults_map_from_and_value(check, tools):
    ds = {"path": "s.jsonl", "format": "sharegpt"}
    row = {"conversations": [{"from": "human", "value": "hi"}, {"from": "gpt", "value": "hello"}]}
    assert not [d for d in rows_check(check, tools, ds, [row]) if d.code.startswith("FT5")]


def test_ft505_role_without_mapping(check, tools):
    ds = {"path": "s.jsonl", "format": "sharegpt"}
    rows = [{"conversations": [{"from": "human", "value": "hi"}, {"from": "gpt", "value": "x"}]}] * 6 + [
        {"conversations": [{"from": "human", "value": "hi"}, {"from": "bot", "value": "hello"}]}]
    [d] = tools.codes(rows_check(check, tools, ds, rows), "FT505")
    assert d.message.startswith("s.jsonl: row 7: role 'bot' has no mapping in roles")
    assert "roles: {bot: assistant" in d.hint
    mapped = {**ds, "roles": {"human": "user", "gpt": "assistant", "bot": "assistant"}}
    assert not tools.codes(rows_check(check, tools, mapped, rows), "FT505")


def test_ft506_sft_conversation_should_end_with_assistant(check, tools):
    ds = {"path": "c.jsonl", "format": "messages"}
    row = {"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"},
                        {"role": "user", "content": "c"}]}
    [d] = tools.codes(rows_check(check, tools, ds, [row]), "FT506")
    assert d.severity is Severity.WARNING and "ends with a user turn" in d.message
    [d] = tools.codes(rows_check(check, tools, ds, [{"messages": [{"role": "user", "content": "a"}]}]), "FT506")
    assert "no assistant turn" in d.message


def test_ft507_preference_pair_shape(check, tools):
    ds = {"path": "p.jsonl", "format": "preference"}
    [d] = tools.codes(rows_check(check, tools, ds, [{"prompt": "p", "chosen": "", "rejected": "r"}], "dpo"),
                      "FT507")
    assert "'chosen' is empty" in d.message
    mixed = {"prompt": "p", "chosen": "a", "rejected": [{"role": "assistant", "content": "b"}]}
    [d] = tools.codes(rows_check(check, tools, ds, [mixed], "dpo"), "FT507")
    assert "string" in d.message and "list" in d.message
    lists = {"prompt": [{"role": "user", "content": "p"}], "chosen": [{"role": "assistant", "content": "a"}],
             "rejected": [{"role": "assistant", "content": "b"}]}
    assert not [d for d in rows_check(check, tools, ds, [lists], "dpo") if d.code.startswith("FT5")]


def test_ft503_preference_prompt_required(check, tools):
    [d] = tools.codes(rows_check(check, tools, {"path": "p.jsonl", "format": "preference"},
                                 [{"chosen": "a", "rejected": "b"}], "dpo"), "FT503")
    assert "missing column 'prompt'" in d.message


def test_ft508_identical_pair(check, tools):
    [d] = tools.codes(rows_check(check, tools, {"path": "p.jsonl", "format": "preference"},
                                 [{"prompt": "p", "chosen": "a", "rejected": "a"}], "dpo"), "FT508")
    assert d.severity is Severity.WARNING


def test_ft509_kto_label_boolean(tools):
    from ftplan.checks.data import row_problems
    from ftplan.schemas.datasets import KtoDataset

    d = KtoDataset(path="k.jsonl", format="kto")
    [p] = row_problems(d, {"prompt": "p", "completion": "c", "label": 1})
    assert p.code == "FT509" and "not a boolean" in p.text
    assert row_problems(d, {"prompt": "p", "completion": "c", "label": False}) == []


def test_ft510_empty_file(check, tools):
    head = tools.DatasetHead("data/chat.jsonl", rows=())
    [d] = tools.codes(check(tools.build(), tools.Inputs(datasets={("data", 0): head})), "FT510")
    assert "no rows" in d.message


def test_reports_are_capped_with_a_total(check, tools):
    rows = [{"instruction": "i"}] * 12
    diags = [d for d in rows_check(check, tools, {"path": "a.jsonl", "format": "alpaca"}, rows)
             if d.code.startswith("FT5")]
    assert len(diags) == MAX_REPORTED
    assert [d.message.split(":")[1].strip() for d in diags] == [f"row {n}" for n in range(1, 6)]
    assert diags[-1].notes == ("12 problems in the first 12 rows of a.jsonl; only the first 5 are shown",)


def test_unchecked_heads_are_skipped(check, tools):
    head = tools.DatasetHead("data/chat.parquet", rows=(), checked=False)
    assert not tools.codes(check(tools.build(), tools.Inputs(datasets={("data", 0): head})), "FT510")
