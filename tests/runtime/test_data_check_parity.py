"""``ftplan check`` and the runtime's data stage judge the same files alike: over a corpus of good and bad
datasets (the shapes users bring and the mistakes they make), every row ``check`` refuses or warns about is the
row the data stage drops or lists, with the same code and words, and a file ``check`` cannot read stops the
stage with the same message."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

from ftplan.api import check_file
from ftplan_runtime.data import DataError, run_data_stage

_spec = importlib.util.spec_from_file_location("data_fixtures", Path(__file__).with_name("test_data_fixtures.py"))
fx = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(fx)


def t(*pairs):
    return [{"role": r, "content": c} for r, c in pairs]


GOOD_CHAT = {"messages": t(("user", "What is 3 + 3?"), ("assistant", "The answer is 6."))}
GOOD_SHAREGPT = {"conversations": [{"from": "human", "value": "Hello"}, {"from": "gpt", "value": "Hello, how can I help?"}]}
TOOL_ROWS = [{"conversations": [{"from": "human", "value": "weather?"},
                                {"from": "function_call", "value": '{"name": "weather", "arguments": {}}'},
                                {"from": "observation", "value": "sunny"}, {"from": "gpt", "value": "Sunny."}],
              "tools": '[{"name": "weather", "parameters": {"type": "object"}}]'}] * 2

CORPUS: dict[str, tuple[dict, list | str | bytes]] = {
    # name: (dataset entry without path, rows (JSON Lines) or the file's raw text)
    "typed-content": ({"format": "messages"}, [
        GOOD_CHAT, {"messages": [{"role": "user", "content": [{"type": "text", "text": "Hello"}]},
                                 {"role": "assistant", "content": [{"type": "text", "text": "Hi."}]}]},
        {"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]},
                      {"role": "assistant", "content": "A cat."}]}]),
    "null-content": ({"format": "messages"}, [GOOD_CHAT, {"messages": t(("user", "Hi"), ("assistant", None))}]),
    "wrapped.json": ({"format": "messages"}, json.dumps({"data": [GOOD_CHAT, GOOD_CHAT]}, indent=1)),
    "broken.json": ({"format": "messages"}, '[' + json.dumps(GOOD_CHAT) + ',\n {"messages": ]'),
    "string-pairs": ({"format": "preference"}, [{"prompt": "What is 3 + 3?", "chosen": "6.", "rejected": "7."},
                                                {"prompt": "Hello", "chosen": "Hi.", "rejected": "Hi."}]),
    "llama-factory-pairs": ({"format": "preference", "columns": {"prompt": "conversations", "role": "from",
                                                                "content": "value"}},
                            [{"conversations": [{"from": "human", "value": "Hello"}],
                              "chosen": {"from": "gpt", "value": "Hi."}, "rejected": {"from": "gpt", "value": "No."}}]),
    "trl-implicit-pairs": ({"format": "preference"}, [
        {"chosen": t(("user", "Hello"), ("assistant", "Hi.")), "rejected": t(("user", "Hello"), ("assistant", "No."))},
        {"chosen": t(("user", "a"), ("assistant", "b")), "rejected": t(("user", "c"), ("assistant", "d"))}]),
    "unmapped-tool-roles": ({"format": "sharegpt", "roles": {"human": "user", "gpt": "assistant"}},
                            [GOOD_SHAREGPT] + TOOL_ROWS[:1]),
    "odd-rows": ({"format": "messages"}, [GOOD_CHAT, "[" * 3000, '{"messages": [', b'{"messages": "caf\xe9"}',
                                          ["a", "list"], {"messages": t(("user", "a"), ("assistant", " "))},
                                          {"messages": t(("user", "a"), ("assistant", "b"), ("user", "c"))},
                                          {**GOOD_CHAT, "id": 7, "source": "web"}]),
    "kto-labels": ({"format": "kto"}, [{"prompt": "Hello", "completion": "Hi.", "label": True},
                                       {"prompt": "Hello", "completion": "No.", "label": "maybe"},
                                       {"prompt": "Hello", "completion": "Go away.", "label": 0},
                                       {"prompt": "Hello", "completion": "Hi."}]),
    "kto-llama-factory": ({"format": "kto"}, [
        {"messages": t(("user", "Hello"), ("assistant", "Hi.")), "label": True},
        {"messages": t(("user", "Hello"), ("assistant", "Go away.")), "label": False},
        {"messages": t(("user", "Hello"), ("assistant", "Hi."), ("user", "Bye")), "label": True},
        {"messages": t(("assistant", "Hi.")), "label": True},
        {"messages": t(("user", "Hello"), ("assistant", "Hi.")), "label": "maybe"}]),
    "kto-sharegpt-tags": ({"format": "kto", "columns": {"messages": "conversations", "role": "from",
                                                        "content": "value"}},
                          [{"conversations": [{"from": "human", "value": "Hello"}, {"from": "gpt", "value": "Hi."}],
                            "label": 1},
                           {"conversations": [{"from": "customer", "value": "Hello"}, {"from": "gpt", "value": "Hi."}],
                            "label": 0}]),
    "long-text": ({"format": "text"}, [{"text": "The sea is wide and blue. " * 60}, {"text": ""},
                                       {"text": "The quick brown fox.", "source": "web"}]),
    "ragged.csv": ({"format": "alpaca"}, "instruction,input,output\nName a fruit.,,Apple.\nbye\nSum.,3 and 3,6\n"),
    "alpaca.csv": ({"format": "alpaca"}, 'instruction,input,output\nName a fruit.,,Apple.\n"Sum, please.",3 and 3,6\n'),
    "alpaca-history": ({"format": "alpaca"}, [{"instruction": "Sum.", "output": "6", "history": [["Hi", "Hello."]]},
                                              {"instruction": "Sum.", "output": "6", "history": "nope"}]),
}


def write(root: Path, name: str, rows) -> str:
    suffix = "" if "." in name else ".jsonl"
    path = root / "data" / f"{name}{suffix}"
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(rows, list):
        path.write_bytes(b"".join((r if isinstance(r, bytes) else (r if isinstance(r, str) else json.dumps(r))
                                   .encode()) + b"\n" for r in rows))
    else:
        path.write_bytes(rows if isinstance(rows, bytes) else rows.encode())
    return f"data/{name}{suffix}"


def pipeline(root: Path, entry: dict, template: str = "tokenizer") -> Path:
    text = (f"name: p\nmodel: {{base: meta-llama/Llama-3.1-8B-Instruct, tokenizer: ./tok, chat_template: {template}}}\n"
            "hardware: {device: cpu}\nstages:\n  - id: data\n    kind: data\n    max_seq_len: 512\n"
            f"    on_bad_row: drop\n    datasets: [{json.dumps(entry)}]\n")
    (root / "p.yaml").write_text(text)
    return root / "p.yaml"


def check_side(root: Path, entry: dict, template: str = "tokenizer"):
    result = check_file(pipeline(root, entry, template))
    scan = result.ctx.inputs.datasets[(0, 0)]
    rows = [(f.number, f.problem.code, f.problem.message) for f in scan.findings]
    return rows, scan.file_problem, scan.unused_columns, [d for d in result.diagnostics if d.code == "FT415"]


def runtime_side(entry: dict, template: str = "tokenizer"):
    args = fx.make_args([entry], on_bad_row="drop", max_seq_len=512,
                        model={"base": "tok", "chat_template": template})
    # as compiled: args.json writes every field, so the runtime sees defaults as written (set) fields
    args = type(args).model_validate_json(args.model_dump_json())
    m = run_data_stage(args, "s")
    rows = [(d.row, *d.reason.split(": ", 1)) for d in m.dropped if d.reason.startswith("FT5")]
    rows += [(w.row, w.code, w.message) for w in m.warnings]
    return sorted(rows), m.datasets[0].unused_columns


@pytest.fixture
def project(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    fx.build_tokenizer(tmp_path / "tok")
    return tmp_path


@pytest.mark.parametrize("name", sorted(CORPUS))
def test_check_and_the_data_stage_judge_every_row_alike(project, name):
    entry_base, rows = CORPUS[name]
    entry = {"path": write(project, name, rows), **entry_base}
    checked, file_problem, unused, _ = check_side(project, entry)
    if file_problem is not None:
        with pytest.raises(DataError) as e:
            runtime_side(entry)
        assert str(e.value) == f"{entry['path']}: {file_problem}"
        return
    ran, ran_unused = runtime_side(entry)
    assert ran == sorted(checked)
    assert ran_unused == list(unused)


def test_the_corpus_covers_refusals_warnings_and_clean_files(project):
    """Guard the guard: the corpus must hold rows of every kind, or the parity above proves little."""
    codes = set()
    clean = 0
    for name, (entry_base, rows) in CORPUS.items():
        entry = {"path": write(project, name, rows), **entry_base}
        checked, file_problem, _, _ = check_side(project, entry)
        codes |= {code for _, code, _ in checked} | ({"file"} if file_problem else set())
        clean += not checked and not file_problem
    assert {"FT502", "FT503", "FT504", "FT505", "FT506", "FT507", "FT508", "FT509", "FT512", "FT513", "FT515",
            "file"} <= codes
    assert clean >= 3


def test_tool_data_needs_a_template_that_renders_it_on_both_sides(project):
    entry = {"path": write(project, "tools", TOOL_ROWS), "format": "sharegpt"}
    *_, refused = check_side(project, entry, "chatml")
    assert len(refused) == 1 and "cannot render tool calls" in refused[0].message
    with pytest.raises(DataError, match="cannot render tool calls"):
        runtime_side(entry, "chatml")
