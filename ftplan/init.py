"""``ftplan init``: a commented starter pipeline (data -> SFT) for a catalog model on a catalog GPU.

The starter trains with LoRA when ``check`` says LoRA fits the GPU, else with QLoRA (then with a smaller
micro-batch), so the file it writes passes ``ftplan check`` as written. Its first line points editors at the
installed schema (``yaml-language-server``), and a comment beside each key says what it does.

``starter_pipeline`` only composes and checks text; ``write_new_file`` is the one step that touches disk, and it
never replaces a file.
"""

from __future__ import annotations

import errno
import os
import re
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING

from .catalog import GpuSpec, ModelShape, get_gpu, get_model, model_keys
from .diagnostics import Severity
from .json_schema import SCHEMA_FILE
from .suggest import did_you_mean
from .units import gib_amount, gib_number

if TYPE_CHECKING:  # pragma: no cover
    from .api import CheckResult
    from .estimate.types import StageEstimate

STARTER_DATASET = "HuggingFaceH4/no_robots"
"""The hub dataset the starter trains on until the user points it at their own: 10k human-written
conversations in ``messages`` format (a ``train`` split), small enough for a first run."""

MAX_SEQ_LEN = 2048
"""The starter's longest example in tokens (less when the model's context is shorter)."""

COMMENT_COLUMN = 40
"""Column where the comment beside a key starts (later for a longer line)."""


class InitError(Exception):
    """``ftplan init`` cannot write a starter: what is wrong and how to fix it; ``usage`` is True when the command
    line is at fault (an unknown model or GPU, a bad name), False when no starter passes ``check``."""

    def __init__(self, message: str, hint: str, *, usage: bool = True):
        super().__init__(message)
        self.message = message
        self.hint = hint
        self.usage = usage


@dataclass(frozen=True)
class Recipe:
    """What the starter's SFT stage trains and how it batches."""

    adapter: str
    """``lora`` or ``qlora``."""
    micro_batch: int
    """Sequences per GPU per forward pass."""
    grad_accum: int
    """Micro-batches per optimizer step."""


RECIPES: tuple[Recipe, ...] = (Recipe("lora", 2, 8), Recipe("qlora", 2, 8), Recipe("qlora", 1, 16))
"""Tried in order; the first one ``check`` passes with the SFT stage fitting the GPU is written. Each trains on 16
sequences per optimizer step."""


@dataclass(frozen=True)
class Starter:
    """A starter pipeline that passed ``check``."""

    text: str
    """The pipeline file."""
    recipe: Recipe
    """What its SFT stage trains."""
    model: ModelShape
    """The catalog model."""
    gpu: GpuSpec
    """The catalog GPU."""
    peak_bytes: int
    """The SFT stage's estimated peak per GPU."""


_Tried = tuple[Recipe, "CheckResult", "StageEstimate | None"]
"""A recipe that did not fit or pass: its check result and its SFT stage's estimate."""


def find_model(name: str) -> ModelShape:
    """The catalog model with this key or hub id; ``InitError`` with the closest keys when there is none."""
    shape = get_model(name)
    if shape is None:
        raise InitError(f"unknown model '{name}'",
                        did_you_mean(name, model_keys()) or "`ftplan models` lists the catalog keys")
    return shape


def find_gpu(name: str) -> GpuSpec:
    """The catalog GPU with this key or alias; ``InitError`` with the closest keys when there is none."""
    from .resolve import did_you_mean_gpu

    spec = get_gpu(name)
    if spec is None:
        raise InitError(f"unknown GPU '{name}'", did_you_mean_gpu(name) or "`ftplan gpus` lists the catalog keys")
    return spec


def schema_reference(pipeline_path: Path) -> str:
    """The installed schema file as the ``yaml-language-server`` line of ``pipeline_path`` names it: relative to
    the pipeline's folder (a ``file:`` URI where no relative path exists, e.g. another drive)."""
    try:
        rel = os.path.relpath(SCHEMA_FILE, pipeline_path.resolve().parent)
    except ValueError:
        return SCHEMA_FILE.as_uri()
    return PurePosixPath(*Path(rel).parts).as_posix()


