"""Small helpers shared by the rule modules: stage iteration with each training stage's resolved facts, key paths,
the GPU label. The facts themselves (strategy, world size, batch, adapter) are computed once, in
``ftplan.resolved_stage``; rules only read them."""

from __future__ import annotations

from collections.abc import Iterator

from ftplan.catalog.gpus import GpuSpec
from ftplan.context import Context
from ftplan.diagnostics import KeyPath
from ftplan.resolved_stage import TrainingFacts
from ftplan.resolved_stage import data_stage_of as _data_stage_of
from ftplan.schemas import TRAIN_STAGE_TYPES, DataStage, LoraAdapter, TrainStage

__all__ = ["EIGHT_BIT_OPTIMIZERS", "SHARDED", "ZERO", "data_stage_of", "data_stages", "declared_adapter", "sm",
           "strategy_path", "train_stages"]

ZERO = ("zero1", "zero2", "zero3")
"""DeepSpeed ZeRO strategies."""
SHARDED = ("zero1", "zero2", "zero3", "fsdp2")
"""Strategies that go through DeepSpeed or FSDP."""
EIGHT_BIT_OPTIMIZERS = ("adamw_8bit", "paged_adamw_8bit")
"""bitsandbytes optimizers."""


def train_stages(ctx: Context) -> Iterator[tuple[int, TrainStage, TrainingFacts]]:
    """(index, stage, resolved facts) of every training stage, in file order."""
    for i, stage in enumerate(ctx.pipeline.stages):
        facts = ctx.stages[i].train
        if isinstance(stage, TRAIN_STAGE_TYPES) and facts is not None:
            yield i, stage, facts


def data_stages(ctx: Context) -> Iterator[tuple[int, DataStage]]:
    """(index, stage) of every data stage, in file order."""
    for i, stage in enumerate(ctx.pipeline.stages):
        if isinstance(stage, DataStage):
            yield i, stage


def data_stage_of(ctx: Context, stage: TrainStage) -> tuple[int, DataStage] | None:
    """The data stage a training stage reads, or None when the reference is broken or ambiguous."""
    return _data_stage_of(ctx.pipeline, stage)


def strategy_path(i: int, stage: TrainStage) -> KeyPath:
    """Key path of the stage's strategy (``distributed`` or ``distributed.strategy``)."""
    return ("stages", i, "distributed") if isinstance(stage.distributed, str) else (
        "stages", i, "distributed", "strategy")


def declared_adapter(stage: TrainStage) -> LoraAdapter | None:
    """The adapter spec this stage declares itself (None for ``continue`` and full fine-tunes)."""
    return stage.adapter if isinstance(stage.adapter, LoraAdapter) else None


def sm(gpu: GpuSpec) -> str:
    """``sm80``-style label of a GPU's compute capability (its architecture name for AMD)."""
    if gpu.compute_capability is None:
        return gpu.arch
    major, minor = gpu.compute_capability
    return f"sm{major}{minor}"
