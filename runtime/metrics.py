"""Per-stage metrics (``<out>/metrics.json``), written before the completion stamp (``stamps``).

``StageRecorder`` measures wall time and memory for a stage: torch's peak allocated/reserved bytes, and the
device-level peak (total memory minus the lowest free memory seen through ``torch.cuda.mem_get_info``, sampled
at every optimizer step by ``MemorySampler``), set against the plan's ``estimate_peak_gib``. Training stages add
steps, token counts (``TokenCountingMixin`` on the trainers: non-pad input tokens and loss-bearing tokens per
micro-batch, summed over processes at the end), throughput and a loss summary from the trainer's log history.

Every process of a multi-process stage measures its own GPU and its own host process. ``StageRecorder.gather``
collects them all (every process calls it before the main process writes): ``metrics.json`` lists each process's
figures under ``ranks`` and its top-level peaks are the largest over the processes (``peak_rank`` names the process),
so ``peak_vs_estimate`` compares the per-GPU estimate with the GPU that came closest to its limit, not with rank 0.
"""

from __future__ import annotations

import json
import os
import resource
import socket
import sys
import time
from pathlib import Path
from typing import Any

from ftplan.schemas.runtime_args import RuntimeArgs

from .stamps import METRICS_FILE

__all__ = ["METRICS_FILE", "StageRecorder", "TokenCountingMixin", "count_tokens", "loss_summary", "package_versions",
           "reduce_tokens"]

_GIB = 2**30
_PEAKS = ("peak_rss_gib", "torch_peak_allocated_gib", "torch_peak_reserved_gib", "device_used_peak_gib",
          "device_used_delta_gib")
"""The memory figures each process measures for itself; metrics.json's top level holds the largest over processes."""
LOSS_STEPS = 50
"""Logged training losses kept step by step in metrics.json (``loss_steps``): the first steps, for comparing runs."""
_PACKAGES = ("torch", "transformers", "trl", "peft", "accelerate", "datasets", "deepspeed", "bitsandbytes")


class StageRecorder:
    """Collects the measurements of one stage run; ``write`` produces ``metrics.json``."""

    def __init__(self, args: RuntimeArgs):
        self.args = args
        self.start = time.perf_counter()
        # Only stages the plan placed on a GPU measure it: a CPU stage (data, merge, GGUF) on a GPU machine must
        # not create a CUDA context it does not use.
        self.cuda = args.promise.device == "cuda" and _cuda_ready()
        # This process's own GPU: the recorder starts before accelerate selects it, and the default device (0)
        # would put a CUDA context of every rank on GPU 0 and measure GPU 0 for all of them.
        self.device = int(os.environ.get("LOCAL_RANK", "0"))
        self.ranks: list[dict[str, Any]] | None = None
        self.free_at_start: int | None = None
        self.min_free: int | None = None
        self.total: int | None = None
        if self.cuda:
            import torch

            torch.cuda.init()  # resetting the peak counters before CUDA is initialised is an error
            torch.cuda.reset_peak_memory_stats(self.device)
            self.free_at_start, self.total = torch.cuda.mem_get_info(self.device)
            self.min_free = self.free_at_start

    def sample(self) -> None:
        """Record the current device free memory (cheap; call at step boundaries)."""
        if self.cuda:
            import torch

            free, _ = torch.cuda.mem_get_info(self.device)
            self.min_free = free if self.min_free is None else min(self.min_free, free)

    def gather(self) -> None:
        """Collect every process's own figures (``rank_figures``) into ``ranks``, which ``memory`` and ``write``
        report. A collective: every process of a multi-process stage calls it, at the same point; a process outside
        a process group keeps its own figures only."""
        mine = self.rank_figures()
        ranks: list[Any] = [mine]
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            ranks = [None] * dist.get_world_size()
            dist.all_gather_object(ranks, mine)
        self.ranks = sorted(ranks, key=lambda r: r["rank"])

    def rank_figures(self) -> dict[str, Any]:
        """This process's own peak memory figures (``own_memory``), with its rank, local rank and host name."""
        return {"rank": int(os.environ.get("RANK", "0")), "local_rank": int(os.environ.get("LOCAL_RANK", "0")),
                "host": socket.gethostname(), **self.own_memory()}

    def memory(self) -> dict[str, Any]:
        """Peak memory figures in GiB (GPU figures are None on CPU), plus the estimate and ratio: this process's,
        or after ``gather`` the largest of every process's with ``peak_rank`` naming the process it comes from."""
        out = self.own_memory()
        if self.ranks:
            for key in _PEAKS:
                values = [r[key] for r in self.ranks if r.get(key) is not None]
                out[key] = max(values) if values else None
            key = "device_used_peak_gib" if out["device_used_peak_gib"] is not None else "peak_rss_gib"
            out["peak_rank"] = max(self.ranks, key=lambda r: r.get(key) or 0.0)["rank"]
        est = self.args.estimate_peak_gib
        out["estimate_peak_gib"] = est
        measured = out["device_used_peak_gib"]
        out["peak_vs_estimate"] = (measured / est) if (est and measured is not None) else None
        return out

    def own_memory(self) -> dict[str, Any]:
        """This process's peak memory figures in GiB (GPU figures are None on CPU)."""
        self.sample()
        out: dict[str, Any] = {
            "peak_rss_gib": _rss_peak_bytes() / _GIB,
            "torch_peak_allocated_gib": None,
            "torch_peak_reserved_gib": None,
            "device_used_peak_gib": None,
            "device_used_delta_gib": None,
            "gpu_name": None,
            "gpu_total_gib": None,
        }
        if self.cuda:
            import torch

            out["torch_peak_allocated_gib"] = torch.cuda.max_memory_allocated(self.device) / _GIB
            out["torch_peak_reserved_gib"] = torch.cuda.max_memory_reserved(self.device) / _GIB
            out["device_used_peak_gib"] = (self.total - self.min_free) / _GIB
            out["device_used_delta_gib"] = (self.free_at_start - self.min_free) / _GIB
            out["gpu_name"] = torch.cuda.get_device_name(self.device)
            out["gpu_total_gib"] = self.total / _GIB
        return out

    def write(self, out_dir: str | Path, extra: dict[str, Any] | None = None) -> Path:
        """Write ``metrics.json`` (sorted keys) with the common fields plus ``extra``; returns its path. After
        ``gather`` it lists every process's figures under ``ranks``."""
        data: dict[str, Any] = {
            "stage": self.args.stage.id,
            "kind": self.args.stage.kind,
            "pipeline": self.args.pipeline,
            "wall_time_s": time.perf_counter() - self.start,
            "versions": package_versions(),
            "python": sys.version.split()[0],
        }
        data.update(self.memory())
        if self.ranks is not None:
            data["ranks"] = self.ranks
        data.update(extra or {})
        path = Path(out_dir) / METRICS_FILE
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp")  # hidden: a killed run's leftover is cleaned on the next run
        tmp.write_text(json.dumps(_jsonable(data), indent=2, sort_keys=True) + "\n")
        os.replace(tmp, path)
        return path


