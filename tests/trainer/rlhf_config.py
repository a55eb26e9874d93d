"""The rlhf stage's config and runner as the rlhf tests use them (tiny model, CPU)."""

from __future__ import annotations

from pathlib import Path

from mentor_trainer.config.rlhf import RLHFStageConfig

HYPERPARAMETERS = {
    "maxSteps": 30,
    "learningRate": 5e-3,
    "lrScheduler": "constant",
    "warmupRatio": 0.0,
    "perDeviceBatchSize": 4,
    "maxSeqLength": 256,
    "seed": 3,
}


def rlhf_config(policy: Path, dataset: Path, out_dir: Path, **spec) -> RLHFStageConfig:
    """A stage config: ``spec`` (wire names) over the tests' defaults; ``hyperparameters`` are
    merged into :data:`HYPERPARAMETERS`, ``name`` names the run."""
    wire = {
        "run": {"kind": "RLHFJob", "name": spec.pop("name", "tea-aligned"), "namespace": "tests"},
        "outputUri": out_dir.as_uri(),
        "policyModel": policy.as_uri(),
        "datasetUri": dataset.as_uri(),
        "lora": {"r": 16, "alpha": 32, "dropout": 0.0},
        "hyperparameters": {**HYPERPARAMETERS, **spec.pop("hyperparameters", {})},
        "checkpointing": {"everySteps": 100},
        **spec,
    }
    return RLHFStageConfig.model_validate(wire)


def run(config: RLHFStageConfig, callbacks=()):
    from mentor_trainer.train.rlhf import run as rlhf_run

    return rlhf_run(config, callbacks=callbacks)
