"""``ftplan init``: the starter pipeline passes ``check`` on the GPU it was written for, picks LoRA only where LoRA
fits, explains its keys, points editors at the schema, and never replaces a file."""

from __future__ import annotations

import re
from io import StringIO
from pathlib import Path

import jsonschema
import pytest
import yaml
from rich.console import Console

from ftplan.api import check_file, check_text, plan_files
from ftplan.cli import main
from ftplan.diagnostics import Severity
from ftplan.json_schema import SCHEMA_FILE, pipeline_json_schema


def init(*args: str) -> tuple[int, str, str]:
    """Run ``ftplan init ARGS`` in-process: (exit code, stdout, stderr)."""
    out, err = StringIO(), StringIO()
    status = main(["init", *args], out=Console(file=out, soft_wrap=True), err=Console(file=err, soft_wrap=True))
    return status, out.getvalue(), err.getvalue()


def sft_stage(path: Path) -> dict:
    """The starter's SFT stage, parsed."""
    return yaml.safe_load(path.read_text(encoding="utf-8"))["stages"][1]


# model, GPU -> what the starter trains: LoRA where it fits, else QLoRA, smaller micro-batches last
PAIRS = [
    ("llama-3.1-8b", "rtx-4090", "lora", 2),
    ("qwen2.5-0.5b", "h100-sxm-80gb", "lora", 2),
    ("llama-3.1-8b", "t4", "qlora", 2),
    ("llama-3.1-70b", "a100-sxm-80gb", "qlora", 2),
    ("gemma-3-27b", "rtx-4090", "qlora", 1),
    ("gemma-2-9b", "rtx-4090", "qlora", 2),
    ("mixtral-8x7b", "h100-sxm-80gb", "qlora", 2),
]


@pytest.mark.parametrize("model, gpu, adapter, micro_batch", PAIRS)
def test_the_starter_passes_check_and_fits_the_gpu(tmp_path, model, gpu, adapter, micro_batch):
    path = tmp_path / "pipeline.yaml"
    status, out, err = init("--model", model, "--gpu", gpu, "-o", str(path))
    assert (status, err) == (0, ""), err
    assert out.startswith(f"wrote {path}: {model} {'LoRA' if adapter == 'lora' else 'QLoRA'} r16")
    result = check_file(path)
    errors = [f"{d.code} {d.message}" for d in result.diagnostics if d.severity is Severity.ERROR]
    assert errors == [] and result.ok
    assert result.estimates["sft"].verdict == "fits"
    assert result.ctx.gpu.key == gpu and result.ctx.shape.key == model
    stage = sft_stage(path)
    assert (stage["adapter"]["type"], stage["micro_batch"]) == (adapter, micro_batch)
    assert stage["micro_batch"] * stage["grad_accum"] == 16
    assert f"estimated peak {result.estimates['sft'].peak_bytes / 2**30:.1f} of" in out


@pytest.mark.parametrize("model, gpu", [(m, g) for m, g, adapter, _ in PAIRS if adapter == "qlora"])
def test_qlora_is_picked_only_where_lora_does_not_fit(tmp_path, model, gpu):
    path = tmp_path / "pipeline.yaml"
    assert init("--model", model, "--gpu", gpu, "-o", str(path))[0] == 0
    text = path.read_text(encoding="utf-8")
    as_lora = text.replace("type: qlora", "type: lora").replace("micro_batch: 1 ", "micro_batch: 2 ")
    verdict = check_text(as_lora, "lora.yaml", tmp_path).estimates["sft"].verdict
    assert verdict in ("tight", "oom")


def test_a_gpu_without_bf16_trains_in_fp16_and_gemma2_with_eager_attention(tmp_path):
    path = tmp_path / "t4.yaml"
    assert init("--model", "gemma-2-2b", "--gpu", "t4", "-o", str(path))[0] == 0
    stage = sft_stage(path)
    assert (stage["precision"], stage["attention"]) == ("fp16", "eager")
    assert check_file(path).ok


def test_a_model_without_hub_id_gets_a_local_folder_and_its_architecture(tmp_path):
    path = tmp_path / "tiny.yaml"
    assert init("--model", "ftplan-tiny", "--gpu", "l4", "-o", str(path))[0] == 0
    model = yaml.safe_load(path.read_text(encoding="utf-8"))["model"]
    assert model == {"base": "./models/ftplan-tiny", "architecture": "ftplan-tiny", "chat_template": "tokenizer"}
    result = check_file(path)
    assert result.ok and [d.code for d in result.diagnostics if d.severity is Severity.WARNING] == ["FT414"]


def test_a_hub_id_names_the_model_too(tmp_path):
    path = tmp_path / "p.yaml"
    assert init("--model", "Qwen/Qwen2.5-7B-Instruct", "--gpu", "h100", "-o", str(path))[0] == 0
    data = yaml.safe_load(path.read_text(encoding="utf-8"))
    assert (data["name"], data["model"]["base"], data["hardware"]["gpu"]) == (
        "qwen2.5-7b-sft", "Qwen/Qwen2.5-7B-Instruct", "h100-sxm-80gb")


