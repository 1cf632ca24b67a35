"""What the training-step benchmarks share: their shapes, their timed-step loop, the record of one shape, and the
FLOPs of a LoRA step.

Shapes, for the arms that measure several with one loaded model (`runtime_step_probe.py --shapes`,
`unsloth_shapes.py --shapes`): "SEQxBATCH" takes the run's --warmup and --steps, "SEQxBATCH:N" one warm-up step and
N timed ones (for long sequences, where a step takes seconds)."""
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


def time_steps(step, make_batch, warmup: int, steps: int, cpu_times: list[float] | None = None) -> list[float]:
    """Seconds of each timed training step, sorted: `step(batch)` runs `warmup` times untimed, then `steps` times
    between two CUDA synchronisations, each on a fresh `make_batch()`. With `cpu_times`, also appends (sorted) the
    seconds until `step` returned, before the closing synchronisation: the host's share of the step. When it is
    close to the step's time, the GPU waited on the host's launches."""
    import time

    import torch

    times, host = [], []
    for i in range(warmup + steps):
        batch = make_batch()
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        step(batch)
        t1 = time.perf_counter()
        torch.cuda.synchronize()
        if i >= warmup:
            times.append(time.perf_counter() - t0)
            host.append(t1 - t0)
    if cpu_times is not None:
        cpu_times.extend(sorted(host))
    return sorted(times)


def step_record(times: list[float], shape: Shape, free_before: int, cpu_times: list[float] | None = None) -> dict:
    """Speed and memory of one measured shape: tokens/s at the median step, the allocator's peaks since they were
    last reset, and the device memory in use now above `free_before` (free bytes before the model loaded); with
    `cpu_times` (from time_steps), the median seconds the host took to issue a step."""
    import torch

    median = times[len(times) // 2]
    record = {"seq": shape.seq, "batch": shape.batch, "steps": shape.steps,
              "tok_per_s": round(shape.tokens / median, 1), "step_s_median": round(median, 4),
              "peak_alloc_gib": torch.cuda.max_memory_allocated() / 2**30,
              "peak_reserved_gib": torch.cuda.max_memory_reserved() / 2**30,
              "device_used_gib": (free_before - torch.cuda.mem_get_info()[0]) / 2**30,
              "free_before_gib": free_before / 2**30, "gpu": torch.cuda.get_device_name(), "torch": torch.__version__}
    if cpu_times:
        record["host_s_median"] = round(cpu_times[len(cpu_times) // 2], 4)
    return record


def flops_per_token(*, hidden: int, intermediate: int, layers: int, kv_dim: int, vocab: int, rank: int, seq: int,
                    reference_forward: bool = False) -> float:
    """Model FLOPs per token of a LoRA step on a frozen base (kernel-anchors.md §3): 4·N_mm + 6·N_lora + 6·L·s·d,
    with r on all seven projections of a Llama-style block; a live reference forward adds 2·N_mm + 2·L·s·d."""
    d, f, kv = hidden, intermediate, kv_dim
    n_mm = layers * (2 * d * d + 2 * d * kv + 3 * d * f) + vocab * d
    n_lora = rank * layers * (2 * (d + d) + 2 * (d + kv) + 2 * (d + f) + (f + d))
    flops = 4 * n_mm + 6 * n_lora + 6 * layers * seq * d
    if reference_forward:
        flops += 2 * n_mm + 2 * layers * seq * d
    return float(flops)
