"""The typed pipeline schema (pydantic v2): unknown keys are errors at every level."""

from .adapters import AdapterSpec, FullFinetune, LoraAdapter
from .datasets import PREFERENCE_FORMATS, SFT_FORMATS, DatasetSpec
from .hardware import ContainerSpec, HardwareSpec, SlurmSpec, StageSlurmSpec
from .model import ModelSpec
from .pipeline import Pipeline
from .stages import DataStage, DpoStage, GgufStage, MergeStage, SftStage, Stage, TrainStage
from .training import DistributedSpec, TrainingArgs

__all__ = [
    "AdapterSpec", "ContainerSpec", "DataStage", "DatasetSpec", "DistributedSpec", "DpoStage", "FullFinetune", "GgufStage",
    "HardwareSpec", "LoraAdapter", "MergeStage", "ModelSpec", "PREFERENCE_FORMATS", "Pipeline", "SFT_FORMATS",
    "SftStage", "SlurmSpec", "Stage", "StageSlurmSpec", "TrainStage", "TrainingArgs",
]
