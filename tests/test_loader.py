"""The loader: YAML 1.2 scalars, duplicate keys, syntax errors, source positions and display paths."""

from __future__ import annotations

import math

import pytest

from ftplan.diagnostics import FtplanError, Span
from ftplan.loader import MAX_DEPTH, load_yaml, read_pipeline_file
from ftplan.sourcemap import display_path, key_path_text


def errors(text: str) -> list[str]:
    """``line:col CODE message`` of every diagnostic the loader raises for ``text``."""
    with pytest.raises(FtplanError) as info:
        load_yaml(text, "p.yaml")
    return [f"{d.span.line}:{d.span.col} {d.code} {d.message}" for d in info.value.diagnostics]


# --- scalars: YAML 1.2 core, not 1.1 ----------------------------------------------------------------------

def test_scalars_follow_yaml_1_2_core():
    data, _ = load_yaml(
        "a: yes\nb: no\nc: on\nd: off\ne: true\nf: False\ng: 2024-01-01\nh: 2024-01-01T10:00:00Z\n"
        "i: 24:00:00\nj: 1e-5\nk: 0x1f\nl: 0o17\nm: 1_000\nn: ~\no:\np: .inf\nq: -3\nr: '3'\ns: 2.0e-4\n",
        "p.yaml")
    assert data == {
        "a": "yes", "b": "no", "c": "on", "d": "off", "e": True, "f": False, "g": "2024-01-01",
        "h": "2024-01-01T10:00:00Z", "i": "24:00:00", "j": 1e-5, "k": 31, "l": 15, "m": "1_000", "n": None,
        "o": None, "p": math.inf, "q": -3, "r": "3", "s": 2.0e-4,
    }
    assert type(data["j"]) is float and type(data["q"]) is int


def test_keys_are_always_strings():
    data, _ = load_yaml("1: a\ntrue: b\nnull: c\n", "p.yaml")
    assert data == {"1": "a", "true": "b", "null": "c"}


def test_merge_keys_and_aliases_resolve_and_point_at_the_anchor():
    text = "defaults: &d\n  lr: 1\n  r: 2\nstage:\n  <<: *d\n  r: 3\nlist: [*d]\n"
    data, sm = load_yaml(text, "p.yaml")
    assert data["stage"] == {"r": 3, "lr": 1}
    assert data["list"] == [{"lr": 1, "r": 2}]
    assert sm.span(("stage", "lr")) == Span("p.yaml", 2, 7)
    assert sm.span(("stage", "r")) == Span("p.yaml", 6, 6)


# --- errors -----------------------------------------------------------------------------------------------

def test_duplicate_keys_top_level_and_nested_all_reported():
    text = ("name: a\nstages:\n  - id: sft\n    learning_rate: 1.0e-4\n    r: 2\n"
            "    learning_rate: 2.0e-4\nname: b\n")
    assert errors(text) == [
        "6:5 FT002 duplicate key 'learning_rate' (first at 4:5)",
        "7:1 FT002 duplicate key 'name' (first at 1:1)",
    ]


def test_duplicate_key_diagnostic_carries_parent_path_and_hint():
    with pytest.raises(FtplanError) as info:
        load_yaml("model:\n  base: a\n  base: b\n", "p.yaml")
    (d,) = info.value.diagnostics
    assert d.path == ("model",)
    assert d.hint == "remove one of them; YAML would silently keep only the last"


def test_syntax_error_has_parser_position_and_problem():
    assert errors("name: a\nmodel: {base: x\nhardware: {}\n") == [
        "3:9 FT001 invalid YAML: expected ',' or '}', but got ':' (while parsing a flow mapping at 2:8)"]


def test_bad_indentation_is_a_syntax_error():
    assert errors("model:\n  base: x\n tokenizer: y\n") == [
        "3:2 FT001 invalid YAML: expected <block end>, but found '<block mapping start>' "
        "(while parsing a block mapping at 1:1)"]


