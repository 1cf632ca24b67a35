"""Training-step shapes for the benchmark arms that measure several shapes with one loaded model
(`runtime_step_probe.py --shapes`, `unsloth_shapes.py --shapes`): "SEQxBATCH" takes the run's --warmup and --steps,
"SEQxBATCH:N" one warm-up step and N timed ones (for long sequences, where a step takes seconds)."""
from __future__ import annotations

import argparse
from dataclasses import dataclass


@dataclass(frozen=True)
class Shape:
    """Tokens per row, rows per step, and the warm-up and timed steps measured at this shape."""

    seq: int
    batch: int
    warmup: int
    steps: int

    @property
    def tokens(self) -> int:
        """Tokens per step."""
        return self.seq * self.batch


def parse_shapes(texts: list[str], warmup: int, steps: int) -> list[Shape]:
    """The shapes, fewest tokens per step first (a longer step's allocator state then never precedes a shorter)."""
    shapes = []
    for text in texts:
        try:
            dims, _, n = text.partition(":")
            seq, batch = (int(x) for x in dims.lower().split("x"))
            shape = Shape(seq, batch, 1, int(n)) if n else Shape(seq, batch, warmup, steps)
        except ValueError:
            raise argparse.ArgumentTypeError(f"shape {text!r}: expected SEQxBATCH or SEQxBATCH:STEPS, e.g. 2048x2")
        if min(shape.seq, shape.batch, shape.steps) < 1:
            raise argparse.ArgumentTypeError(f"shape {text!r}: every number must be at least 1")
        shapes.append(shape)
    return sorted(shapes, key=lambda s: (s.tokens, s.seq))


def time_steps(step, make_batch, warmup: int, steps: int) -> list[float]:
    """Seconds of each timed training step, sorted: `step(batch)` runs `warmup` times untimed, then `steps` times
    between two CUDA synchronisations, each on a fresh `make_batch()`."""
    import time

    import torch

    times = []
    for i in range(warmup + steps):
        batch = make_batch()
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        step(batch)
        torch.cuda.synchronize()
        if i >= warmup:
            times.append(time.perf_counter() - t0)
    return sorted(times)
