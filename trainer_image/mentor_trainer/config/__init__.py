"""Stage configs: light pydantic models shared by the trainer and the operator."""

from .common import CelRule, Progress, Spec, StageResult, StageRuntime
from .data import DatasetResult, DataStageConfig, DatasetOptions
from .deploy import (
    DriftStageConfig,
    ExportResult,
    ExportStageConfig,
    RolloutResult,
    RolloutStageConfig,
    ServeStageConfig,
    ServingOptions,
)
from .evaluate import METRICS, EvaluateStageConfig, EvaluationOptions, EvaluationResult
from .rlhf import RLHFOptions, RLHFStageConfig
from .sft import FineTuneOptions, SftStageConfig, TrainingResult

# `mentor-trainer <stage>` -> the config model that stage reads.
STAGE_CONFIGS: dict[str, type[StageRuntime]] = {
    "data": DataStageConfig,
    "sft": SftStageConfig,
    "rlhf": RLHFStageConfig,
    "evaluate": EvaluateStageConfig,
    "export": ExportStageConfig,
    "serve": ServeStageConfig,
    "drift": DriftStageConfig,
    "rollout": RolloutStageConfig,
}

__all__ = [
    "CelRule",
    "DataStageConfig",
    "DatasetResult",
    "DatasetOptions",
    "DriftStageConfig",
    "EvaluateStageConfig",
    "EvaluationOptions",
    "EvaluationResult",
    "ExportResult",
    "ExportStageConfig",
    "FineTuneOptions",
    "Progress",
    "METRICS",
    "RLHFOptions",
    "RLHFStageConfig",
    "RolloutResult",
    "RolloutStageConfig",
    "STAGE_CONFIGS",
    "ServeStageConfig",
    "ServingOptions",
    "SftStageConfig",
    "Spec",
    "StageResult",
    "StageRuntime",
    "TrainingResult",
]
