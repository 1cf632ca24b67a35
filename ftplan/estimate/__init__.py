"""Peak GPU memory and rough throughput per stage, offline (no torch).

Peak per GPU = fixed (CUDA context, libraries, NCCL) + model states (weights, adapters, gradients, optimizer, with
sharding and offload) + the largest phase (loss, backward through a layer, DPO reference forward, optimizer step)
+ allocator fragmentation; every term is a named line item. Calibrated on one H200 against the plain HF+PEFT
points of baselines.md (``BASELINE_LOOP``); pipelines are estimated for the loop the runtime runs (TRL trainers).
A stage that does not fit gets "would fit" suggestions: edits of the pipeline file (``edits.py``), each applied and
re-checked whole, schema, rules and estimate (``fit.py``), before it is offered.
"""

from .pipeline import CODES, estimate
from .resolved import BASELINE_LOOP, Loop, Resolved, runtime_loop
from .stage import estimate_resolved, estimate_training, resolve, verdict
from .types import StageEstimate, Suggestion, Term, Verdict

__all__ = [
    "BASELINE_LOOP", "CODES", "Loop", "Resolved", "StageEstimate", "Suggestion", "Term", "Verdict",
    "estimate", "estimate_resolved", "estimate_training", "resolve", "runtime_loop", "verdict",
]
