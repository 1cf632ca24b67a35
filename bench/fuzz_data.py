"""Fuzz the runtime's dataset reader: mutated data files must give row or file problems, never a traceback.

Each case takes a valid dataset (one of seven formats, as JSON Lines, a JSON list, a ``{"data": [...]}`` object
or CSV) and mutates it, either its rows (delete, rename or retype columns and turn keys, odd roles, typed
content, tool calls and tools, nesting) or its bytes (invalid UTF-8, a byte-order mark, truncation, swapped or
duplicated lines, NUL bytes, deep nesting, huge numbers, broken quotes), then reads it the way the data stage
does (``ftplan_runtime.data.readers.read_rows`` judged row by row by ``ftplan.data``) and the way
``ftplan check`` does (``ftplan.data.scan.scan_file``).

    $ python bench/fuzz_data.py                  # 10,000 cases
    $ python bench/fuzz_data.py --cases 500 --seed 7

A case is *clean* (every row usable), *problems* (every refused row and every stopped file names its line,
item or row) or a *crash*: any other exception, a problem without a position, or the runtime and ``check``
judging the file differently. Exits 1 on any crash and prints the first few crashing inputs.
``tests/test_fuzz_data.py`` runs a few hundred cases in CI.
"""

from __future__ import annotations

import argparse
import copy
import csv
import io
import json
import os
import random
import re
import sys
import tempfile
import traceback
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pydantic import TypeAdapter  # noqa: E402

from ftplan.data import reading  # noqa: E402
from ftplan.data.scan import Scanner, scan_file  # noqa: E402
from ftplan.schemas.datasets import DatasetSpec  # noqa: E402
from ftplan_runtime.data.errors import DataError  # noqa: E402
from ftplan_runtime.data.readers import read_rows  # noqa: E402

_SPEC = TypeAdapter(DatasetSpec)

SEEDS: dict[str, list[dict[str, Any]]] = {
    "sharegpt": [
        {"conversations": [{"from": "system", "value": "Be brief."}, {"from": "human", "value": "Reset?"},
                           {"from": "gpt", "value": "Settings, then Security."}]},
        {"conversations": [{"from": "human", "value": "Weather in Paris?"},
                           {"from": "function_call", "value": '{"name": "weather", "arguments": {"city": "Paris"}}'},
                           {"from": "observation", "value": "sunny"}, {"from": "gpt", "value": "Sunny."}],
         "tools": '[{"name": "weather", "parameters": {"type": "object"}}]', "system": "You may call tools."},
    ],
    "messages": [
        {"messages": [{"role": "user", "content": [{"type": "text", "text": "Hi"}]},
                      {"role": "assistant", "content": "Hello."}]},
        {"messages": [{"role": "user", "content": "2+2"},
                      {"role": "assistant", "content": None, "tool_calls": [
                          {"type": "function", "function": {"name": "add", "arguments": "{\"a\": 2}"}}]},
                      {"role": "tool", "content": "4"}, {"role": "assistant", "content": "4"}]},
    ],
    "alpaca": [{"instruction": "Sum.", "input": "3 and 3", "output": "6", "history": [["Hi", "Hello."]]},
               {"instruction": "Name a colour.", "output": "Blue.", "system": "Be brief."}],
    "prompt_completion": [{"prompt": "Q", "completion": "A"},
                          {"prompt": [{"role": "user", "content": "Q"}],
                           "completion": [{"role": "assistant", "content": "A"}]}],
    "text": [{"text": "The sea is wide."}, {"text": "Blue and deep."}],
    "preference": [{"prompt": "2+2?", "chosen": "4", "rejected": "5"},
                   {"chosen": [{"role": "user", "content": "Q"}, {"role": "assistant", "content": "good"}],
                    "rejected": [{"role": "user", "content": "Q"}, {"role": "assistant", "content": "bad"}]}],
    "kto": [{"prompt": "Q", "completion": "A", "label": True}, {"prompt": "Q", "completion": "B", "label": 0}],
}
"""Valid rows of every format, the material each case mutates."""

CONTAINERS = ("jsonl", "json", "wrapped", "csv")
ODD_VALUES: list[Any] = [None, True, 0, -1, 1e308, "", " ", "x" * 3000, [], {}, [None], [{}], {"type": "image"},
                         [{"type": "text"}], [{"type": "text", "text": 3}], "\x00", "caf\u00e9\U0001F600",
                         [[["deep"]]], {"name": 3, "arguments": "{"}, '{"name": "f"}', "[1, 2", "true"]
