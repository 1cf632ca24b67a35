"""Data contract rules (FT501-FT516): what judging a dataset's rows found, as located diagnostics."""

import pytest

from ftplan.checks.data import ROWS_NAMED, row_problems
from ftplan.data.hub import hub_id_problem
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
    i = next(n for n, s in enumerate(pipeline.stages) if s.id == "data")
    scan = tools.scan(pipeline.stages[i].datasets[0], rows)
    return check(pipeline, tools.Inputs(datasets={(i, 0): scan}))


def data_diags(diags):
    return [d for d in diags if d.code.startswith("FT5")]


def test_clean_rows_have_no_data_diagnostics(check, tools):
    diags = check(tools.build(), tools.Inputs(datasets=tools.heads(data_0=[tools.CHAT_ROW], data_1=[tools.PAIR_ROW])))
    assert not data_diags(diags)


def test_ft501_missing_file(check, tools):
    inputs = tools.Inputs(missing=((("stages", 0, "datasets", 1, "path"), "data/pairs.jsonl"),))
    [d] = tools.codes(check(tools.build(), inputs), "FT501")
    assert d.path == ("stages", 0, "datasets", 1, "path") and "'data/pairs.jsonl' does not exist" in d.message


def test_ft502_unreadable_row_and_broken_file(check, tools):
    from ftplan.data.reading import RawRow
    from ftplan.data.scan import Scanner

    pipeline = tools.build()
    scanner = Scanner(pipeline.stages[0].datasets[0], "data/chat.jsonl")
    scanner.row(RawRow(1, 1, "line", tools.CHAT_ROW))
    scanner.row(RawRow(2, 2, "line", problem="not valid JSON: Expecting value (column 1)"))
    [d] = tools.codes(check(pipeline, tools.Inputs(datasets={(0, 0): scanner.result()})), "FT502")
    assert d.message == "data/chat.jsonl: line 2: cannot be read: not valid JSON: Expecting value (column 1)"
    assert "on_bad_row: drop" in d.hint
    broken = tools.DatasetScan("data/chat.jsonl", rows_read=3,
                               file_problem="item 4 (line 9, column 2) is not valid JSON: Expecting value")
    [d] = tools.codes(check(pipeline, tools.Inputs(datasets={(0, 0): broken})), "FT502")
    assert d.message == ("data/chat.jsonl: item 4 (line 9, column 2) is not valid JSON: Expecting value "
                         "(after 3 rows)")


def test_ft503_missing_column_with_mapping_hint(check, tools):
    alpaca = {"path": "a.jsonl", "format": "alpaca"}
    rows = [{"instruction": "i", "input": "", "output": "o"}] * 2 + [{"instruction": "i", "response": "o"}]
    diags = rows_check(check, tools, alpaca, rows)
    [d] = tools.codes(diags, "FT503")
    assert d.message == "a.jsonl: line 3: missing column 'output' (format alpaca)"
    assert "columns: {output: <column>}" in d.hint and "response" in d.hint
    # the same row's unmapped column is reported once for the dataset
    [unused] = tools.codes(diags, "FT511")
    assert "'response'" in unused.message and unused.severity is Severity.WARNING
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
    assert "line 1" in d.message and "not a non-empty list of turns" in d.message
    [d] = tools.codes(rows_check(check, tools, ds, [{"messages": [{"from": "user", "value": "x"}]}]), "FT504")
    assert "has no 'role' key" in d.message and "columns: {role: <key>}" in d.hint
    [d] = tools.codes(rows_check(check, tools, ds, ["just a string"]), "FT504")
    assert "not an object" in d.message


def test_null_content_is_refused_in_check_as_at_run_time(check, tools):
    ds = {"path": "c.jsonl", "format": "messages"}
    row = {"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": None}]}
    [d] = tools.codes(rows_check(check, tools, ds, [row]), "FT504")
    assert "has null 'content'" in d.message