def starter_pipeline(model: str, gpu: str, pipeline_path: Path, *, name: str | None = None) -> Starter:
    """The starter pipeline for ``model`` on one ``gpu``, to be written at ``pipeline_path``: the first recipe
    (LoRA, then QLoRA) that passes ``check`` with the SFT stage fitting the GPU. ``InitError`` for an unknown
    model or GPU, or when none fits."""
    from .api import check_text

    shape, spec = find_model(model), find_gpu(gpu)
    name = starter_name(name, shape)
    schema = schema_reference(pipeline_path)
    tried: list[_Tried] = []
    for recipe in RECIPES:
        text = render_starter(shape, spec, recipe, name=name, schema=schema, filename=pipeline_path.name)
        result = check_text(text, pipeline_path.name, pipeline_path.resolve().parent)
        estimate = result.estimates.get("sft")
        if result.ok and estimate is not None and estimate.verdict == "fits":
            return Starter(text, recipe, shape, spec, estimate.peak_bytes)
        tried.append((recipe, result, estimate))
    raise _nothing_fits(shape, spec, tried)


def starter_name(name: str | None, shape: ModelShape) -> str:
    """The pipeline name: ``name`` when it is a valid one (``InitError`` otherwise), else ``<model key>-sft``."""
    from pydantic import TypeAdapter, ValidationError

    from .schemas.base import Name

    if name is None:
        return f"{shape.key}-sft"
    try:
        return TypeAdapter(Name).validate_python(name)
    except ValidationError:
        raise InitError(f"invalid pipeline name '{name}'", "use letters, digits, '.', '_' and '-' (at most 64), "
                        "starting with a letter or digit") from None


def _nothing_fits(shape: ModelShape, spec: GpuSpec, tried: list[_Tried]) -> InitError:
    """Why no recipe was written: the last one's first error, or its peak against the card."""
    recipe, result, estimate = tried[-1]
    errors = [d for d in result.diagnostics if d.severity is Severity.ERROR and d.code != "FT101"]
    if errors:
        return InitError(f"the starter for {shape.key} on {spec.key} fails check: {errors[0].code} "
                         f"{errors[0].message}", errors[0].hint or "`ftplan check` on a hand-written pipeline "
                         "says more", usage=False)
    peak = gib_number(estimate.peak_bytes if estimate is not None else None)
    return InitError(f"{shape.key} does not fit one {spec.name} even with QLoRA and micro_batch "
                     f"{recipe.micro_batch}: the SFT stage's estimated peak is {peak} GiB of "
                     f"{gib_amount(spec.memory_gib)} "
                     "(a starter stays under 90 % of the card)",
                     "choose a GPU with more memory (`ftplan gpus`), or shard over several GPUs as "
                     "examples/llama3-70b-lora-8xh100.yaml does", usage=False)


def starter_base(shape: ModelShape) -> tuple[str, bool]:
    """The starter's ``model.base``: the catalog's instruction-tuned hub id when it lists one, else its first;
    a local folder named after the key when it lists none (then True: ``architecture`` must name the shape)."""
    if not shape.hub_ids:
        return f"./models/{shape.key}", True
    tuned = [h for h in shape.hub_ids if re.search(r"(instruct|-it|chat)$", h, re.IGNORECASE)]
    return (tuned or list(shape.hub_ids))[0], False


def starter_attention(shape: ModelShape) -> str:
    """``sdpa``, or ``eager`` for a family that transformers cannot load with sdpa (``check``'s FT308)."""
    from .checks.hardware import UNSUPPORTED_ATTENTION

    return "eager" if "sdpa" in UNSUPPORTED_ATTENTION.get(shape.family, {}) else "sdpa"


