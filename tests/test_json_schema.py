"""The pipeline's JSON Schema as editors and plain validators use it: every example validates, a mistake inside a
stage is reported at its own path, the GPU and architecture fields list the catalogs and accept what ``check``
accepts, and the committed schema file is what ``ftplan schema`` prints."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import zipfile
from io import StringIO
from pathlib import Path

import jsonschema
import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st
from jsonschema.exceptions import best_match
from rich.console import Console

from ftplan.catalog import GPUS, MODELS, get_gpu, get_model
from ftplan.cli import main
from ftplan.json_schema import DIALECT, SCHEMA_FILE, SCHEMA_ID, pipeline_json_schema

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = sorted((ROOT / "examples").glob("*.yaml"))
LANGUAGE_SERVER_LINE = re.compile(r"# yaml-language-server: \$schema=(\S+)\n")

PIPELINE = """\
name: demo
model:
  base: meta-llama/Llama-3.1-8B
hardware:
  gpu: h100-sxm-80gb
stages:
  - id: prep
    kind: data
    max_seq_len: 2048
    datasets:
      - {path: data/train.jsonl, format: alpaca}
      - {path: data/prefs.jsonl, format: preference}
  - id: sft
    kind: sft
    data: prep
    learning_rate: 2.0e-4
    adapter: {type: lora, r: 16}
  - id: dpo
    kind: dpo
    input: sft
    data: prep
    adapter: continue
    learning_rate: 5.0e-6
