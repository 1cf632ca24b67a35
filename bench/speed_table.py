"""The README's speed table, generated from one measuring session's committed results (never typed by hand): one run
of ``bench/gpu/speed.sh``, or its two parts (``qlora``, ``lora-dpo``), each row's arms from one run.

Reads the step arms (`steps.jsonl`: one line per arm and shape, the arm named "MODE-ARM", e.g. "qlora-unsloth") and,
when present, the DPO arms (`dpo-speed.jsonl`, `bench/dpo_speed.py`) of one folder under `bench/results/`, and
prints the Markdown that goes between the README's `<!-- speed-table -->` markers; `--readme README.md` writes it
there instead, and `--check` fails when the README's table differs from what the results give. A profile
(`profiles.jsonl`, `runtime_step_probe.py --profile`) is shown under the table; `--profiles DIR` takes it from
another session's folder, and the table says which (its times are not compared with the table's).

    python3 bench/speed_table.py bench/results/2026-12-07-h100 --profiles bench/results/2026-12-07-h100-b \
        --readme README.md
"""
from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # loaded by path (the tests), it still finds its neighbours
from max_context import longest  # noqa: E402
from step_shapes import flops_per_token  # noqa: E402

BEGIN, END = "<!-- speed-table -->", "<!-- /speed-table -->"
ARMS = (("hf-peft", "HF+PEFT"), ("ftplan", "ftplan"), ("ftplan-offload", "ftplan, offload"),
        ("ftplan-offload-es", "ftplan, offload, expandable segments"), ("unsloth", "Unsloth"))
"""Columns, in order; an arm no line measured gets no column."""
LLAMA_8B = dict(hidden=4096, intermediate=14336, layers=32, kv_dim=1024, vocab=128256, rank=16)
"""The arms' shape (random-init Llama-3.1-8B, LoRA r 16 on all 7 projections)."""
PEAK_TFLOPS = 989.0
"""H100/H200 SXM dense bf16 datasheet peak, kernel-anchors.md §3's P."""
VERSIONED = ("torch", "triton", "transformers", "peft", "trl", "accelerate", "unsloth")
"""Packages whose versions the table names (each from the first line that records it)."""
ROWS = (("lora", 2048, 2), ("qlora", 2048, 2), ("qlora", 8192, 1), ("qlora", 16384, 1), ("qlora", 32768, 1))


def read_lines(path: Path) -> list[dict]:
    """The JSON objects of a JSON-lines file (other lines skipped); none when the file is missing."""
    if not path.is_file():
        return []
    return [json.loads(raw) for raw in path.read_text().splitlines() if raw.startswith("{")]


def cell(line: dict | None) -> str:
    """"tok/s · device GiB" of one measured arm, or a dash."""
    if line is None:
        return "—"
    if line.get("oom"):
        return "out of memory"
    return f"{line['tok_per_s']:,.0f} tok/s · {line['device_used_gib']:.1f} GiB"


def ratio(ours: dict | None, theirs: dict | None) -> str:
    """ftplan's tokens/s over the peer's, and the differences of peak allocated and device memory (GiB)."""
    if not ours or not theirs or ours.get("oom") or theirs.get("oom"):
        return "—"
    alloc = ours["peak_alloc_gib"] - theirs["peak_alloc_gib"]
    device = ours["device_used_gib"] - theirs["device_used_gib"]
    return f"{ours['tok_per_s'] / theirs['tok_per_s']:.2f}× · {alloc:+.2f} / {device:+.2f} GiB"


def mfu(line: dict | None) -> str:
    """Model FLOPs utilisation of a measured arm against PEAK_TFLOPS."""
    if not line or line.get("oom"):
        return "—"
    return f"{line['tok_per_s'] * flops_per_token(**LLAMA_8B, seq=line['seq']) / (PEAK_TFLOPS * 1e12):.1%}"


def one_run(label: str, lines: list[dict]) -> None:
    """Refuse a table row whose arms come from different runs of the benchmark (``call``): its ratios would
    compare numbers measured apart."""
    calls = {ln.get("call") for ln in lines if ln}
    if len(calls) > 1:
        raise ValueError(f"{label}: its arms come from different runs ({', '.join(sorted(map(str, calls)))}); "
                         "measure them in one run")


def runs_line(steps: list[dict], dpo: list[dict]) -> list[str]:
    """Which run measured which rows, when the lines come from more than one (``speed.sh qlora`` and ``lora-dpo``)."""
    rows: dict[str, list[str]] = {}
    gpus: dict[str, str] = {}
    tagged = [(ln, "QLoRA" if ln["arm"].startswith("qlora-") else "LoRA") for ln in steps] + [(ln, "DPO") for ln in dpo]
    for ln, what in tagged:
        call = ln.get("call")
        if what not in rows.setdefault(call, []):
            rows[call].append(what)
        gpus.setdefault(call, ln.get("gpu", "GPU"))
    if len(rows) < 2:
        return []
    return ["Measured in " + str(len(rows)) + " runs, each row's arms in one: " + "; ".join(
        f"{' and '.join(what)} rows in run `{call}` on one {gpus[call]}" for call, what in rows.items()) + "."]


