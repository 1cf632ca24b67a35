"""The calibration matrix: single-GPU training configurations whose peak memory is measured through compiled plans.

Each ``Point`` becomes one pipeline (``pipeline_yaml``): a data stage and the training stage under test (a DPO
point also has a one-step SFT stage it continues). Pipelines share their name and output folder, so a data or
SFT stage that another point already ran with the same arguments and inputs is complete and skipped.
``SHARDS`` splits the points into runs that each fit a 10-minute window on one H100/H200.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass

__all__ = ["BOUNDARIES", "Boundary", "POINTS", "Point", "SHARDS", "data_stage", "pipeline_yaml"]

STEPS = 3
"""Optimizer steps per point: the first allocates the optimizer states, the second and third reach the peak."""


@dataclass(frozen=True)
class Point:
    """One training configuration to measure."""

    name: str
    """Short unique name (the training stage id is ``p_<name>``)."""
    model: str
    """Catalog key of the architecture (the model is random-init with this shape)."""
    kind: str = "sft"
    """``sft`` or ``dpo``."""
    adapter: str = "lora"
    """``lora``, ``qlora``, ``dora`` or ``full``."""
    seq: int = 2048
    """The data stage's ``max_seq_len``."""
    micro_batch: int = 1
    """Sequences (DPO: pairs) per forward pass."""
    gc: bool = True
    """Gradient checkpointing."""
    kernels: str = "none"
    """``none`` or ``ftplan``."""
    packing: bool = False
    """Packed rows (SFT)."""
    rows: str = "full"
    """``full``: every row reaches max_seq_len; ``varied``: lengths from a third of it to all of it (padding)."""
    optimizer: str = "adamw"
    """``adamw``, ``adamw_8bit`` or ``paged_adamw_8bit``."""
    reference: str = "live"
    """DPO reference: ``live`` or ``precomputed``."""
    r: int = 16
    """Adapter rank."""
    attention: str = "sdpa"
    """Attention backend (Gemma 2 needs ``eager``; packing needs a variable-length one)."""

    @property
    def stage_id(self) -> str:
        """The training stage's id."""
        return "p_" + self.name.replace("-", "_").replace(".", "_")


@dataclass(frozen=True)
class Boundary:
    """A configuration whose micro-batch is pushed to where ``check`` says it stops fitting."""

    point: Point
    """The configuration (its ``micro_batch`` is replaced by the boundary's)."""


CODES = {"llama-3.2-1b": "l1", "llama-3.2-3b": "l3", "llama-3.1-8b": "l8", "qwen2.5-7b": "q7",
         "mistral-7b-v0.3": "m7", "gemma-2-2b": "g2", "phi-3.5-mini": "phi"}
"""Short model codes for stage ids (at most 32 characters)."""


def data_stage(p: Point) -> dict:
    """The data stage a point reads (shared by every point of the same model, length, rows and packing)."""
    sid = f"d_{CODES[p.model]}_{p.seq}{p.rows[0]}{'_packed' if p.packing else ''}"
    return {"id": sid, "kind": "data", "max_seq_len": p.seq, "packing": p.packing,
            "datasets": [{"path": f"../data/chat-{p.rows}-{p.seq}.jsonl", "format": "sharegpt"},
                         {"path": f"../data/prefs-{p.rows}-{p.seq}.jsonl", "format": "preference"}]}


def _adapter(p: Point) -> dict:
    return {"type": "full"} if p.adapter == "full" else {"type": p.adapter, "r": p.r, "alpha": p.r,
                                                          "targets": "all-linear"}


def _train(p: Point) -> dict:
    return {"micro_batch": p.micro_batch, "grad_accum": 1, "max_steps": STEPS, "logging_steps": 1,
            "report_to": [], "gradient_checkpointing": p.gc, "kernels": p.kernels, "optimizer": p.optimizer,
            "attention": p.attention}


