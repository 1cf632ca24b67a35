"""Data stage end to end: output layout, manifest, bad rows, truncation, packing, split, fingerprint, cache,
atomic output."""

from __future__ import annotations

import hashlib
import importlib.util
import json
from pathlib import Path

import pytest
from datasets import load_from_disk

from ftplan.schemas.runtime_args import COMPLETE_MARKER
from ftplan_runtime.data import CHATML, DataError, Manifest, run_data_stage

_spec = importlib.util.spec_from_file_location("data_fixtures", Path(__file__).with_name("test_data_fixtures.py"))
fx = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(fx)


def t(*pairs):
    return [{"role": r, "content": c} for r, c in pairs]


CHAT = [{"messages": t(("user", f"What is {i} + 3?"), ("assistant", f"The answer is {i + 3}."))} for i in range(8)]
ALPACA = [{"instruction": "Name three fruits.", "input": "", "output": "Apple, banana and orange."},
          {"instruction": "Summarize the text.", "input": "The sea is wide.", "output": "Wide sea."}]
SHAREGPT = [{"conversations": [{"from": "human", "value": "Hello"},
                               {"from": "gpt", "value": "Hello, how can I help?"}]}]
PC = [{"prompt": "How do I reset my password?", "completion": "Open Settings."}]
TEXT = [{"text": "The quick brown fox jumps over the lazy dog."}]
PREF = [{"prompt": "What is 3 + 3?", "chosen": "The answer is 6.", "rejected": "Seven."},
        {"prompt": t(("system", "Be polite."), ("user", "Hello")), "chosen": "Hello!", "rejected": "Go away."},
        {"prompt": "Name three fruits.", "chosen": "Apple, banana and orange.", "rejected": "No."}]
KTO = [{"prompt": "Hello", "completion": "Hello, how can I help you today?", "label": True},
       {"prompt": "Hello", "completion": "Go away.", "label": False}]


@pytest.fixture
def project(tmp_path, monkeypatch):
    """A project root with a tokenizer folder ``tok`` and one data file per format under ``data/``."""
    monkeypatch.chdir(tmp_path)
    fx.build_tokenizer(tmp_path / "tok")
    for name, rows in (("chat", CHAT), ("alpaca", ALPACA), ("sharegpt", SHAREGPT), ("pc", PC), ("text", TEXT),
                       ("pref", PREF), ("kto", KTO)):
        fx.write_jsonl(tmp_path / "data" / f"{name}.jsonl", rows)
    return tmp_path


ALL = [{"path": "data/chat.jsonl", "format": "messages"}, {"path": "data/alpaca.jsonl", "format": "alpaca"},
       {"path": "data/sharegpt.jsonl", "format": "sharegpt"},
       {"path": "data/pc.jsonl", "format": "prompt_completion"}, {"path": "data/text.jsonl", "format": "text"},
       {"path": "data/pref.jsonl", "format": "preference"}, {"path": "data/kto.jsonl", "format": "kto"}]


def tokenizer():
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained("tok")


