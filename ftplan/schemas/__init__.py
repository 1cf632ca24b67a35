"""The typed pipeline schema (pydantic v2): unknown keys are errors at every level."""

from .adapters import AdapterSpec, FullFinetune, LoraAdapter
from .datasets import PREFERENCE_FORMATS, SFT_FORMATS, DatasetSpec
from .hardware import ContainerSpec, HardwareSpec, SlurmSpec, StageSlurmSpec
from .model import ModelSpec
from .pipeline import Pipeline
from .stages import (TRAIN_KINDS, TRAIN_STAGE_TYPES, CptStage, DataStage, DpoStage, GgufStage, KtoStage, MergeStage,
                     OrpoStage, RewardStage, SftStage, Stage, TrainStage)
from .training import DistributedSpec, TrainingArgs

__all__ = [
    "AdapterSpec", "ContainerSpec", "CptStage", "DataStage", "DatasetSpec", "DistributedSpec", "DpoStage",
    "FullFinetune", "GgufStage", "HardwareSpec", "KtoStage", "LoraAdapter", "MergeStage", "ModelSpec", "OrpoStage",
    "PREFERENCE_FORMATS", "Pipeline", "RewardStage", "SFT_FORMATS", "SftStage", "SlurmSpec", "Stage", "StageSlurmSpec",
    "TRAIN_KINDS", "TRAIN_STAGE_TYPES", "TrainStage", "TrainingArgs",
]
