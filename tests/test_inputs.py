"""The local-input snapshot: model config, tokenizer, chat template, dataset heads, hashes and missing paths."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pytest

from ftplan.context import LocalFile
from ftplan.data.scan import DatasetScan
from ftplan.inputs import FULL_READ_BYTES, HEAD_ROWS, file_sha256, read_inputs
from ftplan.schemas import Pipeline


def pipeline(base: str = "meta-llama/Llama-3.1-8B", datasets=(), **model) -> Pipeline:
    """A valid pipeline with one data stage holding ``datasets`` (``(path, format)`` pairs)."""
    stages = [{"id": "sft", "kind": "sft", "data": "prep", "learning_rate": 1e-4, "adapter": {"type": "lora"}}]
    if datasets:
        stages.insert(0, {"id": "prep", "kind": "data", "max_seq_len": 512,
                          "datasets": [{"path": p, "format": f} for p, f in datasets]})
    return Pipeline.model_validate({"name": "t", "model": {"base": base, **model}, "hardware": {"gpu": "l4"},
                                    "stages": stages})


def write(root: Path, rel: str, content: str | bytes) -> Path:
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    (path.write_bytes if isinstance(content, bytes) else path.write_text)(content)
    return path


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@pytest.fixture
def model_dir(tmp_path: Path) -> Path:
    """A local model folder: config, fast tokenizer with added special tokens, tokenizer config, weights."""
    write(tmp_path, "models/tiny/config.json", json.dumps({"model_type": "llama", "hidden_size": 64}))
    write(tmp_path, "models/tiny/tokenizer.json", json.dumps({
        "model": {"type": "BPE", "vocab": {"a": 0, "b": 1, "<s>": 2}},
        "added_tokens": [{"id": 5, "content": "<|eot|>", "special": True},
                         {"id": 6, "content": "hello", "special": False}]}))
    write(tmp_path, "models/tiny/tokenizer_config.json", json.dumps({
        "eos_token": {"content": "<|eot|>"}, "bos_token": "<s>", "additional_special_tokens": ["<x>"]}))
    write(tmp_path, "models/tiny/.cache/ignored.lock", "")
    write(tmp_path, "models/tiny/model.safetensors", bytes(range(256)) * 12_288)  # 3 MiB
    return tmp_path


# --- hub only ---------------------------------------------------------------------------------------------

def test_hub_only_pipeline_reads_nothing(tmp_path):
    inputs = read_inputs(pipeline(datasets=[("tatsu-lab/alpaca", "alpaca"), ("teknium/OpenHermes-2.5", "sharegpt")]),
                         tmp_path)
    assert inputs.files == () and inputs.missing == ()
    assert inputs.model_config is None and inputs.model_config_error is None and inputs.tokenizer is None
    assert inputs.datasets == {}
    assert inputs.hub_datasets == ((("stages", 0, "datasets", 0, "path"), "tatsu-lab/alpaca"),
                                   (("stages", 0, "datasets", 1, "path"), "teknium/OpenHermes-2.5"))


# --- model folder -----------------------------------------------------------------------------------------

def test_local_model_folder(model_dir):
    inputs = read_inputs(pipeline("./models/tiny"), model_dir)
    assert inputs.model_config == {"model_type": "llama", "hidden_size": 64}
    assert [f.path for f in inputs.files] == [
        "models/tiny/config.json", "models/tiny/model.safetensors", "models/tiny/tokenizer.json",
        "models/tiny/tokenizer_config.json"]
    config = (model_dir / "models/tiny/config.json").read_bytes()
    assert inputs.files[0] == LocalFile("models/tiny/config.json", sha(config), len(config))
    tok = inputs.tokenizer
    assert tok.vocab_size == 7
    assert tok.eos_token == "<|eot|>"
    assert tok.tokens == {"a", "b", "<s>", "<|eot|>", "hello"}
    assert tok.has_chat_template is False


def test_weight_files_hash_size_and_first_and_last_mib(model_dir):
    weights = (model_dir / "models/tiny/model.safetensors").read_bytes()
    mib = 1 << 20
    expected = sha(b"ftplan-partial-v1\0%d\0" % len(weights) + weights[:mib] + weights[-mib:])
    inputs = read_inputs(pipeline("models/tiny"), model_dir)
    (entry,) = [f for f in inputs.files if f.path.endswith(".safetensors")]
    assert entry == LocalFile("models/tiny/model.safetensors", expected, 3 * mib)
    small = write(model_dir, "w.bin", b"x" * 100)
    assert file_sha256(small, 100) == sha(b"x" * 100)


@pytest.mark.parametrize("config, error", [
    ("{not json", "config.json is not valid JSON: Expecting property name enclosed in double quotes "
                  "(line 1, column 2)"),
    ("[1, 2]", "config.json must hold a JSON object"),
    (None, "'models/tiny' has no config.json"),
])
def test_model_config_errors(model_dir, config, error):
    path = model_dir / "models/tiny/config.json"
    path.unlink()
    if config is not None:
        path.write_text(config)
    inputs = read_inputs(pipeline("models/tiny"), model_dir)
    assert (inputs.model_config, inputs.model_config_error) == (None, error)


def test_model_base_that_is_a_file(tmp_path):
    write(tmp_path, "model.gguf", b"GGUF")
    inputs = read_inputs(pipeline("model.gguf"), tmp_path)
    assert inputs.model_config_error == \
        "'model.gguf' is a file; model.base must be a folder with config.json or a hub id"


def test_missing_local_model_and_tokenizer_are_recorded(tmp_path):
    inputs = read_inputs(pipeline("../weights/m", tokenizer="./tok"), tmp_path)
    assert inputs.missing == ((("model", "base"), "../weights/m"), (("model", "tokenizer"), "tok"))
    assert inputs.model_config_error is None


# --- tokenizer and chat template --------------------------------------------------------------------------

def test_separate_tokenizer_folder_with_unigram_vocab_and_jinja_template(model_dir):
    unigram = {"model": {"type": "Unigram", "vocab": [["<unk>", 0], ["▁a", -1]]}}
    write(model_dir, "tok/tokenizer.json", json.dumps(unigram))
    write(model_dir, "tok/tokenizer_config.json", json.dumps({
        "eos_token": "</s>", "added_tokens_decoder": {"2": {"content": "</s>", "special": True}}}))
    write(model_dir, "tok/chat_template.jinja", "{{ messages }}")
    inputs = read_inputs(pipeline("models/tiny", tokenizer="tok"), model_dir)
    tok = inputs.tokenizer
    assert (tok.vocab_size, tok.eos_token, tok.has_chat_template) == (3, "</s>", True)
    assert tok.tokens == {"<unk>", "▁a", "</s>"}
    assert "tok/chat_template.jinja" in [f.path for f in inputs.files]


def test_chat_template_in_tokenizer_config(model_dir):
    cfg = model_dir / "models/tiny/tokenizer_config.json"
    cfg.write_text(json.dumps({"eos_token": "<|eot|>", "chat_template": "{% for m in messages %}{% endfor %}"}))
    tok = read_inputs(pipeline("models/tiny"), model_dir).tokenizer
    assert tok.has_chat_template is True and tok.chat_template == "{% for m in messages %}{% endfor %}"


def test_folder_without_tokenizer_files_gives_no_tokenizer(model_dir):
    (model_dir / "empty").mkdir()
    assert read_inputs(pipeline("models/tiny", tokenizer="empty"), model_dir).tokenizer is None


def test_chat_template_file(tmp_path):
    write(tmp_path, "templates/chat.jinja", "{{ bos_token }}")
    inputs = read_inputs(pipeline(chat_template="./templates/chat.jinja"), tmp_path)
    assert inputs.chat_template == "{{ bos_token }}"
    assert [f.path for f in inputs.files] == ["templates/chat.jinja"]
    missing = read_inputs(pipeline(chat_template="templates/other.jinja"), tmp_path)
    assert missing.missing == ((("model", "chat_template"), "templates/other.jinja"),)
    assert read_inputs(pipeline(chat_template="chatml"), tmp_path).missing == ()


def test_chat_template_file_must_be_readable_text(tmp_path):
    (tmp_path / "folder.jinja").mkdir()
    write(tmp_path, "binary.jinja", b"\x00\x01{{ x }}")
    write(tmp_path, "latin1.jinja", b"{{ x }}\n\xe9")
    for name, problem in (("folder.jinja", "'folder.jinja' is a folder, not a template file"),
                          ("binary.jinja", "'binary.jinja' is a binary file, not a Jinja template"),
                          ("latin1.jinja", "'latin1.jinja' is not UTF-8 text (line 2); save it as UTF-8")):
        inputs = read_inputs(pipeline(chat_template=name), tmp_path)
        assert (inputs.chat_template, inputs.chat_template_error) == (None, problem)


# --- datasets ---------------------------------------------------------------------------------------------

def problems(scan: DatasetScan) -> list[tuple[str, str, str]]:
    """(where, code, message) of every problem a scan kept."""
    return [(f.where, f.problem.code, f.problem.message) for f in scan.findings]


def test_jsonl_rows_are_all_judged_and_a_bad_line_does_not_stop_the_rest(tmp_path):
    write(tmp_path, "d.jsonl", '\ufeff{"text": "a"}\n\n{"text": "b"}\n{"text": \n{"text": "d"}\n')
    scan = read_inputs(pipeline(datasets=[("d.jsonl", "text")]), tmp_path).datasets[(0, 0)]
    assert (scan.rows_read, scan.bad_rows, scan.complete, scan.rows_total) == (4, 1, True, 4)
    assert problems(scan) == [("line 4", "FT502", "cannot be read: not valid JSON: Expecting value (column 10)")]


def test_jsonl_rows_must_be_objects_utf8_and_not_too_deep(tmp_path):
    write(tmp_path, "list.jsonl", '{"text": "a"}\n[1, 2]\n')
    write(tmp_path, "empty.jsonl", "\n")
    write(tmp_path, "latin1.jsonl", b'{"text": "a"}\n{"text": "caf\xe9"}\n')
    write(tmp_path, "deep.jsonl", '{"text": "a"}\n' + "[" * 100_000 + "\n" + '{"text": "c"}\n')
    write(tmp_path, "big.jsonl", '{"text": "a"}\n{"n": ' + "1" * 5000 + "}\n")
    scans = read_inputs(pipeline(datasets=[(p, "text") for p in ("list.jsonl", "empty.jsonl", "latin1.jsonl",
                                                                  "deep.jsonl", "big.jsonl")]), tmp_path).datasets
    assert problems(scans[0, 0]) == [("line 2", "FT504", "is a list, not an object")]
    assert scans[0, 1].rows_read == 0 and scans[0, 1].file_problem is None
    assert problems(scans[0, 2]) == [("line 2", "FT502", "cannot be read: not UTF-8 text (byte 0xe9 at column 14); "
                                      "save the file as UTF-8")]
    assert problems(scans[0, 3])[0][:2] == ("line 2", "FT502") and "nested too deeply" in problems(scans[0, 3])[0][2]
    assert scans[0, 3].rows_read == 3  # the line after the deep one is still read
    assert problems(scans[0, 4])[0][:2] == ("line 2", "FT502") and "4300 digits" in problems(scans[0, 4])[0][2]


def test_files_up_to_the_size_limit_are_read_whole_bigger_ones_up_to_head_rows(tmp_path):
    line = json.dumps({"text": "x" * 200}) + "\n"
    rows = FULL_READ_BYTES // len(line) + 10
    write(tmp_path, "big.jsonl", line * rows)
    write(tmp_path, "small.jsonl", line * (HEAD_ROWS + 5))
    p = pipeline(datasets=[("big.jsonl", "text"), ("small.jsonl", "text")])
    scans = read_inputs(p, tmp_path).datasets
    assert (scans[0, 0].rows_read, scans[0, 0].complete, scans[0, 0].rows_total) == (HEAD_ROWS, False, rows)
    assert (scans[0, 1].rows_read, scans[0, 1].complete) == (HEAD_ROWS + 5, True)
    full = read_inputs(p, tmp_path, full_data=True).datasets
    assert (full[0, 0].rows_read, full[0, 0].complete) == (rows, True)


def test_a_bad_row_far_into_the_file_is_found(tmp_path):
    """The newcomer's case: `role: human` at line 201 (or 20,001) used to pass with "0 errors"."""
    good = json.dumps({"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]})
    bad = json.dumps({"messages": [{"role": "human", "content": "q"}, {"role": "assistant", "content": "a"}]})
    write(tmp_path, "chat.jsonl", "\n".join([good] * 20_000 + [bad]) + "\n")
    scan = read_inputs(pipeline(datasets=[("chat.jsonl", "messages")]), tmp_path).datasets[0, 0]
    assert scan.complete and scan.rows_read == 20_001
    assert problems(scan) == [("line 20001", "FT505", "role 'human' has no mapping in roles (turn 1 of 'messages')")]


def test_json_files_stream_lists_wrapped_lists_and_json_lines(tmp_path):
    write(tmp_path, "ok.json", json.dumps([{"text": str(i)} for i in range(3)]))
    write(tmp_path, "wrapped.json", json.dumps({"data": [{"text": "a"}, {"text": "b"}]}, indent=1))
    write(tmp_path, "lines.json", '{"text": "a"}\n{"text": "b"}\n')
    write(tmp_path, "item.json", '[{"text": "a"}, "text"]')
    write(tmp_path, "broken.json", '[{"text": "a"},\n {"text": }]')
    write(tmp_path, "two.json", '{"a": [], "b": []}')
    names = ("ok.json", "wrapped.json", "lines.json", "item.json", "broken.json", "two.json")
    scans = read_inputs(pipeline(datasets=[(p, "text") for p in names]), tmp_path).datasets
    assert [scans[0, j].rows_read for j in range(3)] == [3, 2, 2] and not any(problems(scans[0, j]) for j in range(3))
    assert problems(scans[0, 3]) == [("item 2 (line 1)", "FT504", "is a string, not an object")]
    assert scans[0, 4].file_problem == ("item 2 (line 2, column 11) is not valid JSON: Expecting value; the rest of "
                                        "the file cannot be read")
    assert "exactly one list of rows" in scans[0, 5].file_problem


def test_csv_rows(tmp_path):
    write(tmp_path, "ok.csv", 'text,label\nhello,1\n"a, b",2\n')
    write(tmp_path, "ragged.csv", "text,label\nhello,1\nbye\nok,2\n")
    write(tmp_path, "latin1.csv", b"text\nok\ncaf\xe9\n" + b"more\n" * 300)
    scans = read_inputs(pipeline(datasets=[("ok.csv", "text"), ("ragged.csv", "text"), ("latin1.csv", "text")]),
                        tmp_path).datasets
    assert scans[0, 0].rows_read == 2 and scans[0, 0].unused_columns == ("label",)
    assert problems(scans[0, 1]) == [("row 2 (line 3)", "FT502", "cannot be read: has 1 fields, fewer than the "
                                      "header's 2 (a comma or quote inside a value needs the value in double quotes)")]
    assert scans[0, 1].rows_read == 3
    assert problems(scans[0, 2]) == [("row 2 (line 3)", "FT502", "cannot be read: column 'text' is not UTF-8 text; "
                                      "save the file as UTF-8")]
    assert scans[0, 2].rows_read == 302


def test_parquet_and_folders_are_hashed_but_not_checked(tmp_path):
    write(tmp_path, "d.parquet", b"PAR1....PAR1")
    write(tmp_path, "ds/train/data-00000.arrow", b"arrow")
    write(tmp_path, "ds/dataset_dict.json", "{}")
    write(tmp_path, "ds/.hidden", "x")
    inputs = read_inputs(pipeline(datasets=[("d.parquet", "text"), ("./ds", "text")]), tmp_path)
    assert inputs.datasets == {(0, 0): DatasetScan("d.parquet", checked=False),
                               (0, 1): DatasetScan("ds", checked=False)}
    assert [f.path for f in inputs.files] == ["d.parquet", "ds/dataset_dict.json", "ds/train/data-00000.arrow"]
    assert inputs.files[0].sha256 == sha(b"PAR1....PAR1")


def test_unsupported_local_file_type(tmp_path):
    write(tmp_path, "notes.txt", "hello")
    scan = read_inputs(pipeline(datasets=[("notes.txt", "text")]), tmp_path).datasets[0, 0]
    assert scan.file_problem == "'.txt' files cannot be read: use .jsonl, .json, .csv or .parquet"


def test_missing_dataset_paths_are_recorded_with_their_key_path(tmp_path):
    inputs = read_inputs(pipeline(datasets=[("data/train.jsonl", "alpaca"), ("./data", "text"),
                                            ("org/name", "text"), ("/nonexistent/x", "text")]), tmp_path)
    assert inputs.missing[:2] == ((("stages", 0, "datasets", 0, "path"), "data/train.jsonl"),
                                  (("stages", 0, "datasets", 1, "path"), "data"))
    assert inputs.missing[2][0] == ("stages", 0, "datasets", 3, "path")
    assert inputs.datasets == {}
    assert inputs.hub_datasets == ((("stages", 0, "datasets", 2, "path"), "org/name"),)


# --- determinism ------------------------------------------------------------------------------------------

def test_snapshot_is_relative_sorted_and_independent_of_the_folder(model_dir, tmp_path_factory):
    write(model_dir, "data/b.jsonl", '{"x": 1}\n')
    write(model_dir, "data/a.csv", "x\n1\n")
    p = pipeline("./models/tiny", datasets=[("data/b.jsonl", "text"), (str(model_dir / "data/a.csv"), "text")])
    first = read_inputs(p, model_dir)
    assert str(model_dir) not in repr(first)
    assert [f.path for f in first.files] == sorted(f.path for f in first.files)
    assert first.datasets[0, 1].path == "data/a.csv"
    other = tmp_path_factory.mktemp("copy") / "project"
    shutil.copytree(model_dir, other)
    moved = read_inputs(pipeline("./models/tiny", datasets=[("data/b.jsonl", "text"),
                                                            (str(other / "data/a.csv"), "text")]), other)
    assert moved == first