def step_table(lines: list[dict]) -> list[str]:
    """One row per (mode, seq, batch) measured: every arm's cell, and each ftplan arm against Unsloth."""
    found = {(ln["arm"], ln["seq"], ln["batch"]): ln for ln in lines if "arm" in ln and "seq" in ln}
    arms = [(arm, name) for arm, name in ARMS if any(key[0].endswith(f"-{arm}") for key in found)]
    out = ["| mode, seq × batch | " + " | ".join(name for _, name in arms)
           + " | ftplan ÷ Unsloth | ftplan, offload ÷ Unsloth | MFU ftplan / Unsloth |",
           "|---|" + "---:|" * (len(arms) + 3)]
    for mode, seq, batch in ROWS:
        got = {arm: found.get((f"{mode}-{arm}", seq, batch)) for arm, _ in ARMS}
        if not any(got.values()):
            continue
        one_run(f"{mode} {seq} × {batch}", list(got.values()))
        ours = [got[a] for a in ("ftplan", "ftplan-offload") if got[a] and not got[a].get("oom")]
        best = max(ours, key=lambda ln: ln["tok_per_s"], default=None)  # the faster ftplan arm's MFU
        label = "LoRA" if mode == "lora" else "QLoRA"
        out.append(f"| {label} {seq} × {batch} | " + " | ".join(cell(got[a]) for a, _ in arms)
                   + f" | {ratio(got['ftplan'], got['unsloth'])} | {ratio(got['ftplan-offload'], got['unsloth'])}"
                   + f" | {mfu(best)} / {mfu(got['unsloth'])} |")
    return out


def context_line(lines: list[dict]) -> list[str]:
    """The longest QLoRA sequence at micro-batch 1 per arm, from the measured lengths (``max_context.longest``)."""
    fits = []
    for arm, name in ARMS:
        got = longest([ln for ln in lines if ln.get("arm") == f"qlora-{arm}" and ln.get("batch") == 1])
        if got.get("predicted"):
            fits.append((name, got))
    if not fits:
        return []
    lengths = sorted({n for _, got in fits for n in got["measured"]})
    return ["Longest QLoRA sequence at micro-batch 1, where a line through the device memory measured at "
            + ", ".join(f"{n:,}" for n in lengths) + " tokens reaches the memory free before loading (a fit, not a "
            "run at that length): " + "; ".join(f"{name} {got['predicted']:,} tokens (residual ≤ "
                                                f"{got['max_residual_gib']:.3f} GiB)" for name, got in fits) + "."]


def dpo_table(lines: list[dict]) -> list[str]:
    """TRL's DPOTrainer against ftplan's DPO stage, one row per reference mode measured."""
    arms = [ln for ln in lines if ln.get("arm") in ("trl", "ftplan") and "tok_per_s" in ln]
    if not arms:
        return []
    out = ["| DPO LoRA, seq × pairs | TRL DPOTrainer | ftplan | ftplan vs TRL |", "|---|---:|---:|---:|"]
    for pre in sorted({bool(ln.get("precompute")) for ln in arms}):
        trl = next((ln for ln in arms if ln["arm"] == "trl" and bool(ln.get("precompute")) == pre), None)
        ours = next((ln for ln in arms if ln["arm"] == "ftplan" and bool(ln.get("precompute")) == pre), None)
        if not trl or not ours:
            continue
        one_run(f"DPO {'precomputed' if pre else 'live'}", [trl, ours])
        alloc = ours["peak_alloc_gib"] / trl["peak_alloc_gib"]
        speed = ours["tok_per_s"] / trl["tok_per_s"]
        ref = "precomputed reference" if pre else "live reference"
        out.append(f"| {ours['seq']} × {ours['pairs']}, {ref} | {cell(trl)} | {cell(ours)} | {speed:.2f}× · "
                   f"{alloc:.2f}× peak allocated |")
    return out


PROFILE_ROWS = ("GEMM", "attention", "norm, RoPE, SwiGLU, LoRA glue", "NF4 dequantisation", "loss head", "optimizer",
                "offload copies", "other")