ODD_KEYS = ["role", "content", "from", "value", "messages", "conversations", "prompt", "chosen", "rejected",
            "label", "text", "tool_calls", "tools", "system", "history", "type", "", "\u00e9", "1"]


class Chooser:
    """Random choices of one case."""

    def __init__(self, rng: random.Random):
        self.rng = rng

    def int(self, lo: int, hi: int) -> int:
        """An integer in ``[lo, hi]``."""
        return self.rng.randint(lo, hi)

    def pick(self, seq: list | tuple) -> Any:
        """One element."""
        return seq[self.rng.randrange(len(seq))]


# ------------------------------------------------------------------------------------------------ mutations

def _nodes(value: Any, path: tuple = ()) -> list[tuple]:
    """Every path to a container or value inside a row."""
    out = [path]
    if isinstance(value, dict):
        for k, v in value.items():
            out += _nodes(v, path + (k,))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            out += _nodes(v, path + (i,))
    return out


def _get(value: Any, path: tuple) -> Any:
    for p in path:
        value = value[p]
    return value


def mutate_row(row: Any, c: Chooser) -> Any:
    """One structural edit of a row: retype, delete, rename or insert somewhere inside it."""
    row = copy.deepcopy(row)
    path = c.pick(_nodes(row))
    if not path:
        return c.pick(ODD_VALUES) if c.int(0, 3) == 0 else row
    parent, key = _get(row, path[:-1]), path[-1]
    action = c.int(0, 4)
    if action == 0:
        parent[key] = c.pick(ODD_VALUES)
    elif action == 1 and isinstance(parent, dict):
        del parent[key]
    elif action == 1 and isinstance(parent, list):
        parent.pop(key)
    elif action == 2 and isinstance(parent, dict):
        parent[c.pick(ODD_KEYS)] = parent.pop(key)
    elif action == 3:
        parent[key] = [parent[key]] if c.int(0, 1) else {"value": parent[key]}
    else:
        parent[key] = copy.deepcopy(c.pick(SEEDS[c.pick(list(SEEDS))]))
    return row


def serialise(rows: list[Any], container: str) -> bytes:
    """Rows as a file of one container type (CSV cells hold non-strings as JSON)."""
    if container == "jsonl":
        return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows).encode()
    if container == "json":
        return json.dumps(rows, ensure_ascii=False, indent=1).encode()
    if container == "wrapped":
        return json.dumps({"data": rows}, ensure_ascii=False, indent=1).encode()
    columns = list(dict.fromkeys(k for r in rows if isinstance(r, dict) for k in r)) or ["text"]
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(columns)
    for r in rows:
        r = r if isinstance(r, dict) else {}
        w.writerow([v if isinstance(v, str) else json.dumps(v) for v in (r.get(k, "") for k in columns)])
    return buf.getvalue().encode()


def mutate_bytes(data: bytes, c: Chooser) -> bytes:
    """One byte-level edit: what editors, exports and truncated downloads do to files."""
    lines = data.split(b"\n")
    action = c.int(0, 11)
    at = c.int(0, max(0, len(data) - 1))
    if action == 0:
        return data[:at]  # truncated
    if action == 1:
        return data[:at] + bytes([c.int(0x80, 0xff)]) + data[at:]  # not UTF-8
    if action == 2:
        return b"\xef\xbb\xbf" + data if c.int(0, 1) else data[:at] + b"\xef\xbb\xbf" + data[at:]
    if action == 3 and len(lines) > 1:
        i, j = c.int(0, len(lines) - 1), c.int(0, len(lines) - 1)
        lines[i], lines[j] = lines[j], lines[i]
        return b"\n".join(lines)
    if action == 4:
        i = c.int(0, len(lines) - 1)
        return b"\n".join(lines[:i] + [lines[i]] * c.int(2, 4) + lines[i + 1:])
    if action == 5:
        return data[:at] + b"\x00" + data[at:]
    if action == 6:
        depth = c.pick([50, 999, 1001, 5000, 100_000])
        return data[:at] + b"[" * depth + b"]" * c.int(0, depth) + data[at:]
    if action == 7:
        return data[:at] + b"1" * c.pick([400, 4301, 20_000]) + data[at:]
    if action == 8:
        return data[:at] + c.pick([b'"', b",", b"{", b"}", b"]", b"\\", b'\\u12', b"\r", b"\n\n"]) + data[at:]
    if action == 9:
        return data.replace(b"\n", b"\r\n")
    if action == 10:
        return data[:at] + data[at + c.int(1, 40):]
    return data


