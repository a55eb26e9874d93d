"""Stage configs: light pydantic models shared by the trainer and the operator."""

from .common import CelRule, Spec, StageRuntime
from .data import DataStageConfig, DatasetOptions
from .deploy import DriftStageConfig, ExportStageConfig, ServeStageConfig, ServingOptions
from .evaluate import METRICS, EvaluateStageConfig, EvaluationOptions
from .rlhf import RLHFOptions, RLHFStageConfig
from .sft import FineTuneOptions, SftStageConfig

# `mentor-trainer <stage>` -> the config model that stage reads.
STAGE_CONFIGS: dict[str, type[StageRuntime]] = {
    "data": DataStageConfig,
    "sft": SftStageConfig,
    "rlhf": RLHFStageConfig,
    "evaluate": EvaluateStageConfig,
    "export": ExportStageConfig,
    "serve": ServeStageConfig,
    "drift": DriftStageConfig,
}

__all__ = [
    "CelRule",
    "DataStageConfig",
    "DatasetOptions",
    "DriftStageConfig",
    "EvaluateStageConfig",
    "EvaluationOptions",
    "ExportStageConfig",
    "FineTuneOptions",
    "METRICS",
    "RLHFOptions",
    "RLHFStageConfig",
    "STAGE_CONFIGS",
    "ServeStageConfig",
    "ServingOptions",
    "SftStageConfig",
    "Spec",
    "StageRuntime",
]