def test_every_format_end_to_end(project):
    m = run_data_stage(fx.make_args(ALL), "a" * 64)
    out = project / "out" / "data"
    assert sorted(p.name for p in out.iterdir()) == ["kto", "manifest.json", "preference", "sft"]
    assert sorted(p.name for p in (out / "sft").iterdir()) == ["train"]
    assert not (out / COMPLETE_MARKER).exists()  # the entry point writes the completion stamp, last
    text = (out / "manifest.json").read_text()
    assert text == json.dumps(json.loads(text), sort_keys=True, indent=2) + "\n"
    assert Manifest.read(out) == m
    assert [(d.path, d.rows_in, d.rows_out, d.group) for d in m.datasets] == [
        ("data/chat.jsonl", 8, 8, "sft"), ("data/alpaca.jsonl", 2, 2, "sft"), ("data/sharegpt.jsonl", 1, 1, "sft"),
        ("data/pc.jsonl", 1, 1, "sft"), ("data/text.jsonl", 1, 1, "sft"), ("data/pref.jsonl", 3, 3, "preference"),
        ("data/kto.jsonl", 2, 2, "kto")]
    assert m.dropped == [] and m.truncated == 0 and m.chat_template.masking == "generation"

    tok = tokenizer()
    sft = load_from_disk(str(out / "sft" / "train"))
    assert sft.column_names == ["input_ids", "completion_mask"] and len(sft) == 13
    spans = [fx.trained_spans(tok, r["input_ids"], r["completion_mask"]) for r in sft]
    assert spans[0] == ["The answer is 3.<|im_end|>"]
    assert spans[8:12] == [["Apple, banana and orange.<|im_end|>"], ["Wide sea.<|im_end|>"],
                           ["Hello, how can I help?<|im_end|>"], ["Open Settings.<|im_end|>"]]
    assert spans[12] == ["The quick brown fox jumps over the lazy dog.<|im_end|>"]  # text: every token
    assert tok.decode(sft[9]["input_ids"]).startswith("<|im_start|>user\nSummarize the text.\n\nThe sea is wide.")
    assert m.groups["sft"].splits["train"].tokens.trained == sum(sum(r["completion_mask"]) for r in sft)

    pref = load_from_disk(str(out / "preference" / "train"))
    assert pref.column_names == ["prompt_ids", "chosen_ids", "rejected_ids"]
    assert tok.decode(pref[1]["prompt_ids"]).startswith("<|im_start|>system\nBe polite.<|im_end|>")
    assert tok.decode(pref[1]["rejected_ids"]) == "Go away.<|im_end|>\n"
    kto = load_from_disk(str(out / "kto" / "train"))
    assert kto.column_names == ["prompt_ids", "completion_ids", "label"] and kto["label"] == [True, False]


def test_bad_row_error_names_file_row_and_fix_and_writes_nothing(project):
    fx.write_jsonl(project / "data" / "tickets.jsonl",
                   CHAT[:2] + [{"messages": t(("user", "hi"), ("bot", "hello"))}])
    with pytest.raises(DataError) as e:
        run_data_stage(fx.make_args([{"path": "data/tickets.jsonl", "format": "messages"}]), "s")
    assert str(e.value) == (
        "data/tickets.jsonl line 3: role 'bot' has no mapping in roles (turn 2 of 'messages') (fix: set `roles: "
        "{bot: assistant, ...}` on the dataset, listing every role the file uses (a `roles` block replaces the "
        "default mapping)); listed in out/data/bad-rows.jsonl. Fix the row, or set on_bad_row: drop to train "
        "without it")
    # no output: only the report of the bad rows
    assert sorted(p.relative_to(project / "out").as_posix() for p in (project / "out").rglob("*")) == [
        "data", "data/bad-rows.jsonl"]


def test_on_bad_row_error_collects_every_bad_row_before_failing(project):
    """A file with many bad rows needs one run to list them all, not one run per row."""
    bad = [{"messages": t(("user", "hi"), ("bot", "x"))}, {"messages": "oops"}, "{not json"]
    fx.write_jsonl(project / "data" / "tickets.jsonl", CHAT[:2] + bad + CHAT[:2] + bad)
    fx.write_jsonl(project / "data" / "more.jsonl", [{"prompt": "p"}])
    ds = [{"path": "data/tickets.jsonl", "format": "messages"}, {"path": "data/more.jsonl", "format": "preference"}]
    with pytest.raises(DataError) as e:
        run_data_stage(fx.make_args(ds), "s")
    assert str(e.value).startswith("7 bad rows in data/more.jsonl, data/tickets.jsonl; every one is listed in "
                                   "out/data/bad-rows.jsonl. The first: data/tickets.jsonl line 3: role 'bot'")
    report = [json.loads(line) for line in (project / "out/data/bad-rows.jsonl").read_text().splitlines()]
    assert [(r["dataset"], r["row"], r["code"]) for r in report] == [
        ("data/tickets.jsonl", 3, "FT505"), ("data/tickets.jsonl", 4, "FT504"), ("data/tickets.jsonl", 5, "FT502"),
        ("data/tickets.jsonl", 8, "FT505"), ("data/tickets.jsonl", 9, "FT504"), ("data/tickets.jsonl", 10, "FT502"),
        ("data/more.jsonl", 1, "FT503")]
    assert all(r["hint"] for r in report)