def make_case(c: Chooser) -> tuple[str, str, bytes, int]:
    """(format, container, file bytes, read-chunk size for the ``check`` side) of one mutated dataset."""
    fmt = c.pick(list(SEEDS))
    container = c.pick(CONTAINERS)
    rows = [copy.deepcopy(c.pick(SEEDS[fmt])) for _ in range(c.int(1, 6))]
    for _ in range(c.int(0, 3)):
        i = c.int(0, len(rows) - 1)
        rows[i] = mutate_row(rows[i], c)
    data = serialise(rows, container)
    for _ in range(c.int(0, 2)):
        data = mutate_bytes(data, c)
    return fmt, container, data, c.pick([1, 2, 3, 7, 64, 4096])


# ------------------------------------------------------------------------------------------------ target

_POSITION = re.compile(r"\b(line|item|row) \d+")


def run_case(fmt: str, container: str, data: bytes, folder: Path, chunk: int = 1 << 20) -> str:
    """Read one file as the runtime and as ``check`` do (``check`` in reads of ``chunk`` bytes, so rows cut at
    every place by the streaming JSON reader's buffer are met); the outcome, or raise ``AssertionError`` for a
    crash."""
    suffix = {"jsonl": ".jsonl", "json": ".json", "wrapped": ".json", "csv": ".csv"}[container]
    path = folder / f"data{suffix}"
    path.write_bytes(data)
    spec = _SPEC.validate_python({"path": path.name, "format": fmt})
    scanner = Scanner(spec, path.name)
    stopped = None
    old = os.getcwd()
    os.chdir(folder)
    try:
        for raw in read_rows(path.name):
            assert _POSITION.fullmatch(raw.where.split(" (")[0]), raw.where
            scanner.row(raw)
    except DataError as e:
        stopped = str(e)
        assert _POSITION.search(stopped), f"a stopped file names no line, item or row: {stopped}"
    finally:
        os.chdir(old)
    runtime = scanner.result()
    default, reading._CHUNK = reading._CHUNK, chunk
    try:
        check = scan_file(spec, path, path.name)
    finally:
        reading._CHUNK = default
    for f in runtime.findings:
        assert f.problem.message and f.problem.hint and f.problem.code.startswith("FT5"), f
    got = [(f.where, f.problem.code, f.problem.message) for f in runtime.findings]
    want = [(f.where, f.problem.code, f.problem.message) for f in check.findings]
    assert got == want, f"runtime and check disagree:\n  runtime {got}\n  check   {want}"
    assert (stopped is None) == (check.file_problem is None), (stopped, check.file_problem)
    if stopped or runtime.bad_rows:
        return "problems"
    return "clean"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", type=int, default=10_000)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    rng = random.Random(args.seed)
    counts = {"clean": 0, "problems": 0, "crash": 0}
    crashes: list[tuple[str, str, bytes, int, str]] = []
    with tempfile.TemporaryDirectory() as tmp:
        for _ in range(args.cases):
            fmt, container, data, chunk = make_case(Chooser(rng))
            try:
                counts[run_case(fmt, container, data, Path(tmp), chunk)] += 1
            except Exception:  # noqa: BLE001 - a crash is what we are looking for
                counts["crash"] += 1
                if len(crashes) < 5:
                    crashes.append((fmt, container, data, chunk, traceback.format_exc()))
    print(f"seed: {args.seed}\ncases: {args.cases}  clean: {counts['clean']}  problems: {counts['problems']}  "
          f"crashes: {counts['crash']}")
    for fmt, container, data, chunk, tb in crashes:
        print(f"\n--- {fmt} as {container}, check reading {chunk}-byte chunks: {data[:300]!r}\n{tb}")
    return 1 if counts["crash"] else 0


if __name__ == "__main__":
    raise SystemExit(main())
