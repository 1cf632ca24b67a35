"""How fast ``ftplan check`` judges dataset rows: rows/s and MB/s of the shared validator (``ftplan.data``) over
a generated ~100 MB JSON Lines file of ShareGPT conversations, and of the same file as a JSON list and as CSV
(alpaca). No torch. Writes a JSON summary to stdout (and to ``--out`` when given).

    python bench/data_check_speed.py [--mb 100] [--out bench/results/data-check-speed.json]
"""

from __future__ import annotations

import argparse
import json
import platform
import random
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from pydantic import TypeAdapter  # noqa: E402

from ftplan.data.scan import scan_file  # noqa: E402
from ftplan.schemas.datasets import DatasetSpec  # noqa: E402

WORDS = ("the", "model", "answer", "account", "invoice", "reset", "password", "please", "export", "settings",
         "support", "thanks", "data", "cloud", "billing", "error", "upload", "file", "team", "admin")


def sentence(rng: random.Random, n: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(n)).capitalize() + "."


def sharegpt_row(rng: random.Random) -> dict:
    turns = [{"from": "system", "value": sentence(rng, 12)}]
    for _ in range(rng.randint(1, 4)):
        turns += [{"from": "human", "value": sentence(rng, rng.randint(8, 40))},
                  {"from": "gpt", "value": sentence(rng, rng.randint(20, 120))}]
    return {"conversations": turns}


def alpaca_row(rng: random.Random) -> dict:
    return {"instruction": sentence(rng, rng.randint(8, 30)), "input": "", "output": sentence(rng, rng.randint(30, 150))}


def write_files(folder: Path, mb: int) -> dict[str, tuple[Path, str, int]]:
    rng = random.Random(0)
    target = mb << 20
    jsonl, rows, size = folder / "chat.jsonl", [], 0
    with open(jsonl, "w", encoding="utf-8") as f:
        while size < target:
            line = json.dumps(sharegpt_row(rng)) + "\n"
            f.write(line)
            size += len(line)
            rows.append(None)
    n_jsonl = len(rows)
    as_list = folder / "chat.json"
    with open(jsonl, encoding="utf-8") as src, open(as_list, "w", encoding="utf-8") as f:
        f.write("[\n" + ",\n".join(line.rstrip("\n") for line in src) + "\n]\n")
    csv_path, n_csv, size = folder / "alpaca.csv", 0, 0
    import csv

    with open(csv_path, "w", encoding="utf-8", newline="") as f:
        w = csv.writer(f)
        w.writerow(["instruction", "input", "output"])
        while size < target:
            r = alpaca_row(rng)
            w.writerow([r["instruction"], r["input"], r["output"]])
            size += sum(len(v) for v in r.values()) + 8
            n_csv += 1
    return {"jsonl": (jsonl, "sharegpt", n_jsonl), "json": (as_list, "sharegpt", n_jsonl),
            "csv": (csv_path, "alpaca", n_csv)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mb", type=int, default=100, help="size of each generated file in MB")
    parser.add_argument("--out", help="also write the JSON summary here")
    args = parser.parse_args(argv)
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for kind, (path, fmt, rows) in write_files(Path(tmp), args.mb).items():
            spec = TypeAdapter(DatasetSpec).validate_python({"path": path.name, "format": fmt})
            start = time.perf_counter()
            scan = scan_file(spec, path, path.name)
            seconds = time.perf_counter() - start
            assert scan.complete and scan.rows_read == rows and not scan.bad_rows, (kind, scan)
            mb = path.stat().st_size / 1e6
            results.append({"file": kind, "format": fmt, "mb": round(mb, 1), "rows": rows,
                            "seconds": round(seconds, 2), "rows_per_s": round(rows / seconds),
                            "mb_per_s": round(mb / seconds, 1)})
    summary = {"machine": f"{platform.machine()}, {platform.python_implementation()} {platform.python_version()}",
               "results": results}
    text = json.dumps(summary, indent=2) + "\n"
    sys.stdout.write(text)
    if args.out:
        Path(args.out).write_text(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
