"""One row of each dataset format turned into a canonical record (``ftplan.data.rows``), or refused with a
code and a hint: the one judgement ``check`` and the runtime share. No torch needed."""

from __future__ import annotations

import json

import pytest
from pydantic import TypeAdapter

from ftplan.data.rows import (Conversation, Pair, Text, Unpaired, convert_row, group_of, guess_role,
                              missing_tool_support, tool_features)
from ftplan.schemas.datasets import DatasetSpec

SPEC = TypeAdapter(DatasetSpec)


def spec(**kw):
    return SPEC.validate_python({"path": "x.jsonl", **kw})


def turns(*pairs):
    return [{"role": r, "content": c} for r, c in pairs]


def record(s, row):
    got = convert_row(s, row)
    assert not [p for p in got.problems if p.is_error], got.problems
    return got.record


def refusal(s, row):
    got = convert_row(s, row)
    assert got.record is None, got
    return next(p for p in got.problems if p.is_error)


# ---- alpaca ----------------------------------------------------------------------------------------------


def test_alpaca_with_system_input_and_history():
    row = {"instruction": "Sum these.", "input": "3 and 3", "output": "6", "system": "Be brief.",
           "history": [["Hi", "Hello."]]}
    assert record(spec(format="alpaca"), row) == Conversation(turns(
        ("system", "Be brief."), ("user", "Hi"), ("assistant", "Hello."), ("user", "Sum these.\n\n3 and 3"),
        ("assistant", "6")))


def test_alpaca_mapped_columns_and_missing_column_hint():
    s = spec(format="alpaca", columns={"instruction": "q", "output": "a", "input": "ctx"})
    assert record(s, {"q": "Hi?", "a": "Hello.", "ctx": ""}) == Conversation(turns(("user", "Hi?"),
                                                                                   ("assistant", "Hello.")))
    p = refusal(s, {"instruction": "Hi?", "a": "Hello."})
    assert (p.code, p.message, p.key) == ("FT503", "missing column 'q' (format alpaca)", ("columns", "instruction"))
    assert "`columns: {instruction: <column>}`" in p.hint and "instruction" in p.hint


def test_alpaca_bad_history():
    p = refusal(spec(format="alpaca"), {"instruction": "i", "output": "o", "history": [["only one"]]})
    assert p.code == "FT504" and "[instruction, answer] pairs" in p.message


# ---- chat ------------------------------------------------------------------------------------------------


def test_sharegpt_default_roles_map_to_canonical():
    row = {"conversations": [{"from": "system", "value": "S"}, {"from": "human", "value": "Q"},
                             {"from": "gpt", "value": "A"}]}
    assert record(spec(format="sharegpt"), row) == Conversation(turns(("system", "S"), ("user", "Q"),
                                                                      ("assistant", "A")))


def test_messages_with_mapped_columns_and_roles():
    s = spec(format="messages", columns={"messages": "dialog", "role": "who", "content": "text"},
             roles={"customer": "user", "agent": "assistant"})
    row = {"dialog": [{"who": "customer", "text": "Q"}, {"who": "agent", "text": "A"}]}
    assert record(s, row) == Conversation(turns(("user", "Q"), ("assistant", "A")))


def test_system_column_is_put_first_and_conflicts_with_a_system_turn():
    s = spec(format="sharegpt")
    row = {"conversations": [{"from": "human", "value": "Q"}, {"from": "gpt", "value": "A"}], "system": "Be kind."}
    assert record(s, row).turns[0] == {"role": "system", "content": "Be kind."}
    both = {"conversations": [{"from": "system", "value": "S"}, {"from": "human", "value": "Q"}], "system": "X"}
    assert "both a 'system' column and a system turn" in refusal(s, both).message


@pytest.mark.parametrize("row, message", [
    ({"messages": "hi"}, "'messages' is a string, not a non-empty list of turns"),
    ({"messages": []}, "'messages' is an empty list, not a non-empty list of turns"),
    ({"messages": [{"role": "user"}]}, "turn 1 of 'messages' has no 'content' key"),
    ({"messages": [{"role": "user", "content": 3}]}, "turn 1 of 'messages': 'content' is a number, not a string"),
    ({"messages": [{"role": "user", "content": None}]}, "turn 1 of 'messages' has null 'content'"),
    ({"messages": None}, "'messages' is null, not a non-empty list of turns"),
    ({"messages": [{"role": "bot", "content": "x"}]}, "role 'bot' has no mapping in roles (turn 1 of 'messages')"),
])
def test_malformed_conversations(row, message):
    assert refusal(spec(format="messages"), row).message == message