def render_starter(shape: ModelShape, spec: GpuSpec, recipe: Recipe, *, name: str, schema: str,
                   filename: str) -> str:
    """The starter pipeline's text: the ``yaml-language-server`` line, a header, each key with its comment."""
    base, local = starter_base(shape)
    precision = "bf16" if spec.bf16 else "fp16"
    seq = min(MAX_SEQ_LEN, shape.max_position_embeddings)
    lora = recipe.adapter == "lora"
    attention = starter_attention(shape)
    header = [
        f"# yaml-language-server: $schema={schema}",
        f"# A starter pipeline from `ftplan init --model {shape.key} --gpu {spec.key}`: the data stage prepares a",
        f"# chat dataset, then the sft stage fine-tunes {shape.key} with {'LoRA' if lora else 'QLoRA'} on one "
        f"{spec.name}.",
        "# Your editor completes and explains every key through the first line (`ftplan schema` prints the same).",
        "# From this file's folder:",
        f"#   ftplan check   {filename}",
        f"#   ftplan compile {filename} -o plans/{name} && bash plans/{name}/run.sh",
        "# Add dpo, merge and gguf stages as examples/llama3-8b-qlora-24gb.yaml does.",
    ]
    model = [(f"  base: {base}", "a local folder with config.json and weights (relative to this file)" if local
              else "hub id, or a local folder with config.json (relative to this file)")]
    if local:
        model.append((f"  architecture: {shape.key}", "the catalog shape `check` estimates with until the "
                                                      "folder exists"))
    body = [
        (f"name: {name}", "names the jobs and the default plan folder"),
        ("model:", None),
        *model,
        ("  chat_template: tokenizer", "the tokenizer's own chat template formats the conversations"),
        ("hardware:", None),
        (f"  gpu: {spec.key}", "the GPU `check` estimates memory for (`ftplan gpus` lists them)"),
        ("  gpus_per_node: 1", "one training process per GPU"),
        ("output_dir: outputs", "stage results go to outputs/<stage id>/"),
        ("stages:", None),
        ("  - id: data", "prepares the examples: reads, checks, tokenizes and splits them"),
        ("    kind: data", "data preparation"),
        ("    datasets:", None),
        ("      # A public chat dataset to start with. For your own, write `path: data/train.jsonl` with one", ""),
        ('      # {"messages": [{"role": "user", "content": ...}, ...]} per line: `check` reads its rows.', ""),
        (f"      - path: {STARTER_DATASET}", "a hub dataset id (read at run time) or a local file"),
        ("        format: messages", "role/content turns; also alpaca, sharegpt, prompt_completion, text"),
        (f"    max_seq_len: {seq}", "longest example in tokens; longer ones are cut (`truncation: drop`)"),
        ("    val_fraction: 0.05", "rows held out for the validation loss"),
        ("  - id: sft", "its results go to outputs/sft/"),
        ("    kind: sft", "supervised fine-tuning on the data stage's conversations"),
        ("    data: data", "the data stage above"),
        ("    adapter:", None),
        (f"      type: {recipe.adapter}", "LoRA on a 16-bit base: fits this GPU (qlora: a 4-bit base, less memory)"
         if lora else "QLoRA: LoRA on a 4-bit base, picked because LoRA does not fit this GPU"),
        ("      r: 16", "rank of the update matrices"),
        ("      alpha: 32", "the update is scaled by alpha / r"),
        ("    learning_rate: 2.0e-4", "peak learning rate, usual for LoRA"),
        ("    warmup_ratio: 0.03", "warm-up over the first 3 % of the steps, then cosine decay"),
        ("    epochs: 1", "passes over the training rows"),
        (f"    micro_batch: {recipe.micro_batch}", "sequences per GPU per forward pass: memory grows with it"),
        (f"    grad_accum: {recipe.grad_accum}", f"micro-batches per optimizer step: "
         f"{recipe.micro_batch * recipe.grad_accum} sequences per step"),
        (f"    precision: {precision}", "compute precision" + ("" if spec.bf16 else " (this GPU has no bf16)")),
        (f"    attention: {attention}", ("torch's fused attention" if attention == "sdpa" else
                                      f"sdpa cannot load a {shape.family} model")
         + (" (flash_attention_2 where it is installed)" if spec.flash_attention_2 else "")),
        ("    eval_steps: 50", "validation loss every 50 steps"),
        ("    save_steps: 100", "a resumable checkpoint every 100 steps"),
    ]
    return "\n".join([*header, *(_commented(code, note) for code, note in body)]) + "\n"


def _commented(code: str, note: str | None) -> str:
    """One line: the YAML, then its comment from ``COMMENT_COLUMN`` on."""
    if not note:
        return code
    return f"{code.ljust(COMMENT_COLUMN - 1)} # {note}"


def write_new_file(path: Path, text: str) -> None:
    """Create ``path`` (and its missing folders) holding ``text``; ``FileExistsError`` when it exists: a
    starter never replaces a file. ``NotADirectoryError`` when a folder on the way is a file."""
    for above in (path.parent, *path.parent.parents):
        if above.exists() and not above.is_dir():
            raise NotADirectoryError(errno.ENOTDIR, "not a folder", str(above))
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "x", encoding="utf-8", newline="\n") as handle:
        handle.write(text)
