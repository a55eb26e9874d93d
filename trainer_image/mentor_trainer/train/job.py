"""One prepared SFT run: the trainer and what the result and the model card report about it."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..config.sft import SftStageConfig


@dataclass
class Job:
    config: SftStageConfig
    device: str
    precision: str
    trainer: Any
    model: Any
    tokenizer: Any
    checkpoint_dir: Path
    resume_from: str | None
    train_examples: int
    eval_examples: int
    dataset_hash: str | None
    base_uri: str
    notes: dict = field(default_factory=dict)  # extra result.json fields: trained blocks, parameter counts, best checkpoint