def test_the_starter_compiles(tmp_path):
    path = tmp_path / "pipeline.yaml"
    assert init("--model", "llama-3.2-1b", "--gpu", "l4", "--name", "my-bot", "-o", str(path))[0] == 0
    result = check_file(path)
    files = plan_files(result, "plans/my-bot")
    assert {"run.sh", "plan.json", "stages/data/args.json", "stages/sft/args.json"} <= set(files)
    assert '"pipeline": "my-bot"' in files["stages/sft/args.json"]


# --- what the file says -----------------------------------------------------------------------------------------

def test_the_first_line_points_editors_at_the_schema_and_the_file_validates(tmp_path):
    path = tmp_path / "deep" / "er" / "pipeline.yaml"
    assert init("--model", "llama-3.1-8b", "--gpu", "rtx-4090", "-o", str(path))[0] == 0
    text = path.read_text(encoding="utf-8")
    first = re.match(r"# yaml-language-server: \$schema=(\S+)\n", text)
    assert first and not first.group(1).startswith("/")
    assert (path.parent / first.group(1)).resolve() == SCHEMA_FILE
    validator = jsonschema.Draft202012Validator(pipeline_json_schema())
    assert list(validator.iter_errors(yaml.safe_load(text))) == []


def test_every_key_with_a_value_is_explained(tmp_path):
    path = tmp_path / "pipeline.yaml"
    assert init("--model", "llama-3.1-8b", "--gpu", "rtx-4090", "-o", str(path))[0] == 0
    lines = path.read_text(encoding="utf-8").splitlines()
    body = [line for line in lines if not line.lstrip().startswith("#")]
    values = [line for line in body if re.match(r"^\s*(- )?[a-z_]+: \S", line)]
    assert len(values) > 20
    unexplained = [line for line in values if " # " not in line]
    assert unexplained == []
    assert all(len(line) <= 120 for line in lines)


def test_the_same_command_writes_the_same_bytes(tmp_path):
    one, two = tmp_path / "one.yaml", tmp_path / "two.yaml"
    assert init("--model", "qwen3-8b", "--gpu", "l40s", "-o", str(one))[0] == 0
    assert init("--model", "qwen3-8b", "--gpu", "l40s", "-o", str(two))[0] == 0
    assert one.read_bytes() == two.read_bytes().replace(b" two.yaml", b" one.yaml")  # the header names the file


def test_the_default_file_is_pipeline_yaml_in_the_current_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    status, out, _ = init("--model", "llama-3.2-1b", "--gpu", "a10g")
    assert status == 0 and out.splitlines()[-1] == "next: ftplan check pipeline.yaml"
    assert (tmp_path / "pipeline.yaml").read_text(encoding="utf-8").startswith(
        "# yaml-language-server: $schema=")


# --- refusals ---------------------------------------------------------------------------------------------------

def test_an_existing_file_is_never_replaced(tmp_path):
    path = tmp_path / "pipeline.yaml"
    path.write_text("name: mine\n", encoding="utf-8")
    status, out, err = init("--model", "llama-3.1-8b", "--gpu", "rtx-4090", "-o", str(path))
    assert (status, out) == (2, "")
    assert err.startswith(f"error: {path} already exists; ftplan init never replaces a file")
    assert path.read_text(encoding="utf-8") == "name: mine\n"


def test_an_unknown_model_gets_did_you_mean(tmp_path):
    path = tmp_path / "pipeline.yaml"
    status, out, err = init("--model", "llama-3.1-8bb", "--gpu", "rtx-4090", "-o", str(path))
    assert (status, out) == (2, "")
    assert err.startswith("error: unknown model 'llama-3.1-8bb'; did you mean 'llama-3.1-8b'")
    assert not path.exists()


def test_an_unknown_gpu_gets_did_you_mean(tmp_path):
    path = tmp_path / "pipeline.yaml"
    status, _, err = init("--model", "llama-3.1-8b", "--gpu", "rtx-4009", "-o", str(path))
    assert status == 2 and "error: unknown GPU 'rtx-4009'; did you mean 'rtx-4090'" in err
    assert not path.exists()


def test_an_invalid_name_is_refused(tmp_path):
    status, _, err = init("--model", "llama-3.1-8b", "--gpu", "rtx-4090", "--name", "my bot",
                          "-o", str(tmp_path / "p.yaml"))
    assert status == 2 and "invalid pipeline name 'my bot'" in err and not (tmp_path / "p.yaml").exists()


def test_a_model_too_big_for_one_gpu_is_refused_with_the_numbers(tmp_path):
    path = tmp_path / "pipeline.yaml"
    status, out, err = init("--model", "llama-3.1-405b", "--gpu", "h100-sxm-80gb", "-o", str(path))
    assert (status, out) == (1, "")
    assert re.match(r"error: llama-3\.1-405b does not fit one H100 SXM 80GB even with QLoRA and micro_batch 1: the "
                    r"SFT stage's estimated peak is \d+\.\d GiB of 79\.6 GiB", err)
    assert "choose a GPU with more memory" in err and not path.exists()


def test_init_needs_a_model_and_a_gpu():
    status, _, err = init("--model", "llama-3.1-8b")
    assert status == 2 and "the following arguments are required: --gpu" in err