def test_typed_content_parts():
    s = spec(format="messages")
    row = {"messages": [{"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]},
                        {"role": "assistant", "content": "c"}]}
    assert record(s, row).turns[0] == {"role": "user", "content": "ab"}
    image = {"messages": [{"role": "user", "content": [{"type": "image", "image": "x.png"}]},
                          {"role": "assistant", "content": "c"}]}
    p = refusal(s, image)
    assert p.code == "FT513" and "'image'" in p.message


def test_role_hints_agree_with_what_the_roles_mean():
    assert guess_role("function_call") == "tool_call"
    assert guess_role("observation") == "tool"
    assert guess_role("Human") == "user" and guess_role("bot") == "assistant"
    p = refusal(spec(format="sharegpt", roles={"human": "user", "gpt": "assistant"}),
                {"conversations": [{"from": "human", "value": "q"}, {"from": "function_call", "value": "{}"}]})
    assert p.hint == "add `function_call: tool_call` to the dataset's `roles`"


def test_warnings_keep_the_row():
    s = spec(format="messages")
    ends_with_user = convert_row(s, {"messages": turns(("user", "a"), ("assistant", "b"), ("user", "c"))})
    assert ends_with_user.record is not None and [p.code for p in ends_with_user.problems] == ["FT506"]
    empty = convert_row(s, {"messages": turns(("user", "a"), ("assistant", " "))})
    assert empty.record is not None and [p.code for p in empty.problems] == ["FT512"]


# ---- tools -----------------------------------------------------------------------------------------------


def test_sharegpt_tool_calls_and_tools_column():
    row = {"conversations": [
        {"from": "human", "value": "Weather in Paris?"},
        {"from": "function_call", "value": json.dumps({"name": "weather", "arguments": {"city": "Paris"}})},
        {"from": "observation", "value": "sunny"},
        {"from": "gpt", "value": "It is sunny."}],
        "tools": json.dumps([{"name": "weather", "parameters": {"type": "object"}}])}
    rec = record(spec(format="sharegpt"), row)
    assert rec.turns[1] == {"role": "assistant", "content": "", "tool_calls": [
        {"type": "function", "function": {"name": "weather", "arguments": {"city": "Paris"}}}]}
    assert rec.turns[2] == {"role": "tool", "content": "sunny"}
    assert rec.tools == [{"type": "function", "function": {"name": "weather", "parameters": {"type": "object"}}}]
    assert tool_features(rec) == {"tools", "tool_calls"}


def test_openai_tool_calls_with_null_content_and_string_arguments():
    row = {"messages": [{"role": "user", "content": "2+2"},
                        {"role": "assistant", "content": None, "tool_calls": [
                            {"type": "function", "function": {"name": "add", "arguments": '{"a": 2, "b": 2}'}}]},
                        {"role": "tool", "content": "4"}, {"role": "assistant", "content": "4"}]}
    rec = record(spec(format="messages"), row)
    assert rec.turns[1]["tool_calls"] == [{"type": "function", "function": {"name": "add", "arguments":
                                                                             {"a": 2, "b": 2}}}]
    bad = {"messages": [{"role": "user", "content": "x"}, {"role": "tool_call", "content": "x"}]}
    assert refusal(spec(format="messages", roles={"user": "user", "tool_call": "tool_call"}), bad).message == \
        "turn 2 of 'messages' is a tool call whose text is not JSON"


def test_tool_support_is_read_from_the_template_text():
    assert missing_tool_support("{{ messages }}", frozenset({"tool_calls", "tools"})) == [
        "tool calls (it never reads a message's `tool_calls`)", "a list of tools (it never reads `tools`)"]
    assert missing_tool_support("{% if tools %}{% endif %}{{ m.tool_calls }}", frozenset({"tool_calls", "tools"})) \
        == []


# ---- prompt/completion, text -----------------------------------------------------------------------------


def test_prompt_completion_strings_and_lists():
    s = spec(format="prompt_completion")
    assert record(s, {"prompt": "Q", "completion": "A"}) == Conversation(turns(("user", "Q"), ("assistant", "A")),
                                                                         train_from=1)
    row = {"prompt": turns(("system", "S"), ("user", "Q1"), ("assistant", "A1"), ("user", "Q2")),
           "completion": turns(("assistant", "A2"))}
    rec = record(s, row)
    assert rec.train_from == 4 and rec.turns[-1] == {"role": "assistant", "content": "A2"}
    p = refusal(s, {"prompt": turns(("human", "Q")), "completion": turns(("assistant", "A"))})
    assert p.message == 'turn 1 of \'prompt\' has role "human", which is not one of system, user, assistant, tool'


def test_text_and_mapped_text_column():
    assert record(spec(format="text", columns={"text": "body"}), {"body": "raw"}) == Text("raw")
    assert refusal(spec(format="text"), {"text": ""}).message == "'text' is empty"


# ---- preference ------------------------------------------------------------------------------------------


def test_preference_string_prompt_becomes_user_turn():
    rec = record(spec(format="preference", columns={"prompt": "question"}),
                 {"question": "Q", "chosen": "good", "rejected": "bad"})
    assert rec == Pair(turns(("user", "Q")), turns(("assistant", "good")), turns(("assistant", "bad")))


def test_preference_llama_factory_shape():
    s = spec(format="preference", columns={"prompt": "conversations", "role": "from", "content": "value"})
    row = {"conversations": [{"from": "system", "value": "S"}, {"from": "human", "value": "Q"}],
           "chosen": {"from": "gpt", "value": "good"}, "rejected": {"from": "gpt", "value": "bad"}}
    assert record(s, row) == Pair(turns(("system", "S"), ("user", "Q")), turns(("assistant", "good")),
                                  turns(("assistant", "bad")))


def test_preference_trl_implicit_prompt():
    row = {"chosen": turns(("user", "Q"), ("assistant", "good")), "rejected": turns(("user", "Q"), ("assistant", "bad"))}
    assert record(spec(format="preference"), row) == Pair(turns(("user", "Q")), turns(("assistant", "good")),
                                                          turns(("assistant", "bad")))
    same_end = {"chosen": turns(("user", "Q"), ("assistant", "a")), "rejected": turns(("user", "Q"))}
    assert "'rejected' has no turns after the prompt" in refusal(spec(format="preference"), same_end).message
    # a prompt column the user named explicitly must be there
    mapped = spec(format="preference", columns={"prompt": "question"})
    assert refusal(mapped, row).message == "missing column 'question' (format preference)"


def test_preference_whole_conversations_next_to_the_prompt_they_repeat():
    """UltraFeedback's binarized rows: a string prompt, and chosen/rejected that start with that user turn."""
    row = {"prompt": "Q", "chosen": turns(("user", "Q"), ("assistant", "good")),
           "rejected": turns(("user", "Q"), ("assistant", "bad"))}
    want = Pair(turns(("user", "Q")), turns(("assistant", "good")), turns(("assistant", "bad")))
    assert record(spec(format="preference"), row) == want
    # a system turn in the prompt is repeated too
    system = {"prompt": turns(("system", "S"), ("user", "Q")),
              "chosen": turns(("system", "S"), ("user", "Q"), ("assistant", "good")),
              "rejected": turns(("system", "S"), ("user", "Q"), ("assistant", "bad"))}
    assert record(spec(format="preference"), system) == Pair(turns(("system", "S"), ("user", "Q")),
                                                             turns(("assistant", "good")), turns(("assistant", "bad")))
    # answers that do not start with the prompt are kept whole, and only the side that repeats it loses it
    other = {"prompt": "Q", "chosen": turns(("user", "other"), ("assistant", "good")),
             "rejected": turns(("user", "Q"), ("assistant", "bad"))}
    assert record(spec(format="preference"), other) == Pair(turns(("user", "Q")),
                                                            turns(("user", "other"), ("assistant", "good")),
                                                            turns(("assistant", "bad")))
    # an answer that is the prompt alone is not emptied
    only = {"prompt": "Q", "chosen": turns(("user", "Q")), "rejected": turns(("user", "Q"), ("assistant", "bad"))}
    assert record(spec(format="preference"), only).chosen == turns(("user", "Q"))


def test_preference_missing_answer():
    p = refusal(spec(format="preference", roles={"human": "user", "gpt": "assistant"}), {"prompt": "Q",
                                                                                          "chosen": "good"})
    assert p.message == "missing column 'rejected' (format preference)"


# ---- KTO ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("value, expected", [(True, True), (False, False), (1, True), (0, False), ("false", False),
                                             ("True", True)])
