"""Fuzz the front end: mutated pipeline files must give diagnostics, never a crash.

Each case mutates a valid pipeline, either its structure (delete, rename or move keys, swap value types,
duplicate stages; then dumped back to YAML) or its text (garbage and unicode characters, truncation, duplicated
or swapped lines, broken indentation, huge numbers, deep nesting, alias bombs), and runs the target on it.

    $ python bench/fuzz.py                      # 10,000 cases through load + validate + read_inputs
    $ python bench/fuzz.py --cases 500 --seed 7
    $ python bench/fuzz.py --target api         # the whole `ftplan check` path (ftplan.api.check_text)

A case is *clean* (no diagnostic), *diagnostics-only* (every diagnostic has a code and a span inside the
file), or a *crash* (any other exception, or a diagnostic without code or span). Exits 1 on any crash and
prints the first few crashing inputs. ``tests/test_fuzz.py`` drives the same mutations through hypothesis.
"""

from __future__ import annotations

import argparse
import copy
import functools
import os
import posixpath
import random
import re
import sys
import tempfile
import traceback
from pathlib import Path
from typing import Any, Callable, Protocol, Sequence

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ftplan.diagnostics import Diagnostic, FtplanError  # noqa: E402
from ftplan.inputs import read_inputs  # noqa: E402
from ftplan.loader import load_yaml  # noqa: E402
from ftplan.schema_errors import validate_pipeline  # noqa: E402

FILENAME = "pipeline.yaml"

SEED_TEXT = """\
name: support-bot
model:
  base: ./models/tiny
  chat_template: ./chat.jinja
hardware:
  gpu: h100-sxm-80gb
  gpus_per_node: 8
  nodes: 2
  env: {NCCL_DEBUG: WARN}
  slurm:
    partition: gpu
    time: "12:00:00"
    extra: {mail-type: END}
stages:
  - id: data
    kind: data
    max_seq_len: 4096
    packing: true
    datasets:
      - {path: data/chat.jsonl, format: sharegpt}
      - {path: ./data/prefs.json, format: preference, columns: {prompt: question}}
      - {path: data/rows.csv, format: text}
      - {path: tatsu-lab/alpaca, format: alpaca, max_rows: 1000}
  - id: sft
    kind: sft
    data: data
    learning_rate: 2.0e-4
    distributed: zero3
    adapter: {type: lora, r: 16, alpha: 32, targets: [q_proj, v_proj]}
    report_to: &trackers [tensorboard]
  - id: dpo
    <<: &batch {micro_batch: 1, grad_accum: 16}
    kind: dpo
    input: sft
    data: data
    learning_rate: 5.0e-6
    distributed: {strategy: zero2, offload_optimizer: true}
    adapter: continue
    report_to: *trackers
  - id: merge
    kind: merge
    input: dpo
  - id: gguf
    kind: gguf
    input: merge
    quant: [q8_0, q4_k_m]
"""
"""A valid pipeline touching every stage kind, union, YAML anchor/alias/merge key and local-input kind."""

ROOT_FILES = {
    "models/tiny/config.json": '{"model_type": "llama", "hidden_size": 64, "num_hidden_layers": 2}',
    "models/tiny/tokenizer.json": '{"model": {"vocab": {"a": 0, "</s>": 1}}}',
    "models/tiny/tokenizer_config.json": '{"eos_token": "</s>"}',
    "chat.jinja": "{% for m in messages %}{{ m.content }}{% endfor %}",
    "data/chat.jsonl": '{"conversations": [{"from": "human", "value": "hi"}]}\n',
    "data/prefs.json": '[{"question": "q", "chosen": "a", "rejected": "b"}]',
    "data/rows.csv": "text\nhello\n",
}
"""The local files the seed refers to (written into the target's root folder)."""


class Chooser(Protocol):
    """Where mutations get their choices: ``random.Random`` here, hypothesis draws in the tests."""

    def int(self, lo: int, hi: int) -> int:
        """An integer in ``[lo, hi]``."""


class RandomChooser:
    """Choices from a seeded ``random.Random``."""

    def __init__(self, rng: random.Random):
        self.rng = rng

    def int(self, lo: int, hi: int) -> int:
        """An integer in ``[lo, hi]``."""
        return self.rng.randint(lo, hi)