def profile_table(folder: Path, own_session: bool = True) -> list[str]:
    """Where one ftplan step's GPU time goes (``runtime_step_probe.py --profile``, ``folder/profiles.jsonl``), one
    column per profiled shape: milliseconds and share of the GPU-busy time per kernel group, then busy time against
    the timed step of the same process. ``own_session`` False: measured in a session other than the table's."""
    lines = [ln for ln in read_lines(folder / "profiles.jsonl") if "profile" in ln]
    if not lines:
        return []
    heads = [f"{ln['mode'].replace('qlora', 'QLoRA').replace('lora', 'LoRA')} {ln['profile']['seq']} × "
             f"{ln['profile']['batch']}" for ln in lines]
    session = "" if own_session else "in a session of its own, not compared with the table's times: "
    out = [f"Where one ftplan step's GPU time goes ({session}one profiled step on one {lines[0]['gpu']}, torch "
           f"{lines[0]['torch']}, after the timed steps of the same process; raw lines in "
           f"`{folder.as_posix()}/profiles.jsonl`; the loss head's GEMMs count as GEMM, the offload copies row is every "
           "memory copy and fill):", "",
           "| kernel group | " + " | ".join(heads) + " |", "|---|" + "---:|" * len(lines)]
    for group in PROFILE_ROWS:
        cells = []
        for ln in lines:
            ms, busy = ln["profile"]["groups_ms"].get(group), ln["profile"]["gpu_busy_ms"]
            cells.append(f"{ms:.1f} ms ({100 * ms / busy:.0f} %)" if ms else "—")
        if any(c != "—" for c in cells):
            out.append(f"| {group} | " + " | ".join(cells) + " |")
    out.append("| GPU busy / timed step (median) | " + " | ".join(
        f"{ln['profile']['gpu_busy_ms']:.0f} / {1000 * ln['step_s_median']:.0f} ms" for ln in lines) + " |")
    return out


def table(folder: Path, profiles: Path | None = None) -> str:
    """The Markdown block for the README, with the card and versions it was measured on; the profile table from
    ``profiles`` (a folder of its own session, default ``folder``)."""
    steps = read_lines(folder / "steps.jsonl")
    dpo = read_lines(folder / "dpo-speed.jsonl")
    first = next((ln for ln in steps + dpo if ln.get("gpu")), {})
    found = {k: next((ln[k] for ln in steps + dpo if k in ln), None) for k in VERSIONED}
    versions = ", ".join(f"{k} {v}" for k, v in found.items() if v)
    day = re.match(r"\d{4}-\d{2}-\d{2}", folder.name)
    when = f" on {day.group()}" if day else ""
    runs = runs_line([ln for ln in steps if "arm" in ln], [ln for ln in dpo if "tok_per_s" in ln])
    where = "" if runs else f" in one session on one {first.get('gpu', 'GPU')}"
    parts = [f"Measured{when}{where} ({versions}); raw lines in "
             f"`{folder.as_posix()}/`. Cells: tokens/s · device memory used (the card's view: context, weights, "
             "allocator cache). Ratios: tokens/s, then the peak allocated / device memory difference. MFU: "
             "(4·N_mm + 6·N_lora + 6·L·s·d) FLOPs per token against 989 TFLOP/s.", ""]
    parts[1:1] = runs  # after the header sentence, before the blank line
    parts += step_table(steps)
    fit = context_line(steps)
    if fit:
        parts += [""] + fit
    extra = dpo_table(dpo)
    if extra:
        parts += [""] + extra
    profile = profile_table(profiles or folder, own_session=profiles is None or profiles == folder)
    if profile:
        parts += [""] + profile
    return "\n".join(parts) + "\n"


def replace_block(text: str, block: str) -> str:
    """`text` with what lies between the markers replaced by `block`."""
    start, end = text.index(BEGIN) + len(BEGIN), text.index(END)
    return text[:start] + "\n" + block + text[end:]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("folder", type=Path, help="one session's results folder")
    p.add_argument("--readme", type=Path, help="write the table into this file between the markers")
    p.add_argument("--check", action="store_true", help="with --readme: fail if the file's table is not current")
    p.add_argument("--profiles", type=Path, help="the folder of the profile's session (default: folder)")
    a = p.parse_args(argv)
    try:
        block = table(a.folder, a.profiles)
    except ValueError as e:
        print(f"speed_table: {e}", file=sys.stderr)
        return 1
    if a.readme is None:
        sys.stdout.write(block)
        return 0
    text = a.readme.read_text()
    new = replace_block(text, block)
    if a.check:
        if new != text:
            again = f" --profiles {a.profiles}" if a.profiles else ""
            print(f"{a.readme}: the speed table is not the one {a.folder} gives; run bench/speed_table.py "
                  f"{a.folder}{again} --readme {a.readme}", file=sys.stderr)
            return 1
        return 0
    a.readme.write_text(new)
    return 0


if __name__ == "__main__":
    sys.exit(main())