def test_kto_labels(value, expected):
    rec = record(spec(format="kto"), {"prompt": "Q", "completion": "A", "label": value})
    assert rec == Unpaired(turns(("user", "Q")), turns(("assistant", "A")), expected)


@pytest.mark.parametrize("value", ["maybe", 2, 0.5, None, [True]])
def test_kto_bad_label(value):
    p = refusal(spec(format="kto"), {"prompt": "Q", "completion": "A", "label": value})
    assert p.code == "FT509" and "not a boolean" in p.message


def test_kto_llama_factory_conversations():
    """LLaMA-Factory's KTO rows: the last turn is the labelled answer, the turns before it the prompt."""
    row = {"messages": turns(("system", "Be brief."), ("user", "Q"), ("assistant", "A1"), ("user", "Q2"),
                             ("assistant", "A2")), "label": False}
    assert record(spec(format="kto"), row) == Unpaired(turns(("system", "Be brief."), ("user", "Q"),
                                                             ("assistant", "A1"), ("user", "Q2")),
                                                       turns(("assistant", "A2")), False)
    sharegpt = spec(format="kto", columns={"messages": "conversations", "role": "from", "content": "value"})
    row = {"conversations": [{"from": "human", "value": "Q"}, {"from": "gpt", "value": "A"}], "label": "true"}
    assert record(sharegpt, row) == Unpaired(turns(("user", "Q")), turns(("assistant", "A")), True)