def pick(choose: Chooser, items: Sequence[Any]) -> Any:
    """One element of ``items``."""
    return items[choose.int(0, len(items) - 1)]


# --- text mutations ---------------------------------------------------------------------------------------

GARBAGE = list(":{}[]-#&*!|>'\"%@`,?\t\n \\") + ["\x00", "\x85", "\u2028", "\ufeff", "é", "🙂", "\r", "---", "..."]
SCALARS = ["1e999", "-0", "99999999999999999999999999999", "0x", "0o9", "1_000", ".nan", "-.inf", "yes", "no", "on",
           "~", "null", "[]", "{}", "''", '""', "2024-01-01", "12:30:00", "!!binary aGVsbG8=",
           "!!python/name:os.system",
           "&a x", "*a", "*undefined", "|\n  block", ">-\n  folded", "[1, [2, [3]]]", "ß𝔘ñ 🙂", "x" * 5000,
           "[" * 80 + "]" * 80, "{a: {b: {c: {d: 1}}}}", ".", "./", "data", "../missing.jsonl", "\"\\u0000\"",
           "0" * 5000, "-" * 3, "'unterminated", "{unclosed: 1", "- item", "true", "1.0e-4", "2", "-1e-4"]
KEY_LINE = re.compile(r"^(\s*-?\s*)([A-Za-z_][\w-]*)(\s*:)(.*)$")


def _lines(text: str) -> list[str]:
    return text.split("\n")


def insert_garbage(text: str, c: Chooser) -> str:
    """Insert 1-5 characters YAML treats specially (or that it rejects) at a random position."""
    i = c.int(0, len(text))
    return text[:i] + "".join(pick(c, GARBAGE) for _ in range(c.int(1, 5))) + text[i:]


def delete_span(text: str, c: Chooser) -> str:
    """Delete up to 20 characters."""
    i = c.int(0, len(text))
    return text[:i] + text[i + c.int(1, 20):]


def truncate(text: str, c: Chooser) -> str:
    """Cut the file anywhere."""
    return text[: c.int(0, len(text))]


def duplicate_line(text: str, c: Chooser) -> str:
    """Repeat a line (usually a duplicate key)."""
    lines = _lines(text)
    i = c.int(0, len(lines) - 1)
    return "\n".join(lines[: i + 1] + [lines[i]] + lines[i + 1:])


def swap_lines(text: str, c: Chooser) -> str:
    """Exchange two lines."""
    lines = _lines(text)
    i, j = c.int(0, len(lines) - 1), c.int(0, len(lines) - 1)
    lines[i], lines[j] = lines[j], lines[i]
    return "\n".join(lines)


def reindent(text: str, c: Chooser) -> str:
    """Add or remove leading spaces of a line, or indent it with a tab."""
    lines = _lines(text)
    i = c.int(0, len(lines) - 1)
    body = lines[i].lstrip(" ")
    indent = len(lines[i]) - len(body)
    lines[i] = pick(c, [" " * max(0, indent + c.int(-4, 4)), "\t", "\t" + " " * indent, ""]) + body
    return "\n".join(lines)


def _key_line(lines: list[str], c: Chooser):
    """A random ``key: value`` line: (its index, its KEY_LINE match), or None when there is none."""
    candidates = [i for i, line in enumerate(lines) if KEY_LINE.match(line)]
    if not candidates:
        return None
    i = pick(c, candidates)
    return i, KEY_LINE.match(lines[i])


def replace_scalar(text: str, c: Chooser) -> str:
    """Replace the value of a ``key: value`` line with a hostile scalar (huge, typed, tagged, nested...)."""
    lines = _lines(text)
    found = _key_line(lines, c)
    if found is None:
        return text
    i, m = found
    lines[i] = f"{m.group(1)}{m.group(2)}{m.group(3)} {pick(c, SCALARS)}"
    return "\n".join(lines)