@pytest.mark.parametrize("text, where, message, hint", [
    ("model:\n  base: x\n  tokenizer:y\nhardware: {}\n", "3:3",
     "could not find expected ':' (while scanning a simple key; noticed at 4:1)",
     "write 'key: value', with a space after the ':'"),
    ("name: 'demo\nmodel: {}\n", "1:7", "found unexpected end of stream (while scanning a quoted scalar; "
     "noticed at 3:1)", "close the quote opened at 1:7"),
    ("quant: [q8_0, q4\n", "1:8", "expected ',' or ']', but got '<stream end>' (while parsing a flow sequence; "
     "noticed at 2:1)", "close the bracket opened at 1:8, or quote a value with ':' or ','"),
    ("stages:\n  - id: a\n    kind: data\n   - id: b\n", "4:4", "expected <block end>, but found "
     "'<block sequence start>' (while parsing a block collection at 2:3)",
     "check the indentation: this line must line up with the keys or list items above it"),
    ("a: *x\n", "1:4", "found undefined alias 'x'",
     "define the anchor ('&name') before the alias ('*name') that uses it"),
])
def test_common_syntax_errors_point_at_the_cause_with_a_hint(text, where, message, hint):
    with pytest.raises(FtplanError) as info:
        load_yaml(text, "p.yaml")
    (d,) = info.value.diagnostics
    assert (f"{d.span.line}:{d.span.col}", d.message, d.hint) == (where, f"invalid YAML: {message}", hint)


def test_tab_indentation_gets_a_hint():
    with pytest.raises(FtplanError) as info:
        load_yaml("model:\n\tbase: x\n", "p.yaml")
    (d,) = info.value.diagnostics
    assert (d.code, d.span) == ("FT001", Span("p.yaml", 2, 1))
    assert d.hint == "indent with spaces; YAML does not allow tabs for indentation"


def test_two_documents_are_an_error():
    assert errors("a: 1\n---\nb: 2\n") == [
        "2:1 FT001 invalid YAML: expected a single document in the stream, but found another document"]


def test_control_character_is_located():
    assert errors("a: 1\nb: x\x07y\n") == ["2:5 FT001 invalid YAML: character 0x7 is not allowed in YAML"]


@pytest.mark.parametrize("text", ["", "\n\n", "# only a comment\n", "---\n"])
def test_empty_file_is_an_error(text):
    assert errors(text) == ["1:1 FT007 the pipeline file is empty"]


@pytest.mark.parametrize("text, what", [("- a\n- b\n", "a list"), ("just text\n", "a single value"),
                                        ("\n\n42\n", "a single value")])
def test_top_level_must_be_a_mapping(text, what):
    (line,) = errors(text)
    assert line.endswith(f"FT007 the top level must be a mapping of keys, not {what}")


def test_unsupported_tags_are_errors():
    assert errors("a: !!python/object:os.system x\nb: !custom 1\nc: !!str 3\n") == [
        "1:4 FT008 unsupported YAML tag '!!python/object:os.system'",
        "2:4 FT008 unsupported YAML tag '!custom'",
    ]


def test_explicit_core_tags_are_checked():
    data, _ = load_yaml("a: !!str 3\nb: !!int '7'\n", "p.yaml")
    assert data == {"a": "3", "b": 7}
    assert errors("a: !!int seven\n") == ["1:4 FT008 cannot read 'seven' as !!int"]


def test_recursive_alias_is_an_error():
    assert errors("a: &x [1, *x]\n") == ["1:4 FT008 an alias refers to a mapping or list that contains it"]


def test_alias_bomb_is_stopped():
    lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
    lines += [f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 10) + "]" for i in range(1, 7)]
    (line,) = errors("\n".join(lines) + "\n")
    assert "FT008 the document expands to more than 100000 values" in line


def test_deep_nesting_is_an_error_not_a_recursion_crash():
    depth = MAX_DEPTH + 5
    (line,) = errors("a: " + "[" * depth + "]" * depth + "\n")
    assert f"FT001 invalid YAML: nesting is deeper than {MAX_DEPTH} levels" in line


def test_complex_keys_are_errors():
    assert errors("? [a, b]\n: 1\n") == ["1:3 FT008 a mapping key must be a plain word, not a mapping or list"]


# --- source map -------------------------------------------------------------------------------------------

