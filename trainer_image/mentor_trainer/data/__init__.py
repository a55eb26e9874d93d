"""`mentor-trainer data`: raw domain documents -> a training-ready dataset.

``main(config)`` takes a validated :class:`~mentor_trainer.config.DataStageConfig` and returns
the :class:`~mentor_trainer.config.DatasetResult` that becomes the DomainDataset's status. Heavy libraries are imported inside the stage, not at package import.
"""

from __future__ import annotations

from ..config.data import DatasetResult, DataStageConfig


def main(config: DataStageConfig) -> DatasetResult:
    from .pipeline import run

    return run(config)


__all__ = ["main"]