def test_typed_content_parts_are_joined_and_non_text_refused(check, tools):
    ds = {"path": "c.jsonl", "format": "messages"}
    typed = {"messages": [{"role": "user", "content": [{"type": "text", "text": "Hi "}, {"type": "text",
                                                                                         "text": "there"}]},
                          {"role": "assistant", "content": "Hello"}]}
    assert not data_diags(rows_check(check, tools, ds, [typed]))
    image = {"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]},
                          {"role": "assistant", "content": "A cat"}]}
    [d] = tools.codes(rows_check(check, tools, ds, [image]), "FT513")
    assert "'image_url'" in d.message and d.severity is Severity.ERROR


def test_sharegpt_defaults_map_from_and_value(check, tools):
    ds = {"path": "s.jsonl", "format": "sharegpt"}
    row = {"conversations": [{"from": "human", "value": "hi"}, {"from": "gpt", "value": "hello"}]}
    assert not data_diags(rows_check(check, tools, ds, [row]))


def test_ft505_role_without_mapping(check, tools):
    ds = {"path": "s.jsonl", "format": "sharegpt"}
    rows = [{"conversations": [{"from": "human", "value": "hi"}, {"from": "gpt", "value": "x"}]}] * 6 + [
        {"conversations": [{"from": "human", "value": "hi"}, {"from": "bot", "value": "hello"}]}]
    [d] = tools.codes(rows_check(check, tools, ds, rows), "FT505")
    assert d.message.startswith("s.jsonl: line 7: role 'bot' has no mapping in roles")
    assert "roles: {bot: assistant" in d.hint
    mapped = {**ds, "roles": {"human": "user", "gpt": "assistant", "bot": "assistant"}}
    assert not tools.codes(rows_check(check, tools, mapped, rows), "FT505")


def test_tool_roles_hint_the_mapping_that_keeps_calls_trained(check, tools):
    """An unmapped ``function_call`` is the assistant calling a tool (trained); ``observation`` is the tool's
    answer. The hint must say so, not map the call to ``tool`` (untrained) or to plain ``assistant``."""
    ds = {"path": "s.jsonl", "format": "sharegpt", "roles": {"human": "user", "gpt": "assistant"}}
    row = {"conversations": [{"from": "human", "value": "weather?"},
                             {"from": "function_call", "value": '{"name": "weather", "arguments": {}}'},
                             {"from": "observation", "value": "sunny"}, {"from": "gpt", "value": "Sunny."}]}
    [d] = tools.codes(rows_check(check, tools, ds, [row]), "FT505")
    assert "add `function_call: tool_call`" in d.hint
    ds["roles"]["function_call"] = "tool_call"
    [d] = tools.codes(rows_check(check, tools, ds, [row]), "FT505")
    assert "add `observation: tool`" in d.hint
    # the default ShareGPT mapping knows both
    assert not data_diags(rows_check(check, tools, {"path": "s.jsonl", "format": "sharegpt"}, [row]))


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
    assert not data_diags(rows_check(check, tools, ds, [lists], "dpo"))


def test_preference_shapes_people_bring(check, tools):
    # LLaMA-Factory: a shared conversation and one answer message each, ShareGPT keys
    llama_factory = {"path": "p.jsonl", "format": "preference",
                     "columns": {"prompt": "conversations", "role": "from", "content": "value"}}
    row = {"conversations": [{"from": "human", "value": "2+2?"}], "chosen": {"from": "gpt", "value": "4"},
           "rejected": {"from": "gpt", "value": "5"}}
    assert not data_diags(rows_check(check, tools, llama_factory, [row], "dpo"))
    # TRL: whole conversations, the prompt implicit in the turns both start with
    trl = {"path": "p.jsonl", "format": "preference"}
    row = {"chosen": [{"role": "user", "content": "2+2?"}, {"role": "assistant", "content": "4"}],
           "rejected": [{"role": "user", "content": "2+2?"}, {"role": "assistant", "content": "5"}]}
    assert not data_diags(rows_check(check, tools, trl, [row], "dpo"))
    different = {"chosen": [{"role": "user", "content": "a"}], "rejected": [{"role": "user", "content": "b"}]}
    [d] = tools.codes(rows_check(check, tools, trl, [different], "dpo"), "FT507")
    assert "no shared prompt" in d.message