def test_bad_rows_dropped_are_listed(project):
    fx.write_jsonl(project / "data" / "tickets.jsonl",
                   CHAT[:2] + ["{not json", {"messages": t(("user", "hi"), ("bot", "hello"))}, {"chat": []},
                               {"messages": t(("user", "only a question"))}])
    m = run_data_stage(fx.make_args([{"path": "data/tickets.jsonl", "format": "messages"}], on_bad_row="drop"), "s")
    assert [(d.row, d.reason.split(" (")[0]) for d in m.dropped] == [
        (3, "FT502: cannot be read: not valid JSON: Expecting property name enclosed in double quotes"),
        (4, "FT505: role 'bot' has no mapping in roles"),
        (5, "FT503: missing column 'messages'"),
        (6, "no trained tokens")]
    assert all(d.dataset == "data/tickets.jsonl" for d in m.dropped)
    assert (m.datasets[0].rows_in, m.datasets[0].rows_out, m.datasets[0].dropped) == (6, 2, 4)


def test_truncate_counts_and_drop_lists(project):
    long = {"messages": t(("user", "Hello"), ("assistant", "The sea is wide and blue. " * 20))}
    fx.write_jsonl(project / "data" / "long.jsonl", CHAT[:3] + [long])
    ds = [{"path": "data/long.jsonl", "format": "messages"}]
    m = run_data_stage(fx.make_args(ds, max_seq_len=64), "s")
    assert m.truncated == 1 and m.datasets[0].truncated == 1 and m.dropped == []
    [cut] = m.truncated_rows  # listed with its length, not only counted
    assert (cut.dataset, cut.row, cut.kept) == ("data/long.jsonl", 4, 64) and cut.tokens > 64
    assert max(len(r) for r in load_from_disk("out/data/sft/train")["input_ids"]) == 64
    m = run_data_stage(fx.make_args(ds, max_seq_len=64, truncation="drop"), "s")
    assert m.truncated == 0 and len(m.dropped) == 1 and m.dropped[0].row == 4
    assert m.dropped[0].reason.endswith("longer than max_seq_len 64 (truncation: drop)")
    # a prompt filling max_seq_len leaves nothing to train: dropped even when truncating
    fx.write_jsonl(project / "data" / "long.jsonl", PC + [{"prompt": "The sea is wide. " * 30, "completion": "Yes."}])
    m = run_data_stage(fx.make_args([{"path": "data/long.jsonl", "format": "prompt_completion"}], max_seq_len=64), "s")
    assert [d.row for d in m.dropped] == [2] and m.truncated == 0
    assert m.dropped[0].reason.startswith("no trained tokens left after truncation to max_seq_len 64")


