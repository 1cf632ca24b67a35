"""The local-input snapshot: model config, tokenizer, chat template, dataset heads, hashes and missing paths."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pytest

from ftplan.context import DatasetHead, LocalFile
from ftplan.inputs import HEAD_ROWS, file_sha256, read_inputs
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
    assert inputs.datasets == {("prep", 0): DatasetHead("tatsu-lab/alpaca", checked=False),
                               ("prep", 1): DatasetHead("teknium/OpenHermes-2.5", checked=False)}


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
    assert tok.special_tokens == {"<|eot|>", "<s>", "<x>"}
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
    assert tok.tokens == {"<unk>", "▁a", "</s>"} and tok.special_tokens == {"</s>"}
    assert "tok/chat_template.jinja" in [f.path for f in inputs.files]


def test_chat_template_in_tokenizer_config(model_dir):
    cfg = model_dir / "models/tiny/tokenizer_config.json"
    cfg.write_text(json.dumps({"eos_token": "<|eot|>", "chat_template": "{% for m in messages %}{% endfor %}"}))
    assert read_inputs(pipeline("models/tiny"), model_dir).tokenizer.has_chat_template is True


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


# --- datasets ---------------------------------------------------------------------------------------------

def test_jsonl_head_skips_blank_lines_and_stops_at_the_first_bad_line(tmp_path):
    write(tmp_path, "d.jsonl", '\ufeff{"a": 1}\n\n{"a": 2}\n{"a": \n{"a": 4}\n')
    head = read_inputs(pipeline(datasets=[("d.jsonl", "text")]), tmp_path).datasets[("prep", 0)]
    assert head == DatasetHead("d.jsonl", ({"a": 1}, {"a": 2}),
                               "line 4 is not valid JSON: Expecting value (column 7)", 4)


def test_jsonl_rows_must_be_objects_and_are_capped(tmp_path):
    write(tmp_path, "list.jsonl", '{"a": 1}\n[1, 2]\n')
    write(tmp_path, "long.jsonl", "".join(json.dumps({"i": i}) + "\n" for i in range(HEAD_ROWS + 50)))
    write(tmp_path, "empty.jsonl", "\n")
    write(tmp_path, "latin1.jsonl", b'{"a": 1}\n{"a": "caf\xe9"}\n')
    heads = read_inputs(pipeline(datasets=[("list.jsonl", "text"), ("long.jsonl", "text"), ("empty.jsonl", "text"),
                                           ("latin1.jsonl", "text")]), tmp_path).datasets
    assert (heads["prep", 0].error, heads["prep", 0].error_row) == ("line 2 is a list, not a JSON object", 2)
    assert len(heads["prep", 1].rows) == HEAD_ROWS and heads["prep", 1].error is None
    assert heads["prep", 1].rows[-1] == {"i": HEAD_ROWS - 1}
    assert (heads["prep", 2].rows, heads["prep", 2].error) == ((), "the file has no rows")
    assert heads["prep", 3] == DatasetHead("latin1.jsonl", ({"a": 1},), "line 2 is not UTF-8 text", 2)


def test_json_values_python_cannot_hold_are_row_errors(tmp_path):
    write(tmp_path, "big.jsonl", '{"a": 1}\n{"n": ' + "1" * 5000 + "}\n")
    write(tmp_path, "deep.json", "[" + "[" * 100_000)
    heads = read_inputs(pipeline(datasets=[("big.jsonl", "text"), ("deep.json", "text")]), tmp_path).datasets
    assert heads["prep", 0] == DatasetHead("big.jsonl", ({"a": 1},), "line 2 is not valid JSON: Exceeds the limit "
                                           "(4300 digits) for integer string conversion: value has 5000 digits", 2)
    assert heads["prep", 1] == DatasetHead("deep.json", (), "item 1 is not valid JSON: values are nested too deeply", 1)


def test_json_list_head(tmp_path):
    write(tmp_path, "ok.json", json.dumps([{"i": i} for i in range(HEAD_ROWS + 1)]))
    write(tmp_path, "obj.json", '{"data": []}')
    write(tmp_path, "item.json", '[{"a": 1}, "text"]')
    write(tmp_path, "broken.json", '[{"a": 1},\n {"a": }]')
    heads = read_inputs(pipeline(datasets=[(p, "text") for p in ("ok.json", "obj.json", "item.json", "broken.json")]),
                        tmp_path).datasets
    assert len(heads["prep", 0].rows) == HEAD_ROWS and heads["prep", 0].error is None
    assert heads["prep", 1].error == "expected a JSON list of row objects ([{...}, ...]) at the top level"
    assert (heads["prep", 2].error, heads["prep", 2].error_row) == ("item 2 is a string, not a JSON object", 2)
    assert heads["prep", 3] == DatasetHead("broken.json", ({"a": 1},),
                                           "item 2 is not valid JSON: Expecting value (line 2, column 8)", 2)


def test_csv_head(tmp_path):
    write(tmp_path, "ok.csv", 'text,label\nhello,1\n"a, b",2\n')
    write(tmp_path, "short.csv", "text,label\nhello,1\nbye\n")
    write(tmp_path, "long.csv", "text\nhello,1\n")
    write(tmp_path, "latin1.csv", b"text\nok\ncaf\xe9\n" + b"more\n" * 300)
    heads = read_inputs(pipeline(datasets=[("ok.csv", "text"), ("short.csv", "text"), ("long.csv", "text"),
                                           ("latin1.csv", "text")]), tmp_path).datasets
    assert heads["prep", 0] == DatasetHead("ok.csv", ({"text": "hello", "label": "1"}, {"text": "a, b", "label": "2"}))
    assert heads["prep", 1] == DatasetHead("short.csv", ({"text": "hello", "label": "1"},),
                                           "row 2 has fewer fields than the header", 2)
    assert heads["prep", 2] == DatasetHead("long.csv", (), "row 1 has more fields than the header", 1)
    assert heads["prep", 3] == DatasetHead("latin1.csv", ({"text": "ok"},), "row 2 is not UTF-8 text", 2)


def test_parquet_and_folders_are_hashed_but_not_checked(tmp_path):
    write(tmp_path, "d.parquet", b"PAR1....PAR1")
    write(tmp_path, "ds/train/data-00000.arrow", b"arrow")
    write(tmp_path, "ds/dataset_dict.json", "{}")
    write(tmp_path, "ds/.hidden", "x")
    inputs = read_inputs(pipeline(datasets=[("d.parquet", "text"), ("./ds", "text")]), tmp_path)
    assert inputs.datasets == {("prep", 0): DatasetHead("d.parquet", checked=False),
                               ("prep", 1): DatasetHead("ds", checked=False)}
    assert [f.path for f in inputs.files] == ["d.parquet", "ds/dataset_dict.json", "ds/train/data-00000.arrow"]
    assert inputs.files[0].sha256 == sha(b"PAR1....PAR1")


def test_unsupported_local_file_type(tmp_path):
    write(tmp_path, "notes.txt", "hello")
    head = read_inputs(pipeline(datasets=[("notes.txt", "text")]), tmp_path).datasets["prep", 0]
    assert head.error == "'.txt' files cannot be read: use .jsonl, .json, .csv or .parquet"


def test_missing_dataset_paths_are_recorded_with_their_key_path(tmp_path):
    inputs = read_inputs(pipeline(datasets=[("data/train.jsonl", "alpaca"), ("./data", "text"),
                                            ("org/name", "text"), ("/nonexistent/x", "text")]), tmp_path)
    assert inputs.missing[:2] == ((("stages", 0, "datasets", 0, "path"), "data/train.jsonl"),
                                  (("stages", 0, "datasets", 1, "path"), "data"))
    assert inputs.missing[2][0] == ("stages", 0, "datasets", 3, "path")
    assert list(inputs.datasets) == [("prep", 2)]


# --- determinism ------------------------------------------------------------------------------------------

def test_snapshot_is_relative_sorted_and_independent_of_the_folder(model_dir, tmp_path_factory):
    write(model_dir, "data/b.jsonl", '{"x": 1}\n')
    write(model_dir, "data/a.csv", "x\n1\n")
    p = pipeline("./models/tiny", datasets=[("data/b.jsonl", "text"), (str(model_dir / "data/a.csv"), "text")])
    first = read_inputs(p, model_dir)
    assert str(model_dir) not in repr(first)
    assert [f.path for f in first.files] == sorted(f.path for f in first.files)
    assert first.datasets["prep", 1].path == "data/a.csv"
    other = tmp_path_factory.mktemp("copy") / "project"
    shutil.copytree(model_dir, other)
    moved = read_inputs(pipeline("./models/tiny", datasets=[("data/b.jsonl", "text"),
                                                            (str(other / "data/a.csv"), "text")]), other)
    assert moved == first