def test_ft503_preference_prompt_required_for_strings(check, tools):
    [d] = tools.codes(rows_check(check, tools, {"path": "p.jsonl", "format": "preference"},
                                 [{"chosen": "a", "rejected": "b"}], "dpo"), "FT503")
    assert "missing column 'prompt'" in d.message


def test_ft508_identical_pair(check, tools):
    [d] = tools.codes(rows_check(check, tools, {"path": "p.jsonl", "format": "preference"},
                                 [{"prompt": "p", "chosen": "a", "rejected": "a"}], "dpo"), "FT508")
    assert d.severity is Severity.WARNING


def test_ft509_kto_label_boolean(tools):
    from ftplan.schemas.datasets import KtoDataset

    d = KtoDataset(path="k.jsonl", format="kto")
    [p] = row_problems(d, {"prompt": "p", "completion": "c", "label": 2})
    assert p.code == "FT509" and "not a boolean" in p.message
    assert row_problems(d, {"prompt": "p", "completion": "c", "label": 1}) == []  # an integer 0/1 column
    assert row_problems(d, {"prompt": "p", "completion": "c", "label": False}) == []
    assert row_problems(d, {"prompt": "p", "completion": "c", "label": "true"}) == []  # CSV cells are text


def test_ft510_empty_file(check, tools):
    [d] = tools.codes(check(tools.build(), tools.Inputs(datasets={(0, 0): tools.DatasetScan("data/chat.jsonl")})),
                      "FT510")
    assert "no rows" in d.message


def test_ft512_empty_answer_is_a_warning(check, tools):
    ds = {"path": "a.jsonl", "format": "alpaca"}
    [d] = tools.codes(rows_check(check, tools, ds, [{"instruction": "i", "output": ""}]), "FT512")
    assert d.severity is Severity.WARNING and "empty" in d.message


def test_one_diagnostic_per_code_naming_every_other_row(check, tools):
    rows = [{"instruction": "i"}] * 30
    diags = data_diags(rows_check(check, tools, {"path": "a.jsonl", "format": "alpaca"}, rows))
    [d] = tools.codes(diags, "FT503")
    assert d.message.startswith("a.jsonl: line 1:")
    named = ", ".join(f"line {n}" for n in range(2, ROWS_NAMED + 2))
    assert d.notes == (f"30 rows with FT503 in all 30 rows; also {named} and {30 - 1 - ROWS_NAMED} more",)


def test_a_partial_read_says_how_much_was_checked(check, tools):
    pipeline = tools.build()
    scanner = tools.scan(pipeline.stages[0].datasets[0], [{"messages": "x"}] * 3)
    partial = tools.DatasetScan(**{**scanner.__dict__, "complete": False, "rows_total": 20_001})
    [d] = tools.codes(check(pipeline, tools.Inputs(datasets={(0, 0): partial})), "FT504")
    assert "in the first 3 of 20,001 rows" in d.notes[0] and "--full-data" in d.notes[0]


def test_ft514_hub_dataset_id(check, tools):
    inputs = tools.Inputs(hub_datasets=((("stages", 0, "datasets", 0, "path"), "org/chat"),))
    [d] = tools.codes(check(tools.build(), inputs), "FT514")
    assert d.severity is Severity.INFO and "taken as a hub dataset id" in d.message
    # a value that looks like a local file with its extension missing warns
    from ftplan.context import LocalFile

    near = tools.Inputs(hub_datasets=((("stages", 0, "datasets", 0, "path"), "data/chat"),),
                        files=(LocalFile("data/chat.jsonl", "0" * 64, 10),))
    [d] = tools.codes(check(tools.build(), near), "FT514")
    assert d.severity is Severity.WARNING and "'data/chat.jsonl'" in d.hint


