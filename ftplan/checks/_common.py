"""Small helpers shared by the rule modules: stage iteration, resolved strategy and adapter type, suggestions."""

from __future__ import annotations

from collections.abc import Iterator

from ftplan.context import Context
from ftplan.schemas import DataStage, DpoStage, LoraAdapter, SftStage
from ftplan.schemas.datasets import PREFERENCE_FORMATS, SFT_FORMATS
from ftplan.suggest import did_you_mean

__all__ = ["EIGHT_BIT_OPTIMIZERS", "SHARDED", "ZERO", "adapter_type", "data_stage_of", "data_stages",
           "declared_adapter", "did_you_mean", "known_rows", "sm", "strategy", "strategy_path", "train_stages", "world_size"]

ZERO = ("zero1", "zero2", "zero3")
"""DeepSpeed ZeRO strategies."""
SHARDED = ("zero1", "zero2", "zero3", "fsdp2")
"""Strategies that go through DeepSpeed or FSDP."""
EIGHT_BIT_OPTIMIZERS = ("adamw_8bit", "paged_adamw_8bit")
"""bitsandbytes optimizers."""


def train_stages(ctx: Context) -> Iterator[tuple[int, SftStage | DpoStage]]:
    """(index, stage) of every training stage, in file order."""
    for i, stage in enumerate(ctx.pipeline.stages):
        if isinstance(stage, (SftStage, DpoStage)):
            yield i, stage


def data_stages(ctx: Context) -> Iterator[tuple[int, DataStage]]:
    """(index, stage) of every data stage, in file order."""
    for i, stage in enumerate(ctx.pipeline.stages):
        if isinstance(stage, DataStage):
            yield i, stage


def data_stage_of(ctx: Context, stage: SftStage | DpoStage) -> tuple[int, DataStage] | None:
    """The data stage a training stage reads, or None when the reference is broken or ambiguous (two stages
    share the id: FT201 reports it, and no rule guesses which one is meant)."""
    found = [(i, other) for i, other in enumerate(ctx.pipeline.stages) if other.id == stage.data]
    if len(found) != 1:
        return None
    i, other = found[0]
    return (i, other) if isinstance(other, DataStage) else None


def known_rows(ctx: Context, stage: SftStage | DpoStage) -> int | None:
    """Training rows this stage reads when every one of its dataset files was read whole, else None (also when
    bad rows stop the data stage first: ``on_bad_row: error``, reported by the FT50x rules). Examples before
    packing; DPO stages count pairs."""
    found = data_stage_of(ctx, stage)
    if found is None:
        return None
    i, data = found
    want = PREFERENCE_FORMATS if isinstance(stage, DpoStage) else SFT_FORMATS
    if not any(d.format in want for d in data.datasets):
        return None  # no data of this stage's kind at all: FT205
    total = 0
    for j, d in enumerate(data.datasets):
        if d.format not in want:
            continue
        scan = ctx.inputs.datasets.get((i, j))
        if scan is None or not scan.checked or scan.file_problem is not None or not scan.complete:
            return None
        if scan.bad_rows and data.on_bad_row == "error":
            return None
        total += scan.rows_read - scan.bad_rows
    return int(total * (1.0 - data.val_fraction))


def world_size(ctx: Context) -> int:
    """Training processes the plan launches."""
    return ctx.pipeline.hardware.world_size


def strategy(ctx: Context, stage: SftStage | DpoStage) -> str:
    """The stage's distributed strategy with ``auto`` resolved: ``none`` on one process, ``ddp`` on more."""
    name = stage.distributed_spec().strategy
    if name == "auto":
        return "none" if world_size(ctx) == 1 else "ddp"
    return name


def strategy_path(i: int, stage: SftStage | DpoStage) -> tuple:
    """Key path of the stage's strategy (``distributed`` or ``distributed.strategy``)."""
    return ("stages", i, "distributed") if isinstance(stage.distributed, str) else (
        "stages", i, "distributed", "strategy")


def adapter_type(ctx: Context, stage: SftStage | DpoStage) -> str | None:
    """``lora``/``qlora``/``dora``/``full`` for what this stage trains; for ``adapter: continue`` the type of the
    continued adapter (None when the stage graph is broken)."""
    if stage.adapter == "continue":
        link = ctx.links.get(stage.id)
        if link is None or link.result is None or not link.result.adapters:
            return None
        return link.result.adapters[-1].type
    return stage.adapter.type


def declared_adapter(stage: SftStage | DpoStage) -> LoraAdapter | None:
    """The adapter spec this stage declares itself (None for ``continue`` and full fine-tunes)."""
    return stage.adapter if isinstance(stage.adapter, LoraAdapter) else None


def sm(gpu) -> str:
    """``sm80``-style label of a GPU's compute capability (its architecture name for AMD)."""
    if gpu.compute_capability is None:
        return gpu.arch
    major, minor = gpu.compute_capability
    return f"sm{major}{minor}"