def test_source_map_value_key_raw_and_fallback(sft_yaml):
    data, sm = load_yaml(sft_yaml, "pipeline.yaml")
    assert sm.span(("stages", 1, "learning_rate")) == Span("pipeline.yaml", 15, 20)
    assert sm.span(("stages", 1, "learning_rate"), key=True) == Span("pipeline.yaml", 15, 5)
    assert sm.raw(("stages", 1, "learning_rate")) == "2.0e-4"
    assert sm.span(("stages", 1, "adapter", "r")) == Span("pipeline.yaml", 16, 30)
    assert sm.span(("stages", 0, "datasets", 0, "format")) == Span("pipeline.yaml", 11, 42)
    # a missing key falls back to its parent: at the parent's key when it has one ...
    assert sm.span(("model", "revision")) == Span("pipeline.yaml", 2, 1)
    assert sm.span(("stages", 1, "adapter", "alpha")) == Span("pipeline.yaml", 16, 5)
    # ... and at the value for a list item, which has no key
    assert sm.span(("stages", 1, "epochs")) == Span("pipeline.yaml", 12, 5)
    assert sm.span(("stages", 7, "id")) == Span("pipeline.yaml", 6, 1)
    assert sm.span(()) == Span("pipeline.yaml", 1, 1)
    assert sm.span(("stages", 1), key=True) == Span("pipeline.yaml", 12, 5)
    assert sm.nearest(("stages", 1, "nope", 3)) == ("stages", 1)


def test_display_path_uses_stage_ids(sft_yaml):
    data, _ = load_yaml(sft_yaml, "pipeline.yaml")
    assert display_path(("stages", 1, "adapter", "r"), data) == "stages[sft].adapter.r"
    assert display_path(("stages", 0, "datasets", 0, "path"), data) == "stages[prep].datasets[0].path"
    assert display_path(("stages", 1), data) == "stages[sft]"
    assert display_path(("stages", 9), data) == "stages[9]"
    assert display_path(("hardware", "env", "A B"), data) == "hardware.env['A B']"
    assert display_path(("hardware", "env", "x\u202ey\n"), data) == "hardware.env['x\\u202ey\\n']"
    assert display_path((), data) == ""
    assert display_path(("stages", 1, "learning_rate")) == "stages[1].learning_rate"


def test_display_path_falls_back_to_index_for_duplicate_or_odd_ids():
    data = {"stages": [{"id": "a"}, {"id": "a"}, {"id": 3}, {"id": "x y"}, "text"]}
    assert [display_path(("stages", i)) for i in range(5)] == [f"stages[{i}]" for i in range(5)]
    assert [display_path(("stages", i), data) for i in range(5)] == [f"stages[{i}]" for i in range(5)]


def test_key_path_text_names_stages_by_the_ids_it_is_given():
    """The one key-path printer: plan.json and plan.md pass the validated pipeline's ids, diagnostics the file's."""
    ids = ["prep", "sft"]
    assert key_path_text(("stages", 1, "learning_rate"), ids) == "stages[sft].learning_rate"
    assert key_path_text(("stages", 1, "adapter", "targets", 0), ids) == "stages[sft].adapter.targets[0]"
    assert key_path_text(("stages", 2, "data"), ids) == "stages[2].data"  # no id for that index
    assert key_path_text(("hardware", "slurm", "extra", "mail type"), ids) == "hardware.slurm.extra['mail type']"
    assert key_path_text(("micro_batch",)) == "micro_batch"


# --- reading the file -------------------------------------------------------------------------------------

def test_read_pipeline_file_returns_text_and_exact_bytes(write_pipeline):
    path = write_pipeline("name: x\n")
    path.write_bytes(b"\xef\xbb\xbfname: caf\xc3\xa9\r\n")
    text, raw = read_pipeline_file(path)
    assert text == "name: café\r\n"
    assert raw == b"\xef\xbb\xbfname: caf\xc3\xa9\r\n"
    assert load_yaml(text, str(path))[0] == {"name": "café"}


def test_unreadable_pipeline_file_is_ft000(tmp_path):
    with pytest.raises(FtplanError) as info:
        read_pipeline_file(tmp_path / "nope.yaml")
    (d,) = info.value.diagnostics
    assert d.code == "FT000" and d.message == f"cannot read {tmp_path / 'nope.yaml'}: no such file"
    with pytest.raises(FtplanError) as info:
        read_pipeline_file(tmp_path)
    assert info.value.diagnostics[0].message == f"cannot read {tmp_path}: it is a folder"


def test_non_utf8_pipeline_file_is_located(write_pipeline):
    path = write_pipeline("")
    path.write_bytes(b"name: a\nmodel: caf\xe9\n")
    with pytest.raises(FtplanError) as info:
        read_pipeline_file(path)
    (d,) = info.value.diagnostics
    assert (d.code, d.span.line, d.span.col) == ("FT000", 2, 11)
    assert d.message.endswith("byte 0xe9 is not UTF-8 text")
