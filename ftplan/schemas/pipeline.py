"""The pipeline file: one model, one hardware target, an ordered list of stages."""

from __future__ import annotations

from pydantic import Field

from .base import FtplanModel, Name, NonEmptyStr
from .hardware import HardwareSpec
from .model import ModelSpec
from .stages import TRAIN_STAGE_TYPES, Stage, TrainStage


class Pipeline(FtplanModel):
    """A fine-tuning pipeline: data prep, training stages, merge and export, checked and compiled as one."""

    name: Name
    """Pipeline name; used in job names and the default output folder."""

    model: ModelSpec
    """The base model, tokenizer and chat template."""

    hardware: HardwareSpec
    """The target GPUs the pipeline is checked against and launched on."""

    output_dir: NonEmptyStr = "outputs"
    """Folder for stage results (``<output_dir>/<stage id>/``), relative to the pipeline file."""

    stages: list[Stage] = Field(min_length=1)
    """Stages, run in this order; each may consume the results of earlier ones."""

    def stage(self, stage_id: str) -> Stage | None:
        """The stage with this id, or None."""
        return next((s for s in self.stages if s.id == stage_id), None)

    def training_stage(self, index: int) -> TrainStage:
        """The stage at ``index``, which trains (``TypeError`` when it does not: callers pass training stages)."""
        stage = self.stages[index]
        if not isinstance(stage, TRAIN_STAGE_TYPES):
            raise TypeError(f"stages[{index}] ('{stage.id}') is a {stage.kind} stage, not a training stage")
        return stage
