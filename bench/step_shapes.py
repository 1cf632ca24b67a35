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