def rename_key(text: str, c: Chooser) -> str:
    """Misspell a key: drop, double or swap a letter, change case, or swap ``_`` and ``-``."""
    lines = _lines(text)
    found = _key_line(lines, c)
    if found is None:
        return text
    i, m = found
    key = m.group(2)
    j = c.int(0, len(key) - 1)
    key = pick(c, [key[:j] + key[j + 1:] or "k", key[:j] + key[j] * 2 + key[j + 1:], key.upper(),
                   key.replace("_", "-"), key[:j] + key[j + 1: j + 2] + key[j: j + 1] + key[j + 2:], key + "s"])
    lines[i] = f"{m.group(1)}{key}{m.group(3)}{m.group(4)}"
    return "\n".join(lines)


def unicode_noise(text: str, c: Chooser) -> str:
    """Line-ending and unicode trouble: CRLF, a BOM, line/paragraph separators, right-to-left marks."""
    return pick(c, [text.replace("\n", "\r\n"), "\ufeff" + text, text.replace("\n", "\u2028", 1),
                    text.replace("support", "\u202esupport"), text.replace("gpu", "gpu\u200b"),
                    text.replace(": ", ":\u00a0", 1), text.encode("utf-8").decode("latin-1")])


def append_snippet(text: str, c: Chooser) -> str:
    """Append something nasty at the top level: an alias bomb, deep nesting, a second document, a tag."""
    bomb = "bomb0: &b0 [x, x, x, x, x, x, x, x, x, x]\n" + "".join(
        f"bomb{i}: &b{i} [" + ", ".join([f"*b{i - 1}"] * 10) + "]\n" for i in range(1, 7))
    return text + pick(c, [bomb, "deep: " + "[" * 200 + "]" * 200 + "\n", "---\nname: second\n",
                           "loop: &l [*l]\n", "'unclosed\n", "? [complex, key]\n: 1\n", "stages: []\n",
                           "x: !!set {a, b}\n", "y: !!omap [a: 1]\n", "<<: *batch\n", "z: *nope\n",
                           "<<: [*batch, 3]\n"])


TEXT_MUTATIONS: list[Callable[[str, Chooser], str]] = [
    insert_garbage, delete_span, truncate, duplicate_line, swap_lines, reindent, replace_scalar, rename_key,
    unicode_noise, append_snippet]


# --- structure mutations ----------------------------------------------------------------------------------

VALUES = [0, -1, 1.5, 1e308, -1e-300, 10**30, "", "x", "sfft", "zero4", "lorra", True, False, None, [], {},
          [[[]]], {"k": "v"}, ["a", 1, None], "../escape.jsonl", "data/none.parquet", "ü" * 300, float("nan")]


def _containers(node: Any, out: list) -> list:
    """Every (container, key) pair in the data, depth first."""
    items = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else ()
    for key, value in list(items):
        out.append((node, key))
        _containers(value, out)
    return out


@functools.cache
def _seed_data() -> Any:
    return yaml.safe_load(SEED_TEXT)


def mutate_structure(c: Chooser) -> str:
    """The seed's data with 1-3 structural edits, dumped back to YAML."""
    data = copy.deepcopy(_seed_data())
    for _ in range(c.int(1, 3)):
        spots = _containers(data, [])
        parent, key = pick(c, spots)
        op = c.int(0, 5)
        if op == 0:
            del parent[key]
        elif op == 1 and isinstance(parent, dict):
            parent[rename_key(f"{key}: x", c).split(":")[0].strip() or "k"] = parent.pop(key)
        elif op == 2:
            parent[key] = copy.deepcopy(pick(c, VALUES))
        elif op == 3 and isinstance(parent, list):
            parent.append(copy.deepcopy(parent[key]))
        elif op == 4:
            target, _ = pick(c, spots)
            if isinstance(target, dict) and target is not parent:
                target[str(key)] = copy.deepcopy(parent[key])
        else:
            parent[key] = {"nested": parent[key]} if c.int(0, 1) else [parent[key]]
    text = yaml.safe_dump(data, sort_keys=False, allow_unicode=True, width=120)
    return pick(c, TEXT_MUTATIONS)(text, c) if c.int(0, 3) == 0 else text


def make_case(c: Chooser) -> str:
    """One fuzz input: a structural mutation, or 1-3 text mutations of the seed."""
    if c.int(0, 1):
        return mutate_structure(c)
    text = SEED_TEXT
    for _ in range(c.int(1, 3)):
        text = pick(c, TEXT_MUTATIONS)(text, c)
    return text


