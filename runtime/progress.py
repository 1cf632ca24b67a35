"""Progress lines for non-interactive runs (Slurm logs): one line per log event, with rate and ETA.

In a terminal, transformers' tqdm bar (with its ETA) is used as is; elsewhere the bar is switched off and
``ProgressLogger`` replaces transformers' raw-dict printer with a readable line.
"""

from __future__ import annotations

import sys
import time
from datetime import timedelta

from transformers import TrainerCallback


def interactive() -> bool:
    """Whether stderr is a terminal (then the tqdm progress bar is shown)."""
    return sys.stderr.isatty()


class ProgressLogger(TrainerCallback):
    """Print ``[stage] step N/M pct | loss | lr | steps/s | eta`` on every log (main process only)."""

    def __init__(self, stage_id: str, stream=None):
        self.stage_id = stage_id
        self.stream = stream or sys.stderr
        self._t0 = 0.0
        self._step0 = 0

    def on_train_begin(self, args, state, control, **kwargs):
        """Remember where this run started (a resumed run starts past step 0)."""
        self._t0 = time.perf_counter()
        self._step0 = state.global_step

    def on_log(self, args, state, control, logs=None, **kwargs):
        """Format one progress line from the logged values."""
        if not state.is_world_process_zero or not logs:
            return
        step, total = state.global_step, max(state.max_steps, 1)
        parts = [f"[{self.stage_id}] step {step}/{total} {100 * step / total:.0f}%"]
        for key in ("loss", "eval_loss", "train_loss", "learning_rate", "grad_norm"):
            if key in logs:
                parts.append(f"{key.replace('learning_rate', 'lr')} {logs[key]:.4g}")
        done = step - self._step0
        elapsed = time.perf_counter() - self._t0
        if done > 0 and elapsed > 0:
            rate = done / elapsed
            parts.append(f"{rate:.3g} steps/s")
            parts.append(f"eta {timedelta(seconds=round((total - step) / rate))}")
        print(" | ".join(parts), file=self.stream, flush=True)