def loss_summary(log_history: list[dict[str, Any]]) -> dict[str, Any]:
    """First, last, min and mean-of-last-10 of the logged training loss; last and min eval loss; the first
    ``LOSS_STEPS`` logged losses as ``[step, loss]`` pairs (``loss_steps``: the loss the trainer logs is the mean
    over every process)."""
    losses = [float(e["loss"]) for e in log_history if "loss" in e]
    steps = [[int(e.get("step", 0)), float(e["loss"])] for e in log_history if "loss" in e][:LOSS_STEPS]
    evals = [float(e["eval_loss"]) for e in log_history if "eval_loss" in e]
    tail = losses[-10:]
    return {
        "loss_first": losses[0] if losses else None,
        "loss_last": losses[-1] if losses else None,
        "loss_min": min(losses) if losses else None,
        "loss_mean_last10": sum(tail) / len(tail) if tail else None,
        "loss_logged_points": len(losses),
        "loss_steps": steps,
        "eval_loss": evals[-1] if evals else None,
        "eval_loss_min": min(evals) if evals else None,
    }


class TokenCountingMixin:
    """Counts, per process, the non-pad input tokens and the trained (loss-bearing) tokens of each micro-batch."""

    tokens_seen = 0
    tokens_trained = 0

    def training_step(self, model, inputs, num_items_in_batch=None):
        """Count the micro-batch's tokens, then run the normal training step."""
        seen, trained = count_tokens(inputs)
        self.tokens_seen += seen
        self.tokens_trained += trained
        return super().training_step(model, inputs, num_items_in_batch)


def count_tokens(inputs: dict) -> tuple[int, int]:
    """(non-pad tokens, loss tokens) of a collated batch: SFT/CPT, DPO, KTO (its batch, not the KL batch), a reward
    model's chosen and rejected sequences (every token feeds the score), or ORPO's chosen and rejected sequences
    (the labelled answer tokens; TRL's ORPO also trains the chosen prompt through its supervised term)."""
    if "chosen_attention_mask" in inputs:  # ORPO
        seen = int(inputs["chosen_attention_mask"].sum()) + int(inputs["rejected_attention_mask"].sum())
        trained = sum(int((inputs[f"{side}_labels"][..., 1:] != -100).sum()) for side in ("chosen", "rejected"))
        return seen, trained
    if "attention_mask" in inputs:
        seen = int(inputs["attention_mask"].sum())
    elif "position_ids" in inputs:
        seen = int(inputs["position_ids"].numel())
    else:
        seen = int(inputs["input_ids"].numel())
    if "completion_mask" in inputs:  # DPO: chosen and rejected completions
        trained = int(inputs["completion_mask"].sum())
    elif "labels" in inputs:
        trained = int((inputs["labels"][..., 1:] != -100).sum())
    else:
        trained = seen
    return seen, trained


def reduce_tokens(trainer) -> tuple[int, int]:
    """(non-pad, trained) token totals of a ``TokenCountingMixin`` trainer, summed over every process."""
    import torch

    acc = trainer.accelerator
    t = torch.tensor([trainer.tokens_seen, trainer.tokens_trained], device=acc.device, dtype=torch.int64)
    t = acc.reduce(t, reduction="sum")
    return int(t[0]), int(t[1])


def package_versions() -> dict[str, str | None]:
    """Installed versions of the training stack (None when a package is absent)."""
    from importlib.metadata import PackageNotFoundError, version

    out: dict[str, str | None] = {}
    for name in _PACKAGES:
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = None
    return out


def _cuda_ready() -> bool:
    import torch

    return torch.cuda.is_available()


def _rss_peak_bytes() -> int:
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss if sys.platform == "darwin" else rss * 1024


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, float):
        return float(f"{value:.7g}") if value == value and abs(value) != float("inf") else None
    if isinstance(value, (str, int, bool)) or value is None:
        return value
    return str(value)