def test_raw_text_is_split_never_truncated(project):
    """A document longer than max_seq_len becomes max_seq_len pieces (whatever `truncation` says); with packing the
    pieces are separate sequences of the packed rows; every token of every document is kept, in order."""
    docs = [{"text": "The sea is wide and blue. " * 30}, {"text": "The quick brown fox."},
            {"text": "Open Settings and choose Reset password. " * 12}]
    fx.write_jsonl(project / "data" / "docs.jsonl", docs)
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained("tok")
    whole = [tok(d["text"])["input_ids"] + [tok.eos_token_id] for d in docs]
    assert max(len(w) for w in whole) > 2 * 64
    for truncation in ("truncate", "drop"):
        ds = [{"path": "data/docs.jsonl", "format": "text"}]
        m = run_data_stage(fx.make_args(ds, max_seq_len=64, truncation=truncation, packing=True), "s")
        assert m.truncated == 0 and m.dropped == [] and m.truncated_rows == []
        report = m.datasets[0]
        assert (report.rows_in, report.rows_out, report.split) == (3, 3, 2)
        assert report.pieces == sum(-(-len(w) // 64) for w in whole)
        rows = load_from_disk("out/data/sft/train")
        pieces = []
        for r in rows:
            assert len(r["input_ids"]) <= 64 and all(r["completion_mask"])
            start = 0
            for n in r["seq_lengths"]:
                pieces.append(r["input_ids"][start:start + n])
                start += n
        expected = [w[k:k + 64] for w in whole for k in range(0, len(w), 64)]
        assert sorted(pieces) == sorted(expected)  # every token kept; no piece crosses a document
        assert sum(map(len, pieces)) == sum(map(len, whole))


def test_dataset_weights_mix_the_training_split(project):
    """A weight takes a dataset's training examples that many times (a fraction: a seeded sample); the validation
    split is held out first and not weighted; the same settings give the same rows."""
    chat = [{"messages": t(("user", f"Hello {i}"), ("assistant", "Hi."))} for i in range(12)]
    alpaca = [{"instruction": f"Say {i}.", "output": f"{i}."} for i in range(10)]
    fx.write_jsonl(project / "data" / "w-chat.jsonl", chat)
    fx.write_jsonl(project / "data" / "w-alpaca.jsonl", alpaca)
    ds = [{"path": "data/w-chat.jsonl", "format": "messages", "weight": 2},
          {"path": "data/w-alpaca.jsonl", "format": "alpaca", "weight": 0.5}]
    m = run_data_stage(fx.make_args(ds, val_fraction=0.25), "s")
    assert [r.weight for r in m.datasets] == [2, 0.5]
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained("tok")
    texts = [tok.decode(r) for r in load_from_disk("out/data/sft/train")["input_ids"]]
    val = [tok.decode(r) for r in load_from_disk("out/data/sft/validation")["input_ids"]]
    chat_val = sum("Hello" in v for v in val)
    alpaca_val = len(val) - chat_val
    assert len(val) == round(22 * 0.25)  # held out before weighting, once each
    assert sum("Hello" in x for x in texts) == 2 * (12 - chat_val)
    assert sum("Say" in x for x in texts) == round(0.5 * (10 - alpaca_val))
    assert m.groups["sft"].splits["train"].rows == len(texts)
    run_data_stage(fx.make_args(ds, val_fraction=0.25, output_dir="out/again"), "s")
    assert load_from_disk("out/again/sft/train")["input_ids"] == load_from_disk("out/data/sft/train")["input_ids"]


def test_all_rows_dropped_is_an_error(project):
    fx.write_jsonl(project / "data" / "q.jsonl", [{"messages": t(("user", "only a question"))}])
    with pytest.raises(DataError, match="no sft examples left from data/q.jsonl.*row 1: no trained tokens"):
        run_data_stage(fx.make_args([{"path": "data/q.jsonl", "format": "messages"}], on_bad_row="drop"), "s")


def test_packing(project):
    ds = ALL[:5]
    plain = run_data_stage(fx.make_args(ds, output_dir="out/plain", max_seq_len=64), "s")
    m = run_data_stage(fx.make_args(ds, max_seq_len=64, packing=True), "s")
    rows = load_from_disk("out/data/sft/train")
    assert rows.column_names == ["input_ids", "completion_mask", "seq_lengths"]
    assert all(len(r["input_ids"]) <= 64 and sum(r["seq_lengths"]) == len(r["input_ids"]) for r in rows)
    unpacked = load_from_disk("out/plain/sft/train")
    pieces = []
    for r in rows:
        start = 0
        for n in r["seq_lengths"]:
            pieces.append((r["input_ids"][start:start + n], r["completion_mask"][start:start + n]))
            start += n
    assert sorted(pieces) == sorted(zip(unpacked["input_ids"], unpacked["completion_mask"]))
    stats = m.groups["sft"].splits["train"].packing
    assert stats.sequences == len(unpacked) == plain.groups["sft"].splits["train"].rows
    assert stats.rows == len(rows) < len(unpacked)
    assert stats.fill_ratio == round(sum(len(p[0]) for p in pieces) / (len(rows) * 64), 4)
    run_data_stage(fx.make_args(ds, output_dir="out/again", max_seq_len=64, packing=True), "s")
    assert load_from_disk("out/again/sft/train")[:] == rows[:]  # deterministic


def test_split_sizes_and_determinism(project):
    m = run_data_stage(fx.make_args(ALL, val_fraction=0.25), "s")
    assert {g: (r.splits["train"].rows, r.splits["validation"].rows) for g, r in m.groups.items()} == {
        "sft": (10, 3), "preference": (2, 1), "kto": (1, 1)}
    run_data_stage(fx.make_args(ALL, val_fraction=0.25, output_dir="out/again"), "s")
    run_data_stage(fx.make_args(ALL, val_fraction=0.25, seed=1, output_dir="out/seed1"), "s")
    a, b, c = (load_from_disk(f"out/{d}/sft/validation")["input_ids"] for d in ("data", "again", "seed1"))
    assert a == b and a != c
    train = load_from_disk("out/data/sft/train")["input_ids"]
    assert not set(map(tuple, a)) & set(map(tuple, train))


def fingerprint(**kw):
    kw.setdefault("datasets", [{"path": "data/chat.jsonl", "format": "messages"}])
    return run_data_stage(fx.make_args(kw.pop("datasets"), **kw), kw.pop("sha", "s")).fingerprint


def test_fingerprint_follows_template_data_and_settings_only(project):
    base = fingerprint()
    assert fingerprint(output_dir="out/elsewhere", pipeline="renamed") == base
    (project / "same.jinja").write_text(CHATML)
    assert fingerprint(model={"base": "tok", "chat_template": "same.jinja"}) == base
    (project / "other.jinja").write_text(CHATML.replace("'\\n' }}{% else %}", "'\\n\\n' }}{% else %}"))
    assert fingerprint(model={"base": "tok", "chat_template": "other.jinja"}) != base
    assert fingerprint(max_seq_len=100) != base
    data = project / "data" / "chat.jsonl"
    data.write_bytes(data.read_bytes().replace(b"The answer is 3.", b"The answer is 3!"))
    assert fingerprint() != base


def _stage_args_file(project: Path, args) -> str:
    path = project / "stages" / "01-data" / "args.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(args.model_dump_json(indent=2))
    return "stages/01-data/args.json"


def test_a_complete_stage_is_not_redone_and_an_edit_redoes_it(project, capsys):
    """The data stage has no skip of its own: the entry point skips it while its completion stamp matches the
    args file, the data files, the tokenizer files and the template; an edited data file runs it again."""
    from ftplan_runtime.__main__ import main
    from ftplan_runtime.stamps import TOKENIZER_FILES

    path = _stage_args_file(project, fx.make_args(ALL))
    assert main([path]) == 0
    out = project / "out/data"
    first = Manifest.read(out)
    stamp = json.loads((out / COMPLETE_MARKER).read_text())
    assert stamp["args_sha256"] == hashlib.sha256((project / path).read_bytes()).hexdigest()
    tok = [f"tok/{n}" for n in TOKENIZER_FILES if (project / "tok" / n).is_file()]
    assert tok and sorted(stamp["inputs"]) == sorted(
        [f"data/{n}.jsonl" for n in ("alpaca", "chat", "kto", "pc", "pref", "sharegpt", "text")] + tok)
    mtime = (out / "manifest.json").stat().st_mtime_ns
    capsys.readouterr()
    assert main([path]) == 0
    assert "stage 'data' is complete; nothing to do" in capsys.readouterr().err
    assert (out / "manifest.json").stat().st_mtime_ns == mtime
    data = project / "data" / "chat.jsonl"
    data.write_bytes(data.read_bytes().replace(b"The answer is 3.", b"The answer is 3!"))
    assert main([path]) == 0
    assert "data/chat.jsonl changed since it last ran" in capsys.readouterr().err
    assert Manifest.read(out).fingerprint != first.fingerprint  # the manifest keeps it, as information


def test_failed_rerun_leaves_previous_output_intact_but_incomplete(project, capsys):
    """A rerun that fails on a new bad row keeps the previous output but removes its completion stamp, so
    nothing built on the old output counts as complete."""
    from ftplan_runtime.__main__ import main
    from ftplan_runtime.stamps import check

    path = _stage_args_file(project, fx.make_args(ALL))
    assert main([path]) == 0
    before = (project / "out/data/manifest.json").read_text()
    fx.write_jsonl(project / "data" / "chat.jsonl", CHAT + [{"messages": "oops"}])
    assert main([path]) == 1
    assert "data/chat.jsonl line 9" in capsys.readouterr().err
    assert (project / "out/data/manifest.json").read_text() == before
    assert not (project / "out/data" / COMPLETE_MARKER).exists()
    assert check(path).reason == "its last run did not finish"
    assert sorted(p.name for p in (project / "out").iterdir()) == ["data"]  # no temp folder left


def test_nothing_changes_silently(project, capsys):
    """Unused columns, empty answers and conversations that train nothing at the end are said, in the log and
    the manifest, with the same codes ``ftplan check`` uses."""
    rows = [{**CHAT[0], "id": 1, "source": "web"}, {"messages": t(("user", "hi"), ("assistant", ""))},
            {"messages": t(("user", "a"), ("assistant", "b"), ("user", "c"))}] + CHAT[1:4]
    fx.write_jsonl(project / "data" / "chat.jsonl", rows)
    m = run_data_stage(fx.make_args([{"path": "data/chat.jsonl", "format": "messages"}]), "s")
    assert m.datasets[0].unused_columns == ["id", "source"]
    assert [(w.row, w.code) for w in m.warnings] == [(2, "FT512"), (3, "FT506")] and m.datasets[0].warnings == 2
    err = capsys.readouterr().err
    assert "column(s) 'id', 'source' not read by format messages; ignored" in err
    assert "2 row warning(s) (FT506 1, FT512 1)" in err


def test_tool_calls_render_through_a_template_that_supports_them(project):
    tools_template = (
        "{% if tools %}<|im_start|>system\n{{ tools | tojson }}<|im_end|>\n{% endif %}"
        "{% for m in messages %}<|im_start|>{{ m.role }}\n"
        "{% if m.role == 'assistant' %}{% generation %}{{ m.content }}"
        "{% for c in m.tool_calls or [] %}<tool_call>{{ c.function | tojson }}</tool_call>{% endfor %}"
        "<|im_end|>{% endgeneration %}\n{% else %}{{ m.content }}<|im_end|>\n{% endif %}{% endfor %}"
        "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
    (project / "tools.jinja").write_text(tools_template)
    row = {"conversations": [{"from": "human", "value": "weather?"},
                             {"from": "function_call", "value": json.dumps({"name": "weather", "arguments": {}})},
                             {"from": "observation", "value": "sunny"}, {"from": "gpt", "value": "Sunny."}],
           "tools": json.dumps([{"name": "weather", "parameters": {"type": "object"}}])}
    fx.write_jsonl(project / "data" / "tools.jsonl", [row] * 3)
    ds = [{"path": "data/tools.jsonl", "format": "sharegpt"}]
    args = fx.make_args(ds, model={"base": "tok", "chat_template": "tools.jinja"})
    run_data_stage(args, "s")
    from transformers import AutoTokenizer

    ids = load_from_disk("out/data/sft/train")["input_ids"][0]
    text = AutoTokenizer.from_pretrained(args.model.base).decode(ids)
    assert "weather" in text and "tool_call" in text.replace(" ", "")
    # the built-in ChatML cannot render calls: refused, never flattened away
    with pytest.raises(DataError, match="cannot render tool calls"):
        run_data_stage(fx.make_args(ds, model={"base": "tok", "chat_template": "chatml"}), "s2")