# --- targets ----------------------------------------------------------------------------------------------

def write_root(root: Path) -> Path:
    """Write the seed's local files into ``root``."""
    for rel, content in ROOT_FILES.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(content, encoding="utf-8")
    return root


def _stays_inside(pipeline) -> bool:
    """True when every local path of the pipeline stays under its folder (the fuzzer never reads outside)."""
    paths = [pipeline.model.base, pipeline.model.tokenizer or ".", pipeline.model.chat_template]
    paths += [d.path for s in pipeline.stages if s.kind == "data" for d in s.datasets]
    return all(not os.path.isabs(p) and not posixpath.normpath(p).startswith("..") and "~" not in p for p in paths)


def check_text(text: str, root: Path) -> list[Diagnostic]:
    """The front end on one text: load, validate, and snapshot the local inputs."""
    try:
        data, source_map = load_yaml(text, FILENAME)
    except FtplanError as exc:
        return list(exc.diagnostics)
    pipeline, diags = validate_pipeline(data, source_map, FILENAME)
    if pipeline is not None and _stays_inside(pipeline):
        read_inputs(pipeline, root)
    return diags


def api_check_text(text: str, root: Path) -> list[Diagnostic]:
    """The whole ``ftplan check`` path (``ftplan.api.check_text``: schema, graph, rules, estimate), for every
    text whose local paths stay inside ``root`` (the fuzzer never reads outside it); the front end otherwise."""
    from ftplan.api import check_text as api_check

    try:
        data, source_map = load_yaml(text, FILENAME)
    except FtplanError as exc:
        return list(exc.diagnostics)
    pipeline, diags = validate_pipeline(data, source_map, FILENAME)
    if pipeline is None or not _stays_inside(pipeline):
        return diags
    return list(api_check(text, FILENAME, root).diagnostics)


TARGETS = {"local": check_text, "api": api_check_text}


def problems(text: str, diags: list[Diagnostic]) -> list[str]:
    """What is wrong with the diagnostics of ``text``: a missing code or span, or a span outside the file."""
    last_line = text.count("\n") + text.count("\r") + text.count("\u2028") + text.count("\x85") + 1
    out = []
    for d in diags:
        if not re.fullmatch(r"FT\d{3}", d.code or ""):
            out.append(f"bad code {d.code!r}: {d.message}")
        if d.span is None or not 1 <= d.span.line <= last_line or d.span.col < 1 or d.span.file != FILENAME:
            out.append(f"bad span {d.span}: {d.code} {d.message}")
    return out


def main(argv: list[str] | None = None) -> int:
    """Run the fuzzer; 0 when nothing crashed."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cases", type=int, default=10_000, help="number of inputs (default 10000)")
    ap.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    ap.add_argument("--target", choices=sorted(TARGETS), default="api",
                    help="local: load + validate + read_inputs; api: ftplan.api.check_text")
    ap.add_argument("--show", type=int, default=5, help="crashing inputs to print (default 5)")
    args = ap.parse_args(argv)
    target = TARGETS[args.target]
    chooser = RandomChooser(random.Random(args.seed))
    counts = {"clean": 0, "diagnostics-only": 0, "crashes": 0}
    crashes: list[tuple[str, str]] = []
    with tempfile.TemporaryDirectory() as tmp:
        root = write_root(Path(tmp))
        for _ in range(args.cases):
            text = make_case(chooser)
            try:
                diags = target(text, root)
                bad = problems(text, diags)
            except Exception:  # noqa: BLE001 - a crash is what we are counting
                bad = [traceback.format_exc(limit=-3)]
            if bad:
                counts["crashes"] += 1
                crashes.append((text, "\n".join(bad)))
            else:
                counts["diagnostics-only" if diags else "clean"] += 1
    print(f"target: {args.target}  seed: {args.seed}")
    print(f"cases: {args.cases}  clean: {counts['clean']}  diagnostics-only: {counts['diagnostics-only']}  "
          f"crashes: {counts['crashes']}")
    for text, why in crashes[: args.show]:
        print("-" * 100)
        print(repr(text[:1500]) + (" ..." if len(text) > 1500 else ""))
        print(why)
    return 1 if crashes else 0


if __name__ == "__main__":
    sys.exit(main())