@pytest.mark.parametrize("messages, message", [
    (turns(("user", "Q"), ("assistant", "A"), ("user", "Q2")),
     "the last turn of 'messages' is a user turn; KTO labels the last turn as the answer"),
    (turns(("assistant", "A")), "'messages' has no prompt turn before its answer"),
    (turns(("system", "S"), ("assistant", "A")), "'messages' has no prompt turn before its answer"),
])
def test_kto_conversation_without_an_answer(messages, message):
    p = refusal(spec(format="kto"), {"messages": messages, "label": True})
    assert (p.code, p.message) == ("FT515", message)


def test_kto_conversation_label_and_roles_are_judged_like_the_other_shape():
    assert refusal(spec(format="kto"), {"messages": turns(("user", "Q"), ("assistant", "A")), "label": "maybe"}
                   ).code == "FT509"
    assert refusal(spec(format="kto"), {"messages": turns(("user", "Q"), ("assistant", "A"))}).message == \
        "missing column 'label' (format kto)"
    p = refusal(spec(format="kto"), {"messages": [{"role": "customer", "content": "Q"},
                                                  {"role": "assistant", "content": "A"}], "label": True})
    assert p.code == "FT505" and "customer: user" in p.hint


def test_groups():
    assert [group_of(f) for f in ("alpaca", "sharegpt", "messages", "prompt_completion", "text", "preference",
                                  "kto")] == ["sft"] * 5 + ["preference", "kto"]


def test_the_hint_for_unmapped_turn_keys_of_a_preference_file_is_a_mapping_the_schema_takes():
    """The runtime used to suggest ``columns.role`` for preference files, which the schema refused."""
    row = {"prompt": [{"from": "human", "value": "Q"}], "chosen": "good", "rejected": "bad"}
    p = refusal(spec(format="preference"), row)
    assert p.code == "FT504" and p.hint.startswith("map it with `columns: {role: <key>}`")
    fixed = spec(format="preference", columns={"role": "from", "content": "value"})  # validates
    assert record(fixed, row).prompt == [{"role": "user", "content": "Q"}]


def test_empty_adapter_targets_are_refused():
    from pydantic import ValidationError

    from ftplan.schemas.adapters import LoraAdapter

    with pytest.raises(ValidationError, match="at least 1 item"):
        LoraAdapter.model_validate({"type": "lora", "targets": []})