def pipeline_yaml(p: Point, gpu: str) -> str:
    """The pipeline of one point (JSON, which is YAML), for the card ``gpu`` (a catalog key)."""
    data = data_stage(p)
    stages = [data]
    train = {"id": p.stage_id, "kind": p.kind, "data": data["id"], **_train(p)}
    if p.kind == "dpo":
        sft = {"id": f"s_{data['id'][2:]}_{p.adapter}{p.r}", "kind": "sft", "data": data["id"],
               "learning_rate": 1e-4, "adapter": _adapter(p),
               **{**_train(p), "max_steps": 1, "micro_batch": 1, "kernels": "none"}}
        stages.append(sft)
        train.update(input=sft["id"], adapter="continue", learning_rate=5e-6, reference=p.reference)
    else:
        train.update(learning_rate=1e-5 if p.adapter == "full" else 1e-4, adapter=_adapter(p))
    stages.append(train)
    doc = {"name": "calib", "output_dir": "../out", "model": {"base": f"../models/{p.model}", "architecture": p.model},
           "hardware": {"gpu": gpu}, "stages": stages}
    return json.dumps(doc, indent=1) + "\n"


def _p(name: str, model: str, **kw) -> Point:
    return Point(name=name, model=model, **kw)


L1, L3, L8 = "llama-3.2-1b", "llama-3.2-3b", "llama-3.1-8b"
Q7, M7, G2, PHI = "qwen2.5-7b", "mistral-7b-v0.3", "gemma-2-2b", "phi-3.5-mini"

POINTS: list[Point] = [
    # Llama-3.2-1B: long sequences where the logits and the loss dominate, no checkpointing, full fine-tunes
    _p("l1-lora-s512-b8", L1, seq=512, micro_batch=8),
    _p("l1-lora-s2048-b4-nogc", L1, micro_batch=4, gc=False),
    _p("l1-lora-s8192-b1", L1, seq=8192),
    _p("l1-lora-s16384-b1-k", L1, seq=16384, kernels="ftplan"),
    _p("l1-lora-s4096-b2-k", L1, seq=4096, micro_batch=2, kernels="ftplan"),
    _p("l1-qlora-s2048-b4", L1, adapter="qlora", micro_batch=4),
    _p("l1-full-s1024-b4", L1, adapter="full", seq=1024, micro_batch=4),
    _p("l1-full-s1024-b4-8bit", L1, adapter="full", seq=1024, micro_batch=4, optimizer="adamw_8bit"),
    _p("l1-dpo-s1024-b2", L1, kind="dpo", seq=1024, micro_batch=2),
    _p("l1-dpo-s1024-b2-pre", L1, kind="dpo", seq=1024, micro_batch=2, reference="precomputed"),
    _p("l1-lora-s2048-b4-packed", L1, micro_batch=4, packing=True, rows="varied", attention="flex_attention"),
    _p("l1-lora-s2048-b4-varied", L1, micro_batch=4, rows="varied"),
    # Llama-3.2-3B
    _p("l3-lora-s2048-b2", L3, micro_batch=2),
    _p("l3-lora-s4096-b1-nogc", L3, seq=4096, gc=False),
    _p("l3-qlora-s4096-b2-k", L3, adapter="qlora", seq=4096, micro_batch=2, kernels="ftplan"),
    _p("l3-dora-s2048-b2", L3, adapter="dora", micro_batch=2),
    _p("l3-full-s512-b2-paged", L3, adapter="full", seq=512, micro_batch=2, optimizer="paged_adamw_8bit"),
    _p("l3-dpo-s2048-b1", L3, kind="dpo", seq=2048),
    # Gemma-2-2B (256k vocabulary) and Phi-3.5-mini (fused projections)
    _p("g2-lora-s2048-b2", G2, micro_batch=2, attention="eager"),
    _p("g2-lora-s4096-b1-nogc", G2, seq=4096, gc=False, attention="eager"),
    _p("g2-qlora-s2048-b4", G2, adapter="qlora", micro_batch=4, attention="eager"),
    _p("phi-lora-s2048-b2", PHI, micro_batch=2),
    _p("phi-qlora-s4096-b2", PHI, adapter="qlora", seq=4096, micro_batch=2),
    _p("phi-lora-s1024-b4-nogc", PHI, seq=1024, micro_batch=4, gc=False),
    # Llama-3.1-8B
    _p("l8-lora-s2048-b2", L8, micro_batch=2),
    _p("l8-lora-s2048-b2-k", L8, micro_batch=2, kernels="ftplan"),
    _p("l8-qlora-s2048-b2-k", L8, adapter="qlora", micro_batch=2, kernels="ftplan"),
    _p("l8-qlora-s8192-b1-k", L8, adapter="qlora", seq=8192, kernels="ftplan"),
    _p("l8-qlora-s16384-b1-k", L8, adapter="qlora", seq=16384, kernels="ftplan"),
    _p("l8-lora-s1024-b4-nogc", L8, seq=1024, micro_batch=4, gc=False),
    _p("l8-qlora-s2048-b8-8bit", L8, adapter="qlora", micro_batch=8, optimizer="paged_adamw_8bit"),
    _p("l8-dora-s2048-b1", L8, adapter="dora"),
    _p("l8-dpo-s1024-b2-k", L8, kind="dpo", seq=1024, micro_batch=2, kernels="ftplan"),
    _p("l8-dpo-s1024-b2-pre", L8, kind="dpo", seq=1024, micro_batch=2, reference="precomputed"),
    # Mistral-7B
    _p("m7-lora-s2048-b2-k", M7, micro_batch=2, kernels="ftplan"),
    _p("m7-qlora-s4096-b2", M7, adapter="qlora", seq=4096, micro_batch=2),
    _p("m7-lora-s8192-b1", M7, seq=8192),
    _p("m7-lora-s2048-b4-varied", M7, micro_batch=4, rows="varied"),
    # Qwen2.5-7B (152k vocabulary)
    _p("q7-lora-s2048-b2", Q7, micro_batch=2),
    _p("q7-qlora-s4096-b2-k", Q7, adapter="qlora", seq=4096, micro_batch=2, kernels="ftplan"),
    _p("q7-lora-s1024-b8-packed-k", Q7, seq=1024, micro_batch=8, packing=True, rows="varied", kernels="ftplan",
       attention="flex_attention"),
    _p("q7-dpo-s1024-b1", Q7, kind="dpo", seq=1024),
]
"""Every measured configuration."""