"""
"""A valid data -> sft -> dpo pipeline that the tests below break in one place."""


@pytest.fixture(scope="module")
def schema() -> dict:
    """The schema ``ftplan schema`` prints."""
    return pipeline_json_schema()


@pytest.fixture(scope="module")
def validator(schema) -> jsonschema.Draft202012Validator:
    """A plain Draft 2020-12 validator of the schema."""
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema)


def errors_of(validator, data) -> list[tuple[str, str]]:
    """(path, message) of every error the validator reports, path as ``stages/1/learning_rate``."""
    return [("/".join(map(str, e.absolute_path)), e.message) for e in validator.iter_errors(data)]


def pipeline() -> dict:
    """``PIPELINE`` parsed."""
    return yaml.safe_load(PIPELINE)


def test_the_schema_names_its_dialect_and_itself(schema):
    assert schema["$schema"] == DIALECT == "https://json-schema.org/draft/2020-12/schema"
    assert schema["$id"] == SCHEMA_ID
    assert jsonschema.validators.validator_for(schema) is jsonschema.Draft202012Validator


@pytest.mark.parametrize("example", EXAMPLES, ids=lambda p: p.stem)
def test_every_example_validates(validator, example):
    data = yaml.safe_load(example.read_text(encoding="utf-8"))
    assert errors_of(validator, data) == []


@pytest.mark.parametrize("example", EXAMPLES, ids=lambda p: p.stem)
def test_every_example_points_editors_at_the_committed_schema(example):
    first = LANGUAGE_SERVER_LINE.match(example.read_text(encoding="utf-8"))
    assert first, f"{example.name} does not start with the yaml-language-server line"
    assert (example.parent / first.group(1)).resolve() == SCHEMA_FILE


def test_the_base_pipeline_validates(validator):
    assert errors_of(validator, pipeline()) == []


# --- a mistake inside a stage is reported where it is --------------------------------------------------------

def test_a_wrong_type_inside_an_sft_stage_is_reported_at_the_field(validator):
    data = pipeline()
    data["stages"][1]["learning_rate"] = "fast"
    assert errors_of(validator, data) == [("stages/1/learning_rate", "'fast' is not of type 'number'")]


def test_an_out_of_range_value_inside_a_dpo_stage_is_reported_at_the_field(validator):
    data = pipeline()
    data["stages"][2]["beta"] = 0
    assert [path for path, _ in errors_of(validator, data)] == ["stages/2/beta"]


def test_an_unknown_key_in_an_sft_stage_is_reported_at_the_stage(validator):
    data = pipeline()
    data["stages"][1]["lr"] = 1e-4
    assert errors_of(validator, data) == [("stages/1", "Additional properties are not allowed ('lr' was unexpected)")]


def test_a_key_of_another_stage_kind_is_unknown_in_this_one(validator):
    data = pipeline()
    data["stages"][1]["beta"] = 0.1  # a DPO field in an SFT stage
    assert errors_of(validator, data) == [("stages/1",
                                          "Additional properties are not allowed ('beta' was unexpected)")]


def test_a_bad_dataset_format_is_reported_at_the_format(validator):
    data = pipeline()
    data["stages"][0]["datasets"][0]["format"] = "jsonl"
    [(path, message)] = errors_of(validator, data)
    assert path == "stages/0/datasets/0/format"
    assert message.startswith("'jsonl' is not one of ['alpaca', 'sharegpt', 'messages'")


def test_a_mistake_inside_a_dataset_is_reported_inside_it(validator):
    data = pipeline()
    data["stages"][0]["datasets"][0]["columns"] = {"instruction": "q", "answer": "a"}  # alpaca has `output`
    assert errors_of(validator, data) == [("stages/0/datasets/0/columns",
                                          "Additional properties are not allowed ('answer' was unexpected)")]
    data = pipeline()
    data["stages"][0]["datasets"][1]["max_rows"] = 0
    assert [path for path, _ in errors_of(validator, data)] == ["stages/0/datasets/1/max_rows"]


def test_a_mistake_inside_an_adapter_is_reported_inside_it(validator):
    data = pipeline()
    data["stages"][1]["adapter"]["r"] = "sixteen"
    assert errors_of(validator, data) == [("stages/1/adapter/r", "'sixteen' is not of type 'integer'")]
    data = pipeline()
    data["stages"][1]["adapter"] = {"type": "full", "r": 16}  # a full fine-tune has no rank
    assert errors_of(validator, data) == [("stages/1/adapter",
                                          "Additional properties are not allowed ('r' was unexpected)")]


def test_an_unknown_stage_kind_is_reported_at_the_kind(validator):
    data = pipeline()
    data["stages"][1]["kind"] = "sftt"
    [(path, message)] = errors_of(validator, data)
    assert path == "stages/1/kind" and message.startswith("'sftt' is not one of ['data', 'sft'")
    data = pipeline()
    del data["stages"][1]["kind"]
    assert errors_of(validator, data) == [("stages/1", "'kind' is a required property")]


def test_the_best_match_a_validator_reports_points_into_the_stage(validator):
    data = pipeline()
    data["stages"][2]["micro_batch"] = -1
    error = best_match(validator.iter_errors(data))
    assert list(error.absolute_path) == ["stages", 2, "micro_batch"]


def test_no_openapi_discriminator_is_left(schema):
    text = json.dumps(schema)
    assert '"discriminator"' not in text and '"oneOf"' not in text


# --- the catalogs ---------------------------------------------------------------------------------------------

def _catalog_branches(prop: dict) -> tuple[dict, dict]:
    """The enum branch and the other-spellings branch of a catalog property."""
    enum, spelling, null = prop["anyOf"]
    assert null == {"type": "null"}
    return enum, spelling


def test_gpu_and_architecture_list_the_catalog_keys(schema):
    gpu, _ = _catalog_branches(schema["$defs"]["HardwareSpec"]["properties"]["gpu"])
    architecture, _ = _catalog_branches(schema["$defs"]["ModelSpec"]["properties"]["architecture"])
    assert gpu["enum"] == list(GPUS)
    assert architecture["enum"] == list(MODELS)


def with_gpu(value) -> dict:
    data = pipeline()
    data["hardware"]["gpu"] = value
    return data


def with_architecture(value) -> dict:
    data = pipeline()
    data["model"]["architecture"] = value
    return data


def test_an_unknown_gpu_or_architecture_is_an_error_at_its_path(validator):
    assert [p for p, _ in errors_of(validator, with_gpu("h100-sxm-81gb"))] == ["hardware/gpu"]
    assert [p for p, _ in errors_of(validator, with_architecture("llama-3.1-9b"))] == ["model/architecture"]
    assert validator.is_valid(with_gpu(None)) and validator.is_valid(with_architecture(None))


def _respelt(name: str, draw) -> str:
    """``name`` in random letter case, its hyphens written as ``check`` also reads them."""
    words = ["".join(c.upper() if draw(st.booleans()) else c for c in word) for word in name.split("-")]
    out = words[0]
    for word in words[1:]:
        out += draw(st.sampled_from(["-", " ", "_", "  ", " _ "])) + word
    return draw(st.sampled_from(["", " ", "_"])) + out + draw(st.sampled_from(["", " ", "__"]))


@st.composite
def gpu_spellings(draw) -> str:
    """A catalog GPU name respelt, sometimes broken (a character dropped, doubled or replaced)."""
    spec = draw(st.sampled_from(list(GPUS.values())))
    name = _respelt(draw(st.sampled_from([spec.key, *spec.aliases])), draw)
    if draw(st.booleans()):
        i = draw(st.integers(0, len(name) - 1))
        name = name[:i] + draw(st.sampled_from(["", name[i] * 2, "x", "-", "0"])) + name[i + 1:]
    return name


@st.composite
def model_spellings(draw) -> str:
    """A catalog key or hub id in random letter case, sometimes broken."""
    shape = draw(st.sampled_from(list(MODELS.values())))
    name = draw(st.sampled_from([shape.key, *shape.hub_ids]))
    name = "".join(c.upper() if draw(st.booleans()) else c for c in name)
    if draw(st.booleans()):
        i = draw(st.integers(0, len(name) - 1))
        name = name[:i] + draw(st.sampled_from(["", name[i] * 2, "x", "_", "."])) + name[i + 1:]
    return draw(st.sampled_from(["", " "])) + name + draw(st.sampled_from(["", "  "]))


@settings(max_examples=300, deadline=None)
@given(gpu_spellings())
def test_the_schema_accepts_exactly_the_gpu_spellings_check_accepts(validator, name):
    assert validator.is_valid(with_gpu(name)) == (get_gpu(name) is not None), name


@settings(max_examples=300, deadline=None)
@given(model_spellings())
def test_the_schema_accepts_exactly_the_architecture_spellings_check_accepts(validator, name):
    assert validator.is_valid(with_architecture(name)) == (get_model(name) is not None), name


# --- descriptions ---------------------------------------------------------------------------------------------

def _descriptions(node):
    """Every node of the schema that has a description."""
    if isinstance(node, dict):
        if isinstance(node.get("description"), str):
            yield node
        for value in node.values():
            yield from _descriptions(value)
    elif isinstance(node, list):
        for value in node:
            yield from _descriptions(value)


def test_descriptions_are_markdown(schema):
    nodes = list(_descriptions(schema))
    assert len(nodes) > 200
    for node in nodes:
        assert not re.search(r"``[^`]+``", node["description"]), node["description"]  # no reStructuredText
        assert node["markdownDescription"] == node["description"]
    adapter = schema["$defs"]["SftStage"]["properties"]["adapter"]["description"]
    assert adapter == "What to train: `{type: lora|qlora|dora, r, alpha, ...}` or `{type: full}`."


# --- the committed file ---------------------------------------------------------------------------------------

def test_the_committed_schema_file_is_what_ftplan_schema_prints():
    out, err = StringIO(), StringIO()
    status = main(["schema"], out=Console(file=out, width=80), err=Console(file=err))
    assert (status, err.getvalue()) == (0, "")
    assert json.loads(out.getvalue()) == pipeline_json_schema()
    assert SCHEMA_FILE.read_text(encoding="utf-8") == out.getvalue(), (
        "ftplan/schemas/pipeline.schema.json is stale: regenerate it with "
        "`.venv/bin/python -m ftplan schema > ftplan/schemas/pipeline.schema.json`")


@pytest.mark.slow
def test_the_wheel_ships_the_schema_file(tmp_path):
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w",
                    str(tmp_path), str(ROOT)], check=True, capture_output=True)
    (wheel,) = tmp_path.glob("ftplan-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        assert archive.read("ftplan/schemas/pipeline.schema.json") == SCHEMA_FILE.read_bytes()


def test_the_readme_annotated_pipeline_validates_and_passes_check(validator):
    from ftplan.api import check_text

    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    [block] = [b for b in re.findall(r"```yaml\n(.*?)```", readme, re.DOTALL) if "yaml-language-server" in b]
    assert errors_of(validator, yaml.safe_load(block)) == []
    result = check_text(block, "README.md", ROOT / "examples")  # its datasets are the examples' files
    assert result.ok, [d.message for d in result.diagnostics]
    assert list(result.estimates) == ["data", "sft", "dpo", "merge", "gguf"]