@pytest.mark.parametrize("value, words", [
    ("my data", "contains ' '"), ("org/sub/name", "has 2 slashes"), ("org/-chat", "starts with '-'"),
    ("org/chat--v2", "'--' or '..'"), ("org/" + "x" * 97, "longer than the hub's 96 characters")])
def test_ft516_a_path_that_is_no_file_must_be_a_well_formed_hub_id(check, tools, value, words):
    """Offline, a hub dataset id is checked for its form only (the runtime's reader refuses the same values with the
    same words: tests/runtime/test_data_readers.py)."""
    inputs = tools.Inputs(hub_datasets=((("stages", 0, "datasets", 0, "path"), value),))
    [d] = tools.codes(check(tools.build(), inputs), "FT516")
    assert d.severity is Severity.ERROR and words in d.message and "`owner/name`" in d.hint
    assert d.message == f"'{value}' is not a local file or folder, and not a hub dataset id: {hub_id_problem(value)}"
    assert not tools.codes(check(tools.build(), inputs), "FT514")


def test_ft517_weighted_datasets_mix_by_rows_times_weight(check, tools):
    chat = {"path": "data/chat.jsonl", "format": "messages", "weight": 3}
    more = {"path": "data/more.jsonl", "format": "messages", "weight": 0.5}
    stages = [{"id": "data", "kind": "data", "max_seq_len": 512, "datasets": [chat, more]},
              {"id": "sft", "kind": "sft", "data": "data", "learning_rate": 1e-4, "adapter": {"type": "lora"}}]
    pipeline = tools.build(stages=stages)
    inputs = tools.Inputs(datasets=tools.heads(pipeline, data_0=[tools.CHAT_ROW] * 10, data_1=[tools.CHAT_ROW] * 40))
    [d] = tools.codes(check(pipeline, inputs), "FT517")
    assert d.severity is Severity.INFO and d.path == ("stages", 0, "datasets", 0, "weight")
    assert d.message == ("the sft training split of 'data' mixes 60 % data/chat.jsonl (10 rows × 3), "
                         "40 % data/more.jsonl (40 rows × 0.5)")
    ctx, _ = tools.resolve_ctx(pipeline, inputs)
    assert ctx.stages[1].train.rows == 10 * 3 + 40 // 2  # the optimizer steps count the weighted examples
    # unknown row counts: the weights alone
    [d] = tools.codes(check(pipeline), "FT517")
    assert d.message.endswith("mixes data/chat.jsonl × 3, data/more.jsonl × 0.5")
    assert not tools.codes(check(tools.build()), "FT517")


def test_unchecked_scans_are_skipped(check, tools):
    scan = tools.DatasetScan("data/chat.parquet", checked=False)
    assert not tools.codes(check(tools.build(), tools.Inputs(datasets={(0, 0): scan})), "FT510")


def test_duplicate_stage_ids_never_mix_two_stages_files(check, tools):
    """Scans are keyed by the stage's position: the second stage's file is reported under its own path."""
    stages = [{"id": "data", "kind": "data", "max_seq_len": 512, "datasets": [{"path": "a.jsonl", "format": "text"}]},
              {"id": "data", "kind": "data", "max_seq_len": 512,
               "datasets": [{"path": "b.jsonl", "format": "text"}]},
              {"id": "sft", "kind": "sft", "data": "data", "learning_rate": 1e-4, "adapter": {"type": "lora"}}]
    pipeline = tools.build(stages=stages)
    inputs = tools.Inputs(datasets={(0, 0): tools.scan(pipeline.stages[0].datasets[0], [{"text": "ok"}]),
                                    (1, 0): tools.scan(pipeline.stages[1].datasets[0], [{"text": 3}])})
    [d] = tools.codes(check(pipeline, inputs), "FT504")
    assert d.path[:4] == ("stages", 1, "datasets", 0) and d.message.startswith("b.jsonl: line 1:")