BOUNDARIES: list[Boundary] = [
    Boundary(_p("bound-l1-lora-s16384-nogc", L1, seq=16384, gc=False)),
    Boundary(_p("bound-l3-qlora-s16384-nogc", L3, adapter="qlora", seq=16384, gc=False)),
    Boundary(_p("bound-l8-qlora-s8192-nogc", L8, adapter="qlora", seq=8192, gc=False)),
    Boundary(_p("bound-q7-qlora-s8192-nogc-k", Q7, adapter="qlora", seq=8192, gc=False, kernels="ftplan")),
    Boundary(_p("bound-m7-lora-s8192-nogc", M7, seq=8192, gc=False)),
    Boundary(_p("bound-g2-lora-s4096-nogc", G2, seq=4096, gc=False, attention="eager")),
]
"""Configurations probed at the largest micro-batch ``check`` says fits and the next one up. Chosen so that on both an
H100 80GB and an H200 the fit is estimated at 61-95 % of the card and the step past it at 110-163 % (the estimator of
2026-12-07): without checkpointing and at long sequences one more sequence is a large step, several times the
estimate's error, so the probe tests the verdict rather than the last percent, and a step takes seconds. With
checkpointing the boundary lies at micro-batches of 40-100 on an H100 (Llama-3.1-8B QLoRA at 4,096 tokens: 40;
Qwen2.5-7B LoRA at 2,048: 51; Llama-3.2-3B LoRA at 2,048: 90, and none below 128 on an H200), where one more sequence
is 1-2 % of the card and a step takes minutes; earlier runs recorded two probes of the older list,
``bound-l3-lora-s2048`` and ``bound-m7-lora-s1024-nogc``."""

SHARDS: dict[str, tuple[str, ...]] = {
    "llama-small": (L1, L3),
    "small": (G2, PHI, L3, L1),
    "7b-8b": (M7, Q7, L8),
    "mix": (L3, PHI, G2, L8, Q7, M7),
    "8b": (L8,),
    "7b": (M7, Q7),
}
"""Which models each run covers; the boundary probes run in the shard of their model."""


def shard_points(shard: str) -> tuple[list[Point], list[Boundary]]:
    """The points and boundary probes of one shard, in run order (grouped by model)."""
    models = SHARDS[shard]
    points = sorted((p for p in POINTS if p.model in models), key=lambda p: models.index(p.model))
    bounds = [b for b in BOUNDARIES if b.point.model in models]
    return points, bounds


def describe(p: Point) -> dict:
    """The point's settings as a JSON object (for the results file)."""
    return asdict(p)
