"""What was allocated at a run's peak: read a CUDA allocator history (``memhist/sitecustomize.py``) and list the live
tensors at the moment torch's allocated bytes were highest, grouped by the line of model or library code that
allocated them, beside the reserved bytes and the largest blocks.

    python bench/vram/memory_history.py OUT/memhist/<point>.<pid>.pickle[.gz] [--top 30] [--depth 3]

Replays the trace from the start of recording (CUDA initialisation, so nothing is missed unless the trace hit its
``max_entries``): ``alloc`` adds a block, ``free_completed`` (or ``free``) removes it, ``segment_alloc`` and
``segment_free`` move the reserved bytes. Allocations made by autograd's engine thread carry no Python stack; they
are grouped as such (the backward of built-in ops).
"""

from __future__ import annotations

import argparse
import gzip
import pickle
import re
from collections import defaultdict
from pathlib import Path

GIB = 1 << 30
_INTERNAL = re.compile(r"(^|/(site|dist)-packages/)torch/|<frozen |/threading\.py$|/contextlib\.py$|/functools\.py$")
"""Frames of torch itself (the installed package, or a path relative to it) and of the standard library's plumbing:
never the code that asked for the memory. A folder named ``torch`` elsewhere (an environment) does not count."""


def label(frames: list[dict], depth: int = 1) -> str:
    """``file:line function`` of the ``depth`` innermost frames outside torch and the standard library (the model,
    PEFT, TRL, bitsandbytes or runtime code that asked for the memory), innermost first, joined by `` < ``; torch's
    own frame when there is no other."""
    if not frames:
        return "<autograd engine: backward of built-in ops>"
    outside = [f for f in frames if not _INTERNAL.search(f["filename"])] or frames[:1]
    return " < ".join(f"{'/'.join(Path(f['filename']).parts[-3:])}:{f['line']} {f['name']}" for f in outside[:depth])


def _sizes(events: list[dict]):
    """(index, allocated bytes after it, reserved bytes after it) for every event of the trace."""
    sizes: dict[int, int] = {}
    allocated = reserved = 0
    for i, e in enumerate(events):
        action = e["action"]
        if action == "alloc":
            sizes[e["addr"]] = e["size"]
            allocated += e["size"]
        elif action in ("free_completed", "free"):
            allocated -= sizes.pop(e["addr"], 0)
        elif action in ("segment_alloc", "segment_map"):
            reserved += e["size"]
        elif action in ("segment_free", "segment_unmap"):
            reserved -= e["size"]
        yield i, allocated, reserved


def replay(events: list[dict], depth: int = 1) -> dict:
    """The allocated-bytes peak of a trace: its index, the bytes, the reserved bytes then, the reserved peak and the
    blocks live at the peak (size, who allocated it)."""
    index, allocated, reserved, peak_reserved = -1, -1, 0, 0
    for i, a, r in _sizes(events):
        peak_reserved = max(peak_reserved, r)
        if a > allocated:
            index, allocated, reserved = i, a, r
    live: dict[int, tuple[int, str]] = {}
    for e in events[: index + 1]:
        if e["action"] == "alloc":
            live[e["addr"]] = (e["size"], label(e.get("frames") or [], depth))
        elif e["action"] in ("free_completed", "free"):
            live.pop(e["addr"], None)
    return {"index": index, "allocated": allocated, "reserved": reserved, "peak_reserved": peak_reserved,
            "events": len(events), "live": live}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("snapshot", type=Path)
    parser.add_argument("--top", type=int, default=30)
    parser.add_argument("--depth", type=int, default=3, help="frames outside torch named per group")
    args = parser.parse_args(argv)
    raw = args.snapshot.read_bytes()
    snap = pickle.loads(gzip.decompress(raw) if args.snapshot.suffix == ".gz" else raw)
    traces = [t for t in snap["device_traces"] if t]
    if not traces:
        print("no allocations recorded")
        return 1
    peak = replay(traces[0], args.depth)
    groups: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    for size, where in peak["live"].values():
        groups[where][0] += size
        groups[where][1] += 1
    print(f"{args.snapshot.name}: {peak['events']:,} events; allocated peak {peak['allocated'] / GIB:.3f} GiB at "
          f"event {peak['index']:,} (reserved then {peak['reserved'] / GIB:.3f} GiB; reserved peak "
          f"{peak['peak_reserved'] / GIB:.3f} GiB)")
    print(f"{'GiB':>8} {'blocks':>7}  allocated by")
    for where, (size, n) in sorted(groups.items(), key=lambda kv: -kv[1][0])[: args.top]:
        print(f"{size / GIB:8.3f} {n:7d}  {where}")
    print("largest live blocks:")
    for size, where in sorted(peak["live"].values(), key=lambda v: -v[0])[:12]:
        print(f"{size / 2**20:10.1f} MiB  {where}")
    end = snap.get("segments", [])
    total = sum(s["total_size"] for s in end)
    used = sum(s["allocated_size"] for s in end)
    print(f"at exit: {len(end)} segments, {total / GIB:.3f} GiB reserved, {used / GIB:.3f} GiB allocated")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
